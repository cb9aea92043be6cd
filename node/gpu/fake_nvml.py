"""A fake NVML with the same calls as ``pynvml`` and scripted GPU behaviour, for CI and demos.

``FakeNvml()`` is an object, not a module, so every test gets its own GPUs::

    nvml = FakeNvml(gpus=2, clock=clock)       # two H100-like GPUs
    nvml.gpus[0].demand_w = 650.0              # the workload wants 650 W
    nvml.refuse_permission()                   # setting limits now fails as without root
    nvml.inject_xid(1, 79)                     # GPU 1 falls off the bus

Behaviour: each GPU draws ``min(demand, power limit)`` (less in hardware slowdown); its
temperature follows that power as a first-order lag towards ``ambient + k·P``; at the
slowdown temperature the hardware-slowdown clock-event reasons appear and clocks halve.
Time comes from ``clock`` (default ``time.monotonic``), read lazily on every call.
Errors are :class:`FakeNVMLError` carrying the real NVML return codes.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from node.gpu import nvml_api as api

_ERROR_TEXT = {
    api.NVML_ERROR_UNINITIALIZED: "Uninitialized",
    api.NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    api.NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    api.NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    api.NVML_ERROR_NOT_FOUND: "Not Found",
    api.NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    api.NVML_ERROR_TIMEOUT: "Timeout",
    api.NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    api.NVML_ERROR_UNKNOWN: "Unknown Error",
}


class FakeNVMLError(Exception):
    """Like ``pynvml.NVMLError``: ``value`` is the NVML return code."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _ERROR_TEXT.get(self.value, f"NVML Error with code {self.value}")


@dataclass(frozen=True, slots=True)
class FakeHandle:
    index: int


@dataclass(frozen=True, slots=True)
class FakeEventData:
    device: FakeHandle
    eventType: int
    eventData: int
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


@dataclass(slots=True)
class FakeValue:
    dVal: float = 0.0
    uiVal: int = 0
    ulVal: int = 0
    ullVal: int = 0
    sllVal: int = 0
    siVal: int = 0
    usVal: int = 0


@dataclass(slots=True)
class FakeFieldValue:
    fieldId: int
    nvmlReturn: int
    valueType: int = api.NVML_VALUE_TYPE_UNSIGNED_INT
    value: FakeValue = field(default_factory=FakeValue)
    scopeId: int = 0
    timestamp: int = 0
    latencyUsec: int = 0


@dataclass(slots=True)
class FakeEventSet:
    registered: dict[int, int] = field(default_factory=dict)  # GPU index -> event mask
    queue: collections.deque[FakeEventData] = field(default_factory=collections.deque)
    freed: bool = False


@dataclass
class FakeGpu:
    """One scripted GPU.  Change the public fields from a test at any time."""

    index: int = 0
    name: str = "NVIDIA H100 80GB HBM3"
    cap_min_w: float = 200.0
    cap_max_w: float = 700.0
    default_cap_w: float = 700.0
    cap_w: float = 700.0
    #: What the running work would draw with no limit.
    demand_w: float = 500.0
    idle_w: float = 70.0
    ambient_c: float = 30.0
    #: Steady-state temperature rise per watt, and the thermal time constant.
    k_per_w: float = 0.09
    tau_s: float = 60.0
    slowdown_c: float = 89.0
    temp_c: float = 30.0
    #: HBM runs this much hotter than the die; None: no memory sensor (NOT_SUPPORTED).
    mem_offset_k: float | None = 5.0
    ecc_supported: bool = True
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    persistence_mode: int = 1
    sm_max_mhz: int = 1980
    mem_mhz: int = 2619
    lost: bool = False
    power_avg_w: float = 0.0

    @property
    def uuid(self) -> str:
        return f"GPU-fa4e0000-0000-4000-8000-{self.index:012d}"

    @property
    def slowdown(self) -> bool:
        return self.temp_c >= self.slowdown_c

    @property
    def power_w(self) -> float:
        draw = min(self.demand_w, self.cap_w)
        if self.slowdown:
            draw *= 0.6
        return max(draw, min(self.idle_w, self.demand_w))

    def advance(self, dt: float) -> None:
        if dt <= 0.0 or self.lost:
            return
        # Sub-steps short against tau, so entering or leaving slowdown changes the power.
        steps = max(1, min(10_000, math.ceil(dt / min(1.0, self.tau_s / 20))))
        h = dt / steps
        for _ in range(steps):
            power = self.power_w
            target = self.ambient_c + self.k_per_w * power
            self.temp_c = target + (self.temp_c - target) * math.exp(-h / self.tau_s)
            self.power_avg_w = power + (self.power_avg_w - power) * math.exp(-h / 1.0)

    def reasons(self) -> int:
        mask = 0
        if self.demand_w <= self.idle_w * 1.05:
            mask |= 0x001
        if self.demand_w > self.cap_w:
            mask |= api.REASON_SW_POWER_CAP
        if self.slowdown:
            mask |= api.REASON_HW_SLOWDOWN | api.REASON_HW_THERMAL
        return mask

    def sm_mhz(self) -> int:
        ratio = min(1.0, self.cap_w / self.demand_w) if self.demand_w > 0 else 0.3
        mhz = self.sm_max_mhz * ratio ** (1 / 3)
        return int(mhz / 2 if self.slowdown else mhz)


class FakeNvml:
    """The pynvml calls the backend and ``umbra-gpucheck`` use, over scripted :class:`FakeGpu`s."""

    NVMLError = FakeNVMLError
    # The same names pynvml has, for code written against the module.
    NVML_SUCCESS = api.NVML_SUCCESS
    NVML_ERROR_NO_PERMISSION = api.NVML_ERROR_NO_PERMISSION
    NVML_ERROR_NOT_SUPPORTED = api.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_GPU_IS_LOST = api.NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_TIMEOUT = api.NVML_ERROR_TIMEOUT
    NVML_TEMPERATURE_GPU = api.NVML_TEMPERATURE_GPU
    NVML_CLOCK_GRAPHICS = api.NVML_CLOCK_GRAPHICS
    NVML_CLOCK_SM = api.NVML_CLOCK_SM
    NVML_CLOCK_MEM = api.NVML_CLOCK_MEM
    NVML_MEMORY_ERROR_TYPE_CORRECTED = api.NVML_MEMORY_ERROR_TYPE_CORRECTED
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = api.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = api.NVML_VOLATILE_ECC
    NVML_AGGREGATE_ECC = api.NVML_AGGREGATE_ECC
    NVML_FI_DEV_MEMORY_TEMP = api.NVML_FI_DEV_MEMORY_TEMP
    NVML_FI_DEV_POWER_AVERAGE = api.NVML_FI_DEV_POWER_AVERAGE
    NVML_FI_DEV_POWER_INSTANT = api.NVML_FI_DEV_POWER_INSTANT
    nvmlEventTypeXidCriticalError = api.EVENT_XID_CRITICAL
    nvmlEventTypeDoubleBitEccError = api.EVENT_DOUBLE_BIT_ECC

    def __init__(
        self,
        gpus: int | Sequence[FakeGpu] = 2,
        *,
        clock: Callable[[], float] = time.monotonic,
        root: bool = True,
        driver_loaded: bool = True,
        driver_version: str = "550.54.15",
    ) -> None:
        if isinstance(gpus, int):
            gpus = [FakeGpu(index=i) for i in range(gpus)]
        self.gpus: list[FakeGpu] = list(gpus)
        for i, gpu in enumerate(self.gpus):
            gpu.index = i
            gpu.power_avg_w = gpu.power_avg_w or gpu.power_w
        self.root = root
        self.driver_loaded = driver_loaded
        self.driver_version = driver_version
        self.initialized = 0
        #: Every accepted nvmlDeviceSetPowerManagementLimit: (GPU index, milliwatts).
        self.set_limit_calls: list[tuple[int, int]] = []
        self._clock = clock
        self._last = clock()
        self._event_sets: list[FakeEventSet] = []

    # --- scripting ---------------------------------------------------------------------------

    def refuse_permission(self, refused: bool = True) -> None:
        """From now on setting a power limit fails with NVML_ERROR_NO_PERMISSION (not root)."""
        self.root = not refused

    def inject_xid(self, gpu: int, xid: int) -> None:
        """Raise Xid ``xid`` on ``gpu``: 79 takes the GPU off the bus, 48 counts a double-bit ECC."""
        target = self.gpus[gpu]
        if xid == 48:
            target.ecc_uncorrected += 1
        if xid in api.XID_FATAL - {48}:
            target.lost = True
        event = FakeEventData(device=FakeHandle(gpu), eventType=api.EVENT_XID_CRITICAL, eventData=xid)
        for es in self._event_sets:
            if not es.freed and es.registered.get(gpu, 0) & api.EVENT_XID_CRITICAL:
                es.queue.append(event)

    # --- internals ---------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self._clock()
        dt, self._last = now - self._last, now
        for gpu in self.gpus:
            gpu.advance(dt)

    def _ready(self) -> None:
        if self.initialized <= 0:
            raise FakeNVMLError(api.NVML_ERROR_UNINITIALIZED)
        self._tick()

    def _gpu(self, handle: object) -> FakeGpu:
        self._ready()
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(self.gpus):
            raise FakeNVMLError(api.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise FakeNVMLError(api.NVML_ERROR_GPU_IS_LOST)
        return gpu

    # --- the pynvml surface -----------------------------------------------------------------

    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise FakeNVMLError(api.NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialized += 1
        self._tick()

    def nvmlShutdown(self) -> None:
        self._ready()
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._ready()
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._ready()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._ready()
        if not 0 <= index < len(self.gpus):
            raise FakeNVMLError(api.NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(index)

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        self._ready()
        return handle.index

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetPersistenceMode(self, handle: FakeHandle) -> int:
        return self._gpu(handle).persistence_mode

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        gpu = self._gpu(handle)
        if sensor != api.NVML_TEMPERATURE_GPU:
            raise FakeNVMLError(api.NVML_ERROR_INVALID_ARGUMENT)
        return round(gpu.temp_c)  # NVML reports whole degrees

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return round(self._gpu(handle).power_avg_w * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        return round(self._gpu(handle).cap_w * 1000)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: FakeHandle) -> list[int]:
        gpu = self._gpu(handle)
        return [round(gpu.cap_min_w * 1000), round(gpu.cap_max_w * 1000)]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: FakeHandle) -> int:
        return round(self._gpu(handle).default_cap_w * 1000)

    def nvmlDeviceSetPowerManagementLimit(self, handle: FakeHandle, limit: int) -> None:
        gpu = self._gpu(handle)
        if not self.root:
            raise FakeNVMLError(api.NVML_ERROR_NO_PERMISSION)
        if not isinstance(limit, int) or not gpu.cap_min_w * 1000 <= limit <= gpu.cap_max_w * 1000:
            raise FakeNVMLError(api.NVML_ERROR_INVALID_ARGUMENT)
        gpu.cap_w = limit / 1000
        self.set_limit_calls.append((handle.index, limit))

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, type: int) -> int:
        gpu = self._gpu(handle)
        if type in (api.NVML_CLOCK_GRAPHICS, api.NVML_CLOCK_SM):
            return gpu.sm_mhz()
        if type == api.NVML_CLOCK_MEM:
            return gpu.mem_mhz
        raise FakeNVMLError(api.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return self._gpu(handle).reasons()

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        return self._gpu(handle).reasons()

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeHandle, errorType: int, counterType: int) -> int:
        gpu = self._gpu(handle)
        if not gpu.ecc_supported:
            raise FakeNVMLError(api.NVML_ERROR_NOT_SUPPORTED)
        if errorType == api.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return gpu.ecc_corrected
        return gpu.ecc_uncorrected

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, fieldIds: list[int]) -> list[FakeFieldValue]:
        gpu = self._gpu(handle)
        out = []
        for fid in fieldIds:
            if fid == api.NVML_FI_DEV_MEMORY_TEMP and gpu.mem_offset_k is not None:
                value = FakeValue(uiVal=round(gpu.temp_c + gpu.mem_offset_k))
                out.append(FakeFieldValue(fid, api.NVML_SUCCESS, api.NVML_VALUE_TYPE_UNSIGNED_INT, value))
            elif fid == api.NVML_FI_DEV_POWER_INSTANT:
                value = FakeValue(uiVal=round(gpu.power_w * 1000))
                out.append(FakeFieldValue(fid, api.NVML_SUCCESS, api.NVML_VALUE_TYPE_UNSIGNED_INT, value))
            elif fid == api.NVML_FI_DEV_POWER_AVERAGE:
                value = FakeValue(uiVal=round(gpu.power_avg_w * 1000))
                out.append(FakeFieldValue(fid, api.NVML_SUCCESS, api.NVML_VALUE_TYPE_UNSIGNED_INT, value))
            else:
                out.append(FakeFieldValue(fid, api.NVML_ERROR_NOT_SUPPORTED))
        return out

    def nvmlDeviceGetSupportedEventTypes(self, handle: FakeHandle) -> int:
        self._gpu(handle)
        return api.EVENT_XID_CRITICAL | api.EVENT_DOUBLE_BIT_ECC | api.EVENT_SINGLE_BIT_ECC

    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._ready()
        es = FakeEventSet()
        self._event_sets.append(es)
        return es

    def nvmlDeviceRegisterEvents(self, handle: FakeHandle, eventTypes: int, eventSet: FakeEventSet) -> None:
        self._gpu(handle)
        eventSet.registered[handle.index] = eventSet.registered.get(handle.index, 0) | eventTypes

    def nvmlEventSetWait(self, eventSet: FakeEventSet, timeoutms: int) -> FakeEventData:
        """Never blocks: an empty set raises NVML_ERROR_TIMEOUT at once."""
        self._ready()
        if eventSet.freed:
            raise FakeNVMLError(api.NVML_ERROR_INVALID_ARGUMENT)
        if not eventSet.queue:
            raise FakeNVMLError(api.NVML_ERROR_TIMEOUT)
        return eventSet.queue.popleft()

    def nvmlEventSetFree(self, eventSet: FakeEventSet) -> None:
        eventSet.freed = True
