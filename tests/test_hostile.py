"""Hostile clients on the bus and the web (issue #14), one test per attack, each against the
real parts: mosquitto run with `umbra-ground broker-files`' own configuration, the ingest
and archive on SQLite files, the command processor, the console over HTTP and in Chromium.

Attacks that held before are kept as guards in tests/test_bus_security.py (ACL, TLS,
takeovers, sizes, root), tests/test_bus_processor.py (unsigned, tampered, replayed,
expired) and tests/test_console_browser.py (XSS)."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import logging
import math
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from test_bus_processor import KEY, NODE, NOW, Clock, make, tc
from test_bus_security import client, generated_broker
from test_ground_archive import ev, hk
from test_ground_web import csrf_of

from ground.archive import Archive
from ground.ingest import Ingestor
from ground.keys import CounterStore
from ground.send import build_telecommand
from ground.web.app import Console, ConsoleConfig
from ground.web.auth import LOGIN_FREE_FAILURES, Sessions, demo_users
from hil.broker import Mosquitto, free_port
from hil.procs import ManagedProcess
from node.bus import signing
from node.bus.payloads import (
    MAX_EVENT_TEXT,
    MAX_NESTING,
    Event,
    Leaf,
    NodeState,
    TcReport,
    Telecommand,
    decode_message,
    topic,
)
from node.errors import ConfigError, LocalProtocolError, Reason, RemoteProtocolError

# -- the production broker and an ingest behind it ----------------------------------------


@pytest.fixture
def production(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, str]]]:
    broker, users = generated_broker(tmp_path / "broker", ["node-1", "node-2"])
    broker.start()
    try:
        yield broker, users
    finally:
        broker.close()


@pytest.fixture
async def ingest(production, tmp_path: Path) -> AsyncIterator[tuple[Ingestor, Archive]]:
    broker, users = production
    archive = Archive(tmp_path / "archive.sqlite")
    async with Ingestor(archive=archive, host=broker.host, port=broker.ground_port,
                        username="ground", password=users["ground"], batch_wait=0.01) as ing:
        await asyncio.wait_for(ing.subscribed.wait(), 10)
        yield ing, archive
    archive.close()


async def _publish(broker: Mosquitto, users: dict[str, str], user: str,
                   messages: list[tuple[str, bytes, bool]]) -> None:
    async with client(broker, user, users) as c:
        for name, payload, retain in messages:
            await c.publish(name, payload, qos=1, retain=retain)


async def _settle(ing: Ingestor, seen: int, timeout: float = 10.0) -> None:
    """Wait until the ingest has taken ``seen`` messages (stored or refused) and drained."""
    deadline = time.monotonic() + timeout
    while ing.stats.received + sum(ing.stats.refused.values()) < seen:
        assert time.monotonic() < deadline, ing.stats
        await asyncio.sleep(0.05)
    await ing.drain()


# -- 1: one node speaking for another ------------------------------------------------------


async def test_1_a_node_cannot_speak_for_another_node(production, ingest) -> None:
    broker, users = production
    ing, archive = ingest
    far = time.time() + 10 * 365 * 86400
    forged_hk = [dataclasses.replace(hk("node-2", s), utc=far) for s in range(1, 61)]
    forged = [
        (topic("node-1", Leaf.STATE), NodeState(node_id="node-2", online=False, boot_id="forged",
                                                 version="6.6.6", utc=far, dict_hash="bad").to_wire(), False),
        (topic("node-1", Leaf.EVENT), Event(node_id="node-2", seq=999_999_999_999, utc=far, t_board=1.0,
                                            kind="fake", severity=4, text="forged").to_wire(), False),
        *[(topic("node-1", Leaf.HK), p.to_wire(), False) for p in forged_hk],
        # node-1 about itself, stamped ten years ahead: refused as "future".
        (topic("node-1", Leaf.HK), dataclasses.replace(hk("node-1", 1), utc=far).to_wire(), False),
    ]
    await _publish(broker, users, "node-1", forged)
    now = time.time()
    real = [(topic("node-2", Leaf.STATE), NodeState(node_id="node-2", online=True, boot_id="real",
                                                     version="1.0", utc=now).to_wire(), True)]
    real += [(topic("node-2", Leaf.HK), dataclasses.replace(hk("node-2", s), utc=now + s * 0.01).to_wire(),
              False) for s in range(1, 61)]
    await _publish(broker, users, "node-2", real)
    await _settle(ing, len(forged) + len(real))

    assert ing.stats.refused.get("node_mismatch") == 62, ing.stats
    assert ing.stats.refused.get("future") == 1, ing.stats
    node2 = archive.node("node-2")
    assert node2 is not None and node2["online"] == 1 and node2["boot_id"] == "real"
    assert node2["packets"] == 60 and node2["duplicates"] == 0
    assert archive.gaps("node-2") == [] and archive.events("node-2") == []
    assert archive.node("node-1") is None or archive.node("node-1")["packets"] == 0
    reasons = {d["reason"] for d in archive.dead_letters()}
    assert reasons == {"node_mismatch", "future"}
    assert all(d["node"] == "node-1" for d in archive.dead_letters())


def test_1_decode_refuses_a_payload_whose_node_id_is_not_its_topics() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        decode_message(topic("node-1", Leaf.HK), hk("node-2", 1).to_wire())
    assert err.value.reason == "node_mismatch"
    assert decode_message(topic("node-2", Leaf.HK), hk("node-2", 1).to_wire())[1] == hk("node-2", 1)


# -- 3: poison packets ---------------------------------------------------------------------


def _raw_hk(**override: Any) -> bytes:
    body = dataclasses.asdict(hk("node-1", 1))
    body.update(override)
    return msgpack.packb(body)


@pytest.mark.parametrize("override", [
    {"seq": 2**64 - 1}, {"seq": 2**63}, {"utc": math.nan}, {"board_flags": 2**64 - 1},
    {"seq": -1}, {"utc": math.inf}, {"link": {"x": 2**64 - 1}},
], ids=lambda o: next(iter(o)) + "=" + str(next(iter(o.values())))[:12])
def test_3_values_that_do_not_fit_the_archive_are_refused_at_decode(override: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        decode_message(topic("node-1", Leaf.HK), _raw_hk(**override))
    assert err.value.reason == "invalid_value"


def test_3_report_codes_beyond_a_byte_are_refused() -> None:
    body = dataclasses.asdict(TcReport(node_id="node-1", seq=1, utc=1.0, id="c", counter=1,
                                       name="ping", stage="failed", code=1))
    body["code"] = 2**64 - 1
    with pytest.raises(RemoteProtocolError):
        decode_message(topic("node-1", Leaf.TC_REPORT), msgpack.packb(body))


async def test_3_poison_packets_never_stop_the_ingest(production, ingest) -> None:
    broker, users = production
    ing, archive = ingest
    poison = [_raw_hk(seq=2**64 - 1), _raw_hk(seq=2**63), _raw_hk(utc=math.nan),
              _raw_hk(board_flags=2**64 - 1)]
    good = [hk("node-2", s, utc=time.time()).to_wire() for s in range(1, 28)]
    await _publish(broker, users, "node-1", [(topic("node-1", Leaf.HK), p, False) for p in poison])
    await _publish(broker, users, "node-2", [(topic("node-2", Leaf.HK), p, False) for p in good])
    await _settle(ing, len(poison) + len(good))
    assert archive.packet_count("node-2") == 27
    assert ing.stats.refused == {"invalid_value": 4}
    assert len(archive.dead_letters("node-1")) == 4


class PoisonArchive(Archive):
    """The database refuses one node's packets (as PostgreSQL refuses a NUL in a text)."""

    def _store_bodies(self, new: Any) -> None:
        if any(p.node_id == "poison" for p in new):
            raise sqlite3.IntegrityError("refused by the database")
        super()._store_bodies(new)


async def test_3_a_batch_the_database_refuses_is_split_and_the_bad_packet_dead_lettered(
        tmp_path: Path) -> None:
    archive = PoisonArchive(tmp_path / "a.sqlite")
    ing = Ingestor(archive=archive, host="127.0.0.1", port=1)  # never connects: fed directly
    batch: list[Any] = [hk("good", s) for s in range(1, 40)]
    batch.insert(17, hk("poison", 1))
    async with asyncio.timeout(10):
        await ing._store(batch)
    assert archive.packet_count("good") == 39 and archive.packet_count("poison") == 0
    (letter,) = archive.dead_letters()
    assert letter["node"] == "poison" and letter["reason"] == "archive"
    assert "refused by the database" in letter["detail"]
    archive.close()


# -- 4: ground tools against the production broker -----------------------------------------


async def test_4_the_console_ingests_and_commands_through_the_production_broker(
        production, tmp_path: Path) -> None:
    broker, users = production
    keys = tmp_path / "tc-keys.json"
    signing.write_keys(keys, {"node-1": signing.new_key()})
    config = ConsoleConfig(mqtt_host=broker.host, mqtt_port=broker.ground_port, http_port=0,
                           archive=str(tmp_path / "a.sqlite"), key_file=str(keys),
                           mqtt_username="ground", mqtt_password=users["ground"])
    async with Console(config) as console:
        assert console.ingestor is not None
        await asyncio.wait_for(console.ingestor.subscribed.wait(), 10)
        async with client(broker, "node-1", users) as node:
            await node.subscribe(topic("node-1", Leaf.TC), qos=1)
            await node.publish(topic("node-1", Leaf.HK), hk("node-1", 1, utc=time.time()).to_wire(), qos=1)
            session = await _login(console, "demo", "demo")
            async with session:
                async with session.post("/api/node/node-1/commands", json={"name": "ping", "args": {}}) as r:
                    assert r.status == 200, await r.text()
            async with asyncio.timeout(10):
                async for m in node.messages:
                    tcmd = Telecommand.from_wire(bytes(m.payload))  # type: ignore[arg-type]
                    assert tcmd.name == "ping"
                    break
        await console.ingestor.drain()
        assert console.archive.packet_count("node-1") == 1


def test_4_serve_and_ingest_take_broker_credentials_and_tls(tmp_path: Path) -> None:
    from ground.cli import build_parser
    from ground.query import mqtt_password

    (tmp_path / "pw").write_text("s3cret\n")
    for command in ("serve", "ingest", "send"):
        extra = ["node-1", "ping"] if command == "send" else []
        args = build_parser().parse_args([command, *extra, "--username", "ground", "--password-file",
                                          str(tmp_path / "pw"), "--tls-ca", "ca.crt"])
        assert (args.username, mqtt_password(args), args.tls_ca) == ("ground", "s3cret", "ca.crt")


# -- 6: floods of rejected commands ----------------------------------------------------------


def test_6_a_flood_of_unsigned_commands_is_summarised_not_reported_one_by_one() -> None:
    proc, target, sink = make(reject_burst=5)
    proc._window_at = -math.inf
    unsigned = Telecommand(node_id=NODE, id="flood", counter=1, name="set_mode",
                           args={"mode": "SAFE"}, expires=NOW + 60).to_wire()
    for _ in range(5000):
        proc.handle(unsigned)
    assert target.calls == []
    assert len(sink.reports) == 5 and len(sink.events) == 5
    assert proc.counters["rejected"] == 5000
    # The interval ends: one summary report and one event carry the count of the rest.
    proc._window_at -= 10.0
    proc.flush_rejections()
    summary = sink.reports[-1]
    assert summary.id == "" and summary.data["held"] == 4995 and summary.code == Reason.BAD_TAG
    assert sink.events[-1].kind == "tc_rejected_summary" and sink.events[-1].data["BAD_TAG"] == 4995
    # A genuine command is still answered at once, in full.
    proc.handle(tc("ping", counter=7, cid="real"))
    assert [r.stage for r in sink.reports if r.id == "real"] == ["accepted", "started", "completed"]


def test_6_a_captured_command_replayed_in_a_loop_is_answered_a_few_times_only() -> None:
    proc, _, sink = make()
    wire = tc("ping", counter=3, cid="captured")
    for _ in range(1000):
        proc.handle(wire)
    answers = [r for r in sink.reports if r.id == "captured"]
    assert len([r for r in answers if not r.duplicate]) == 3  # accepted, started, completed
    assert len([r for r in answers if r.duplicate]) == 3


# -- 7: deeply nested arguments --------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_7_deeply_nested_arguments_are_malformed_before_anything_recursive_runs(caplog) -> None:
    proc, _, sink = make()
    body = {"node_id": NODE, "id": "deep", "counter": 5, "name": "ping", "args": _nested(900),
            "expires": NOW + 60, "exec_at": None, "tag": b"\0" * 32}
    data = msgpack.packb(body)
    assert len(data) < 4096
    with caplog.at_level(logging.WARNING):
        proc.handle(data)
    (report,) = sink.reports
    assert report.code == Reason.MALFORMED and "nested deeper" in report.text
    assert all(len(r.getMessage()) < 1000 and r.exc_info is None for r in caplog.records)
    with pytest.raises(LocalProtocolError, match="nested deeper"):
        Telecommand(node_id=NODE, id="x", counter=1, name="ping", args=_nested(MAX_NESTING + 1),
                    expires=NOW)
    Telecommand(node_id=NODE, id="x", counter=1, name="ping", args=_nested(MAX_NESTING - 1), expires=NOW)


# -- 8: a counter that would lock ground out -------------------------------------------------


def test_8_a_counter_far_ahead_is_refused_and_commanding_goes_on() -> None:
    proc, target, sink = make()
    proc.handle(tc("set_mode", {"mode": "SAFE"}, counter=2**63 - 1, cid="lock"))
    (report,) = sink.reports
    assert report.code == Reason.COUNTER_AHEAD and proc.last_counter == 0
    assert target.calls == []
    proc.handle(tc("ping", counter=int(NOW * 1e6), cid="next"))
    assert [r.stage for r in sink.reports if r.id == "next"][-1] == "completed"


def test_8_ground_refuses_to_send_such_a_counter_and_ignores_a_corrupt_counter_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="COUNTER_AHEAD"):
        build_telecommand(node_id=NODE, name="ping", args={}, key=KEY, counter=2**63 - 1)
    path = tmp_path / "keys.json.counters"
    path.write_text(json.dumps({NODE: 2**63 - 2}))
    now = time.time()
    value = CounterStore(path).next(NODE, now=now)
    assert int(now * 1e6) <= value <= int(now * 1e6) + 1


def test_8_the_recovery_procedure_resets_a_locked_node(tmp_path: Path) -> None:
    """A node that accepted a huge counter before this rule: `umbra-node --reset-tc-counter`."""
    db = tmp_path / "commands.sqlite"
    clock = Clock()
    proc, _, _ = make(db, clock)
    proc._db.execute("INSERT INTO meta VALUES ('last_counter', ?) ON CONFLICT(key) DO UPDATE "
                     "SET value = excluded.value", (2**63 - 1,))
    proc.close()
    from node.cli import main

    assert main(["--data-dir", str(tmp_path), "--reset-tc-counter"]) == 0
    proc, _, sink = make(db, clock)
    assert proc.last_counter <= int(time.time() * 1e6)
    proc.handle(tc("ping", counter=int(time.time() * 1e6) + 10, cid="after"))
    assert [r.stage for r in sink.reports if r.id == "after"][-1] == "completed"


# -- 10: size limits -------------------------------------------------------------------------


def test_10_oversize_texts_are_refused_at_decode() -> None:
    body = dataclasses.asdict(ev("node-1", 1))
    body["text"] = "x" * 20_000_000
    with pytest.raises(RemoteProtocolError):
        decode_message(topic("node-1", Leaf.EVENT), msgpack.packb(body))
    body["text"] = "x" * MAX_EVENT_TEXT
    decode_message(topic("node-1", Leaf.EVENT), msgpack.packb(body))


# -- 2, 9, 11 and the console's headers ------------------------------------------------------


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    keys = tmp_path / "tc-keys.json"
    signing.write_keys(keys, {"node-1": signing.new_key()})
    config = ConsoleConfig(http_port=0, archive=str(tmp_path / "a.sqlite"), key_file=str(keys),
                           ingest=False, mqtt_port=free_port())
    async with Console(config) as c:
        yield c


async def _login(console: Console, user: str, password: str) -> aiohttp.ClientSession:
    s = aiohttp.ClientSession(console.url, cookie_jar=aiohttp.CookieJar(unsafe=True),
                              headers={"Origin": console.url})
    async with s.post("/login", data={"user": user, "password": password}) as r:
        assert r.status == 200, await r.text()
        s.headers["X-CSRF-Token"] = csrf_of(await r.text())
    return s


async def test_2_state_changing_requests_need_the_origin_and_the_token(console: Console) -> None:
    good = await _login(console, "demo", "demo")
    async with good:
        token = good.headers["X-CSRF-Token"]
        body = json.dumps({"name": "ping", "args": {}})
        cases = [
            ({"Origin": "http://127.0.0.1:1", "X-CSRF-Token": token, "Content-Type": "application/json"}, 403),
            ({"Origin": "null", "X-CSRF-Token": token, "Content-Type": "application/json"}, 403),
            ({"Origin": console.url, "Content-Type": "application/json", "X-CSRF-Token": ""}, 403),
            ({"Origin": console.url, "X-CSRF-Token": "wrong", "Content-Type": "application/json"}, 403),
            ({"Origin": console.url, "X-CSRF-Token": token, "Content-Type": "text/plain"}, 415),
        ]
        for headers, status in cases:
            async with good.post("/api/node/node-1/commands", data=body, headers=headers) as r:
                assert r.status == status, (headers, await r.text())
        assert console.archive.commands("node-1") == []
        async with good.post("/api/alarms/ack", data="{not json", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
        async with good.post("/logout", data={"csrf": "wrong"}, headers={"X-CSRF-Token": ""}) as r:
            assert r.status == 403
        async with good.post("/api/node/node-1/commands", json={"name": "ping", "args": {}}) as r:
            assert r.status == 200, await r.text()
        async with good.post("/api/node/node-1/commands", data=b"x" * 200_000,
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 413


async def test_2_responses_carry_the_security_headers_and_cookies_expire(tmp_path: Path) -> None:
    config = ConsoleConfig(http_port=0, archive=str(tmp_path / "a.sqlite"), ingest=False,
                           secure_cookies=True)
    async with Console(config) as console, aiohttp.ClientSession(console.url) as s:
        async with s.get("/login") as r:
            csp = r.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
            assert r.headers["X-Frame-Options"] == "DENY"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with s.post("/login", data={"user": "demo", "password": "demo"},
                          allow_redirects=False) as r:
            cookie = r.cookies["umbra_session"]
            assert cookie["secure"] and cookie["httponly"] and int(cookie["max-age"]) > 0
            assert r.headers["X-Frame-Options"] == "DENY"


def test_2_expired_sessions_are_pruned() -> None:
    sessions = Sessions(demo_users(), ttl=1.0)
    tokens = [sessions.login("demo", "demo") for _ in range(3)]
    assert len(sessions) == 3 and all(sessions.csrf(t) for t in tokens)
    time.sleep(1.1)
    sessions.login("viewer", "viewer")
    assert len(sessions) == 1 and sessions.user(tokens[0]) is None


async def test_9_failed_logins_lock_the_user_and_the_address_out(console: Console, caplog) -> None:
    async with aiohttp.ClientSession(console.url) as s:
        with caplog.at_level(logging.WARNING):
            for _ in range(LOGIN_FREE_FAILURES):
                async with s.post("/login", data={"user": "demo", "password": "guess"},
                                  allow_redirects=False) as r:
                    assert r.headers["Location"] == "/login?error=1"
            started = time.monotonic()
            for _ in range(100):  # refused at once: no password is tried while locked
                async with s.post("/login", data={"user": "demo", "password": "guess"},
                                  allow_redirects=False) as r:
                    assert r.headers["Location"] == "/login?error=locked"
            assert time.monotonic() - started < 20
            # The right password right after: still refused, for this user and this address.
            for user, password in (("demo", "demo"), ("viewer", "viewer")):
                async with s.post("/login", data={"user": user, "password": password},
                                  allow_redirects=False) as r:
                    assert r.headers["Location"] == "/login?error=locked"
        assert console.sessions.failed_logins == LOGIN_FREE_FAILURES
        assert sum("failed login as 'demo'" in r.getMessage() for r in caplog.records) == LOGIN_FREE_FAILURES
        async with s.get("/login?error=locked") as r:
            assert "Too many failed logins" in await r.text()


def test_11_demo_users_only_on_loopback_or_when_asked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="users file"):
        Console(ConsoleConfig(http_host="0.0.0.0", archive=str(tmp_path / "a.sqlite"), ingest=False))
    Console(ConsoleConfig(http_host="0.0.0.0", demo_users=True, archive=str(tmp_path / "b.sqlite"),
                          ingest=False)).archive.close()
    Console(ConsoleConfig(http_host="::1", archive=str(tmp_path / "c.sqlite"), ingest=False)).archive.close()


# -- 2 in a real browser: a page on another port of the same host ---------------------------

ATTACK = """<!doctype html><html><body>
<form id="f" method="POST" action="{console}/api/node/node-1/commands" enctype="text/plain">
<input name='{{"name":"set_mode","args":{{"mode":"SAFE"}},"x":"' value='"}}'></form>
<script>
fetch("{console}/api/node/node-1/commands", {{method: "POST", mode: "no-cors",
  credentials: "include", headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{name: "set_mode", args: {{mode: "SAFE"}}}})}})
  .finally(() => {{ document.title = "fetched"; document.getElementById("f").submit(); }});
</script></body></html>"""


def _console_process(mosquitto: Mosquitto, tmp_path: Path, archive: Path, *extra: str) -> tuple[ManagedProcess, str]:
    """`umbra-ground -v serve` on a free loopback port (not started yet) and its URL."""
    port = free_port()
    serve = ManagedProcess(
        [sys.executable, "-m", "ground.cli", "-v", "serve", "--mqtt", f"{mosquitto.host}:{mosquitto.port}",
         "--http", f"127.0.0.1:{port}", "--archive", str(archive), *extra],
        name="serve", log_dir=tmp_path / "logs")
    return serve, f"http://127.0.0.1:{port}"


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_2_a_page_on_another_port_cannot_command_as_the_operator(mosquitto: Mosquitto, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright
    from browser import ARGS, CHROMIUM
    from browser import login as browser_login

    key_file = tmp_path / "tc-keys.json"
    signing.write_keys(key_file, {"node-1": signing.new_key()})
    serve, url = _console_process(mosquitto, tmp_path, tmp_path / "archive.sqlite", "--key-file", str(key_file))
    page_html = ATTACK.format(console=url).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page_html)

        def log_message(self, *args: Any) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        serve.start()
        serve.wait_for_line(r"console on http://", 30)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                context = browser.new_context()
                page = context.new_page()
                page.set_default_timeout(30_000)
                browser_login(page, url, "demo", "demo")
                attack = context.new_page()
                attack.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
                # The fetch goes first, then the form: the tab ends on the console's refusal.
                attack.wait_for_url(f"{url}/api/node/node-1/commands")
                assert "cross-origin request refused" in attack.content()
                # The operator's own page still commands (origin and token right).
                page.goto(f"{url}/node/node-1")
                result = page.evaluate("""async () => {
                  const r = await fetch("/api/node/node-1/commands", {method: "POST",
                    headers: {"Content-Type": "application/json", "X-CSRF-Token":
                      document.querySelector('meta[name="csrf-token"]').content},
                    body: JSON.stringify({name: "ping", args: {}})});
                  return r.status; }""")
                assert result == 200
            finally:
                browser.close()
        log = "\n".join(serve.lines("stderr") + serve.lines("stdout"))
        assert "refused a cross-origin POST /api/node/node-1/commands" in log
        with Archive(tmp_path / "archive.sqlite") as archive:
            assert [c["name"] for c in archive.commands("node-1")] == ["ping"]
    finally:
        evil.shutdown()
        serve.stop()


# -- the schedule: a crash between taking a command and running it ---------------------------


def test_a_crash_between_schedule_and_start_ends_in_a_final_report(tmp_path: Path) -> None:
    clock = Clock()
    proc, _, _ = make(tmp_path / "c.sqlite", clock)
    proc.handle(tc("set_mode", {"mode": "SAFE"}, cid="later", counter=1, exec_at=NOW + 10))
    clock.now = NOW + 11

    class Crash(Exception):
        pass

    def die(*args: Any) -> None:
        raise Crash

    proc._execute = die  # type: ignore[method-assign]
    with pytest.raises(Crash):
        proc.run_due()
    proc.close()
    again, _, sink2 = make(tmp_path / "c.sqlite", clock)
    again.recover()
    (final,) = [r for r in sink2.reports if r.id == "later"]
    assert final.stage == "failed" and final.code == Reason.INTERRUPTED
    assert again.schedule_list() == []



# -- guard: script in what nodes and operators write -----------------------------------------

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_guard_script_in_event_texts_data_and_arguments_stays_text(mosquitto: Mosquitto, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright
    from browser import ARGS, CHROMIUM
    from browser import login as browser_login

    archive_path = tmp_path / "archive.sqlite"
    with Archive(archive_path) as archive:
        archive.store([
            NodeState(node_id="node-1", online=True, boot_id=XSS, version=XSS, utc=time.time(),
                      dict_hash=XSS),
            dataclasses.replace(hk("node-1", 1, utc=time.time()), mode="NOMINAL"),
            Event(node_id="node-1", seq=2, utc=time.time(), t_board=1.0, kind="mode", severity=3,
                  text=XSS, data={"x": XSS}),
        ])
        archive.record_command(Telecommand(node_id="node-1", id="c1", counter=1, name="get_param",
                                           args={"name": XSS}, expires=9e9), XSS)
    serve, url = _console_process(mosquitto, tmp_path, archive_path)
    try:
        serve.start()
        serve.wait_for_line(r"console on http://", 30)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                page = browser.new_context().new_page()
                page.set_default_timeout(30_000)
                browser_login(page, url, "demo", "demo")
                expect(page.locator("#fleet")).to_contain_text("node-1")
                page.goto(f"{url}/node/node-1")
                expect(page.locator("#events")).to_contain_text("<img src=x")
                expect(page.locator("#commands")).to_contain_text("<img src=x")
                for where in ("#events", "#commands"):
                    assert page.locator(f"{where} img, {where} script").count() == 0
                assert page.evaluate("window.__xss") is None
                page.goto(f"{url}/")
                expect(page.locator("#fleet")).to_contain_text("node-1")
                assert page.locator("#fleet img, #fleet script").count() == 0
                assert page.evaluate("window.__xss") is None
            finally:
                browser.close()
    finally:
        serve.stop()
