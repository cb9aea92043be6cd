"""End-to-end control latency over a real pty, telemetry publishing on.

This benchmark is the board: it opens a pseudo-terminal, runs the real ``umbra-node``
against it (with a real mosquitto for its telemetry), and times each SENSOR frame it
writes until the node's answer arrives — the SET_CAPS that frame caused, and the STEP_DONE
the node sends after every control step.  The baseline is a bare echo over the same kind
of pty in the same run: a child that reads and writes straight back, so the ratio is what
Umbra's control step, codec and asyncio add to the serial round trip.  Target: p99 ≤ 5 ms.
"""

from __future__ import annotations

import os
import select
import statistics
import sys
import tempfile
import time
import tty
from pathlib import Path

from bench.registry import Context, Result, benchmark
from hil.broker import Mosquitto
from hil.procs import ManagedProcess
from node.link.channel import ReliableChannel
from node.link.codec import FrameDecoder
from node.link.messages import Hello, HelloAck, Sensor, SetCaps, StepDone

GPUS = 8


def _pty(path: Path) -> int:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.symlink(os.ttyname(slave), path)
    os.set_blocking(master, False)
    return master


def _sensor(i: int) -> Sensor:
    # Alternate a hot and a cool GPU so the node's caps keep moving and SET_CAPS is sent.
    hot = 84.0 + 3.0 * (i % 2)
    temps = (hot,) + (60.0,) * (GPUS - 1)
    return Sensor(
        t_board=0.1 * i, utc=1.7e9 + 0.1 * i, temp_c=temps, power_w=(650.0,) * GPUS,
        cap_w=(700.0,) * GPUS, progress=(0.0,) * GPUS, rails=(1 << GPUS) - 1, solar_w=3000.0,
        battery_soc=0.8, radiator_c=20.0,
    )  # fmt: skip


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _node_latency(frames: int) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory(prefix="umbra-latency-") as tmp, Mosquitto() as broker:
        link = Path(tmp) / "board.tty"
        master = _pty(link)
        node = ManagedProcess(
            [sys.executable, "-m", "node.cli", "--serial", str(link), "--mqtt", f"{broker.host}:{broker.port}",
             "--data-dir", str(Path(tmp) / "node"), "--hk-rate", "10", "--log-level", "WARNING"],
            name="node", log_dir=Path(tmp),
        )  # fmt: skip
        channel, decoder = ReliableChannel(), FrameDecoder()
        step_done: list[float] = []
        caps: list[float] = []
        try:
            node.start()
            deadline = time.monotonic() + 60
            session = False
            while not session and time.monotonic() < deadline:
                select.select([master], [], [], 0.1)
                try:
                    decoder.feed(os.read(master, 65536))
                except BlockingIOError:
                    continue
                while (f := decoder.next_frame()) is not None:
                    if isinstance(f.message, Hello):
                        channel.reset()
                        os.write(master, channel.session_frame(HelloAck(
                            version=1, board_id="latency", fw_version="bench", gpu_count=GPUS,
                            cap_min_w=200.0, cap_max_w=700.0, sensor_rate_hz=10.0, watchdog_s=30.0)))  # fmt: skip
                        session = True
            for i in range(frames + 20):
                sent = time.perf_counter()
                os.write(master, channel.send(_sensor(i), time.monotonic()))
                got_step = False
                while not got_step and time.perf_counter() - sent < 1.0:
                    select.select([master], [], [], 0.05)
                    try:
                        decoder.feed(os.read(master, 65536))
                    except BlockingIOError:
                        continue
                    now = time.perf_counter()
                    while (f := decoder.next_frame()) is not None:
                        _, out = channel.receive(f)
                        for data in out:
                            os.write(master, data)
                        if isinstance(f.message, SetCaps):
                            os.write(master, channel.ack(f.seq))
                            if i >= 20:
                                caps.append(now - sent)
                        elif isinstance(f.message, StepDone):
                            got_step = True
                            if i >= 20:  # the first frames warm up caches and the broker
                                step_done.append(now - sent)
            return step_done, caps
        finally:
            node.stop()
            os.close(master)


_ECHO = r"""
import os, sys, tty
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
tty.setraw(fd)
while True:
    data = os.read(fd, 65536)
    if not data:
        break
    os.write(fd, data)
"""


def _echo_latency(frames: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="umbra-echo-") as tmp:
        link = Path(tmp) / "echo.tty"
        master = _pty(link)
        child = ManagedProcess([sys.executable, "-c", _ECHO, str(link)], name="echo", log_dir=Path(tmp))
        wire = ReliableChannel().send(_sensor(1), 0.0)
        out: list[float] = []
        try:
            child.start()
            time.sleep(0.3)
            for i in range(frames + 20):
                sent = time.perf_counter()
                os.write(master, wire)
                got = 0
                while got < len(wire):
                    select.select([master], [], [], 0.05)
                    try:
                        got += len(os.read(master, 65536))
                    except BlockingIOError:
                        continue
                if i >= 20:
                    out.append(time.perf_counter() - sent)
            return out
        finally:
            child.stop()
            os.close(master)


@benchmark("latency.control_pty")
def control_latency(ctx: Context) -> Result:
    frames = 200 if ctx.quick else 2000
    step_done, caps = _node_latency(frames)
    echo = _echo_latency(frames)
    p50, p99 = _percentiles(step_done)
    e50, e99 = _percentiles(echo)
    c50, c99 = _percentiles(caps) if caps else (float("nan"), float("nan"))
    return Result(
        value=p50 * 1e3,
        unit="ms (p50)",
        baseline=e50 * 1e3,
        higher_is_better=False,
        notes=f"SENSOR → node's STEP_DONE over a pty, telemetry on: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms "
        f"(target p99 ≤ 5 ms); SENSOR → SET_CAPS ({len(caps)} of {len(step_done)} frames): p50 "
        f"{c50 * 1e3:.2f} ms, p99 {c99 * 1e3:.2f} ms; bare pty echo p50 {e50 * 1e3:.3f} ms, p99 {e99 * 1e3:.3f} ms",
    )
