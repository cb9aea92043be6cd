"""The slice of NVML the GPU backend uses: a Protocol both ``pynvml`` and the fake satisfy.

``nvidia-ml-py`` (imported as ``pynvml``) is NVIDIA's own ctypes binding.  It imports without
a GPU or driver; only ``nvmlInit`` needs ``libnvidia-ml.so.1``.  The numeric constants below
are part of NVML's C ABI (``nvml.h``) and do not change between driver releases, so the
backend uses these rather than reaching into whichever module it was given.
"""

from __future__ import annotations

from typing import Any, Protocol

# --- return codes (nvmlReturn_t) ---------------------------------------------------------
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_UNKNOWN = 999

#: Codes after which NVML as a whole is unusable until it is initialised again.
FATAL_CODES = frozenset(
    {
        NVML_ERROR_UNINITIALIZED,
        NVML_ERROR_DRIVER_NOT_LOADED,
        NVML_ERROR_LIBRARY_NOT_FOUND,
        NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    }
)
#: Codes that mean one GPU is gone (fell off the bus, needs a reset).
LOST_CODES = frozenset({NVML_ERROR_GPU_IS_LOST, NVML_ERROR_RESET_REQUIRED})

# --- sensors, clocks, ECC ------------------------------------------------------------------
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1

# --- field values (nvmlDeviceGetFieldValues) ------------------------------------------------
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186
NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_VALUE_TYPE_UNSIGNED_SHORT = 6

# --- events (nvmlEventType*) ----------------------------------------------------------------
EVENT_SINGLE_BIT_ECC = 0x0001
EVENT_DOUBLE_BIT_ECC = 0x0002
EVENT_XID_CRITICAL = 0x0008
#: What the backend asks for: Xid errors and double-bit ECC.
EVENTS_WANTED = EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC

# --- clock-event ("throttle") reasons ---------------------------------------------------------
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x001: "GpuIdle",
    0x002: "ApplicationsClocksSetting",
    0x004: "SwPowerCap",
    0x008: "HwSlowdown",
    0x010: "SyncBoost",
    0x020: "SwThermalSlowdown",
    0x040: "HwThermalSlowdown",
    0x080: "HwPowerBrakeSlowdown",
    0x100: "DisplayClockSetting",
}
REASON_SW_POWER_CAP = 0x004
REASON_HW_SLOWDOWN = 0x008
REASON_SW_THERMAL = 0x020
REASON_HW_THERMAL = 0x040
REASON_HW_POWER_BRAKE = 0x080
#: Reasons that mean the hardware itself cut the clocks (PHYSICS.md: "clocks cut by 2x or more").
HW_SLOWDOWN_MASK = REASON_HW_SLOWDOWN | REASON_HW_THERMAL | REASON_HW_POWER_BRAKE

#: Xid codes worth naming (PHYSICS.md, NVIDIA Xid catalogue).
XID_NAMES: dict[int, str] = {
    8: "GPU stopped processing",
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
    48: "double-bit ECC error",
    63: "ECC page retirement / row remapping recorded",
    64: "ECC page retirement / row remapping failed",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
}
#: Xids after which the GPU needs a reset before it is any use.
XID_FATAL = frozenset({48, 79, 95})


def reason_names(mask: int) -> list[str]:
    """``0x48`` → ``["HwSlowdown", "HwThermalSlowdown"]``; unknown bits as hex."""
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    if unknown:
        names.append(f"0x{unknown:x}")
    return names


def error_code(exc: BaseException) -> int | None:
    """The NVML return code an ``NVMLError`` (real or fake) carries, if any."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


class NvmlLike(Protocol):
    """What the backend calls.  ``pynvml`` (a module) and :class:`~node.gpu.fake_nvml.FakeNvml` fit.

    Handles, event sets and event data are opaque: the backend only hands them back, reads
    ``eventType``/``eventData``/``device`` from event data, and reads field values with
    :func:`field_value`.
    """

    @property
    def NVMLError(self) -> type[Exception]:
        """The exception NVML calls raise; its ``value`` is the return code."""
        ...


    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetIndex(self, handle: Any) -> int: ...
    def nvmlDeviceGetName(self, handle: Any) -> str: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str: ...
    def nvmlDeviceGetPersistenceMode(self, handle: Any) -> int: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int: ...
    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: Any) -> list[int]: ...
    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: Any) -> int: ...
    def nvmlDeviceSetPowerManagementLimit(self, handle: Any, limit: int) -> None: ...
    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int: ...
    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int: ...
    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int: ...
    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int: ...
    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: list[int]) -> Any: ...
    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int: ...
    def nvmlEventSetCreate(self) -> Any: ...
    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None: ...
    def nvmlEventSetWait(self, eventSet: Any, timeoutms: int) -> Any: ...
    def nvmlEventSetFree(self, eventSet: Any) -> None: ...


def field_value(fv: Any) -> float | None:
    """Decode one ``c_nvmlFieldValue_t`` (or the fake's equivalent); None when not supported."""
    if getattr(fv, "nvmlReturn", NVML_ERROR_UNKNOWN) != NVML_SUCCESS:
        return None
    value = fv.value
    kind = fv.valueType
    attr = {
        NVML_VALUE_TYPE_DOUBLE: "dVal",
        NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
    }.get(kind)
    if attr is None:
        return None
    return float(getattr(value, attr))


def load_nvml() -> NvmlLike:
    """NVIDIA's bindings (``pip install nvidia-ml-py``); import only, no driver needed yet."""
    import pynvml

    nvml: NvmlLike = pynvml
    return nvml
