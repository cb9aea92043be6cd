"""``umbra-ground tail`` against a real mosquitto, run as the operator would run it."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiomqtt
import msgpack
import pytest

from ground.tail import Malformed, Received, decode, format_item, format_json
from hil.broker import Mosquitto
from hil.procs import ManagedProcess
from node.bus.payloads import Event, Housekeeping, Leaf, NodeState, Severity, topic

_SCRIPT = Path(sys.executable).with_name("umbra-ground")
GROUND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "ground.cli"]


def new_node() -> str:
    return "n-" + uuid.uuid4().hex[:8]


def hk(node: str, seq: int = 1) -> Housekeeping:
    return Housekeeping(
        node_id=node,
        seq=seq,
        utc=1_700_000_000.0,
        t_board=1234.5,
        mode="NOMINAL",
        link_up=True,
        temp_c=(61.25, None),
        power_w=(280.0, 0.0),
        cap_w=(300.0, 250.0),
        progress=(0.5, 0.0),
        solar_w=1200.0,
        battery_soc=0.83,
        radiator_c=12.0,
        board_flags=0,
    )


def event(node: str, seq: int = 2) -> Event:
    return Event(
        node_id=node,
        seq=seq,
        utc=1_700_000_001.0,
        t_board=1240.0,
        kind="mode_change",
        severity=Severity.WARNING,
        text="NOMINAL -> THERMAL_LIMIT",
    )


def tail_proc(broker: Mosquitto, *args: str) -> ManagedProcess:
    argv = [*GROUND, "tail", "--mqtt", f"{broker.host}:{broker.port}", "--timeout", "30", *args]
    return ManagedProcess(argv, name="umbra-ground")


async def subscribed(proc: ManagedProcess) -> None:
    await proc.wait_for_line_async("connected to .*subscribed", timeout=15, stream="stderr")


async def publish(broker: Mosquitto, *items: tuple[str, bytes, bool]) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for name, data, retain in items:
            await client.publish(name, data, qos=1, retain=retain)


async def test_tail_prints_hk_event_and_state(mosquitto: Mosquitto) -> None:
    node = new_node()
    async with tail_proc(mosquitto, "--node", node, "--count", "4") as proc:
        await subscribed(proc)
        await publish(
            mosquitto,
            (topic(node, Leaf.HK), hk(node).to_wire(), False),
            (topic(node, Leaf.EVENT), event(node).to_wire(), False),
            (topic(node, Leaf.STATE), NodeState(node, True, "b00t", "0.1.0").to_wire(), True),
            (topic(node, Leaf.STATE), NodeState(node, False).to_wire(), True),
        )
        assert await proc.wait_async(timeout=15) == 0
    out = proc.lines("stdout")
    assert len(out) == 4, out
    assert out[0].split()[:4] == [node, "hk", "t=1234.5s", "NOMINAL"]
    assert "gpu0 61.2C cap 300W" in out[0] and "gpu1 --.-C cap 250W" in out[0]
    assert out[1].split()[:5] == [node, "event", "t=1240.0s", "WARNING", "mode_change:"]
    assert out[1].endswith("NOMINAL -> THERMAL_LIMIT")
    assert out[2] == f"{node}  state  online (boot b00t, v0.1.0)"
    assert out[3] == f"{node}  state  OFFLINE"


async def test_tail_json_and_retained_state(mosquitto: Mosquitto) -> None:
    node = new_node()
    # Published before the tail starts: only the retained state is there to see.
    await publish(mosquitto, (topic(node, Leaf.STATE), NodeState(node, True).to_wire(), True))
    async with tail_proc(mosquitto, "--node", node, "--count", "2", "--json") as proc:
        await subscribed(proc)
        await publish(mosquitto, (topic(node, Leaf.HK), hk(node, seq=9).to_wire(), False))
        assert await proc.wait_async(timeout=15) == 0
    state, housekeeping = (json.loads(line) for line in proc.lines("stdout"))
    assert state["leaf"] == "state" and state["retained"] and state["payload"]["online"]
    assert housekeeping["node"] == node and housekeeping["topic"] == topic(node, Leaf.HK)
    assert housekeeping["payload"]["seq"] == 9
    assert housekeeping["payload"]["temp_c"] == [61.25, None]


async def test_malformed_payloads_are_skipped_with_a_warning(mosquitto: Mosquitto) -> None:
    node = new_node()
    wrong_fields = msgpack.packb({"node_id": node, "seq": "x"})
    async with tail_proc(mosquitto, "--node", node, "--count", "1") as proc:
        await subscribed(proc)
        await publish(
            mosquitto,
            (topic(node, Leaf.HK), b"\xc1 not msgpack", False),
            (topic(node, Leaf.HK), wrong_fields, False),
            (topic(node, Leaf.EVENT), msgpack.packb([1, 2, 3]), False),
            (topic(node, Leaf.EVENT), event(node).to_wire(), False),
        )
        assert await proc.wait_async(timeout=15) == 0
    out = proc.lines("stdout")
    assert len(out) == 1 and " event " in out[0]
    warnings = [ln for ln in proc.lines("stderr") if ln.startswith("warning: skipped malformed")]
    assert len(warnings) == 3, proc.lines("stderr")
    assert all("Traceback" not in ln for ln in proc.lines("stderr"))


async def test_tail_all_nodes(fresh_mosquitto: Mosquitto) -> None:
    a, b = new_node(), new_node()
    async with tail_proc(fresh_mosquitto, "--count", "2") as proc:
        await subscribed(proc)
        await publish(
            fresh_mosquitto,
            (topic(a, Leaf.HK), hk(a).to_wire(), False),
            (topic(b, Leaf.EVENT), event(b).to_wire(), False),
        )
        assert await proc.wait_async(timeout=15) == 0
    assert [ln.split()[0] for ln in proc.lines("stdout")] == [a, b]


async def test_tail_waits_for_a_broker_that_is_down(fresh_mosquitto: Mosquitto) -> None:
    node = new_node()
    await fresh_mosquitto.stop_async()
    async with tail_proc(fresh_mosquitto, "--node", node, "--count", "1") as proc:
        await proc.wait_for_line_async("waiting for broker", timeout=15, stream="stderr")
        await fresh_mosquitto.start_async()
        await subscribed(proc)
        await publish(fresh_mosquitto, (topic(node, Leaf.HK), hk(node).to_wire(), False))
        assert await proc.wait_async(timeout=15) == 0
    assert len(proc.lines("stdout")) == 1
    assert not any("Traceback" in ln for ln in proc.lines("stderr"))


async def test_tail_survives_a_broker_restart(fresh_mosquitto: Mosquitto) -> None:
    node = new_node()
    async with tail_proc(fresh_mosquitto, "--node", node, "--count", "1") as proc:
        await subscribed(proc)
        mark = proc.mark()
        await fresh_mosquitto.stop_async()
        await proc.wait_for_line_async("waiting for broker", timeout=15, since=mark)
        await fresh_mosquitto.start_async()
        await proc.wait_for_line_async("connected to", timeout=15, since=mark)
        await publish(fresh_mosquitto, (topic(node, Leaf.EVENT), event(node).to_wire(), False))
        assert await proc.wait_async(timeout=15) == 0
    assert " event " in proc.lines("stdout")[0]


async def test_ctrl_c_exits_zero(mosquitto: Mosquitto) -> None:
    async with tail_proc(mosquitto, "--node", new_node()) as proc:
        await subscribed(proc)
        proc.send_signal(signal.SIGINT)
        assert await proc.wait_async(timeout=15) == 0
    assert not any("Traceback" in ln for ln in proc.lines("stderr"))


async def test_count_not_reached_before_timeout_exits_1(mosquitto: Mosquitto) -> None:
    argv = [*GROUND, "tail", "--mqtt", f"{mosquitto.host}:{mosquitto.port}"]
    async with ManagedProcess([*argv, "--node", new_node(), "--count", "1", "--timeout", "1"]) as p:
        assert await p.wait_async(timeout=15) == 1
    assert "timed out after 1 s with 0 of 1 messages" in p.lines("stderr")[-1]


@pytest.mark.parametrize(
    "value", ["nohost", "127.0.0.1:", ":1883", "127.0.0.1:99999", "127.0.0.1:mqtt", "::1:1883"]
)
def test_bad_mqtt_value_exits_2(value: str) -> None:
    result = subprocess.run(
        [*GROUND, "tail", "--mqtt", value], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "--mqtt" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--node", "bad/node"], ["--count", "0"], []])
def test_bad_arguments_exit_2(args: list[str]) -> None:
    cmd = [*GROUND, "tail", *args] if args else GROUND
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_help() -> None:
    result = subprocess.run([*GROUND, "tail", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--count N" in result.stdout


# -- the library half, as the web console will use it ----------------------------------------


def test_decode_never_raises() -> None:
    node = new_node()
    good = decode(topic(node, Leaf.HK), hk(node).to_wire())
    assert isinstance(good, Received) and good.node_id == node
    for name, data in [
        (topic(node, Leaf.HK), b""),
        (topic(node, Leaf.HK), b"\x00\x01"),
        (topic(node, Leaf.TC), event(node).to_wire()),
        ("elsewhere/x", event(node).to_wire()),
        (topic(node, Leaf.STATE), "text, not bytes"),
    ]:
        assert isinstance(decode(name, data), Malformed), (name, data)


def test_format_handles_nan_and_missing_temperatures() -> None:
    node = new_node()
    data = dataclasses.replace(hk(node), temp_c=(float("nan"), None)).to_wire()
    item = decode(topic(node, Leaf.HK), data)
    assert isinstance(item, Received)
    line = format_item(item)
    assert line.count("--.-C") == 2
    assert "soc 83%" in line and "solar 1200W" in line
    assert json.loads(format_json(item))["payload"]["temp_c"] == [None, None]
