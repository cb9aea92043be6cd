"""Serial link messages (docs/ICD.md, protocol version 1) as frozen, self-validating values.

A message is built, validated and compared as a plain Python value.  The wire form lives
only at the edge: :meth:`Message.payload` gives the msgpack-ready map and
:func:`message_from_payload` turns a decoded map back into a message, raising
:class:`~node.errors.RemoteProtocolError` for anything the peer got wrong.  Building a
bad message in our own code raises :class:`~node.errors.LocalProtocolError` instead.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from node.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 1
#: Versions this implementation can speak; HELLO negotiates the highest common one.
SUPPORTED_VERSIONS = (1, 1)
#: Sensor.rails is a uint32 bit mask with one bit per GPU, so 32 GPUs at most.
MAX_GPUS = 32
MAX_NAME_LEN = 32
UINT32_MAX = 0xFFFF_FFFF
#: Temperatures outside this range are physically impossible for the hardware we fly.
TEMP_RANGE_C = (-273.15, 500.0)
POWER_RANGE_W = (0.0, 5000.0)


class MsgType(enum.IntEnum):
    """Type codes on the wire.  Gaps are reserved for later versions."""

    HELLO = 0x01
    HELLO_ACK = 0x02
    HEARTBEAT = 0x03
    STEP_DONE = 0x04
    SENSOR = 0x10
    SET_CAPS = 0x20
    SET_RAIL = 0x21
    RESET_BOARD = 0x22
    CHECKPOINT = 0x23
    RESTORE = 0x24
    ACK = 0x30
    HIL_SET = 0x40
    HIL_GET = 0x41
    HIL_VALUE = 0x42


class AckStatus(enum.IntEnum):
    OK = 0
    BAD_ARGUMENT = 1
    UNSUPPORTED = 2
    BUSY = 3


class SensorFlag(enum.IntFlag):
    """Bits of ``Sensor.flags``."""

    WATCHDOG_SAFE = 0x01  # the board heard no node and put its GPUs in the safe state
    ECLIPSE = 0x02  # the solar array is in Earth's shadow
    HW_SLOWDOWN = 0x04  # at least one GPU is in hardware thermal slowdown


# --- field kinds --------------------------------------------------------------------------
# Each kind checks a value built locally and coerces a value decoded from the wire.


class _Kind:
    name = "value"

    def check(self, value: Any) -> str | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def from_wire(self, value: Any) -> Any:
        return value


@dataclass(frozen=True)
class _Int(_Kind):
    lo: int
    hi: int
    name = "integer"

    def check(self, value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"expected an integer, got {type(value).__name__}"
        if not self.lo <= value <= self.hi:
            return f"{value} outside [{self.lo}, {self.hi}]"
        return None


@dataclass(frozen=True)
class _Bool(_Kind):
    name = "boolean"

    def check(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else f"expected a boolean, got {type(value).__name__}"


def _check_float(value: Any, lo: float, hi: float, allow_nan: bool) -> str | None:
    if not isinstance(value, float):
        return f"expected a float, got {type(value).__name__}"
    if math.isnan(value):
        return None if allow_nan else "NaN not allowed"
    if not lo <= value <= hi:
        return f"{value} outside [{lo}, {hi}]"
    return None


def _to_float(value: Any) -> Any:
    # msgpack writers may send a whole number as an integer; accept it as a float.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass(frozen=True)
class _Float(_Kind):
    lo: float = -math.inf
    hi: float = math.inf
    allow_nan: bool = False
    name = "float"

    def check(self, value: Any) -> str | None:
        return _check_float(value, self.lo, self.hi, self.allow_nan)

    def from_wire(self, value: Any) -> Any:
        return _to_float(value)


@dataclass(frozen=True)
class _Str(_Kind):
    max_len: int = MAX_NAME_LEN
    name = "string"

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return f"expected a string, got {type(value).__name__}"
        if not 1 <= len(value) <= self.max_len:
            return f"length {len(value)} outside [1, {self.max_len}]"
        if not value.isprintable():
            return "contains unprintable characters"
        return None


@dataclass(frozen=True)
class _FloatList(_Kind):
    lo: float
    hi: float
    allow_nan: bool = False
    allow_empty: bool = False  # optional per-GPU fields: empty means "not reported"
    name = "array of floats"

    def check(self, value: Any) -> str | None:
        if not isinstance(value, tuple):
            return f"expected a tuple of floats, got {type(value).__name__}"
        if not (0 if self.allow_empty else 1) <= len(value) <= MAX_GPUS:
            return f"length {len(value)} outside [{0 if self.allow_empty else 1}, {MAX_GPUS}]"
        for i, item in enumerate(value):
            problem = _check_float(item, self.lo, self.hi, self.allow_nan)
            if problem:
                return f"item {i}: {problem}"
        return None

    def from_wire(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(_to_float(v) for v in value)
        return value


# HIL values are a float or a list of floats (per GPU).
@dataclass(frozen=True)
class _HilValue(_Kind):
    name = "float or array of floats"

    def check(self, value: Any) -> str | None:
        if isinstance(value, float):
            return _check_float(value, -1e12, 1e12, allow_nan=True)
        return _FloatList(-1e12, 1e12, allow_nan=True).check(value)

    def from_wire(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(_to_float(v) for v in value)
        return _to_float(value)


@dataclass(frozen=True)
class _IntList(_Kind):
    lo: int
    hi: int
    name = "array of integers"

    def check(self, value: Any) -> str | None:
        if not isinstance(value, tuple):
            return f"expected a tuple of integers, got {type(value).__name__}"
        if len(value) > MAX_GPUS:
            return f"length {len(value)} outside [0, {MAX_GPUS}]"
        for i, item in enumerate(value):
            if not isinstance(item, int) or isinstance(item, bool):
                return f"item {i}: expected an integer, got {type(item).__name__}"
            if not self.lo <= item <= self.hi:
                return f"item {i}: {item} outside [{self.lo}, {self.hi}]"
        return None

    def from_wire(self, value: Any) -> Any:
        return tuple(value) if isinstance(value, list | tuple) else value


_U32 = _Int(0, UINT32_MAX)
_VERSION = _Int(0, 255)


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every serial message.  Subclasses set TYPE, RELIABLE and FIELDS."""

    TYPE: ClassVar[MsgType]
    #: Reliable messages are acknowledged and retransmitted; the rest are best-effort.
    RELIABLE: ClassVar[bool] = False
    FIELDS: ClassVar[Mapping[str, _Kind]] = {}

    def __post_init__(self) -> None:
        for name, kind in self.FIELDS.items():
            problem = kind.check(getattr(self, name))
            if problem:
                raise LocalProtocolError(f"{type(self).__name__}.{name}: {problem}")
        self._check_consistency()

    def _check_consistency(self) -> None:
        """Cross-field rules; raise LocalProtocolError."""

    def supersede_key(self) -> object | None:
        """Reliable messages with the same key replace each other while unacknowledged.

        A newer SET_CAPS makes an older, still unacknowledged one pointless; None means
        every message is delivered on its own.
        """
        return None

    def payload(self) -> dict[str, Any]:
        """The msgpack-ready payload map (tuples become arrays)."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name in self.FIELDS
            for value in (getattr(self, name),)
        }


def _same_lengths(msg: Message, names: tuple[str, ...]) -> None:
    lengths = {len(getattr(msg, n)) for n in names}
    if len(lengths) != 1:
        raise LocalProtocolError(
            f"{type(msg).__name__}: arrays {', '.join(names)} must have equal lengths"
        )


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Node → board: open a session and offer a range of protocol versions."""

    TYPE = MsgType.HELLO
    FIELDS = {"node_id": _Str(), "min_version": _VERSION, "max_version": _VERSION}
    node_id: str
    min_version: int = SUPPORTED_VERSIONS[0]
    max_version: int = SUPPORTED_VERSIONS[1]

    def _check_consistency(self) -> None:
        if self.min_version > self.max_version or self.min_version < 1:
            raise LocalProtocolError("Hello: need 1 <= min_version <= max_version")


@dataclass(frozen=True, slots=True)
class HelloAck(Message):
    """Board → node: the chosen version (0: none in common) and what the board is."""

    TYPE = MsgType.HELLO_ACK
    FIELDS = {
        "version": _VERSION,
        "min_version": _VERSION,
        "max_version": _VERSION,
        "board_id": _Str(),
        "fw_version": _Str(),
        "gpu_count": _Int(1, MAX_GPUS),
        "cap_min_w": _Float(*POWER_RANGE_W),
        "cap_max_w": _Float(*POWER_RANGE_W),
        "sensor_rate_hz": _Float(0.01, 1000.0),
        "watchdog_s": _Float(0.1, 3600.0),
    }
    version: int
    board_id: str
    fw_version: str
    gpu_count: int
    cap_min_w: float
    cap_max_w: float
    sensor_rate_hz: float
    watchdog_s: float
    min_version: int = SUPPORTED_VERSIONS[0]
    max_version: int = SUPPORTED_VERSIONS[1]

    def _check_consistency(self) -> None:
        if self.cap_min_w > self.cap_max_w:
            raise LocalProtocolError("HelloAck: cap_min_w must not exceed cap_max_w")


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Either direction: I am alive.  Best-effort; a node sends one at least every second."""

    TYPE = MsgType.HEARTBEAT
    FIELDS = {"uptime_s": _Float(0.0, 1e10)}
    uptime_s: float


@dataclass(frozen=True, slots=True)
class StepDone(Message):
    """Node → board: done with the SENSOR frame of board time ``t_board`` (lockstep).  Best-effort."""

    TYPE = MsgType.STEP_DONE
    FIELDS = {"t_board": _Float(0.0, 1e10)}
    t_board: float


@dataclass(frozen=True, slots=True)
class Sensor(Message):
    """Board → node: one sensor frame.  Best-effort; loss is counted by sequence number."""

    TYPE = MsgType.SENSOR
    FIELDS = {
        "t_board": _Float(0.0, 1e10),
        "utc": _Float(0.0, 1e11),
        "temp_c": _FloatList(*TEMP_RANGE_C, allow_nan=True),
        "power_w": _FloatList(*POWER_RANGE_W),
        "cap_w": _FloatList(*POWER_RANGE_W),
        "progress": _FloatList(0.0, 1e18),
        "rails": _U32,
        "solar_w": _Float(0.0, 1e6),
        "battery_soc": _Float(0.0, 1.0),
        "radiator_c": _Float(*TEMP_RANGE_C, allow_nan=True),
        "flags": _U32,
        "rx_errors": _U32,
        # Optional fields (ICD §4.4): older senders leave them out and receivers default them.
        "battery_wh": _Float(-1.0, 1e7),
        "battery_capacity_wh": _Float(-1.0, 1e7),
        "bus_v": _Float(-1.0, 1e4),
        "avionics_w": _Float(-1.0, POWER_RANGE_W[1]),
        "orbit_period_s": _Float(-1.0, 1e7),
        "eclipse_in_s": _Float(-1.0, 1e7),
        "sun_in_s": _Float(-1.0, 1e7),
        "xid": _IntList(0, UINT32_MAX),
        "gpu_ok": _U32,
        "slowdown": _U32,
        "saved": _FloatList(0.0, 1e18, allow_empty=True),
        "ckpt": _U32,
    }
    t_board: float
    utc: float
    temp_c: tuple[float, ...]
    power_w: tuple[float, ...]
    cap_w: tuple[float, ...]
    progress: tuple[float, ...]
    rails: int
    solar_w: float
    battery_soc: float
    radiator_c: float
    flags: int = 0
    rx_errors: int = 0
    # -1.0 in the optional float fields: not reported.
    battery_wh: float = -1.0  # energy stored in the battery, Wh
    battery_capacity_wh: float = -1.0  # its present capacity, Wh
    bus_v: float = -1.0  # power bus voltage, V
    avionics_w: float = -1.0  # avionics base load, W
    orbit_period_s: float = -1.0  # orbital period, board seconds
    eclipse_in_s: float = -1.0  # to the next eclipse entry; 0 in eclipse; -1 none ahead
    sun_in_s: float = -1.0  # to the next eclipse exit (sun returns); 0 in sunlight
    xid: tuple[int, ...] = ()  # Xid error counter per GPU since board boot (empty: not reported)
    gpu_ok: int = UINT32_MAX  # bit i: GPU i is on the bus (not dropped out)
    slowdown: int = 0  # bit i: GPU i is in hardware thermal slowdown
    saved: tuple[float, ...] = ()  # progress the last finished checkpoint kept, per GPU (empty: not reported)
    ckpt: int = 0  # bit i: GPU i is checkpointing (its work paused)

    def _check_consistency(self) -> None:
        _same_lengths(self, ("temp_c", "power_w", "cap_w", "progress"))
        if self.xid and len(self.xid) != len(self.temp_c):
            raise LocalProtocolError("Sensor: xid must be empty or have one counter per GPU")
        if self.saved and len(self.saved) != len(self.temp_c):
            raise LocalProtocolError("Sensor: saved must be empty or have one value per GPU")

    @property
    def gpu_count(self) -> int:
        return len(self.temp_c)


@dataclass(frozen=True, slots=True)
class SetCaps(Message):
    """Node → board: the power cap of every GPU.  Reliable; the newest one wins."""

    TYPE = MsgType.SET_CAPS
    RELIABLE = True
    FIELDS = {"cap_w": _FloatList(*POWER_RANGE_W)}
    cap_w: tuple[float, ...]

    def supersede_key(self) -> object | None:
        return MsgType.SET_CAPS


@dataclass(frozen=True, slots=True)
class SetRail(Message):
    """Node → board: switch one GPU's power rail.  Reliable."""

    TYPE = MsgType.SET_RAIL
    RELIABLE = True
    FIELDS = {"gpu": _Int(0, MAX_GPUS - 1), "on": _Bool()}
    gpu: int
    on: bool

    def supersede_key(self) -> object | None:
        return (MsgType.SET_RAIL, self.gpu)


@dataclass(frozen=True, slots=True)
class ResetBoard(Message):
    """Node → board: reboot the board (board time restarts at 0; the node re-handshakes).  Reliable."""

    TYPE = MsgType.RESET_BOARD
    RELIABLE = True
    FIELDS: ClassVar[Mapping[str, _Kind]] = {}

    def supersede_key(self) -> object | None:
        return MsgType.RESET_BOARD


@dataclass(frozen=True, slots=True)
class Checkpoint(Message):
    """Node → board: checkpoint GPU ``gpu``'s job.  Reliable.

    The board pauses that GPU's work for ``pause_s`` board seconds (the time to write the
    checkpoint: its size over the storage bandwidth) and, if no work was lost meanwhile,
    keeps the progress it had when the pause began (SENSOR ``saved``).
    """

    TYPE = MsgType.CHECKPOINT
    RELIABLE = True
    FIELDS = {"gpu": _Int(0, MAX_GPUS - 1), "pause_s": _Float(0.0, 3600.0)}
    gpu: int
    pause_s: float

    def supersede_key(self) -> object | None:
        return (MsgType.CHECKPOINT, self.gpu)


@dataclass(frozen=True, slots=True)
class Restore(Message):
    """Node → board: GPU ``gpu``'s job resumes from ``progress`` (a verified checkpoint).  Reliable."""

    TYPE = MsgType.RESTORE
    RELIABLE = True
    FIELDS = {"gpu": _Int(0, MAX_GPUS - 1), "progress": _Float(0.0, 1e18)}
    gpu: int
    progress: float

    def supersede_key(self) -> object | None:
        return (MsgType.RESTORE, self.gpu)


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """Either direction: the reliable frame ``ack_seq`` arrived; ``status`` says how it went."""

    TYPE = MsgType.ACK
    FIELDS = {"ack_seq": _Int(1, UINT32_MAX), "status": _Int(0, 255)}
    ack_seq: int
    status: int = AckStatus.OK


@dataclass(frozen=True, slots=True)
class HilSet(Message):
    """Harness → board (HIL port): set a simulation parameter.  Reliable."""

    TYPE = MsgType.HIL_SET
    RELIABLE = True
    FIELDS = {"name": _Str(), "value": _HilValue()}
    name: str
    value: float | tuple[float, ...]

    def supersede_key(self) -> object | None:
        return (MsgType.HIL_SET, self.name)


@dataclass(frozen=True, slots=True)
class HilGet(Message):
    """Harness → board (HIL port): ask for a value; answered by HIL_VALUE.  Best-effort."""

    TYPE = MsgType.HIL_GET
    FIELDS = {"name": _Str()}
    name: str


@dataclass(frozen=True, slots=True)
class HilValue(Message):
    """Board → harness (HIL port): a value asked for (``ref`` is the request's sequence)."""

    TYPE = MsgType.HIL_VALUE
    FIELDS = {"name": _Str(), "value": _HilValue(), "ref": _U32}
    name: str
    value: float | tuple[float, ...]
    ref: int = 0


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, HelloAck, Heartbeat, StepDone, Sensor, SetCaps, SetRail, ResetBoard, Checkpoint,
        Restore, Ack,
        HilSet, HilGet, HilValue,
    )
}


def message_from_payload(type_code: int, payload: Any) -> Message:
    """Build a message from a decoded wire payload; the peer's mistakes raise RemoteProtocolError.

    Unknown payload keys are ignored (a newer minor revision may add fields); missing
    ones without a default are errors.
    """
    cls = MESSAGE_TYPES.get(type_code)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type 0x{type_code:02x}", reason="unknown_type")
    if not isinstance(payload, dict):
        raise RemoteProtocolError(f"{cls.__name__}: payload is not a map", reason="decode")
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in payload:
            kwargs[field.name] = cls.FIELDS[field.name].from_wire(payload[field.name])
        elif field.default is dataclasses.MISSING:
            raise RemoteProtocolError(f"{cls.__name__}: missing field {field.name!r}")
    try:
        return cls(**kwargs)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(str(exc), reason="invalid_value") from None
