"""firmware_sim over real pseudo-terminals: the in-process Board, the port, and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from ptypeer import PtyPeer

from firmware_sim.board import Board
from firmware_sim.cli import main
from firmware_sim.config import BoardConfig
from firmware_sim.ptyport import PtyPort
from node.errors import LinkError
from node.link.codec import Frame, FrameDecoder, encode_frame
from node.link.messages import (
    Ack,
    AckStatus,
    Heartbeat,
    Hello,
    HelloAck,
    HilGet,
    HilSet,
    HilValue,
    Message,
    Sensor,
    SensorFlag,
    SetCaps,
)

BOARD_CMD = [str(Path(sys.executable).with_name("umbra-board"))]
if not Path(BOARD_CMD[0]).exists():  # not installed: run the module
    BOARD_CMD = [sys.executable, "-m", "firmware_sim.cli"]


class Peer(PtyPeer):
    """The node's (or harness's) end of a pty."""

    def _pump(self) -> None:
        self.pump()

    async def until(self, match: Callable[[Frame], bool], timeout: float = 3.0) -> list[Frame]:
        """Frames up to and including the first that matches."""
        seen: list[Frame] = []
        deadline = time.monotonic() + timeout
        while True:
            self._pump()
            while (frame := self.decoder.next_frame()) is not None:
                seen.append(frame)
                if match(frame):
                    return seen
            if time.monotonic() > deadline:
                kinds = sorted({type(f.message).__name__ for f in seen})
                raise AssertionError(f"no matching frame in {timeout} s; saw {len(seen)}: {kinds}")
            await asyncio.sleep(0.005)

    async def next(self, kind: type[Message], timeout: float = 3.0, **where: Any) -> Any:
        def match(f: Frame) -> bool:
            m = f.message
            return isinstance(m, kind) and all(getattr(m, k) == v for k, v in where.items())

        return (await self.until(match, timeout))[-1].message

    async def latest(self, kind: type[Message], window: float = 0.15) -> Any:
        """The newest ``kind`` after reading for ``window`` s (the pty may hold ~20 KB of backlog)."""
        newest = None
        deadline = time.monotonic() + window
        while time.monotonic() < deadline or newest is None:
            self._pump()
            for frame in self.decoder.frames():
                if isinstance(frame.message, kind):
                    newest = frame.message
            await asyncio.sleep(0.005)
        return newest

    async def drain(self) -> None:
        """Forget what the board queued before we started listening."""
        await asyncio.sleep(0.02)
        self._pump()
        self.decoder = FrameDecoder()  # a stale partial frame must not count as an error


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **overrides: Any) -> AsyncIterator[Board]:
    settings: dict[str, Any] = dict(
        link=tmp_path / "link", hil=tmp_path / "hil", speed=20.0, seed=7, watchdog_s=30.0,
        model="first-order",  # these tests check link behaviour against first-order numbers
    )
    settings.update(overrides)
    async with Board(config=BoardConfig(**settings)) as board:
        yield board


@contextlib.contextmanager
def peer(path: Path) -> Iterator[Peer]:
    p = Peer(path)
    try:
        yield p
    finally:
        p.close()


async def test_hello_then_sensor_frames_with_advancing_board_time(tmp_path: Path) -> None:
    async with running(tmp_path, speed=20.0, rate_hz=10.0) as board:
        link = tmp_path / "link"
        assert link.is_symlink() and os.readlink(link).startswith("/dev/pts/")
        with peer(link) as node:
            await node.drain()
            node.hello("test-node")
            ack = await node.next(HelloAck)
            assert (ack.version, ack.board_id, ack.gpu_count) == (1, "sim-1", 8)
            frames = await node.until(lambda f: isinstance(f.message, Sensor) and f.seq >= 10)
            sensors = [f for f in frames if isinstance(f.message, Sensor)]
            assert [f.seq for f in sensors] == list(range(1, 11))  # new session, no gaps
            times = [f.message.t_board for f in sensors]
            assert all(b - a == pytest.approx(0.1) for a, b in itertools.pairwise(times))
            # Board time runs at ~20x wall time.
            t0 = (await node.latest(Sensor)).t_board
            wall0 = time.monotonic()
            await asyncio.sleep(0.5)
            t1 = (await node.latest(Sensor)).t_board
            wall1 = time.monotonic()
            assert 0.8 * 20 < (t1 - t0) / (wall1 - wall0) < 1.2 * 20
            assert board.t_board >= t1
    assert not link.exists() and not link.is_symlink()
    assert not (tmp_path / "hil").is_symlink()


async def test_set_caps_over_the_pty_is_acked_and_reported(tmp_path: Path) -> None:
    async with running(tmp_path) as board:
        with peer(tmp_path / "link") as node:
            await node.drain()
            node.hello("n")
            await node.next(HelloAck)
            caps = (300.0, 350.0, 400.0, 450.0, 500.0, 550.0, 600.0, 650.0)
            seq = node.send(SetCaps(cap_w=caps))
            assert await node.next(Ack, ack_seq=seq) == Ack(ack_seq=seq, status=AckStatus.OK)
            s = await node.next(Sensor, cap_w=caps)
            assert s.flags == 0
            bad = node.send(SetCaps(cap_w=(100.0,) * 8))
            assert (await node.next(Ack, ack_seq=bad)).status == AckStatus.BAD_ARGUMENT
            assert board.plant.cap_w.tolist() == list(caps)


async def test_hil_demand_makes_temperatures_rise(tmp_path: Path) -> None:
    async with running(tmp_path, speed=20.0, demand_w=0.0) as board:
        with peer(tmp_path / "link") as node, peer(tmp_path / "hil") as hil:
            await node.drain()
            await hil.drain()
            hil.hello("harness")
            await hil.next(HelloAck)
            ref = hil.send(HilGet(name="temp_c"))
            cold = (await hil.next(HilValue, ref=ref)).value
            assert cold == pytest.approx((25.0,) * 8)  # no demand: GPUs sit at the sink
            node.hello("n")
            await node.next(HelloAck)

            seq = hil.send(HilSet(name="demand_w", value=600.0))
            assert (await hil.next(Ack, ack_seq=seq)).status == AckStatus.OK
            await asyncio.sleep(1.0)  # 20 s of board time: one thermal time constant
            ref = hil.send(HilGet(name="temp_c"))
            warm = (await hil.next(HilValue, ref=ref)).value
            assert all(55.0 < t < 86.0 for t in warm), warm  # → 85 °C, ~63 % of the way there
            # The node sees it in its telemetry too, with the power behind it.
            s = await node.latest(Sensor)
            assert all(t > 55.0 for t in s.temp_c) and all(p > 550.0 for p in s.power_w)

            seq = hil.send(HilSet(name="temp_c", value=20.0))
            assert (await hil.next(Ack, ack_seq=seq)).status == AckStatus.BAD_ARGUMENT
            ref = hil.send(HilGet(name="no_such"))
            v = await hil.next(HilValue, ref=ref)
            assert v.value != v.value  # NaN
            assert board.firmware.node_id == "n"


async def test_watchdog_over_the_pty(tmp_path: Path) -> None:
    async with running(tmp_path, speed=1.0, rate_hz=20.0, watchdog_s=0.3) as board:
        with peer(tmp_path / "link") as node:
            await node.drain()
            node.hello("n")
            await node.next(HelloAck)
            safe = await node.until(
                lambda f: (
                    isinstance(f.message, Sensor)
                    and bool(f.message.flags & SensorFlag.WATCHDOG_SAFE)
                ),
                timeout=2.0,
            )
            assert safe[-1].message.cap_w == (200.0,) * 8  # type: ignore[attr-defined]
            node.send(Heartbeat(uptime_s=1.0))
            back = await node.until(
                lambda f: isinstance(f.message, Sensor) and f.message.flags == 0
            )
            assert back[-1].message.cap_w == (200.0,) * 8  # type: ignore[attr-defined]
            assert board.firmware.stats.watchdog_trips == 1


async def test_peer_can_close_and_reopen(tmp_path: Path) -> None:
    async with running(tmp_path) as board:
        for attempt in range(3):
            with peer(tmp_path / "link") as node:
                await node.drain()
                node.hello(f"n{attempt}")
                await node.next(HelloAck)
            await asyncio.sleep(0.05)  # the board keeps writing while nobody listens
        assert board.firmware.stats.hellos == 3


async def test_board_refuses_to_replace_a_file_and_replaces_a_stale_link(tmp_path: Path) -> None:
    (tmp_path / "link").write_text("precious")
    with pytest.raises(LinkError) as info:
        async with running(tmp_path):
            pass
    assert str(tmp_path / "link") in str(info.value)
    assert (tmp_path / "link").read_text() == "precious"
    assert not (tmp_path / "hil").is_symlink()

    stale = tmp_path / "stale"
    stale.symlink_to("/dev/pts/does-not-exist")
    async with running(tmp_path, link=stale):
        assert os.readlink(stale).startswith("/dev/pts/") and stale.exists()
    assert not stale.is_symlink()


def test_port_drops_whole_frames_when_nobody_reads(tmp_path: Path) -> None:
    frame = encode_frame(Heartbeat(uptime_s=1.0), 1)
    with PtyPort(path=tmp_path / "p") as port:
        accepted = sum(port.write(frame) for _ in range(5000))
        assert port.stats.writes_dropped == 5000 - accepted > 0
        fd = os.open(tmp_path / "p", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        decoder = FrameDecoder()
        try:
            while True:
                with contextlib.suppress(BlockingIOError):
                    while data := os.read(fd, 65536):
                        decoder.feed(data)
                if port.flush():  # the torn frame's tail goes out once there is room
                    with contextlib.suppress(BlockingIOError):
                        while data := os.read(fd, 65536):
                            decoder.feed(data)
                    break
        finally:
            os.close(fd)
        assert decoder.stats.frames == accepted
        assert decoder.stats.crc_errors == decoder.stats.decode_errors == 0


# --- the command ------------------------------------------------------------------------


def _read_line(stream: Any, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line within {timeout} s"
    return stream.readline().decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_umbra_board_process_serves_and_exits_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    link, hil = tmp_path / "link", tmp_path / "hil"
    proc = subprocess.Popen(
        [*BOARD_CMD, "--link", str(link), "--hil", str(hil), "--gpus", "4", "--rate", "20",
         "--speed", "5", "--seed", "3", "--board-id", "proc-1"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        line = _read_line(proc.stderr, 20.0)
        assert line.startswith(f"umbra-board: board proc-1 on {link} (4 GPUs, 20 Hz, speed 5x)")
        assert "seed 3" in line and str(hil) in line
        with serial.Serial(str(link), timeout=0.05) as port:
            port.reset_input_buffer()
            port.write(encode_frame(Hello(node_id="n"), 0))
            decoder = FrameDecoder()
            deadline = time.monotonic() + 5.0
            got: list[Message] = []
            while time.monotonic() < deadline and sum(isinstance(m, Sensor) for m in got) < 3:
                decoder.feed(port.read(4096))
                got += [f.message for f in decoder.frames()]
        acks = [m for m in got if isinstance(m, HelloAck)]
        assert len(acks) == 1 and acks[0].board_id == "proc-1" and acks[0].gpu_count == 4
        assert sum(isinstance(m, Sensor) for m in got) >= 3
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not link.is_symlink() and not hil.is_symlink()


def test_umbra_board_names_a_link_path_it_cannot_create() -> None:
    proc = subprocess.run(
        [*BOARD_CMD, "--link", "/nonexistent-dir/x"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "/nonexistent-dir/x" in proc.stderr


def test_umbra_board_help() -> None:
    proc = subprocess.run([*BOARD_CMD, "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for flag in ("--link", "--hil", "--gpus", "--rate", "--speed", "--seed", "--board-id",
                 "--watchdog", "--demand"):  # fmt: skip
        assert flag in proc.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ([], "--link"),
        (["--link", "x", "--gpus", "0"], "--gpus"),
        (["--link", "x", "--gpus", "many"], "--gpus"),
        (["--link", "x", "--rate", "0"], "--rate"),
        (["--link", "x", "--speed", "-1"], "--speed"),
        (["--link", "x", "--watchdog", "0.01"], "--watchdog"),
        (["--link", "x", "--demand", "nan"], "--demand"),
        (["--link", "x", "--board-id", ""], "--board-id"),
        (["--link", "x", "--hil", "x"], "--hil"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert named in capsys.readouterr().err


async def test_clock_skips_ahead_after_a_stall_instead_of_replaying(tmp_path: Path) -> None:
    offset = [0.0]
    config = BoardConfig(
        link=tmp_path / "link", speed=10.0, seed=1, watchdog_s=60.0, model="first-order"
    )
    async with Board(config=config, clock=lambda: time.monotonic() + offset[0]) as board:
        await asyncio.sleep(0.2)
        frames_before, t_before = board.firmware.stats.sensor_frames, board.t_board
        offset[0] += 5.0  # as if the process had been stopped for 5 s
        await asyncio.sleep(0.1)
        assert board.t_board >= t_before + 50.0  # 5 s of wall at 10x
        # One exact physics step over the gap, not 500 sensor frames in a burst.
        assert board.firmware.stats.sensor_frames - frames_before < 30
        assert board.plant.temp_c.min() > 60.0  # 50+ s at 500 W: well on the way to 75 °C
