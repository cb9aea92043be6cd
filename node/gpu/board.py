"""The NVML backend: real NVIDIA GPUs behind the same :class:`~node.board.Board` interface.

``NvmlBoard`` merges two sources into the sensor frames the controller already understands:

- the GPUs, read through NVML (temperature, power, enforced limit and clock-event reasons
  every frame; the rest of what NVML knows, refreshed every ``detail_s``, goes into an
  :class:`~node.gpu.devices.NvmlSnapshot` for telemetry), and
- the platform (battery, solar, radiator, eclipse), from a :class:`PlatformSource`: the
  serial board when there is one, else a fixed profile.

The platform sets the pace: one frame per platform sample, stamped with the platform's
board time.  ``set_caps`` becomes ``nvmlDeviceSetPowerManagementLimit`` (milliwatts) on a
worker thread, answered by a ``CommandResult``; rails go to the platform board.  Every NVML
call runs on one dedicated thread, so a slow driver never blocks the event loop (a hung
one stops the control steps, which is what the service watchdog is for).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self, TypeVar

from node.board import (
    BoardEvent,
    BoardInfo,
    CommandResult,
    LinkDown,
    LinkHealth,
    LinkProblem,
    LinkUp,
    SensorReading,
)
from node.errors import CommandRejected, LinkError, LocalProtocolError, Reason
from node.gpu import nvml_api as api
from node.gpu.config import GpuConfig
from node.gpu.devices import NvmlDevices, NvmlSnapshot, NvmlUnavailable, PowerLimitRefused
from node.gpu.nvml_api import NvmlLike
from node.gpu.platform import PlatformSample, PlatformSource
from node.link.messages import AckStatus, Sensor, SensorFlag, SetCaps

log = logging.getLogger("umbra.node.gpu")

EVENT_QUEUE_LIMIT = 1000
_T = TypeVar("_T")


class NvmlBoard:
    def __init__(
        self,
        *,
        nvml: NvmlLike,
        platform: PlatformSource,
        config: GpuConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_snapshot: Callable[[NvmlSnapshot], None] | None = None,
        reopen_s: float = 5.0,
        detail_s: float = 10.0,
    ) -> None:
        self._nvml = nvml
        self._platform = platform
        self._config = config or GpuConfig(backend="nvml")
        self._clock = clock
        self._on_snapshot = on_snapshot
        self._reopen_s = reopen_s
        self._detail_s = detail_s
        self._detail_at = 0.0
        self._events: asyncio.Queue[BoardEvent] = asyncio.Queue()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._devices: NvmlDevices | None = None
        self._next_open_at = 0.0
        self._open_error: str | None = None
        self._platform_up = False
        self._info: BoardInfo | None = None
        self._snapshot: NvmlSnapshot | None = None
        self._caps_wanted = asyncio.Event()
        self._pending_caps: tuple[float, ...] | None = None
        self._caps_error: str | None = None
        self._rails_warned = False
        self._xids: list[int] = []  # Xid events per GPU position since start (Sensor.xid)
        self._task_group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._counters = {
            "sensor_dropped": 0,
            "link_downs": 0,
            "nvml_errors": 0,
            "caps_set": 0,
            "caps_refused": 0,
            "caps_not_applied": 0,
            "xid_events": 0,
            "gpus_lost": 0,
        }

    # --- Board interface ------------------------------------------------------------------

    @property
    def info(self) -> BoardInfo | None:
        return self._info

    @property
    def link_up(self) -> bool:
        return self._info is not None

    @property
    def link_state(self) -> str:
        """NVML has no session: the GPUs are there (established) or not (closed)."""
        return "established" if self._info is not None else "closed"

    @property
    def snapshot(self) -> NvmlSnapshot | None:
        """The latest NVML sample (extra detail for telemetry); None before the first."""
        return self._snapshot

    async def __aenter__(self) -> Self:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="umbra-nvml")
        await self._platform.__aenter__()
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._tasks = [
            self._task_group.create_task(self._sample_loop(), name="umbra.node.gpu.sample"),
            self._task_group.create_task(self._caps_loop(), name="umbra.node.gpu.caps"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task_group is not None and self._executor is not None
        for task in self._tasks:
            task.cancel()
        try:
            await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            devices, self._devices = self._devices, None
            if devices is not None:
                await self._call(self._close_devices, devices)
            self._executor.shutdown(wait=False, cancel_futures=True)
            await self._platform.__aexit__(exc_type, exc, tb)

    async def next_event(self) -> BoardEvent:
        return await self._events.get()

    def set_caps(self, cap_w: Sequence[float]) -> None:
        info = self._info
        if info is None:
            raise LinkError("NVML GPUs are not available", endpoint="nvml")
        caps = tuple(float(c) for c in cap_w)
        if len(caps) != info.gpu_count:
            raise LocalProtocolError(f"set_caps: {len(caps)} caps for {info.gpu_count} GPUs")
        if self._config.caps == "observe":
            self._counters["caps_not_applied"] += 1
            return
        self._pending_caps = caps  # the newest wins, as SET_CAPS does on the serial link
        self._caps_wanted.set()

    def set_rail(self, gpu: int, on: bool) -> None:
        if self._info is None:
            raise LinkError("NVML GPUs are not available", endpoint="nvml")
        self._platform.set_rail(gpu, on)

    def step_done(self, t_board: float) -> None:
        self._platform.step_done(t_board)

    def reset_board(self) -> None:
        self._platform.reset_board()

    def checkpoint(self, gpu: int, pause_s: float) -> None:
        # Real jobs checkpoint through the process-job protocol (node/jobs/process.py).
        raise CommandRejected("NVML GPUs have no board-side checkpoints", code=Reason.UNSUPPORTED)

    def stats(self) -> dict[str, int]:
        return {**self._counters, **self._platform.stats()}

    # --- internals ------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _emit(self, event: BoardEvent) -> None:
        if isinstance(event, SensorReading) and self._events.qsize() >= EVENT_QUEUE_LIMIT:
            self._counters["sensor_dropped"] += 1
            return
        self._events.put_nowait(event)

    def _close_devices(self, devices: NvmlDevices) -> None:
        if self._config.caps == "apply" and self._config.on_exit != "keep":
            devices.set_exit_limits(self._config.on_exit)
        devices.close()

    async def _sample_loop(self) -> None:
        while True:
            event = await self._platform.next_event()
            if isinstance(event, LinkUp):
                self._platform_up = True
                await self._ensure_open()
            elif isinstance(event, LinkDown):
                self._platform_lost(f"platform board: {event.reason}")
            elif isinstance(event, LinkHealth):
                if event.state == "established":
                    self._platform_up = True
                    await self._ensure_open()
                else:  # blind or uncommandable: no power or thermal data to control by
                    self._platform_lost(f"platform board {event.state}: {event.reason}")
            elif isinstance(event, CommandResult | LinkProblem):
                self._emit(event)
            elif isinstance(event, PlatformSample) and self._platform_up:
                await self._ensure_open()
                await self._sample(event)

    async def _ensure_open(self) -> None:
        if self._devices is None and self._clock() >= self._next_open_at:
            try:
                self._devices = await self._call(NvmlDevices, self._nvml, self._config.gpu_indices())
            except NvmlUnavailable as exc:
                self._next_open_at = self._clock() + self._reopen_s
                if str(exc) != self._open_error:
                    log.error("%s; retrying every %.0f s", exc, self._reopen_s)
                    self._open_error = str(exc)
                return
            self._open_error = None
            names = ", ".join(sorted({g.name for g in self._devices.gpus}))
            log.info(
                "NVML driver %s: %d GPU(s) (%s)", self._devices.driver_version, len(self._devices.gpus), names
            )
        if self._devices is not None and self._platform_up and self._info is None:
            self._info = self._board_info(self._devices)
            self._emit(LinkUp(self._info))

    def _board_info(self, devices: NvmlDevices) -> BoardInfo:
        platform = self._platform.info
        return BoardInfo(
            board_id=self._config.board_id,
            fw_version=f"nvml {devices.driver_version}"[:32],
            gpu_count=len(devices.gpus),
            # One range for the controller: the one every GPU accepts.
            cap_min_w=max(g.cap_min_w for g in devices.gpus),
            cap_max_w=min(g.cap_max_w for g in devices.gpus),
            sensor_rate_hz=platform.sensor_rate_hz if platform else self._config.sample_rate_hz,
            watchdog_s=platform.watchdog_s if platform else 0.0,
            protocol_version=platform.protocol_version if platform else 0,
        )

    def _platform_lost(self, reason: str) -> None:
        """Without the platform the controller is blind; the GPUs are ours: hold them at minimum."""
        self._platform_up = False
        info = self._info
        if info is not None and self._config.caps == "apply":
            self._pending_caps = (info.cap_min_w,) * info.gpu_count
            self._caps_wanted.set()
        self._go_down(reason)

    def _go_down(self, reason: str) -> None:
        if self._info is not None:
            self._info = None
            self._counters["link_downs"] += 1
            log.warning("GPUs unavailable: %s", reason)
            self._emit(LinkDown(reason))

    async def _nvml_failed(self, exc: NvmlUnavailable) -> None:
        self._counters["nvml_errors"] += 1
        devices, self._devices = self._devices, None
        self._next_open_at = self._clock() + self._reopen_s
        if devices is not None:
            await self._call(devices.close)
        self._go_down(str(exc))

    async def _sample(self, platform: PlatformSample) -> None:
        devices = self._devices
        if devices is None or self._info is None:
            return
        # The control frame needs four NVML calls per GPU; the detail for telemetry
        # (clocks, ECC, persistence, field values) is not worth a dozen more every frame.
        detail = self._clock() >= self._detail_at
        if detail:
            self._detail_at = self._clock() + self._detail_s
        try:
            snap = await self._call(
                functools.partial(devices.snapshot, platform.t_board, self._caps_error, detail=detail)
            )
        except NvmlUnavailable as exc:
            await self._nvml_failed(exc)
            return
        self._snapshot = snap
        if len(self._xids) != len(snap.gpus):
            self._xids = [0] * len(snap.gpus)
        for x in snap.xids:
            self._counters["xid_events"] += 1
            log.error("GPU %d: Xid %d (%s)", x.gpu, x.xid, x.description)
            pos = devices.position(x.gpu)
            # Counted into Sensor.xid so the shared FDIR gpu_xid monitor sees them.  A double-bit
            # ECC also arrives as Xid 48, so only Xid events count, not the ECC event too.
            if pos is not None and x.event_type == api.EVENT_XID_CRITICAL:
                self._xids[pos] += 1
        rails = 0
        for pos, g in enumerate(snap.gpus):
            if g.ok:
                rails |= 1 << pos
        lost = len(snap.gpus) - rails.bit_count()
        if lost != self._counters["gpus_lost"]:
            log.error("%d GPU(s) not answering NVML: %s", lost, [g.error for g in snap.gpus if not g.ok])
            self._counters["gpus_lost"] = lost
        if platform.rails is not None:
            rails &= platform.rails
            if platform.rails >> len(snap.gpus) and not self._rails_warned:
                log.warning("the platform board has more GPU rails than NVML has GPUs")
                self._rails_warned = True
        flags = platform.flags
        if any(g.hw_slowdown for g in snap.gpus):
            flags |= SensorFlag.HW_SLOWDOWN
        sensor = Sensor(
            t_board=platform.t_board,
            utc=platform.utc,
            temp_c=tuple(g.temp_c for g in snap.gpus),
            power_w=tuple(g.power_w for g in snap.gpus),
            cap_w=tuple(g.cap_w for g in snap.gpus),
            progress=tuple(0.0 for _ in snap.gpus),  # jobs report progress elsewhere
            rails=rails,
            solar_w=platform.solar_w,
            battery_soc=platform.battery_soc,
            radiator_c=platform.radiator_c,
            flags=int(flags),
            rx_errors=platform.rx_errors,
            xid=tuple(self._xids),
        )
        self._emit(SensorReading(sensor, self._clock()))
        if self._on_snapshot is not None:
            self._on_snapshot(snap)

    async def _caps_loop(self) -> None:
        while True:
            await self._caps_wanted.wait()
            self._caps_wanted.clear()
            caps, devices = self._pending_caps, self._devices
            if caps is None:
                continue
            message = SetCaps(cap_w=caps)
            if devices is None:
                self._emit(CommandResult(message, None))
                continue
            try:
                await self._call(devices.set_limits, caps)
            except NvmlUnavailable as exc:
                await self._nvml_failed(exc)
                self._emit(CommandResult(message, None))
                continue
            except PowerLimitRefused as exc:
                self._counters["caps_refused"] += 1
                if str(exc) == self._caps_error:
                    # Said once already: the controller resends once, then trusts the limits
                    # it reads back in every frame.  Ground sees caps_error in the snapshot.
                    log.debug("%s", exc)
                    continue
                self._caps_error = str(exc)
                log.error("%s", exc)
                status = AckStatus.UNSUPPORTED if exc.permission else AckStatus.BAD_ARGUMENT
                self._emit(CommandResult(message, status))
                continue
            if self._caps_error is not None:
                log.info("GPU power limits accepted again")
                self._caps_error = None
            self._counters["caps_set"] += 1
            self._emit(CommandResult(message, AckStatus.OK))
