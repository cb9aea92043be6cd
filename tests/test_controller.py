"""The controller against an in-memory board: control, modes and events, no I/O."""

from __future__ import annotations

import asyncio

import pytest

from node.board import BoardInfo, CommandResult, FakeBoard, LinkDown, LinkUp, SensorReading
from node.bus.payloads import Event, Housekeeping, Mode
from node.config import NodeConfig
from node.controller import NodeController
from node.link.messages import AckStatus, Sensor, SensorFlag, SetCaps

INFO = BoardInfo(
    board_id="fake", fw_version="0", gpu_count=2, cap_min_w=200.0, cap_max_w=700.0,
    sensor_rate_hz=10.0, watchdog_s=3.0, protocol_version=1,
)


def sensor(t: float, temps: tuple[float, float], flags: int = 0) -> Sensor:
    return Sensor(
        t_board=t, utc=1.7e9 + t, temp_c=temps, power_w=(300.0, 300.0), cap_w=(700.0, 700.0),
        progress=(0.0, 0.0), rails=3, solar_w=1000.0, battery_soc=0.8, radiator_c=20.0, flags=flags,
    )


class ListPublisher:
    def __init__(self) -> None:
        self.items: list[Housekeeping | Event] = []

    def publish(self, payload: Housekeeping | Event) -> None:
        self.items.append(payload)

    def events(self, kind: str) -> list[Event]:
        return [e for e in self.items if isinstance(e, Event) and e.kind == kind]


@pytest.fixture
async def rig():
    board, pub = FakeBoard(), ListPublisher()
    config = NodeConfig.from_mapping({"mqtt": {"hk_rate_hz": 50.0}})
    async with NodeController(config=config, board=board, publisher=pub) as node:
        yield board, pub, node


async def feed(board: FakeBoard, node: NodeController, event) -> None:
    steps = node.steps
    await board.events.put(event)
    for _ in range(100):
        await asyncio.sleep(0)
        if board.events.empty() and (not isinstance(event, SensorReading) or node.steps > steps):
            return


async def test_cool_gpus_get_full_caps_and_hot_ones_are_throttled(rig):
    board, pub, node = rig
    await feed(board, node, LinkUp(INFO))
    assert node.mode is Mode.NOMINAL
    await feed(board, node, SensorReading(sensor(1.0, (50.0, 50.0)), 0.0))
    assert board.sent == [SetCaps(cap_w=(700.0, 700.0))]
    await feed(board, node, SensorReading(sensor(1.1, (50.0, 85.0)), 0.0))
    assert board.sent[-1] == SetCaps(cap_w=(700.0, 500.0))
    assert node.mode is Mode.THERMAL_LIMIT
    await feed(board, node, SensorReading(sensor(1.2, (50.0, 50.0)), 0.0))
    assert node.mode is Mode.NOMINAL
    modes = [e.data["after"] for e in pub.events("mode")]
    assert modes == ["NOMINAL", "THERMAL_LIMIT", "NOMINAL"]


async def test_unchanged_caps_are_not_resent(rig):
    board, _, node = rig
    await feed(board, node, LinkUp(INFO))
    for i in range(5):
        await feed(board, node, SensorReading(sensor(1.0 + i, (50.0, 50.0)), 0.0))
    assert len(board.sent) == 1


async def test_link_loss_means_safe_and_recovery_means_nominal(rig):
    board, pub, node = rig
    await feed(board, node, LinkUp(INFO))
    await feed(board, node, LinkDown("port lost"))
    assert node.mode is Mode.SAFE
    assert pub.events("link_down")
    await feed(board, node, LinkUp(INFO))
    assert node.mode is Mode.NOMINAL
    # A new session resends caps even though they equal the last ones sent.
    await feed(board, node, SensorReading(sensor(1.0, (50.0, 50.0)), 0.0))
    await feed(board, node, LinkDown("port lost"))
    await feed(board, node, LinkUp(INFO))
    await feed(board, node, SensorReading(sensor(2.0, (50.0, 50.0)), 0.0))
    assert len(board.sent) == 2


async def test_board_watchdog_is_reported_and_caps_resent(rig):
    board, pub, node = rig
    await feed(board, node, LinkUp(INFO))
    await feed(board, node, SensorReading(sensor(1.0, (50.0, 50.0)), 0.0))
    await feed(board, node, SensorReading(sensor(2.0, (50.0, 50.0), SensorFlag.WATCHDOG_SAFE), 0.0))
    assert len(pub.events("board_watchdog")) == 1
    assert len(board.sent) == 2


async def test_refused_command_is_an_event_and_is_retried(rig):
    board, pub, node = rig
    await feed(board, node, LinkUp(INFO))
    await feed(board, node, SensorReading(sensor(1.0, (50.0, 50.0)), 0.0))
    await feed(board, node, CommandResult(board.sent[-1], AckStatus.BAD_ARGUMENT))
    assert pub.events("command_failed")
    await feed(board, node, SensorReading(sensor(2.0, (50.0, 50.0)), 0.0))
    assert len(board.sent) == 2


async def test_housekeeping_is_published_with_rising_sequence(rig):
    board, pub, node = rig
    await feed(board, node, LinkUp(INFO))
    await feed(board, node, SensorReading(sensor(1.0, (50.0, float("nan"))), 0.0))
    await asyncio.sleep(0.1)
    hks = [p for p in pub.items if isinstance(p, Housekeeping)]
    assert len(hks) >= 2
    assert hks[-1].temp_c == (50.0, None)  # NaN goes to ground as an explicit gap
    seqs = [p.seq for p in pub.items]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
