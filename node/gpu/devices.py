"""Blocking NVML access: open the GPUs, read one snapshot, set power limits, drain Xid events.

Everything here is synchronous and runs on one worker thread of :class:`~node.gpu.board.NvmlBoard`
(or directly in ``umbra-gpucheck``).  NVML speaks milliwatts; everything leaving this module
speaks watts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from node.errors import HardwareFault
from node.gpu import nvml_api as api
from node.gpu.nvml_api import NvmlLike
from node.link.messages import MAX_GPUS

log = logging.getLogger("umbra.node.gpu")

_T = TypeVar("_T")

PERMISSION_HINT = (
    "setting a GPU power limit needs root or the CAP_SYS_ADMIN capability "
    "(NVML_ERROR_NO_PERMISSION): give the service AmbientCapabilities=CAP_SYS_ADMIN "
    "(deploy/systemd/umbra-node.service), or set gpu.caps = \"observe\" to run read-only"
)


class NvmlUnavailable(HardwareFault):
    """NVML as a whole cannot be used (no driver, no library, not initialised)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message, component="nvml")
        self.code = code


class PowerLimitRefused(HardwareFault):
    """NVML refused a power limit; ``code`` is the NVML return code (4: no permission)."""

    def __init__(self, message: str, *, gpu: int, code: int | None) -> None:
        super().__init__(message, component=f"gpu{gpu}")
        self.gpu = gpu
        self.code = code

    @property
    def permission(self) -> bool:
        return self.code == api.NVML_ERROR_NO_PERMISSION


@dataclass(frozen=True, slots=True)
class XidEvent:
    gpu: int
    xid: int
    event_type: int = api.EVENT_XID_CRITICAL

    @property
    def description(self) -> str:
        if self.event_type == api.EVENT_DOUBLE_BIT_ECC:
            return "double-bit ECC error"
        return api.XID_NAMES.get(self.xid, "see the NVIDIA Xid catalogue")

    @property
    def fatal(self) -> bool:
        return self.xid in api.XID_FATAL or self.event_type == api.EVENT_DOUBLE_BIT_ECC


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    """Everything NVML told us about one GPU at one sample; None: not supported here."""

    index: int
    name: str
    uuid: str
    ok: bool = True
    error: str | None = None
    temp_c: float = math.nan
    mem_temp_c: float | None = None
    power_w: float = 0.0  # nvmlDeviceGetPowerUsage: 1 s average on Ampere and later
    power_instant_w: float | None = None
    power_avg_w: float | None = None
    cap_w: float = 0.0  # the enforced power limit
    cap_min_w: float = 0.0
    cap_max_w: float = 0.0
    cap_default_w: float | None = None
    sm_clock_mhz: int | None = None
    graphics_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    clock_event_reasons: int = 0
    ecc_corrected: int | None = None  # volatile (since driver load)
    ecc_uncorrected: int | None = None
    ecc_uncorrected_aggregate: int | None = None  # lifetime
    persistence_mode: int | None = None

    @property
    def hw_slowdown(self) -> bool:
        return bool(self.clock_event_reasons & api.HW_SLOWDOWN_MASK)

    def to_telemetry(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "ok": self.ok,
            "error": self.error,
            "temp_c": None if math.isnan(self.temp_c) else self.temp_c,
            "mem_temp_c": self.mem_temp_c,
            "power_w": self.power_w,
            "power_instant_w": self.power_instant_w,
            "power_avg_w": self.power_avg_w,
            "cap_w": self.cap_w,
            "cap_min_w": self.cap_min_w,
            "cap_max_w": self.cap_max_w,
            "sm_clock_mhz": self.sm_clock_mhz,
            "mem_clock_mhz": self.mem_clock_mhz,
            "clock_event_reasons": self.clock_event_reasons,
            "ecc_corrected": self.ecc_corrected,
            "ecc_uncorrected": self.ecc_uncorrected,
            "ecc_uncorrected_aggregate": self.ecc_uncorrected_aggregate,
        }


@dataclass(frozen=True, slots=True)
class NvmlSnapshot:
    """One NVML sample of every controlled GPU, plus Xid events seen since the previous one."""

    t_board: float
    driver_version: str
    gpus: tuple[GpuSnapshot, ...]
    xids: tuple[XidEvent, ...] = ()
    #: Why power limits could not be set (e.g. the permission hint), None when they can.
    caps_error: str | None = None

    def to_telemetry(self) -> dict[str, Any]:
        """A msgpack-ready map for ground (extra NVML detail the Sensor frame has no room for)."""
        return {
            "t_board": self.t_board,
            "driver": self.driver_version,
            "gpus": [g.to_telemetry() for g in self.gpus],
            "xids": [{"gpu": x.gpu, "xid": x.xid, "text": x.description} for x in self.xids],
            "caps_error": self.caps_error,
        }


@dataclass(frozen=True, slots=True)
class _Static:
    index: int  # NVML index
    handle: Any
    name: str
    uuid: str
    cap_min_w: float
    cap_max_w: float
    cap_default_w: float | None


class NvmlDevices:
    """NVML initialised with a set of GPUs open.  Not thread-safe: use from one thread."""

    def __init__(self, nvml: NvmlLike, indices: Sequence[int] | None = None) -> None:
        self._nvml = nvml
        self._err = nvml.NVMLError
        try:
            nvml.nvmlInit()
        except self._err as exc:
            raise NvmlUnavailable(_init_failure(exc), code=api.error_code(exc)) from None
        except OSError as exc:  # pragma: no cover - a broken library install
            raise NvmlUnavailable(f"cannot load NVML: {exc}") from None
        try:
            self.driver_version = str(nvml.nvmlSystemGetDriverVersion())
            count = nvml.nvmlDeviceGetCount()
            wanted = list(range(count)) if indices is None else list(indices)
            missing = [i for i in wanted if not 0 <= i < count]
            if missing:
                raise NvmlUnavailable(f"no GPU with NVML index {missing} (this host has {count})")
            if not wanted:
                raise NvmlUnavailable("NVML sees no GPUs on this host")
            if len(wanted) > MAX_GPUS:
                raise NvmlUnavailable(f"{len(wanted)} GPUs: select at most {MAX_GPUS} with gpu.gpus")
            self.gpus = tuple(self._open_gpu(i) for i in wanted)
            self._event_set = self._register_events()
        except self._err as exc:
            self._shutdown()
            raise NvmlUnavailable(f"NVML failed while opening the GPUs: {exc}", code=api.error_code(exc)) from None
        except NvmlUnavailable:
            self._shutdown()
            raise
        self._position = {g.index: pos for pos, g in enumerate(self.gpus)}
        self._applied_mw: dict[int, int] = {}
        self._detail: dict[int, GpuSnapshot] = {}  # NVML index → last detailed read

    # --- opening and closing -------------------------------------------------------------

    def _open_gpu(self, index: int) -> _Static:
        n = self._nvml
        handle = n.nvmlDeviceGetHandleByIndex(index)
        lo, hi = n.nvmlDeviceGetPowerManagementLimitConstraints(handle)
        default = self._optional(n.nvmlDeviceGetPowerManagementDefaultLimit, handle)
        return _Static(
            index=index,
            handle=handle,
            name=str(n.nvmlDeviceGetName(handle)),
            uuid=str(n.nvmlDeviceGetUUID(handle)),
            cap_min_w=lo / 1000,
            cap_max_w=hi / 1000,
            cap_default_w=None if default is None else default / 1000,
        )

    def _register_events(self) -> Any:
        n = self._nvml
        try:
            event_set = n.nvmlEventSetCreate()
        except self._err as exc:
            log.warning("NVML events unavailable (%s): Xid errors will not be reported", exc)
            return None
        for gpu in self.gpus:
            try:
                supported = n.nvmlDeviceGetSupportedEventTypes(gpu.handle)
                wanted = supported & api.EVENTS_WANTED
                if wanted:
                    n.nvmlDeviceRegisterEvents(gpu.handle, wanted, event_set)
                if not wanted & api.EVENT_XID_CRITICAL:
                    log.warning("GPU %d does not report Xid events", gpu.index)
            except self._err as exc:
                log.warning("GPU %d: cannot register for Xid events (%s)", gpu.index, exc)
        return event_set

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._err as exc:
            log.debug("nvmlShutdown: %s", exc)

    def close(self) -> None:
        if self._event_set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._event_set)
            except self._err as exc:
                log.debug("nvmlEventSetFree: %s", exc)
            self._event_set = None
        self._shutdown()

    # --- reading -------------------------------------------------------------------------

    def _optional(self, fn: Callable[..., _T], *args: Any) -> _T | None:
        """Call NVML; None when the GPU does not support (or let us read) this value."""
        try:
            return fn(*args)
        except self._err as exc:
            code = api.error_code(exc)
            if code in api.FATAL_CODES or code in api.LOST_CODES:
                raise
            return None

    def _reasons(self, handle: Any) -> int | None:
        try:
            return self._optional(self._nvml.nvmlDeviceGetCurrentClocksEventReasons, handle)
        except AttributeError:  # bindings older than the clock-event rename
            return self._optional(self._nvml.nvmlDeviceGetCurrentClocksThrottleReasons, handle)

    def read_gpu(self, gpu: _Static, *, detail: bool = True) -> GpuSnapshot:
        """One GPU's sample.  Without ``detail`` only what the control frame uses is read
        (temperature, power, enforced limit, clock-event reasons); the rest is carried over
        from this GPU's last detailed read, so the per-frame cost stays at four NVML calls."""
        n, h = self._nvml, gpu.handle
        try:
            temp_c = float(n.nvmlDeviceGetTemperature(h, api.NVML_TEMPERATURE_GPU))
            power_w = n.nvmlDeviceGetPowerUsage(h) / 1000
            cap_w = n.nvmlDeviceGetEnforcedPowerLimit(h) / 1000
            reasons = self._reasons(h) or 0
            last = self._detail.get(gpu.index)
            if not detail and last is not None:
                return replace(
                    last, temp_c=temp_c, power_w=power_w, cap_w=cap_w, clock_event_reasons=reasons
                )
            fields = self._optional(
                n.nvmlDeviceGetFieldValues,
                h,
                [api.NVML_FI_DEV_MEMORY_TEMP, api.NVML_FI_DEV_POWER_INSTANT, api.NVML_FI_DEV_POWER_AVERAGE],
            )
            mem_temp, p_inst, p_avg = (
                [api.field_value(fv) for fv in fields] if fields is not None else [None, None, None]
            )
            ecc = api.NVML_MEMORY_ERROR_TYPE_CORRECTED, api.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
            snap = GpuSnapshot(
                index=gpu.index,
                name=gpu.name,
                uuid=gpu.uuid,
                temp_c=temp_c,
                mem_temp_c=mem_temp,
                power_w=power_w,
                power_instant_w=None if p_inst is None else p_inst / 1000,
                power_avg_w=None if p_avg is None else p_avg / 1000,
                cap_w=cap_w,
                cap_min_w=gpu.cap_min_w,
                cap_max_w=gpu.cap_max_w,
                cap_default_w=gpu.cap_default_w,
                sm_clock_mhz=self._optional(n.nvmlDeviceGetClockInfo, h, api.NVML_CLOCK_SM),
                graphics_clock_mhz=self._optional(n.nvmlDeviceGetClockInfo, h, api.NVML_CLOCK_GRAPHICS),
                mem_clock_mhz=self._optional(n.nvmlDeviceGetClockInfo, h, api.NVML_CLOCK_MEM),
                clock_event_reasons=reasons,
                ecc_corrected=self._optional(n.nvmlDeviceGetTotalEccErrors, h, ecc[0], api.NVML_VOLATILE_ECC),
                ecc_uncorrected=self._optional(n.nvmlDeviceGetTotalEccErrors, h, ecc[1], api.NVML_VOLATILE_ECC),
                ecc_uncorrected_aggregate=self._optional(
                    n.nvmlDeviceGetTotalEccErrors, h, ecc[1], api.NVML_AGGREGATE_ECC
                ),
                persistence_mode=self._optional(n.nvmlDeviceGetPersistenceMode, h),
            )
            self._detail[gpu.index] = snap
            return snap
        except self._err as exc:
            code = api.error_code(exc)
            if code in api.FATAL_CODES:
                raise NvmlUnavailable(f"NVML failed reading GPU {gpu.index}: {exc}", code=code) from None
            # A GPU that comes back gets a full read first, not detail from before it went.
            self._detail.pop(gpu.index, None)
            # The GPU fell off the bus or needs a reset: report it, keep controlling the others.
            return GpuSnapshot(
                index=gpu.index, name=gpu.name, uuid=gpu.uuid, ok=False, error=str(exc),
                cap_min_w=gpu.cap_min_w, cap_max_w=gpu.cap_max_w,
            )

    def drain_events(self) -> list[XidEvent]:
        """Every pending Xid / ECC event, without waiting."""
        events: list[XidEvent] = []
        if self._event_set is None:
            return events
        for _ in range(1000):  # bounded: a storm must not stall the sampler
            try:
                data = self._nvml.nvmlEventSetWait(self._event_set, 0)
            except self._err as exc:
                code = api.error_code(exc)
                if code in api.FATAL_CODES:
                    raise NvmlUnavailable(f"NVML failed waiting for events: {exc}", code=code) from None
                if code != api.NVML_ERROR_TIMEOUT:
                    log.debug("nvmlEventSetWait: %s", exc)
                break
            try:
                index = self._nvml.nvmlDeviceGetIndex(data.device)
            except self._err:
                index = -1
            events.append(XidEvent(gpu=index, xid=int(data.eventData), event_type=int(data.eventType)))
        return events

    def snapshot(self, t_board: float, caps_error: str | None = None, *, detail: bool = True) -> NvmlSnapshot:
        """Every GPU's sample and the pending events; ``detail=False``: see :meth:`read_gpu`."""
        xids = self.drain_events()
        return NvmlSnapshot(
            t_board=t_board,
            driver_version=self.driver_version,
            gpus=tuple(self.read_gpu(g, detail=detail) for g in self.gpus),
            xids=tuple(xids),
            caps_error=caps_error,
        )

    def position(self, index: int) -> int | None:
        """Where the GPU of NVML ``index`` sits in the sensor frame; None if not opened."""
        return self._position.get(index)

    # --- acting ---------------------------------------------------------------------------

    def set_limits(self, cap_w: Sequence[float]) -> list[int]:
        """Set each GPU's power limit (clamped to its range); return the mW values now applied.

        Only limits that differ from the last one we applied are sent.  A refusal raises
        :class:`PowerLimitRefused` (``permission`` tells a missing privilege apart).
        """
        if len(cap_w) != len(self.gpus):
            raise ValueError(f"{len(cap_w)} caps for {len(self.gpus)} GPUs")
        applied = []
        for gpu, watts in zip(self.gpus, cap_w, strict=True):
            mw = round(min(max(float(watts), gpu.cap_min_w), gpu.cap_max_w) * 1000)
            if self._applied_mw.get(gpu.index) != mw:
                self.set_limit(gpu.index, mw)
            applied.append(mw)
        return applied

    def set_limit(self, index: int, mw: int) -> None:
        gpu = self.gpus[self._position[index]]
        try:
            self._nvml.nvmlDeviceSetPowerManagementLimit(gpu.handle, mw)
        except self._err as exc:
            code = api.error_code(exc)
            if code in api.FATAL_CODES:
                raise NvmlUnavailable(f"NVML failed setting a power limit: {exc}", code=code) from None
            self._applied_mw.pop(index, None)
            if code == api.NVML_ERROR_NO_PERMISSION:
                raise PowerLimitRefused(f"GPU {index}: {PERMISSION_HINT}", gpu=index, code=code) from None
            raise PowerLimitRefused(
                f"GPU {index}: NVML refused a power limit of {mw / 1000:.1f} W: {exc}", gpu=index, code=code
            ) from None
        self._applied_mw[index] = mw

    def set_exit_limits(self, policy: str) -> None:
        """Leave the GPUs at their minimum (``min``) or default (``default``) limit."""
        for gpu in self.gpus:
            watts = gpu.cap_min_w if policy == "min" else gpu.cap_default_w
            if watts is None:
                continue
            try:
                self.set_limit(gpu.index, round(watts * 1000))
            except (PowerLimitRefused, NvmlUnavailable) as exc:
                log.warning("on exit: %s", exc)


def _init_failure(exc: BaseException) -> str:
    code = api.error_code(exc)
    if code == api.NVML_ERROR_LIBRARY_NOT_FOUND:
        return "NVML library libnvidia-ml.so.1 not found: install the NVIDIA driver"
    if code == api.NVML_ERROR_DRIVER_NOT_LOADED:
        return "NVIDIA driver not loaded (is the nvidia kernel module in? see `nvidia-smi`)"
    if code == api.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return "NVML library and kernel driver versions differ: reboot after a driver update"
    if code == api.NVML_ERROR_NO_PERMISSION:
        return "no permission to open /dev/nvidia*: check the device node modes"
    return f"nvmlInit failed: {exc}"
