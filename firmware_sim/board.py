"""The simulated board as one asyncio part: clock, physics, link and HIL ptys.

``async with Board(config=...) as board:`` publishes the link pty (and the HIL pty, when
configured) and runs one TaskGroup of named tasks until the block exits:

- ``umbra.board.clock`` — board time runs ``speed`` × wall time from boot.  The plant is
  stepped every ``1/rate`` s of board time (the plant sub-steps as its physics needs),
  and a SENSOR frame goes out after each full period.  Steps are scheduled on absolute
  times, so the clock does not drift; after a long stall (the process was stopped) it
  jumps ahead in one exact step instead of replaying history.
- ``umbra.board.poll`` — retransmits, the link watchdog and heartbeats, every ``poll_s``
  of wall time.

Time control (HIL ``time.*``): real-time pacing at ``speed``; ``time.pause`` holds board
time (heartbeats keep the link alive); ``time.step_s`` advances a paused board by whole
sensor periods at full speed; ``time.lockstep`` advances to the next sensor frame as soon
as the node has sent STEP_DONE for the current one (or ``time.lockstep_timeout_s`` of wall
time passed), so a run is deterministic and as fast as the node.  Every change re-anchors
the pacing, so board time never jumps.

Faults outside the plant: ``board.reset`` (as RESET_BOARD), ``link.*`` impairments, and the
scheduled timeline of BoardConfig (HIL settings at given board run times).

SENSOR ``utc`` is the wall UTC at boot plus board time, so simulated UTC runs at ``speed``
too (an orbit scenario sees its own calendar, not the host's).

The ports are ptys the board publishes, or (``BoardConfig.link_device``/``hil_device``,
``umbra-board --link-dev``) serial devices that exist: a device that goes away is closed
and reopened every ``REOPEN_S`` until it is back, while the board runs on.

Reads are event-driven (``loop.add_reader`` on each master); writes never block.  The
firmware and HIL logic are sans-I/O (:mod:`firmware_sim.firmware`,
:mod:`firmware_sim.hil_port`); this module only moves bytes and keeps time.  HIL
parameter names are listed in :mod:`firmware_sim.hil_port`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from firmware_sim.config import BoardConfig
from firmware_sim.firmware import Firmware
from firmware_sim.hil_port import HilPort
from firmware_sim.impair import LinkImpairment
from firmware_sim.plant import FirstOrderPlant, ParamValue, Plant, bad_argument
from firmware_sim.ptyport import DevicePort, PtyPort
from node.errors import CommandRejected, LinkError
from node.link.messages import Hello, HelloAck

#: Wall seconds the clock may fall behind before it skips ahead rather than catching up.
MAX_LAG_S = 1.0
#: Wall seconds between tries to reopen a serial device that went away.
REOPEN_S = 1.0


def _flag(name: str, value: ParamValue) -> bool:
    if isinstance(value, tuple) or not math.isfinite(value):
        raise bad_argument(f"{name}: expected 1.0 or 0.0, got {value!r}")
    return value >= 0.5


def _seconds(name: str, value: ParamValue, hi: float = 1e7) -> float:
    if isinstance(value, tuple) or not (math.isfinite(value) and 0.0 <= value <= hi):
        raise bad_argument(f"{name}: expected seconds in [0, {hi:g}], got {value!r}")
    return float(value)


class Board:
    """A simulated dev board on pseudo-terminals."""

    def __init__(
        self,
        *,
        config: BoardConfig,
        plant: Plant | None = None,
        clock: Callable[[], float] = time.monotonic,
        utc: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
        firmware: type[Firmware] = Firmware,
        hil_port: type[HilPort] = HilPort,
    ) -> None:
        self.config = config
        # The firmware and HIL logic are swappable so tests can run deliberately deviant ones.
        self._firmware_cls = firmware
        self._hil_port_cls = hil_port
        self.seed = config.seed if config.seed is not None else secrets.randbits(63)
        if plant is None:
            if config.model == "space":
                from firmware_sim.spaceplant import SpacePlant

                plant = SpacePlant(config=config.space_config(), seed=self.seed)
            else:
                plant = FirstOrderPlant(config=config.plant_config(), seed=self.seed)
        self.plant: Plant = plant
        self.log = logger or logging.getLogger("umbra.board")
        self._clock = clock
        self._utc = utc
        self.link = self._port(config.link, config.link_device)
        self.hil = self._port(config.hil, config.hil_device) if config.hil is not None else None
        self._lost: set[PtyPort] = set()  # devices that went away, reopened by _run_poll
        self.impair = LinkImpairment(seed=self.seed ^ 0x5EED)
        self._firmware: Firmware | None = None
        self._hil_port: HilPort | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._running: list[asyncio.Task[None]] = []
        self._draining: set[PtyPort] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # time control
        self.speed = config.speed
        self.paused = config.paused
        self.lockstep = config.lockstep
        self.lockstep_timeout_s = config.lockstep_timeout_s
        self._step_budget_s = 0.0
        self._frame = 0  # index of the last sensor frame (board time = frame · period)
        self._anchor_wall = 0.0
        self._anchor_frame = 0
        self._wake = asyncio.Event()
        self.run_t = 0.0  # board seconds stepped since start, across resets (timeline clock)
        self._timeline = sorted(config.timeline, key=lambda e: e[0])
        self.resets = 0
        self._disconnected = False
        self._getters, self._setters = self._board_params()
        self._reconnect: asyncio.TimerHandle | None = None

    def _port(self, path: Path, device: bool) -> PtyPort:
        return DevicePort(path=path, baud=self.config.baud) if device else PtyPort(path=path)

    @property
    def firmware(self) -> Firmware:
        if self._firmware is None:
            raise RuntimeError("the board is not running")
        return self._firmware

    @property
    def t_board(self) -> float:
        return self.firmware.t_board

    @property
    def period(self) -> float:
        return 1.0 / self.config.rate_hz

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        cfg = self.config
        self._loop = loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._anchor_wall = self._clock()
        self._firmware = self._firmware_cls(
            plant=self.plant,
            wall=self._anchor_wall,
            config=cfg.firmware_config(utc_at_boot=self._utc()),
            logger=self.log.getChild("firmware"),
        )
        ports: list[tuple[PtyPort, Callable[..., bytes]]] = [(self.link, self._link_receive)]
        if self.hil is not None:
            self._hil_port = self._hil_port_cls(target=self, logger=self.log.getChild("hil"), wall=self._anchor_wall)
            ports.append((self.hil, self._hil_port.receive))
        try:
            for port, handler in ports:
                port.open()
                loop.add_reader(port.fileno(), self._on_readable, port, handler)
            self._tasks = asyncio.TaskGroup()
            await self._tasks.__aenter__()
        except BaseException:
            self._close_ports()
            raise
        self._running = [
            self._tasks.create_task(self._run_clock(), name="umbra.board.clock"),
            self._tasks.create_task(self._run_poll(), name="umbra.board.poll"),
        ]
        self.log.info(
            "board %s up: link %s -> %s, seed %d",
            cfg.board_id,
            cfg.link,
            self.link.slave_name,
            self.seed,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            for task in self._running:
                task.cancel()
            if self._tasks is not None:
                await self._tasks.__aexit__(exc_type, exc, tb)
        finally:
            if self._reconnect is not None:
                self._reconnect.cancel()
            self._tasks = None
            self._running = []
            self._close_ports()

    def _close_ports(self) -> None:
        for port in (self.link, self.hil):
            if port is not None:
                self._close_port(port)
        self._draining.clear()

    def _close_port(self, port: PtyPort) -> None:
        if not port.is_open:
            return
        if self._loop is not None:
            self._loop.remove_reader(port.fileno())
            self._loop.remove_writer(port.fileno())
        self._draining.discard(port)
        port.close()

    # --- link disconnect / reconnect ----------------------------------------------------------

    def disconnect(self, wall_s: float | None = None) -> None:
        """Unplug the node's link (the pty and its symlink go away); back after ``wall_s``."""
        if not self._disconnected:
            self._close_port(self.link)
            self._disconnected = True
            self.log.warning("link disconnected")
        if self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None
        if wall_s is not None and self._loop is not None:
            self._reconnect = self._loop.call_later(wall_s, self.reconnect)

    def reconnect(self) -> None:
        self._reconnect = None
        if not self._disconnected or self._loop is None:
            return
        self.link.open()
        self._loop.add_reader(self.link.fileno(), self._on_readable, self.link, self._link_receive)
        self._disconnected = False
        self.log.warning("link reconnected at %s -> %s", self.config.link, self.link.slave_name)

    # --- time -------------------------------------------------------------------------------

    def _reanchor(self) -> None:
        self._anchor_wall = self._clock()
        self._anchor_frame = self._frame
        self._wake.set()

    def reset_board(self) -> None:
        """Reboot: board time 0, link session forgotten, GPUs restarted (unsaved work lost)."""
        self.firmware.reboot(wall=self._clock())
        self.resets += 1
        self._frame = 0
        self._reanchor()

    def _advance_frame(self, frames: int = 1) -> None:
        firmware = self.firmware
        for at, name, value in self._due(self.run_t):
            self._apply_timeline(at, name, value)
        self._frame += frames
        before = firmware.t_board
        firmware.advance_to(self._frame * self.period)
        self.run_t += firmware.t_board - before
        self._write(self.link, firmware.sensor_frame(wall=self._clock()))

    def _due(self, t: float) -> list[tuple[float, str, ParamValue]]:
        due = []
        while self._timeline and self._timeline[0][0] <= t + 1e-9:
            due.append(self._timeline.pop(0))
        return due

    def _apply_timeline(self, at: float, name: str, value: ParamValue) -> None:
        try:
            self.set_param(name, value)
            self.log.info("timeline at %.1f s: %s = %r", at, name, value)
        except CommandRejected as exc:
            self.log.warning("timeline at %.1f s: %s refused: %s", at, name, exc)

    async def _sleep_or_wake(self, timeout: float) -> None:
        self._wake.clear()
        if timeout <= 0:
            await asyncio.sleep(0)
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _run_clock(self) -> None:
        firmware = self.firmware
        while True:
            if firmware.reset_requested:
                self.reset_board()
            if self.paused:
                if self._step_budget_s > 1e-9:
                    self._step_budget_s -= self.period
                    self._advance_frame()
                    await asyncio.sleep(0)
                else:
                    await self._sleep_or_wake(1.0)
                self._reanchor()
                continue
            elif self.lockstep:
                deadline = self._clock() + self.lockstep_timeout_s
                t_now = firmware.t_board
                sent = firmware.stats.sensor_frames > 0
                while (
                    sent and firmware.step_done_t < t_now - 1e-9 and self.lockstep
                    and not self.paused and not firmware.reset_requested
                ):
                    left = deadline - self._clock()
                    if left <= 0:
                        break
                    await self._sleep_or_wake(left)
                if not self.lockstep or self.paused:
                    continue
                self._advance_frame()
                await asyncio.sleep(0)
                self._reanchor()
                continue
            due = self._anchor_wall + (self._frame + 1 - self._anchor_frame) * self.period / self.speed
            late = self._clock() - due
            if late < 0:
                await self._sleep_or_wake(-late)
                continue
            if late > MAX_LAG_S:
                behind = math.floor(late * self.speed / self.period)
                self.log.warning("clock %.1f s behind wall time; skipping %d frames", late, behind)
                self._advance_frame(behind + 1)
                self._reanchor()
            else:
                self._advance_frame()
            await asyncio.sleep(0)  # let reads in while catching up

    async def _run_poll(self) -> None:
        firmware = self.firmware
        next_reopen = 0.0
        while True:
            await asyncio.sleep(self.config.poll_s)
            now = self._clock()
            if self._lost and now >= next_reopen:
                self._reopen_lost()
                next_reopen = now + REOPEN_S
            self._write(self.link, firmware.poll(wall=now))
            if self._hil_port is not None and self.hil is not None:
                self._write(self.hil, self._hil_port.poll(wall=now))

    # --- HIL parameters (the HilPort's target) ------------------------------------------------

    def hello_ack(self, hello: Hello) -> HelloAck:
        return self.firmware.hello_ack(hello)

    def _board_params(self) -> tuple[dict[str, Callable[[], ParamValue]], dict[str, Callable[[ParamValue], None]]]:
        """Names the board answers itself (the rest go to the firmware and the plant)."""
        impair = self.impair
        getters: dict[str, Callable[[], ParamValue]] = {
            "time.pause": lambda: 1.0 if self.paused else 0.0,
            "time.step_s": lambda: max(self._step_budget_s, 0.0),
            "time.speed": lambda: self.speed,
            "time.lockstep": lambda: 1.0 if self.lockstep else 0.0,
            "time.lockstep_timeout_s": lambda: self.lockstep_timeout_s,
            "time.frames": lambda: float(self.firmware.stats.sensor_frames),
            "board.reset": lambda: float(self.resets),
            "board.resets": lambda: float(self.resets),
            "link.ber": lambda: impair.ber,
            "link.drop_rate": lambda: impair.drop_rate,
            "link.delay_s": lambda: impair.delay_s,
            "link.garbage": lambda: float(impair.garbage_sent),
            "link.disconnect": lambda: 1.0 if self._disconnected else 0.0,
            "link.disconnect_s": lambda: 1.0 if self._disconnected else 0.0,
        }

        def set_speed(v: ParamValue) -> None:
            speed = _seconds("time.speed", v, 1e4)
            if speed <= 0:
                raise bad_argument("time.speed: must be > 0")
            self.speed = speed

        def set_step(v: ParamValue) -> None:
            self._step_budget_s += _seconds("time.step_s", v)

        setters: dict[str, Callable[[ParamValue], None]] = {
            "time.pause": lambda v: setattr(self, "paused", _flag("time.pause", v)),
            "time.step_s": set_step,
            "time.speed": set_speed,
            "time.lockstep": lambda v: setattr(self, "lockstep", _flag("time.lockstep", v)),
            "time.lockstep_timeout_s": lambda v: setattr(
                self, "lockstep_timeout_s", max(_seconds("time.lockstep_timeout_s", v, 3600.0), 0.001)),
            "board.reset": lambda v: setattr(self.firmware, "reset_requested", True),
            "link.ber": lambda v: setattr(impair, "ber", _seconds("link.ber", v, 1.0)),
            "link.drop_rate": lambda v: setattr(impair, "drop_rate", _seconds("link.drop_rate", v, 1.0)),
            "link.delay_s": lambda v: setattr(impair, "delay_s", _seconds("link.delay_s", v, 60.0)),
            "link.garbage": lambda v: impair.garbage(int(_seconds("link.garbage", v, 4096))),
            "link.disconnect": lambda v: self.disconnect() if _flag("link.disconnect", v) else self.reconnect(),
            "link.disconnect_s": lambda v: self.disconnect(_seconds("link.disconnect_s", v, 3600.0)),
        }
        return getters, setters

    def get_param(self, name: str) -> ParamValue:
        getter = self._getters.get(name)
        return getter() if getter is not None else self.firmware.get_param(name)

    def set_param(self, name: str, value: ParamValue) -> None:
        setter = self._setters.get(name)
        if setter is None:
            if name in self._getters:
                raise bad_argument(f"read-only parameter {name!r}")
            self.firmware.set_param(name, value)
            return
        setter(value)
        self._reanchor()  # time or link settings changed: pace from now

    def param_names(self) -> tuple[str, ...]:
        return tuple(self._getters) + self.firmware.param_names()

    # --- bytes in and out -----------------------------------------------------------------

    def _link_receive(self, data: bytes, *, wall: float) -> bytes:
        out = self.firmware.receive(self.impair.apply(data, outgoing=False), wall=wall)
        if self.firmware.step_done_t >= 0 or self.firmware.reset_requested:
            self._wake.set()
        return out

    def _on_readable(self, port: PtyPort, handler: Callable[..., bytes]) -> None:
        if not port.is_open:
            return
        try:
            data = port.read()
        except LinkError as exc:
            self._port_lost(port, exc)
            return
        if data:
            self._write(port, handler(data, wall=self._clock()))

    def _port_lost(self, port: PtyPort, exc: LinkError) -> None:
        """A serial device went away (unplugged): close it, and reopen it when it is back.
        What the board sends meanwhile is lost, as on a cut cable; the board runs on."""
        self.log.warning("%s; reopening it every %.0f s", exc, REOPEN_S)
        self._close_port(port)
        self._lost.add(port)

    def _reopen_lost(self) -> None:
        for port in list(self._lost):
            if port is self.link and self._disconnected:
                continue
            try:
                port.open()
            except LinkError:
                continue
            handler = self._link_receive if port is self.link else self._hil_receive
            if self._loop is not None:
                self._loop.add_reader(port.fileno(), self._on_readable, port, handler)
            self._lost.discard(port)
            self.log.warning("serial device %s is back", port.path)

    def _hil_receive(self, data: bytes, *, wall: float) -> bytes:
        return self._hil_port.receive(data, wall=wall) if self._hil_port is not None else b""

    def _write(self, port: PtyPort, data: bytes) -> None:
        if not data:
            return
        if port is self.link:
            if self._disconnected:
                return
            data = self.impair.apply(data)
            if self.impair.delay_s > 0 and self._loop is not None:
                self._loop.call_later(self.impair.delay_s, self._write_now, port, data)
                return
        self._write_now(port, data)

    def _write_now(self, port: PtyPort, data: bytes) -> None:
        if not data or not port.is_open:
            return
        try:
            port.write(data)
        except LinkError as exc:
            self._port_lost(port, exc)
            return
        if port.pending and port not in self._draining and self._loop is not None:
            self._draining.add(port)
            self._loop.add_writer(port.fileno(), self._drain, port)

    def _drain(self, port: PtyPort) -> None:
        try:
            flushed = port.flush()
        except LinkError as exc:
            self._port_lost(port, exc)
            return
        if flushed and self._loop is not None:
            self._loop.remove_writer(port.fileno())
            self._draining.discard(port)
