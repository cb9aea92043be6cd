"""The bus end to end: real board + node processes, real mosquitto, ground's send CLI.

- telecommands through the broker, signed by ``umbra-ground send``, reach the node and
  are answered stage by stage; bad ones are answered failed and change nothing;
- the broker stopped for 60 s: every sequence number arrives, none missing;
- the node SIGKILLed (during an outage) and restarted: nothing written is lost, nothing
  is published twice under a new number.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from collector import Collector

from ground.send import build_telecommand, send_command
from hil.bench import LocalBench
from hil.broker import Mosquitto, free_port
from node.bus import signing
from node.bus.payloads import Event, Housekeeping
from node.errors import Reason

pytestmark = [pytest.mark.e2e]


def _keys(tmp_path: Path, node_id: str) -> tuple[Path, bytes]:
    path = tmp_path / "tc-keys.json"
    key = signing.new_key()
    signing.write_keys(path, {node_id: key})
    return path, key


def bench(tmp_path: Path, mq: Mosquitto, node_id: str, key_file: Path, hk: float = 5.0) -> LocalBench:
    return LocalBench(workdir=tmp_path, mqtt_host=mq.host, mqtt_port=mq.port, node_id=node_id,
                      gpus=2, rate_hz=10.0, speed=1.0, hk_rate_hz=hk,
                      node_args=("--tc-key-file", str(key_file), "--backlog-rate", "100"))


async def _cli(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ground.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


@pytest.mark.timeout(120)
async def test_commands_through_mosquitto_to_a_real_node(mosquitto, tmp_path) -> None:
    node_id = "bus-cmd"
    key_file, key = _keys(tmp_path, node_id)
    b = bench(tmp_path, mosquitto, node_id, key_file)
    mq = f"{mosquitto.host}:{mosquitto.port}"
    async with Collector(mosquitto, node_id) as col:
        try:
            b.start()
            await col.wait_until(lambda: any(isinstance(p[0], Housekeeping) and p[0].link_up
                                             for p in col.seen.values()), 30, "link up")
            code, out = await _cli("send", node_id, "ping", "--mqtt", mq, "--key-file", str(key_file))
            assert code == 0, out
            assert [ln.split()[0] for ln in out.splitlines()] == ["sent", "accepted", "started", "completed"]
            code, out = await _cli("send", node_id, "set_mode", "mode=SAFE", "--mqtt", mq,
                                   "--key-file", str(key_file))
            assert code == 0, out
            await col.wait_until(lambda: any(isinstance(p[0], Housekeeping) and p[0].mode == "SAFE"
                                             for p in col.seen.values()), 10, "SAFE")
            # A job the node does not know: refused with its reason, nothing executed.
            code, out = await _cli("send", node_id, "job_cancel", "job=j1", "--mqtt", mq,
                                   "--key-file", str(key_file))
            assert code == 1 and "NOT_FOUND" in out, out
            code, out = await _cli("send", node_id, "set_hk_rate", "hz=2", "--wait", "--at", "+1",
                                   "--mqtt", mq, "--key-file", str(key_file))
            assert code == 0 and out.splitlines()[-1].startswith("completed"), out

            # Bad telecommands through the broker: each answered failed; the mode stays SAFE.
            good = build_telecommand(node_id=node_id, name="set_mode", args={"mode": "NOMINAL"},
                                     key=key, counter=1)
            cases = [
                (dataclasses.replace(good, id="unsigned", tag=b""), Reason.BAD_TAG),
                (build_telecommand(node_id=node_id, name="set_mode", args={"mode": "NOMINAL"},
                                   key=key, counter=2, command_id="replayed"), Reason.REPLAYED),
                (build_telecommand(node_id=node_id, name="set_mode", args={"mode": "NOMINAL"}, key=key,
                                   counter=time.time_ns() // 1000, expires_in=-5, command_id="expired"),
                 Reason.EXPIRED),
                (build_telecommand(node_id=node_id, name="set_mode", args={"mode": 3}, key=key,
                                   counter=time.time_ns() // 1000 + 1, command_id="badtype"), Reason.BAD_ARGUMENT),
            ]
            for tc, reason in cases:
                reports = [r async for r in send_command(mosquitto.host, mosquitto.port, tc)]
                assert [(r.stage, r.code) for r in reports] == [("failed", reason)], tc.id
            garbage = dataclasses.replace(good, id="garbage")
            reports = [r async for r in _with_timeout(send_command(
                mosquitto.host, mosquitto.port, garbage, wire=b"\x00" * 5000))]
            assert reports == []  # no id to answer to: reported with id "" (collector sees it)
            await col.wait_until(lambda: any(r.code == Reason.MALFORMED for r in col.reports), 5, "MALFORMED")
            since = max(col.seen)
            await col.wait_until(lambda: max(col.seen) > since + 5, 10, "more hk")
            latest = [p[0] for s, p in col.seen.items() if s > since and isinstance(p[0], Housekeeping)]
            assert latest and all(h.mode == "SAFE" for h in latest)
            assert b.node is not None and b.node.running
        finally:
            b.stop()


async def _with_timeout(agen: Any, timeout: float = 2.0) -> Any:
    try:
        async with asyncio.timeout(timeout):
            async for item in agen:
                yield item
    except TimeoutError:
        return


@pytest.mark.timeout(180)
async def test_broker_down_60_s_loses_nothing(tmp_path) -> None:
    node_id = "bus-outage"
    mq = Mosquitto(workdir=tmp_path / "mq", port=free_port(), persistence=True)
    mq.start()
    key_file, _ = _keys(tmp_path, node_id)
    b = bench(tmp_path, mq, node_id, key_file)
    try:
        async with Collector(mq, node_id) as col:
            b.start()
            await col.wait_until(lambda: len(col.seen) >= 10, 30, "first packets")
            await mq.stop_async()
            down_at = max(col.seen)
            await asyncio.sleep(60)
            await mq.start_async()
            made = None
            # Everything made during the outage (≈300 hk at 5 Hz) comes back, in order, flagged.
            await col.wait_until(lambda: max(col.seen) > down_at + 320 and not col.missing(), 60,
                                 "backlog drained")
            made = max(col.seen)
            assert not col.missing()
            assert min(col.seen) == 1
            historical = [s for s, p in col.seen.items() if any(x.historical for x in p)]
            assert len(historical) >= 250, len(historical)
            # (node, seq) identifies one packet: duplicates, if any, are the same packet.
            for seq, copies in col.seen.items():
                assert len({(type(c), c.utc) for c in copies}) == 1, seq
            assert made > down_at
    finally:
        b.stop()
        mq.close()


@pytest.mark.timeout(120)
async def test_sigkill_and_restart_lose_nothing_and_renumber_nothing(tmp_path) -> None:
    node_id = "bus-kill"
    mq = Mosquitto(workdir=tmp_path / "mq", port=free_port(), persistence=True)
    mq.start()
    key_file, _ = _keys(tmp_path, node_id)
    b = bench(tmp_path, mq, node_id, key_file, hk=10.0)
    try:
        async with Collector(mq, node_id) as col:
            b.start()
            await col.wait_until(lambda: len(col.seen) >= 20, 30, "first packets")
            # Kill it while a backlog sits in the outbox (broker away), then bring both back.
            await mq.stop_async()
            await asyncio.sleep(3)
            assert b.node is not None
            b.node.kill()
            await mq.start_async()
            # Killed once more while connected and publishing.
            b.start_node()
            await asyncio.sleep(2)
            b.node.kill()
            b.start_node()
            last = max(col.seen)
            await col.wait_until(lambda: max(col.seen) > last + 30 and not col.missing(), 40,
                                 "everything after restart")
            boots = [p[0] for p in col.seen.values() if isinstance(p[0], Event) and p[0].kind == "boot"]
            assert len(boots) == 3
            for seq, copies in col.seen.items():
                assert len({(type(c), c.utc, getattr(c, "kind", "")) for c in copies}) == 1, seq
            # The same packet never appears under two numbers.
            by_content: dict[tuple[Any, ...], set[int]] = defaultdict(set)
            for seq, copies in col.seen.items():
                c = copies[0]
                by_content[(type(c).__name__, c.utc, getattr(c, "kind", ""))].add(seq)
            assert all(len(s) == 1 for s in by_content.values())
    finally:
        b.stop()
        mq.close()
