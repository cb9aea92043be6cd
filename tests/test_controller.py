"""The controller against an in-memory board: control, modes and events, no I/O."""

from __future__ import annotations

import asyncio

import pytest

from node.board import BoardInfo, CommandResult, FakeBoard, LinkDown, LinkUp, SensorReading
from node.bus.payloads import Event, Housekeeping, Mode
from node.config import NodeConfig
from node.control.law import ControlParams
from node.controller import SENSOR_CLEAR_S, NodeController
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
    t = 1.0
    for _ in range(20):  # GPU 1 runs hot: 3 K over the PI target, at the limit
        t += 0.1
        await feed(board, node, SensorReading(sensor(t, (50.0, 85.0)), 0.0))
    caps = board.sent[-1].cap_w
    assert caps[0] == 700.0 and caps[1] < 650.0
    assert node.mode is Mode.THERMAL_LIMIT
    for _ in range(100):  # and cools down again
        t += 0.1
        await feed(board, node, SensorReading(sensor(t, (50.0, 50.0)), 0.0))
    assert node.mode is Mode.NOMINAL
    assert board.sent[-1].cap_w[1] > caps[1]  # given back, at the slew limit
    modes = [e.data["after"] for e in pub.events("mode")]
    assert modes == ["NOMINAL", "THERMAL_LIMIT", "NOMINAL"]


async def test_baseline_policy_keeps_every_gpu_at_its_maximum():
    board, pub = FakeBoard(), ListPublisher()
    config = NodeConfig.from_mapping({"node": {"policy": "baseline"}})
    async with NodeController(config=config, board=board, publisher=pub) as node:
        await feed(board, node, LinkUp(INFO))
        for i in range(5):
            await feed(board, node, SensorReading(sensor(1.0 + i, (95.0, 95.0)), 0.0))
        assert board.sent == [SetCaps(cap_w=(700.0, 700.0))]
        assert node.mode is Mode.NOMINAL


async def test_faulty_sensor_is_reported_and_the_estimate_carries_on(rig):
    board, pub, node = rig
    await feed(board, node, LinkUp(INFO))
    await feed(board, node, SensorReading(sensor(1.0, (50.0, 50.0)), 0.0))
    await feed(board, node, SensorReading(sensor(1.1, (50.0, float("nan"))), 0.0))
    (fault,) = pub.events("sensor_fault")
    assert fault.data["gpu"] == 1 and "NaN" in fault.text
    # Not the foundation's blind minimum cap: the estimate says the GPU is cool.
    assert board.sent[-1].cap_w == (700.0, 700.0)
    t = 1.1
    for _ in range(round(SENSOR_CLEAR_S / 0.1) - 1):
        t += 0.1
        await feed(board, node, SensorReading(sensor(t, (50.0, 50.0)), 0.0))
    assert not pub.events("sensor_ok")  # not yet: a sensor must stay clean a while
    await feed(board, node, SensorReading(sensor(t + 0.1, (50.0, 50.0)), 0.0))
    assert len(pub.events("sensor_ok")) == 1


async def test_a_sensor_dropping_out_every_other_frame_is_one_fault_not_a_storm(rig):
    board, pub, node = rig
    await feed(board, node, LinkUp(INFO))
    t = 1.0
    for i in range(60):
        t += 0.1
        reading = float("nan") if i % 2 else 50.0 + 0.01 * (i % 3)
        await feed(board, node, SensorReading(sensor(t, (50.0 + 0.01 * (i % 3), reading)), 0.0))
    faults = [e for e in pub.events("sensor_fault") if e.data["gpu"] == 1]
    assert len(faults) == 1 and not pub.events("sensor_ok")
    limits = [e for e in pub.events("limit") if e.data.get("monitor") == "sensor_fault"]
    assert len(limits) == 1  # FDIR saw one fault too, not a flapping limit


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


async def test_commanded_safe_holds_minimum_caps_until_released(rig):
    board, _pub, node = rig
    await feed(board, node, LinkUp(INFO))
    await feed(board, node, SensorReading(sensor(1.0, (50.0, 50.0)), 0.0))
    node.commands.command_safe("test")
    await feed(board, node, SensorReading(sensor(2.0, (50.0, 50.0)), 0.0))
    assert node.mode is Mode.SAFE
    assert board.sent[-1] == SetCaps(cap_w=(200.0, 200.0))
    await feed(board, node, LinkDown("gone"))
    await feed(board, node, LinkUp(INFO))
    assert node.mode is Mode.SAFE  # the command still holds it
    node.commands.command_release_safe("test")
    await feed(board, node, SensorReading(sensor(3.0, (50.0, 50.0)), 0.0))
    assert node.mode is Mode.NOMINAL
    assert board.sent[-1] == SetCaps(cap_w=(700.0, 700.0))


async def test_cap_limit_bounds_one_gpu_and_bad_limits_are_rejected(rig):
    from node.errors import CommandRejected, Reason

    board, _, node = rig
    with pytest.raises(CommandRejected) as info:
        node.commands.set_gpu_cap_limit(0, 400.0)
    assert info.value.code == Reason.LINK_DOWN
    await feed(board, node, LinkUp(INFO))
    node.commands.set_gpu_cap_limit(1, 400.0)
    await feed(board, node, SensorReading(sensor(1.0, (50.0, 50.0)), 0.0))
    assert board.sent[-1] == SetCaps(cap_w=(700.0, 400.0))
    for gpu, limit in ((2, 400.0), (0, 100.0), (0, 900.0)):
        with pytest.raises(CommandRejected) as info:
            node.commands.set_gpu_cap_limit(gpu, limit)
        assert info.value.code == Reason.OUT_OF_RANGE
    node.commands.set_gpu_cap_limit(1, None)
    await feed(board, node, SensorReading(sensor(2.0, (50.0, 50.0)), 0.0))
    assert board.sent[-1] == SetCaps(cap_w=(700.0, 600.0))  # rising at the 200 W/s slew limit
    await feed(board, node, SensorReading(sensor(3.0, (50.0, 50.0)), 0.0))
    assert board.sent[-1] == SetCaps(cap_w=(700.0, 700.0))


async def test_parameters_are_validated_take_effect_and_persist(tmp_path):
    from node.errors import CommandRejected, Reason

    board, pub = FakeBoard(), ListPublisher()
    path = tmp_path / "params.json"
    config = NodeConfig.from_mapping({})
    async with NodeController(config=config, board=board, publisher=pub, params_path=path) as node:
        assert node.commands.get_param("control.limit_c") == ControlParams().limit_c
        node.commands.set_param("control.target_c", 60.0)
        node.commands.set_param("control.limit_c", 65.0)
        await feed(board, node, LinkUp(INFO))
        await feed(board, node, SensorReading(sensor(1.0, (66.0, 50.0)), 0.0))
        assert board.sent[-1].cap_w[0] < 650.0 and board.sent[-1].cap_w[1] == 700.0
        assert pub.events("param")
        for name, value, code in (
            ("control.limit_c", 500.0, Reason.OUT_OF_RANGE),
            ("control.target_c", 70.0, Reason.OUT_OF_RANGE),  # above the limit
            ("bogus", 1.0, Reason.BAD_ARGUMENT),
        ):
            with pytest.raises(CommandRejected) as info:
                node.commands.set_param(name, value)
            assert info.value.code == code
        assert node.commands.get_param("control.target_c") == 60.0
    # A restarted node starts with the table as ground left it.
    async with NodeController(config=config, board=FakeBoard(), publisher=pub, params_path=path) as node:
        assert node.commands.get_param("control.target_c") == 60.0
        assert node.commands.get_param("control.limit_c") == 65.0


async def test_fdir_throttles_a_gpu_at_its_red_limit_and_releases_it(rig):
    board, pub, node = rig
    await feed(board, node, LinkUp(INFO))
    t = 1.0
    for _ in range(10):  # GPU 0 far above the 88.5 °C red limit (a hot sensor is believed)
        t += 0.1
        await feed(board, node, SensorReading(sensor(t, (95.0, 50.0)), 0.0))
    limits = [e for e in pub.events("limit") if e.data["monitor"] == "gpu_temp"]
    assert [e.data["level"] for e in limits][-1] == "RED"
    assert board.sent[-1].cap_w[0] == 200.0
    for _ in range(200):
        t += 0.1
        await feed(board, node, SensorReading(sensor(t, (50.0, 50.0)), 0.0))
    limits = [e for e in pub.events("limit") if e.data["monitor"] == "gpu_temp"]
    assert limits[-1].data["level"] == "GREEN"
    assert board.sent[-1].cap_w[0] > 200.0


async def test_low_battery_is_a_critical_fault_until_it_recovers(rig):
    board, _pub, node = rig
    await feed(board, node, LinkUp(INFO))

    def low(t: float, soc: float) -> Sensor:
        s = sensor(t, (50.0, 50.0))
        return Sensor(**{**{f: getattr(s, f) for f in s.FIELDS}, "battery_soc": soc})

    for i in range(6):
        await feed(board, node, SensorReading(low(1.0 + 0.1 * i, 0.25), 0.0))
    assert node.mode is Mode.SAFE
    assert board.sent[-1].cap_w == (200.0, 200.0)
    for i in range(6):
        await feed(board, node, SensorReading(low(2.0 + 0.1 * i, 0.8), 0.0))
    assert node.mode is not Mode.SAFE


async def test_a_new_xid_cycles_the_gpu_rail_and_old_counts_are_no_news(rig):
    from dataclasses import replace

    from node.link.messages import SetRail

    board, pub, node = rig
    await feed(board, node, LinkUp(INFO))
    await feed(board, node, SensorReading(replace(sensor(1.0, (50.0, 50.0)), xid=(3, 5)), 0.0))
    await feed(board, node, SensorReading(replace(sensor(1.1, (50.0, 50.0)), xid=(3, 5)), 0.0))
    assert not [m for m in board.sent if isinstance(m, SetRail)]  # counts from before link-up
    await feed(board, node, SensorReading(replace(sensor(1.2, (50.0, 50.0)), xid=(3, 6)), 0.0))
    assert [m for m in board.sent if isinstance(m, SetRail)] == [SetRail(gpu=1, on=False)]
    xid = [e for e in pub.events("limit") if e.data["monitor"] == "gpu_xid"]
    assert xid and xid[-1].data["index"] == 1 and xid[-1].data["action"] == "rail_cycle"


async def test_job_catalogue_reads_the_nodes_store(tmp_path) -> None:
    from node.controller.commands import NodeCommands
    from node.errors import CommandRejected, Reason
    from node.jobs.store import AsyncCheckpointStore, CheckpointStore

    board, pub = FakeBoard(), ListPublisher()
    config = NodeConfig.from_mapping({"mqtt": {"hk_rate_hz": 50.0}})
    async with NodeController(config=config, board=board, publisher=pub) as node:
        with pytest.raises(CommandRejected) as err:
            NodeCommands(node).job_catalogue(None)
        assert err.value.code == Reason.UNSUPPORTED
    with CheckpointStore(tmp_path / "ckpt", clock=lambda: 100.0) as store:
        store.write_bytes("gpu-0", b"state", progress=4.0)
        async with NodeController(config=config, board=board, publisher=pub,
                                  store=AsyncCheckpointStore(store), utc=lambda: 160.0) as node:
            (entry,) = NodeCommands(node).job_catalogue(None)
            assert entry["job"] == "gpu-0" and entry["checkpoints"][0]["age_s"] == 60.0
            with pytest.raises(CommandRejected) as err:
                NodeCommands(node).job_catalogue("gpu-9")
            assert err.value.code == Reason.NOT_FOUND


def test_new_xids_and_gpus_off_the_bus_are_faults_of_those_gpus() -> None:
    import dataclasses

    from node.control.law import UmbraLaw
    from node.controller.session import ControlSession

    session = ControlSession(INFO, UmbraLaw(ControlParams()))
    base = dataclasses.replace(sensor(1.0, (50.0, 50.0)), xid=(4, 0), gpu_ok=0b11)
    assert session.gpu_faults(base) == []  # counts since board boot: the baseline, not faults
    assert session.gpu_faults(dataclasses.replace(base, t_board=2.0)) == []
    assert session.gpu_faults(dataclasses.replace(base, t_board=3.0, xid=(4, 1))) == [(1, "reported an Xid error")]
    assert session.gpu_faults(dataclasses.replace(base, t_board=4.0, xid=(4, 1), gpu_ok=0b10)) == [
        (0, "fell off the bus")]
    assert session.gpu_faults(dataclasses.replace(base, t_board=5.0, xid=(4, 1), gpu_ok=0b10)) == []
    # Off the bus because its rail was switched off (shed, cycled by FDIR): not a fault.
    assert session.gpu_faults(dataclasses.replace(base, t_board=6.0, xid=(4, 1), gpu_ok=0b11, rails=0b11)) == []
    assert session.gpu_faults(dataclasses.replace(base, t_board=7.0, xid=(4, 1), gpu_ok=0b01, rails=0b01)) == []


class RecordingRunner:
    """Stands in for the node's ProcessJobRunner: what the controller asked of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.gpu_count = 0
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1

    def checkpoint_all(self, reason: str) -> None:
        self.calls.append(("all", reason))

    def checkpoint_gpu(self, gpu: int, reason: str) -> None:
        self.calls.append(("gpu", gpu))

    def gpu_fault(self, gpu: int, why: str) -> None:
        self.calls.append(("fault", gpu))

    def telemetry(self) -> dict[str, object]:
        return {}


async def test_the_controller_tells_process_jobs_what_is_coming(rig) -> None:
    import dataclasses

    board, _, node = rig
    recorder = RecordingRunner()
    node.process_jobs = recorder  # type: ignore[assignment]
    await feed(board, node, LinkUp(INFO))
    base = dataclasses.replace(sensor(1.0, (50.0, 50.0)), xid=(0, 0), gpu_ok=0b11, eclipse_in_s=3000.0)
    await feed(board, node, SensorReading(base, 0.0))
    for t, ecl in ((2.0, 60.0), (3.0, 59.0), (4.0, 3000.0), (5.0, 30.0)):  # two approaches
        await feed(board, node, SensorReading(dataclasses.replace(base, t_board=t, eclipse_in_s=ecl), 0.0))
    assert [c for c in recorder.calls if c[0] == "all"] == [("all", "eclipse ahead")] * 2
    await feed(board, node, SensorReading(dataclasses.replace(base, t_board=6.0, xid=(0, 2)), 0.0))
    assert ("fault", 1) in recorder.calls
    for i in range(40):  # GPU 0 far above the limit: its job is checkpointed ahead of the loss
        await feed(board, node, SensorReading(dataclasses.replace(
            base, t_board=7.0 + i * 0.1, temp_c=(99.0, 50.0), xid=(0, 2)), 0.0))
    assert ("gpu", 0) in recorder.calls and ("gpu", 1) not in recorder.calls
    assert recorder.ticks >= 45 and recorder.gpu_count == INFO.gpu_count  # every frame, the board's GPUs
    assert node.board_clock() >= 9.9 - 1e-6  # board seconds since the first frame (1.0 → 10.9)


async def test_a_process_jobs_priority_weights_its_gpus_share_of_the_budget() -> None:
    import sys

    board, pub = FakeBoard(), ListPublisher()
    config = NodeConfig.from_mapping({"jobs": [{"id": "train", "gpus": [1], "priority": 50,
                                                "command": [sys.executable, "-V"]}]})
    async with NodeController(config=config, board=board, publisher=pub) as node:
        await feed(board, node, LinkUp(INFO))
        assert node._weights.tolist() == [1.0, 6.0]
        node.commands.submit_job("ground-job", 0b10, 0)  # ground's submission wins on its GPUs
        assert node._weights.tolist() == [1.0, 1.0]
