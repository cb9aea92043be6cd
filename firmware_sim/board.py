"""The simulated board as one asyncio part: clock, physics, link and HIL ptys.

``async with Board(config=...) as board:`` publishes the link pty (and the HIL pty, when
configured) and runs one TaskGroup of named tasks until the block exits:

- ``umbra.board.clock`` — board time runs ``speed`` × wall time from boot.  The plant is
  stepped every ``1/rate`` s of board time, split into steps of at most ``max_step_s``,
  and a SENSOR frame goes out after each full period.  Steps are scheduled on absolute
  times, so the clock does not drift; after a long stall (the process was stopped) it
  jumps ahead in one exact step instead of replaying history.
- ``umbra.board.poll`` — retransmits, the link watchdog and heartbeats, every ``poll_s``
  of wall time.

SENSOR ``utc`` is the wall UTC at boot plus board time, so simulated UTC runs at ``speed``
too (an orbit scenario sees its own calendar, not the host's).

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
from types import TracebackType
from typing import Self

from firmware_sim.config import BoardConfig
from firmware_sim.firmware import Firmware
from firmware_sim.hil_port import HilPort
from firmware_sim.plant import FirstOrderPlant, Plant
from firmware_sim.ptyport import PtyPort

#: Wall seconds the clock may fall behind before it skips ahead rather than catching up.
MAX_LAG_S = 1.0


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
    ) -> None:
        self.config = config
        self.seed = config.seed if config.seed is not None else secrets.randbits(63)
        self.plant: Plant = (
            plant
            if plant is not None
            else FirstOrderPlant(config=config.plant_config(), seed=self.seed)
        )
        self.log = logger or logging.getLogger("umbra.board")
        self._clock = clock
        self._utc = utc
        self.link = PtyPort(path=config.link)
        self.hil = PtyPort(path=config.hil) if config.hil is not None else None
        self._firmware: Firmware | None = None
        self._hil_port: HilPort | None = None
        self._wall0 = 0.0
        self._tasks: asyncio.TaskGroup | None = None
        self._running: list[asyncio.Task[None]] = []
        self._draining: set[PtyPort] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def firmware(self) -> Firmware:
        if self._firmware is None:
            raise RuntimeError("the board is not running")
        return self._firmware

    @property
    def t_board(self) -> float:
        return self.firmware.t_board

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        cfg = self.config
        self._loop = loop = asyncio.get_running_loop()
        self._wall0 = self._clock()
        self._firmware = firmware = Firmware(
            plant=self.plant,
            wall=self._wall0,
            config=cfg.firmware_config(utc_at_boot=self._utc()),
            logger=self.log.getChild("firmware"),
        )
        ports: list[tuple[PtyPort, Callable[..., bytes]]] = [(self.link, firmware.receive)]
        if self.hil is not None:
            self._hil_port = HilPort(target=firmware, logger=self.log.getChild("hil"))
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
            self._tasks = None
            self._running = []
            self._close_ports()

    def _close_ports(self) -> None:
        for port in (self.link, self.hil):
            if port is None or not port.is_open:
                continue
            if self._loop is not None:
                self._loop.remove_reader(port.fileno())
                self._loop.remove_writer(port.fileno())
            port.close()
        self._draining.clear()

    # --- tasks ----------------------------------------------------------------------------

    async def _run_clock(self) -> None:
        cfg = self.config
        firmware = self.firmware
        period = 1.0 / cfg.rate_hz
        substeps = max(1, math.ceil(period / cfg.max_step_s - 1e-9))
        dt = period / substeps
        step = 0
        while True:
            step += 1
            late = self._clock() - (self._wall0 + step * dt / cfg.speed)
            if late < 0:
                await asyncio.sleep(-late)
            else:
                if late > MAX_LAG_S:
                    now_step = math.floor((self._clock() - self._wall0) * cfg.speed / dt)
                    self.log.warning(
                        "clock %.1f s behind wall time; skipping %d steps", late, now_step - step
                    )
                    step = max(step, now_step)
                await asyncio.sleep(0)  # let reads in while catching up
            firmware.advance_to(step * dt)
            if step % substeps == 0:
                self._write(self.link, firmware.sensor_frame(wall=self._clock()))

    async def _run_poll(self) -> None:
        firmware = self.firmware
        while True:
            await asyncio.sleep(self.config.poll_s)
            now = self._clock()
            self._write(self.link, firmware.poll(wall=now))
            if self._hil_port is not None and self.hil is not None:
                self._write(self.hil, self._hil_port.poll(wall=now))

    # --- bytes in and out -----------------------------------------------------------------

    def _on_readable(self, port: PtyPort, handler: Callable[..., bytes]) -> None:
        data = port.read()
        if data:
            self._write(port, handler(data, wall=self._clock()))

    def _write(self, port: PtyPort, data: bytes) -> None:
        if not data:
            return
        port.write(data)
        if port.pending and port not in self._draining and self._loop is not None:
            self._draining.add(port)
            self._loop.add_writer(port.fileno(), self._drain, port)

    def _drain(self, port: PtyPort) -> None:
        if port.flush() and self._loop is not None:
            self._loop.remove_writer(port.fileno())
            self._draining.discard(port)
