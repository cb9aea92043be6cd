"""The console's HTTP API in-process, fed over an embedded amqtt broker (MQTT 3.1.1):
login and roles, fleet view from birth messages, dictionary mismatch, alarms, commanding
refused for viewers and validated for commanders.  The browser test covers the pages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from test_ground_archive import hk

from ground.web.app import Console, ConsoleConfig
from ground.web.auth import Role, Sessions, check_password, hash_password, load_users
from hil.broker import EmbeddedBroker
from node.bus import signing
from node.bus.payloads import Leaf, NodeState, topic
from node.errors import ConfigError


def test_passwords_and_users_file(tmp_path: Path) -> None:
    h = hash_password("s3cret")
    assert check_password("s3cret", h) and not check_password("nope", h)
    users = tmp_path / "users.toml"
    users.write_text(f'[users.alice]\nrole = "commander"\npassword = "{h}"\n'
                     f'[users.bob]\nrole = "viewer"\npassword = "{h}"\n')
    loaded = load_users(users)
    assert loaded["alice"].can_command and loaded["bob"].role == Role.VIEWER
    sessions = Sessions(loaded)
    assert sessions.login("alice", "wrong") is None and sessions.login("eve", "s3cret") is None
    token = sessions.login("bob", "s3cret")
    assert sessions.user(token) == loaded["bob"]
    sessions.logout(token)
    assert sessions.user(token) is None
    (tmp_path / "bad.json").write_text(json.dumps({"users": {"x": {"role": "admin", "password": h}}}))
    with pytest.raises(ConfigError, match=r"users\.x\.role"):
        load_users(tmp_path / "bad.json")


@pytest.fixture
async def console(embedded_broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[Console]:
    keys = tmp_path / "tc-keys.json"
    signing.write_keys(keys, {"web-n1": signing.new_key()})
    config = ConsoleConfig(mqtt_host=embedded_broker.host, mqtt_port=embedded_broker.port,
                           http_port=0, archive=str(tmp_path / "a.sqlite"), key_file=str(keys))
    async with Console(config) as c:
        assert c.ingestor is not None
        await asyncio.wait_for(c.ingestor.subscribed.wait(), 10)
        yield c


async def _session(console: Console, user: str, password: str) -> aiohttp.ClientSession:
    """Logged in as a browser on the console's own pages would be: Origin and CSRF token set."""
    s = aiohttp.ClientSession(console.url, cookie_jar=aiohttp.CookieJar(unsafe=True),
                              headers={"Origin": console.url})
    async with s.post("/login", data={"user": user, "password": password}) as r:
        assert r.status == 200 and str(r.url).endswith("/")
        page = await r.text()
    s.headers["X-CSRF-Token"] = csrf_of(page)
    return s


def csrf_of(page: str) -> str:
    import re

    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found, "the page carries no CSRF token"
    return found.group(1)


async def _until(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_console_api_with_roles(console: Console, embedded_broker: EmbeddedBroker) -> None:
    async with aiomqtt.Client(embedded_broker.host, embedded_broker.port) as pub:
        await pub.publish(topic("web-n1", Leaf.STATE), NodeState(
            node_id="web-n1", online=True, utc=time.time(), dict_hash="0000000000000000").to_wire(),
            qos=1, retain=True)
        await pub.publish(topic("web-n1", Leaf.HK), hk("web-n1", 1, temp=88.0, utc=time.time()).to_wire(), qos=1)

    async with aiohttp.ClientSession(console.url) as anon:
        async with anon.get("/api/fleet") as r:
            assert r.status == 401
        async with anon.get("/", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/login"

    demo = await _session(console, "demo", "demo")
    viewer = await _session(console, "viewer", "viewer")
    try:
        async def online() -> bool:
            async with viewer.get("/api/fleet") as r:
                nodes = (await r.json())["nodes"]
            return bool(nodes) and nodes[0]["online"] is True and nodes[0]["packets"] == 1

        await _until(online)
        async with viewer.get("/api/fleet") as r:
            fleet = await r.json()
        (n,) = fleet["nodes"]
        assert n["dict_mismatch"] and n["worst_alarm"] == 2 and n["mode"] == "NOMINAL"
        assert fleet["unacked_alarms"] == 2  # temp_c[0] and temp_c[1]

        async with viewer.get("/api/node/web-n1/hk?window=60") as r:
            data = await r.json()
        assert data["series"]["temp_c"] == [[88.0, 89.0]]

        # A viewer can neither command nor acknowledge.
        async with viewer.post("/api/node/web-n1/commands", json={"name": "ping", "args": {}}) as r:
            assert r.status == 403
        async with viewer.post("/api/alarms/ack", json={"node": "web-n1", "channel": "temp_c[0]"}) as r:
            assert r.status == 403

        # A commander's bad arguments are refused before anything is signed or sent.
        for body, words in (({"name": "set_hk_rate", "args": {"hz": "500"}}, "outside"),
                            ({"name": "set_mode", "args": {"mode": "FAST"}}, "not one of"),
                            ({"name": "nope", "args": {}}, "unknown command")):
            async with demo.post("/api/node/web-n1/commands", json=body) as r:
                assert r.status == 400 and words in (await r.json())["error"]
        async with demo.post("/api/node/other-node/commands", json={"name": "ping", "args": {}}) as r:
            assert r.status == 409 and "no telecommand key" in (await r.json())["error"]
        async with demo.post("/api/node/web-n1/commands", json={"name": "ping", "args": {}}) as r:
            assert r.status == 200
            sent = await r.json()
        async with demo.get("/api/node/web-n1/commands") as r:
            (cmd,) = (await r.json())["commands"]
        assert cmd["id"] == sent["id"] and cmd["operator"] == "demo"

        async with demo.post("/api/alarms/ack", json={"node": "web-n1", "channel": "temp_c[0]"}) as r:
            assert (await r.json())["acknowledged"] is True
        async with demo.get("/api/alarms") as r:
            assert [a["channel"] for a in (await r.json())["alarms"] if a["acked_at"] is None] == ["temp_c[1]"]
    finally:
        await demo.close()
        await viewer.close()


def test_unknown_user_costs_one_scrypt_like_a_known_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from ground.web.auth import User

    sessions = Sessions({"alice": User("alice", Role.VIEWER, hash_password("pw"))})
    calls = 0
    real = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    assert sessions.login("eve", "pw") is None
    assert calls == 1
    assert sessions.login("alice", "pw") is not None and calls == 2


def test_console_chart_is_thinned_over_the_whole_window(tmp_path: Path) -> None:
    from test_ground_archive import bulk_hk

    from ground.web.app import MAX_POINTS

    path = tmp_path / "a.sqlite"
    n = 100_003  # more than the old 100k read cap, all inside a one-hour window
    bulk_hk(path, "big", n, dt=0.01)
    console = Console(ConsoleConfig(archive=str(path), http_port=0))
    try:
        data = console._hk("big", 3600.0)
    finally:
        console.archive.close()
    seqs, utcs = data["series"]["seq"], data["series"]["utc"]
    assert 100 < len(seqs) <= MAX_POINTS + 1 and utcs == sorted(utcs)
    assert seqs[-1] == n and seqs[0] < n // 100  # newest and oldest ends of the window
    assert data["latest"]["seq"] == n and data["latest"]["link_up"] is True


async def test_the_node_page_shows_the_newest_checkpoint_catalogue(console: Console) -> None:
    from node.bus.payloads import TcReport

    jobs = [{"job": "train", "checkpoints": [{"seq": 7, "size": 2048, "hash": "blake3",
                                              "digest": "cd" * 32, "progress": 12.0, "age_s": 3.0}],
             "truncated": False}]
    s = await _session(console, "demo", "demo")
    async with s:
        async with s.get("/api/node/web-n1/catalogue") as r:
            assert await r.json() == {"utc": None, "jobs": [], "truncated": False}
        console.archive.store([
            TcReport(node_id="web-n1", seq=1, utc=100.0, id="c1", counter=1, name="job_catalogue",
                     stage="completed", data={"jobs": [], "truncated": False}),
            TcReport(node_id="web-n1", seq=2, utc=200.0, id="c2", counter=2, name="job_catalogue",
                     stage="completed", data={"jobs": jobs, "truncated": False}),
        ])
        async with s.get("/api/node/web-n1/catalogue") as r:
            assert await r.json() == {"utc": 200.0, "jobs": jobs, "truncated": False}
        async with s.get("/node/web-n1") as r:
            page = await r.text()
        assert 'id="catalogue-refresh"' in page and "not in this node's telemetry" not in page


async def test_serve_announces_the_console_once_ingest_is_subscribed(mosquitto: Any, tmp_path: Path) -> None:
    """`umbra-ground serve` says "console on" when a packet published from then on is archived
    (a test or an operator that publishes right after it lost packets before)."""
    import sqlite3

    from ground.web.app import serve

    lines: list[str] = []
    ready = asyncio.Event()
    archive = tmp_path / "a.sqlite"
    config = ConsoleConfig(mqtt_host=mosquitto.host, mqtt_port=mosquitto.port, http_port=0, archive=str(archive))
    task = asyncio.create_task(serve(config, ready=ready, announce=lines.append))
    try:
        await asyncio.wait_for(ready.wait(), 20)
        assert "ingest subscribed" in lines[0], lines
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="web-serve-pub") as pub:
            await pub.publish(topic("serve-n1", Leaf.HK), hk("serve-n1", 1).to_wire(), qos=1)

        def stored() -> int:
            with sqlite3.connect(archive) as db:
                return int(db.execute("SELECT count(*) FROM hk WHERE node = 'serve-n1'").fetchone()[0])

        deadline = time.monotonic() + 10
        while await asyncio.to_thread(stored) < 1:
            assert time.monotonic() < deadline, "the packet published after 'console on' was not archived"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_serve_comes_up_without_a_broker_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ground.web import app
    from hil.broker import free_port

    monkeypatch.setattr(app, "INGEST_READY_S", 0.5)
    lines: list[str] = []
    ready = asyncio.Event()
    config = ConsoleConfig(mqtt_host="127.0.0.1", mqtt_port=free_port(), http_port=0,
                           archive=str(tmp_path / "a.sqlite"))
    task = asyncio.create_task(app.serve(config, ready=ready, announce=lines.append))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        assert "console on http://127.0.0.1:" in lines[0] and "ingest not subscribed yet" in lines[0], lines
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
