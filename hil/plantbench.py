"""The plant on the bench: firmware_sim's plant, run by the harness, behind a board's firmware.

A board in external-plant mode (HIL ``plant.external`` = 1; docs/real-boards.md §6) owns
the link, the watchdog, the caps and the clock, but not the physics.  Before each SENSOR
frame it announces the board time it is due for (an unsolicited HIL_VALUE, ref 0, the
``plant.due`` notice) and waits.  ``PlantOnBench`` answers every notice:

1. reads what the firmware did since the last frame (``plant.act``: the caps, and the
   rail, checkpoint and restore requests the node made, with their generation; the
   board's reset count) and applies it to the plant — requests first, then a reboot if the
   board restarted, as the simulated board orders them;
2. steps the plant to the due time and samples its sensors;
3. writes the sensor values (``plant.power_w``, ``plant.temp_c``, …, ``plant.scalars``)
   and releases the frame with ``plant.advance`` = [due time, generation applied].

So node ⇄ firmware ⇄ plant run in lockstep, one frame at a time, and a scenario reads the
plant's ground truth (``truth.*``, ``orbit.*``) here while time, board and link names go to
the firmware: ``get``/``set`` route each name (``BenchHil``), so the runner drives this
bench exactly as it drives a simulated board.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from types import TracebackType
from typing import Any, Self

from firmware_sim.plant import ParamValue, Plant
from hil.hilport import HilClient, HilScalarOrArray
from node.errors import CommandRejected, LinkError

log = logging.getLogger("umbra.hil.plant")

#: Names the firmware answers; every other name is the plant's (docs/real-boards.md §6).
FIRMWARE_PREFIXES = ("time.", "board.", "link.", "plant.")
FIRMWARE_NAMES = ("t_board", "watchdog_safe", "rx_errors")
#: `plant.scalars`, in the firmware's order.
SCALARS = ("solar_w", "battery_soc", "radiator_c", "flags", "battery_wh", "battery_capacity_wh", "bus_v",
           "avionics_w", "orbit_period_s", "eclipse_in_s", "sun_in_s", "rails", "gpu_ok", "slowdown", "ckpt")
FLAG_ECLIPSE, FLAG_HW_SLOWDOWN = 0x2, 0x4
RAIL_OFF, RAIL_ON, RAIL_CYCLE = 0, 1, 2


def is_firmware_name(name: str) -> bool:
    return name in FIRMWARE_NAMES or name.startswith(FIRMWARE_PREFIXES)


def _ints(value: HilScalarOrArray) -> list[int]:
    return [int(v) for v in (value if isinstance(value, tuple) else (value,))]


def _floats(value: HilScalarOrArray) -> list[float]:
    return [float(v) for v in (value if isinstance(value, tuple) else (value,))]


class PlantOnBench:
    """Serve a board's ``plant.due`` notices from ``plant`` (see the module docstring).

    ``async with PlantOnBench(hil_port, plant) as bench:`` opens the HIL port, configures the
    board for the plant (GPU count, cap range, sensor rate, watchdog), switches it to the
    external plant and serves frames until the block exits."""

    def __init__(self, port: str, plant: Plant, *, rate_hz: float, watchdog_s: float = 1.0,
                 utc_at_boot: float | None = None, timeout: float = 2.0) -> None:
        self.plant = plant
        self.rate_hz = rate_hz
        self.watchdog_s = watchdog_s
        self.utc_at_boot = time.time() if utc_at_boot is None else utc_at_boot
        self.hil = HilClient(port=port, timeout=timeout, on_notice=self._notice)
        self.frames = 0
        self.t_plant = 0.0   # board time the plant has been stepped to, this boot
        self.resets = 0      # the board's reset count, as last applied
        self.refused: list[str] = []  # requests the plant turned down (the firmware had said OK)
        self._due: asyncio.Queue[float] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.error: BaseException | None = None

    # -- life -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.hil.__aenter__()
        try:
            await self.configure()
        except BaseException:
            await self.hil.__aexit__(None, None, None)
            raise
        self._task = asyncio.create_task(self._serve(), name="umbra.hil.plant")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            # Python 3.11's wait_for can swallow a cancellation that lands as its future
            # completes (gh-86296), and the served frames are full of them: cancel until done.
            self._closing = True
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.5)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.hil.set("plant.external", 0.0)
        await self.hil.__aexit__(exc_type, exc, tb)

    async def configure(self) -> None:
        """The board as the plant is: its GPUs, cap range and rates; then the plant takes over."""
        hil, plant = self.hil, self.plant
        max_gpus = int(_floats(await hil.get("board.max_gpus"))[0])
        if plant.gpu_count > max_gpus:
            raise LinkError(f"the plant has {plant.gpu_count} GPUs; this firmware is built for {max_gpus}",
                            endpoint="plant")
        lo, hi = plant.cap_range_w
        self.resets = int(_floats(await hil.get("board.resets"))[0])
        for name, value in (("board.gpu_count", float(plant.gpu_count)), ("board.cap_min_w", lo),
                            ("board.cap_max_w", hi), ("board.sensor_rate_hz", self.rate_hz),
                            ("board.watchdog_s", self.watchdog_s), ("board.utc_at_boot", self.utc_at_boot)):
            await hil.set(name, float(value))
        await hil.set("plant.external", 1.0)
        self.t_plant = float(_floats(await hil.get("t_board"))[0])
        due = float(_floats(await hil.get("plant.due"))[0])
        if due >= 0:  # announced before we listened
            self._due.put_nowait(due)

    def _notice(self, value: HilScalarOrArray) -> None:
        due = _floats(value)[0]
        if math.isfinite(due) and due >= 0:
            self._due.put_nowait(due)

    # -- frames -----------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while not self._closing:
                due = await self._due.get()
                while not self._due.empty():  # repeats of a notice we are answering
                    due = self._due.get_nowait()
                await self.frame(due)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the runner sees it on its next get/set
            self.error = exc
            log.error("plant on the bench stopped: %s", exc)
            raise

    async def frame(self, due: float) -> None:
        hil, plant = self.hil, self.plant
        act = _floats(await hil.get("plant.act"))
        n = plant.gpu_count
        if len(act) != 5 + n:
            raise LinkError(f"plant.act has {len(act)} values, expected {5 + n}", endpoint="plant")
        gen, resets, rail_mask, ckpt_mask, restore_mask = (int(v) for v in act[:5])
        caps = act[5:]
        if rail_mask:
            for gpu, req in enumerate(_ints(await hil.get("plant.rail"))):
                if req >= 0:
                    self._apply(f"SET_RAIL {gpu}", self._rail, gpu, req)
        if ckpt_mask:
            for gpu, pause in enumerate(_floats(await hil.get("plant.ckpt"))):
                if pause >= 0:
                    self._apply(f"CHECKPOINT {gpu}", plant.start_checkpoint, gpu, pause)
        if restore_mask:
            for gpu, progress in enumerate(_floats(await hil.get("plant.restore"))):
                if progress >= 0:
                    self._apply(f"RESTORE {gpu}", plant.restore, gpu, progress)
        if resets != self.resets:  # the board restarted: so do the GPUs, and board time
            plant.reboot()
            self.resets = resets
            self.t_plant = 0.0
        self._apply("caps", plant.set_caps, caps)
        if due > self.t_plant:
            plant.step(due - self.t_plant)
            self.t_plant = due
        r = plant.read()
        flags = (FLAG_ECLIPSE if r.eclipse else 0) | (FLAG_HW_SLOWDOWN if r.hw_slowdown else 0)
        scalars = (r.solar_w, r.battery_soc, r.radiator_c, flags, r.battery_wh, r.battery_capacity_wh, r.bus_v,
                   r.avionics_w, r.orbit_period_s, r.eclipse_in_s, r.sun_in_s, r.rails, r.gpu_ok, r.slowdown,
                   r.ckpt)
        xid = r.xid or (0,) * n
        saved = r.saved or r.progress
        await asyncio.gather(
            hil.set("plant.temp_c", r.temp_c), hil.set("plant.power_w", r.power_w),
            hil.set("plant.progress", r.progress), hil.set("plant.saved", saved),
            hil.set("plant.xid", [float(x) for x in xid]), hil.set("plant.scalars", [float(v) for v in scalars]))
        try:
            await hil.set("plant.advance", [due, float(gen)])
        except ValueError:
            # The board rebooted (RESET_BOARD, board.reset) while we answered: it no longer
            # waits for this frame, and will announce its first one after the reboot.
            if _floats(await hil.get("plant.due"))[0] == due:
                raise
            log.info("frame at t=%.3f s overtaken by a board reset", due)
            return
        self.frames += 1

    def _rail(self, gpu: int, req: int) -> None:
        if req == RAIL_CYCLE:
            self.plant.set_rail(gpu, False)
        self.plant.set_rail(gpu, req != RAIL_OFF)

    def _apply(self, what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except CommandRejected as exc:  # the firmware said OK by its own rules; the plant did not
            self.refused.append(f"{what}: {exc}")
            log.info("plant refused %s: %s", what, exc)


class BenchHil:
    """The runner's hand on a plant-on-bench board: the HilClient interface, each name routed
    to the firmware or to the plant (``is_firmware_name``)."""

    def __init__(self, bench: PlantOnBench) -> None:
        self.bench = bench

    def _check(self) -> None:
        if self.bench.error is not None:
            raise LinkError(f"plant on the bench stopped: {self.bench.error}", endpoint="plant")

    async def get(self, name: str) -> HilScalarOrArray:
        self._check()
        if is_firmware_name(name):
            return await self.bench.hil.get(name)
        try:
            value: ParamValue = self.bench.plant.get_param(name)
        except CommandRejected:
            return math.nan  # as a board answers an unknown name (ICD §4.11)
        return value

    async def set(self, name: str, value: float | list[float] | tuple[float, ...]) -> None:
        self._check()
        if is_firmware_name(name):
            await self.bench.hil.set(name, value)
            return
        wire: ParamValue = tuple(float(v) for v in value) if isinstance(value, list | tuple) else float(value)
        try:
            self.bench.plant.set_param(name, wire)
        except CommandRejected as exc:
            raise ValueError(f"plant refused {name} = {value!r}: {exc}") from None


__all__ = ["BenchHil", "PlantOnBench", "is_firmware_name"]
