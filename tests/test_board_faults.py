"""Every fault type changes what the node sees over a real pty; lockstep runs are reproducible.

Twin boards (same seed, both paused) are stepped by the same board time over their HIL
ports; one has the fault.  The node's end of each link pty then reads one SENSOR frame,
and the two frames must differ where the fault says they should.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from ptypeer import PtyPeer

from firmware_sim.board import Board
from firmware_sim.config import BoardConfig
from node.errors import RemoteProtocolError
from node.link.codec import Frame, FrameDecoder
from node.link.messages import (
    Ack,
    AckStatus,
    HelloAck,
    HilGet,
    HilSet,
    HilValue,
    ResetBoard,
    Sensor,
    SetCaps,
    StepDone,
)

pytestmark = pytest.mark.timeout(60)


class Peer(PtyPeer):
    """One end of a pty, non-blocking."""

    async def until(self, match: Callable[[Frame], bool], timeout: float = 5.0) -> Frame:
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            while (frame := self.decoder.next_frame()) is not None:
                if match(frame):
                    return frame
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching frame in {timeout} s")
            await asyncio.sleep(0.002)

    async def drain(self) -> None:
        await asyncio.sleep(0.02)
        self.pump()
        self.decoder = FrameDecoder()


class Hil(Peer):
    async def set(self, name: str, value: float | tuple[float, ...]) -> None:
        seq = self.send(HilSet(name=name, value=value))
        frame = await self.until(lambda f: isinstance(f.message, Ack) and f.message.ack_seq == seq)
        assert isinstance(frame.message, Ack)
        assert frame.message.status == AckStatus.OK, (name, value)

    async def get(self, name: str) -> Any:
        seq = self.send(HilGet(name=name))
        frame = await self.until(lambda f: isinstance(f.message, HilValue) and f.message.ref == seq)
        assert isinstance(frame.message, HilValue)
        return frame.message.value

    async def step(self, seconds: float) -> None:
        await self.set("time.step_s", seconds)
        while await self.get("time.step_s") > 1e-9:  # noqa: ASYNC110 - polling the board
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def board(tmp_path: Path, name: str, **overrides: Any) -> AsyncIterator[tuple[Board, Peer, Hil]]:
    settings: dict[str, Any] = dict(
        link=tmp_path / f"{name}.link", hil=tmp_path / f"{name}.hil", seed=11, rate_hz=1.0,
        watchdog_s=600.0, paused=True, gpus=4, demand_w=450.0,
    )
    settings.update(overrides)
    async with Board(config=BoardConfig(**settings)) as b:
        node, hil = Peer(settings["link"]), Hil(settings["hil"])
        try:
            hil.hello("harness")  # the HIL port ignores numbered frames before its HELLO
            await hil.until(lambda f: isinstance(f.message, HelloAck))
            yield b, node, hil
        finally:
            node.close()
            hil.close()


async def sensor_after(b: Board, node: Peer, hil: Hil) -> Sensor:
    """The SENSOR frame of the next board period, as the node reads it."""
    await node.drain()
    await hil.step(1.0)
    t = b.t_board  # the pty may still hold older frames: wait for this one
    frame = await node.until(lambda f: isinstance(f.message, Sensor) and f.message.t_board == t)
    assert isinstance(frame.message, Sensor)
    return frame.message


FAULTS: list[tuple[str, list[tuple[str, Any]], float, Callable[[Sensor, Sensor], bool]]] = [
    ("seu", [("fault.seu", 2.0)], 5.0,
     lambda a, f: f.xid[2] == a.xid[2] + 1 and f.progress[2] < a.progress[2]),
    ("seu_rate", [("fault.seu_rate_hz", 0.2)], 20.0, lambda a, f: sum(f.xid) > sum(a.xid)),
    ("sensor_stuck", [("fault.sensor.1", 1.0)], 60.0, lambda a, f: f.temp_c[1] < a.temp_c[1] - 3),
    ("sensor_drift", [("fault.sensor.1", (2.0, 0.5))], 20.0,
     lambda a, f: f.temp_c[1] == pytest.approx(a.temp_c[1] + 10.5, abs=0.5)),
    ("sensor_nan", [("fault.sensor.0", 3.0)], 5.0,
     lambda a, f: math.isnan(f.temp_c[0]) and not math.isnan(a.temp_c[0])),
    ("sensor_dropout", [("fault.sensor.radiator", (4.0, 1.0))], 5.0, lambda a, f: math.isnan(f.radiator_c)),
    ("radiator", [("fault.radiator", 0.8)], 900.0, lambda a, f: max(f.temp_c) > max(a.temp_c) + 1),
    ("pump", [("fault.pump", 1.0)], 600.0,
     lambda a, f: f.radiator_c < a.radiator_c - 1 and max(f.temp_c) > max(a.temp_c) + 1),
    ("solar_string", [("fault.strings_lost", 2.0)], 5.0,
     lambda a, f: f.solar_w == pytest.approx(a.solar_w * 0.75)),
    ("battery_loss", [("fault.battery_loss", 0.5)], 5.0,
     lambda a, f: f.battery_capacity_wh == pytest.approx(a.battery_capacity_wh / 2)),
    ("board_reset", [("board.reset", 1.0)], 5.0, lambda a, f: f.t_board < a.t_board),
]


@pytest.mark.parametrize(("name", "settings", "step_s", "check"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_fault_changes_what_the_node_sees(
    tmp_path: Path, name: str, settings: list[tuple[str, Any]], step_s: float,
    check: Callable[[Sensor, Sensor], bool],
) -> None:
    async with board(tmp_path, "base") as (b1, node1, hil1), board(tmp_path, "faulty") as (b2, node2, hil2):
        await hil1.step(5.0)
        await hil2.step(5.0)
        for key, value in settings:
            await hil2.set(key, value)
        await asyncio.gather(hil1.step(step_s), hil2.step(step_s))
        base, faulty = await sensor_after(b1, node1, hil1), await sensor_after(b2, node2, hil2)
        assert check(base, faulty), (name, base, faulty)


async def test_node_reset_board_restarts_board_time(tmp_path: Path) -> None:
    async with board(tmp_path, "b") as (b, node, hil):
        await hil.step(10.0)
        node.hello("n")
        await node.until(lambda f: isinstance(f.message, HelloAck))
        seq = node.send(ResetBoard())
        await node.until(lambda f: isinstance(f.message, Ack) and f.message.ack_seq == seq)
        s = await sensor_after(b, node, hil)
        assert s.t_board == pytest.approx(1.0) and b.resets == 1


async def test_link_impairments_reach_the_node(tmp_path: Path) -> None:
    async with board(tmp_path, "b", rate_hz=10.0) as (_b, node, hil):
        await hil.set("link.garbage", 200.0)
        await node.drain()
        await hil.step(0.5)
        await asyncio.sleep(0.1)
        node.pump()
        list(node.decoder.frames())
        assert node.decoder.stats.bytes_dropped >= 200

        await hil.set("link.ber", 1e-3)
        await node.drain()
        await hil.step(5.0)
        await asyncio.sleep(0.1)
        node.pump()
        good = list(node.decoder.frames())
        st = node.decoder.stats
        assert st.crc_errors + st.decode_errors > 0 and len(good) < 50
        await hil.set("link.ber", 0.0)

        await hil.set("link.drop_rate", 0.01)
        await node.drain()
        await hil.step(5.0)
        await asyncio.sleep(0.1)
        node.pump()
        assert len(list(node.decoder.frames())) < 50
        await hil.set("link.drop_rate", 0.0)

        await hil.set("link.delay_s", 0.3)
        await node.drain()
        t0 = time.monotonic()
        await hil.step(0.1)
        await node.until(lambda f: isinstance(f.message, Sensor))
        assert time.monotonic() - t0 >= 0.25
        await hil.set("link.delay_s", 0.0)

        link = tmp_path / "b.link"
        await hil.set("link.disconnect_s", 0.3)
        assert not link.exists()
        await asyncio.sleep(0.5)
        assert link.exists()
        fresh = Peer(link)
        try:
            await hil.step(0.1)
            await fresh.until(lambda f: isinstance(f.message, Sensor))
        finally:
            fresh.close()


async def test_timeline_applies_faults_at_their_board_time(tmp_path: Path) -> None:
    timeline = ((3.0, "fault.seu", 1.0),)
    async with board(tmp_path, "b", timeline=timeline) as (_b, _node, hil):
        await hil.step(2.0)
        assert (await hil.get("gpu.xid"))[1] == 0.0
        await hil.step(3.0)
        assert (await hil.get("gpu.xid"))[1] == 1.0


async def test_truth_is_readable_over_hil(tmp_path: Path) -> None:
    async with board(tmp_path, "b") as (_b, _node, hil):
        await hil.step(60.0)
        for name in ("truth.work_done", "truth.work_lost", "truth.work_bound", "truth.shutdowns",
                     "truth.slowdown_s", "truth.soc_min", "truth.energy_solar_j",
                     "truth.energy_gpu_j", "truth.energy_radiated_j"):
            value = await hil.get(name)
            assert isinstance(value, float) and not math.isnan(value), name
        assert 0 < await hil.get("truth.work_done") <= await hil.get("truth.work_bound")
        temps = await hil.get("truth.temp_c")
        assert isinstance(temps, tuple) and len(temps) == 4


async def run_lockstep(tmp_path: Path, name: str, frames: int) -> list[tuple[Any, ...]]:
    """A deterministic little controller in lockstep with the board; the frames it saw."""
    seen: list[tuple[Any, ...]] = []
    async with board(tmp_path, name, lockstep=True, rate_hz=10.0, speed=1.0,
                     demand_w=650.0) as (_b, node, hil):
        await hil.set("fault.seu_rate_hz", 0.01)
        node.hello("n")
        await node.until(lambda f: isinstance(f.message, HelloAck))
        t0 = time.monotonic()
        await hil.set("time.pause", 0.0)  # paused until the node is ready
        while len(seen) < frames:
            frame = await node.until(lambda f: isinstance(f.message, Sensor))
            s = frame.message
            assert isinstance(s, Sensor)
            seen.append((s.t_board, s.temp_c, s.power_w, s.progress, s.xid, s.battery_wh))
            caps = tuple(max(200.0, min(700.0, 700.0 - 40.0 * (t - 60.0))) for t in s.temp_c)
            node.send(SetCaps(cap_w=caps))
            node.send(StepDone(t_board=s.t_board))
        wall = time.monotonic() - t0
    assert wall < frames * 0.1  # faster than the 10 Hz real-time pace
    return seen


async def test_lockstep_runs_are_reproducible(tmp_path: Path) -> None:
    a = await run_lockstep(tmp_path, "a", 300)
    b = await run_lockstep(tmp_path, "b", 300)
    assert a[0][0] == pytest.approx(0.1)
    assert [f[0] for f in a] == pytest.approx([0.1 * (k + 1) for k in range(300)])
    assert repr(a) == repr(b)


async def test_lockstep_waits_for_step_done_or_timeout(tmp_path: Path) -> None:
    async with board(tmp_path, "b", paused=False, lockstep=True, lockstep_timeout_s=0.3,
                     rate_hz=100.0) as (_b, node, hil):
        await node.drain()
        t0 = time.monotonic()
        await node.until(lambda f: isinstance(f.message, Sensor))
        await node.until(lambda f: isinstance(f.message, Sensor))
        assert time.monotonic() - t0 >= 0.25  # nobody answered: the timeout paced it
        assert await hil.get("time.lockstep") == 1.0


def test_remote_errors_are_not_raised_by_the_decoder() -> None:
    d = FrameDecoder()
    d.feed(b"\x01\x02\x03\x00")
    assert d.next_frame() is None
    assert RemoteProtocolError  # the decoder counts, it does not raise
