"""Serial link messages (docs/ICD.md, protocol version 1) as frozen, self-validating values.

A message is built, validated and compared as a plain Python value.  The wire form lives
only at the edge: :meth:`Message.payload` gives the msgpack-ready map and
:func:`message_from_payload` turns a decoded map back into a message, raising
:class:`~node.errors.RemoteProtocolError` for anything the peer got wrong.  Building a
bad message in our own code raises :class:`~node.errors.LocalProtocolError` instead.

Each field is declared once, with its wire kind (type and range) and unit::

    t_board: float = wire(Float(0.0, 1e10), unit="s")

and :func:`message` turns the class into a frozen slots dataclass and derives everything
else from those declarations: ``FIELDS`` (name → kind), ``UNITS``, the payload map, the
validation and a compiled decoder.

Speed (issue #13: a SENSOR frame arrives ten times a second of board time, up to a few
thousand a second in a fast HIL run).  The generic path — every kind's ``check`` in a
loop, then the dataclass ``__init__`` — costs ~5× a bare ``msgpack.unpackb``.  So each
class also gets generated code that accepts, in straight-line comparisons, exactly the
values that need no coercion (floats that are floats, ints that are ints, in range) and
builds the instance without ``__init__``; anything else — an int in a float field, a bad
value, a missing key — falls back to the generic path, which coerces or raises the
precise error.  ``tests/test_codec_properties.py`` checks that both paths agree.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, dataclass_transform

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


class BoardFeature(enum.IntFlag):
    """Bits of ``HelloAck.features``: what the board declares it serves (ICD §4.2)."""

    CHECKPOINTS = 0x01  # CHECKPOINT / RESTORE, and SENSOR ``saved`` and ``ckpt``
    LOCKSTEP = 0x02  # HIL ``time.lockstep``: SENSOR frames wait for STEP_DONE


# --- field kinds --------------------------------------------------------------------------
# Each kind checks a value built locally (``check``: None or the problem), coerces a value
# decoded from the wire (``from_wire``), and writes the source of a fast acceptance test
# (``fast``: a boolean expression over a variable, true only for a value that is valid
# as it is).  A kind may leave ``fast`` to the generic path by returning "False".


class Kind:
    name = "value"

    def check(self, value: Any) -> str | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def from_wire(self, value: Any) -> Any:
        return value

    def fast(self, var: str, consts: dict[str, Any]) -> str:
        return "False"

    def describe(self) -> str:
        return self.name


def _const(consts: dict[str, Any], value: Any) -> str:
    """A name for ``value`` in the generated code's globals (exact floats, no repr games)."""
    name = f"_c{len(consts)}"
    consts[name] = value
    return name


@dataclass(frozen=True)
class Int(Kind):
    lo: int
    hi: int
    name = "integer"

    def check(self, value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"expected an integer, got {type(value).__name__}"
        if not self.lo <= value <= self.hi:
            return f"{value} outside [{self.lo}, {self.hi}]"
        return None

    def fast(self, var: str, consts: dict[str, Any]) -> str:
        return f"(type({var}) is int and {self.lo} <= {var} <= {self.hi})"

    def describe(self) -> str:
        return f"int {self.lo} … {self.hi}"


@dataclass(frozen=True)
class Bool(Kind):
    name = "boolean"

    def check(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else f"expected a boolean, got {type(value).__name__}"

    def fast(self, var: str, consts: dict[str, Any]) -> str:
        return f"(type({var}) is bool)"


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
class Float(Kind):
    lo: float
    hi: float
    allow_nan: bool = False
    name = "float"

    def check(self, value: Any) -> str | None:
        return _check_float(value, self.lo, self.hi, self.allow_nan)

    def from_wire(self, value: Any) -> Any:
        return _to_float(value)

    def fast(self, var: str, consts: dict[str, Any]) -> str:
        lo, hi = _const(consts, self.lo), _const(consts, self.hi)
        within = f"{lo} <= {var} <= {hi}"
        if self.allow_nan:
            within = f"({within} or {var} != {var})"
        return f"(type({var}) is float and {within})"

    def describe(self) -> str:
        return f"float {self.lo:g} … {self.hi:g}" + (", NaN allowed" if self.allow_nan else "")


@dataclass(frozen=True)
class Str(Kind):
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

    def fast(self, var: str, consts: dict[str, Any]) -> str:
        return f"(type({var}) is str and 1 <= len({var}) <= {self.max_len} and {var}.isprintable())"


@dataclass(frozen=True)
class FloatArray(Kind):
    """A per-GPU array of floats: 1 … MAX_GPUS items (0 … when ``allow_empty``)."""

    lo: float
    hi: float
    allow_nan: bool = False
    allow_empty: bool = False  # optional per-GPU fields: empty means "not reported"
    name = "array of floats"

    @property
    def min_len(self) -> int:
        return 0 if self.allow_empty else 1

    def check(self, value: Any) -> str | None:
        if not isinstance(value, tuple):
            return f"expected a tuple of floats, got {type(value).__name__}"
        if not self.min_len <= len(value) <= MAX_GPUS:
            return f"length {len(value)} outside [{self.min_len}, {MAX_GPUS}]"
        for i, item in enumerate(value):
            problem = _check_float(item, self.lo, self.hi, self.allow_nan)
            if problem:
                return f"item {i}: {problem}"
        return None

    def from_wire(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(_to_float(v) for v in value)
        return value

    def fast(self, var: str, consts: dict[str, Any]) -> str:
        # Only the shape: the items of all arrays of a message are checked together, in a
        # few C loops over their concatenation (``_array_tests``).
        return f"(type({var}) is tuple and {self.min_len} <= len({var}) <= {MAX_GPUS})"


@dataclass(frozen=True)
class IntArray(Kind):
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

    def fast(self, var: str, consts: dict[str, Any]) -> str:
        return (
            f"(type({var}) is tuple and len({var}) <= {MAX_GPUS} and (not {var} or "
            f"({{*map(type, {var})}} == _INTS and {self.lo} <= min({var}) and max({var}) <= {self.hi})))"
        )


@dataclass(frozen=True)
class HilNumber(Kind):
    """A HIL value: a float, or one float per GPU (NaN allowed by the message)."""

    name = "float or array of floats"

    def check(self, value: Any) -> str | None:
        if isinstance(value, float):
            return _check_float(value, -1e12, 1e12, allow_nan=True)
        return FloatArray(-1e12, 1e12, allow_nan=True).check(value)

    def from_wire(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(_to_float(v) for v in value)
        return _to_float(value)


U32 = Int(0, UINT32_MAX)
VERSION = Int(0, 255)


def wire(kind: Kind, *, default: Any = dataclasses.MISSING, unit: str = "", kw_only: bool = False) -> Any:
    """Declare a message field: its wire kind (type and range), unit and default.

    Fields are declared in canonical (wire) order; a field with a default that comes before
    a required one (HELLO_ACK's versions) is ``kw_only`` in the constructor.
    """
    return dataclasses.field(default=default, kw_only=kw_only, metadata={"kind": kind, "unit": unit})


# --- messages -----------------------------------------------------------------------------


class Message:
    """Base of every serial message; subclasses are made by :func:`message`.

    A plain class (not a dataclass) so that it contributes no ``__setattr__``: the compiled
    decoder fills a twin of each message class and hands the instance over by class
    assignment, which needs a base whose instances accept plain slot stores.
    """

    __slots__ = ()

    TYPE: ClassVar[MsgType]
    #: Reliable messages are acknowledged and retransmitted; the rest are best-effort.
    RELIABLE: ClassVar[bool] = False
    #: name → wire kind, in canonical (ICD table) order; derived from the declarations.
    FIELDS: ClassVar[Mapping[str, Kind]] = {}
    UNITS: ClassVar[Mapping[str, str]] = {}
    _fast_valid: ClassVar[Callable[..., bool]]
    _decode: ClassVar[Callable[[dict[str, Any]], Message]]
    _payload: ClassVar[Callable[[Message], dict[str, Any]]]

    def __post_init__(self) -> None:
        if not type(self)._fast_valid(*(getattr(self, name) for name in self.FIELDS)):
            self._check_fields()
        self._check_consistency()

    def _check_fields(self) -> None:
        for name, kind in self.FIELDS.items():
            problem = kind.check(getattr(self, name))
            if problem:
                raise LocalProtocolError(f"{type(self).__name__}.{name}: {problem}")

    def _check_consistency(self) -> None:
        """Cross-field rules; raise LocalProtocolError."""

    def supersede_key(self) -> object | None:
        """Reliable messages with the same key replace each other while unacknowledged.

        A newer SET_CAPS makes an older, still unacknowledged one pointless; None means
        every message is delivered on its own.
        """
        return None

    def payload(self) -> dict[str, Any]:
        """The msgpack-ready payload map, keys in canonical order (tuples pack as arrays)."""
        return type(self)._payload(self)


_M = TypeVar("_M", bound=type[Message])
_FLOATS = frozenset({float})
_INTS = frozenset({int})


def _array_tests(arrays: dict[str, FloatArray], consts: dict[str, Any]) -> list[str]:
    """Fast tests of the items of every float array of a message, in a few C loops.

    One type set over all items (min and max of mixed types would raise, and an int or a
    bool must go the generic way).  Then, per group of arrays sharing a bound, one min or
    max.  NaN slips past min and max, so one sum over the arrays that forbid it catches
    it (a NaN makes the sum NaN); arrays that allow it are bounded with a sentinel first
    (``min((hi,) + a)`` skips NaN items, whose comparisons are false).
    """
    if not arrays:
        return []
    var = {n: f"f_{n}" for n in arrays}
    tests = ["{*map(type, " + " + ".join(var.values()) + ")} <= _FLOATS"]
    strict = [n for n, k in arrays.items() if not k.allow_nan]
    for n, k in arrays.items():
        if k.allow_nan:
            lo, hi = _const(consts, k.lo), _const(consts, k.hi)
            tests.append(f"{lo} <= min(({hi},) + {var[n]}) and max(({lo},) + {var[n]}) <= {hi}")
    for bound, pick, op in (("lo", min, "<="), ("hi", max, ">=")):
        groups: dict[float, list[str]] = {}
        for n in strict:
            groups.setdefault(getattr(arrays[n], bound), []).append(var[n])
        for value, members in groups.items():
            const = _const(consts, value)
            # The bound itself as a sentinel: min/max of an empty concatenation would raise.
            tests.append(f"{const} {op} {pick.__name__}(({const},) + " + " + ".join(members) + ")")
    if strict:
        tests.append("(_s := sum(" + " + ".join(var[n] for n in strict) + ")) == _s")
    return tests


def _fast_source(cls: type[Message], consts: dict[str, Any]) -> tuple[str, str]:
    """Source of ``_fast_valid(<fields>)`` and ``_decode(payload)`` for ``cls``."""
    names = list(cls.FIELDS)
    args = ", ".join(f"f_{n}" for n in names)
    arrays = {n: k for n, k in cls.FIELDS.items() if isinstance(k, FloatArray)}
    tests = [cls.FIELDS[n].fast(f"f_{n}", consts) for n in names] + _array_tests(arrays, consts)
    valid = f"def _fast_valid({args}):\n    return (\n        " + ("\n        and ".join(tests) if tests else "True") + "\n    )\n"
    lines = ["def _decode(p):", "    get = p.get"]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        default = "_MISSING" if f.default is dataclasses.MISSING else _const(consts, f.default)
        lines.append(f"    f_{f.name} = get({f.name!r}, {default})")
    # A missing required key is _MISSING, which no fast test accepts: the generic path says so.
    lines.append(f"    if not _fast_valid({args}):")
    lines.append("        return _generic(_cls, p)")
    lines.append("    obj = _new(_Twin)")
    lines.extend(f"    obj.{n} = f_{n}" for n in names)
    lines.append("    obj.__class__ = _cls")
    lines.append("    try:")
    lines.append("        obj._check_consistency()")
    lines.append("    except LocalProtocolError as exc:")
    lines.append("        raise RemoteProtocolError(str(exc), reason='invalid_value') from None")
    lines.append("    return obj")
    return valid, "\n".join(lines) + "\n"


@dataclass_transform(frozen_default=True, field_specifiers=(wire,))
def message(type_code: MsgType, *, reliable: bool = False) -> Callable[[_M], _M]:
    """Class decorator: a frozen slots dataclass whose schema is its field declarations."""

    def decorate(cls: _M) -> _M:
        cls.TYPE = type_code
        cls.RELIABLE = reliable
        made: Any = dataclass(frozen=True, slots=True)(cls)
        fields = dataclasses.fields(made)
        made.FIELDS = {f.name: f.metadata["kind"] for f in fields}
        made.UNITS = {f.name: f.metadata["unit"] for f in fields}
        names = tuple(made.FIELDS)
        twin = type(f"_{made.__name__}Twin", (Message,), {"__slots__": names})
        consts: dict[str, Any] = {}
        valid_src, decode_src = _fast_source(made, consts)
        payload_src = "def _payload(self):\n    return {" + ", ".join(f"{n!r}: self.{n}" for n in names) + "}\n"
        scope: dict[str, Any] = {
            **consts, "_FLOATS": _FLOATS, "_INTS": _INTS, "_MISSING": _MISSING,
            "_generic": _decode_generic, "_new": object.__new__, "_Twin": twin, "_cls": made,
            "LocalProtocolError": LocalProtocolError, "RemoteProtocolError": RemoteProtocolError,
        }
        made._source = valid_src + decode_src + payload_src  # for a reader who wants to see it
        exec(made._source, scope)
        made._fast_valid = staticmethod(scope["_fast_valid"])
        made._decode = staticmethod(scope["_decode"])
        made._payload = scope["_payload"]
        return made  # type: ignore[no-any-return]

    return decorate


_MISSING = object()  # a required key the payload lacks: no fast test accepts it


def _decode_generic(cls: type[Message], payload: dict[str, Any]) -> Message:
    """The reference decoder: coerce each field by its kind, build, validate (slow, precise)."""
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in payload:
            kwargs[field.name] = cls.FIELDS[field.name].from_wire(payload[field.name])
        elif field.default is dataclasses.MISSING:
            raise RemoteProtocolError(f"{cls.__name__}: missing field {field.name!r}")
    try:
        return cls(**kwargs)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(str(exc), reason="invalid_value") from None


def _same_lengths(msg: Message, names: tuple[str, ...]) -> None:
    lengths = {len(getattr(msg, n)) for n in names}
    if len(lengths) != 1:
        raise LocalProtocolError(
            f"{type(msg).__name__}: arrays {', '.join(names)} must have equal lengths"
        )


@message(MsgType.HELLO)
class Hello(Message):
    """Node → board: open a session and offer a range of protocol versions."""

    node_id: str = wire(Str())
    min_version: int = wire(VERSION, default=SUPPORTED_VERSIONS[0])
    max_version: int = wire(VERSION, default=SUPPORTED_VERSIONS[1])

    def _check_consistency(self) -> None:
        if self.min_version > self.max_version or self.min_version < 1:
            raise LocalProtocolError("Hello: need 1 <= min_version <= max_version")


@message(MsgType.HELLO_ACK)
class HelloAck(Message):
    """Board → node: the chosen version (0: none in common) and what the board is."""

    version: int = wire(VERSION)
    min_version: int = wire(VERSION, default=SUPPORTED_VERSIONS[0], kw_only=True)
    max_version: int = wire(VERSION, default=SUPPORTED_VERSIONS[1], kw_only=True)
    board_id: str = wire(Str())
    fw_version: str = wire(Str())
    gpu_count: int = wire(Int(1, MAX_GPUS))
    cap_min_w: float = wire(Float(*POWER_RANGE_W), unit="W")
    cap_max_w: float = wire(Float(*POWER_RANGE_W), unit="W")
    sensor_rate_hz: float = wire(Float(0.01, 1000.0), unit="Hz")
    watchdog_s: float = wire(Float(0.1, 3600.0), unit="s")
    #: BoardFeature bits; 0 from a board that declares nothing (checkpoints, lockstep off).
    features: int = wire(U32, default=0, kw_only=True)

    def _check_consistency(self) -> None:
        if self.cap_min_w > self.cap_max_w:
            raise LocalProtocolError("HelloAck: cap_min_w must not exceed cap_max_w")


@message(MsgType.HEARTBEAT)
class Heartbeat(Message):
    """Either direction: I am alive.  Best-effort; a node sends one at least every second."""

    uptime_s: float = wire(Float(0.0, 1e10), unit="s")


@message(MsgType.STEP_DONE)
class StepDone(Message):
    """Node → board: done with the SENSOR frame of board time ``t_board`` (lockstep).  Best-effort."""

    t_board: float = wire(Float(0.0, 1e10), unit="s")


@message(MsgType.SENSOR)
class Sensor(Message):
    """Board → node: one sensor frame.  Best-effort; loss is counted by sequence number."""

    t_board: float = wire(Float(0.0, 1e10), unit="s")
    utc: float = wire(Float(0.0, 1e11), unit="s")
    temp_c: tuple[float, ...] = wire(FloatArray(*TEMP_RANGE_C, allow_nan=True), unit="°C")
    power_w: tuple[float, ...] = wire(FloatArray(*POWER_RANGE_W), unit="W")
    cap_w: tuple[float, ...] = wire(FloatArray(*POWER_RANGE_W), unit="W")
    progress: tuple[float, ...] = wire(FloatArray(0.0, 1e18), unit="work units")
    rails: int = wire(U32)
    solar_w: float = wire(Float(0.0, 1e6), unit="W")
    battery_soc: float = wire(Float(0.0, 1.0), unit="1")
    radiator_c: float = wire(Float(*TEMP_RANGE_C, allow_nan=True), unit="°C")
    flags: int = wire(U32, default=0)
    rx_errors: int = wire(U32, default=0)
    # Optional fields (ICD §4.4): older senders leave them out and receivers default them;
    # -1.0 in the optional float fields: not reported.
    battery_wh: float = wire(Float(-1.0, 1e7), default=-1.0, unit="Wh")
    battery_capacity_wh: float = wire(Float(-1.0, 1e7), default=-1.0, unit="Wh")
    bus_v: float = wire(Float(-1.0, 1e4), default=-1.0, unit="V")
    avionics_w: float = wire(Float(-1.0, POWER_RANGE_W[1]), default=-1.0, unit="W")
    orbit_period_s: float = wire(Float(-1.0, 1e7), default=-1.0, unit="s")
    #: to the next eclipse entry; 0 in eclipse; -1 none ahead
    eclipse_in_s: float = wire(Float(-1.0, 1e7), default=-1.0, unit="s")
    #: to the next eclipse exit (sun returns); 0 in sunlight
    sun_in_s: float = wire(Float(-1.0, 1e7), default=-1.0, unit="s")
    #: Xid error counter per GPU since board boot (empty: not reported)
    xid: tuple[int, ...] = wire(IntArray(0, UINT32_MAX), default=(), unit="count")
    gpu_ok: int = wire(U32, default=UINT32_MAX)  # bit i: GPU i is on the bus (not dropped out)
    slowdown: int = wire(U32, default=0)  # bit i: GPU i is in hardware thermal slowdown
    #: progress the last finished checkpoint kept, per GPU (empty: not reported)
    saved: tuple[float, ...] = wire(FloatArray(0.0, 1e18, allow_empty=True), default=(), unit="work units")
    ckpt: int = wire(U32, default=0)  # bit i: GPU i is checkpointing (its work paused)

    def _check_consistency(self) -> None:
        n = len(self.temp_c)
        if not len(self.power_w) == len(self.cap_w) == len(self.progress) == n:
            _same_lengths(self, ("temp_c", "power_w", "cap_w", "progress"))
        if self.xid and len(self.xid) != n:
            raise LocalProtocolError("Sensor: xid must be empty or have one counter per GPU")
        if self.saved and len(self.saved) != n:
            raise LocalProtocolError("Sensor: saved must be empty or have one value per GPU")

    @property
    def gpu_count(self) -> int:
        return len(self.temp_c)


@message(MsgType.SET_CAPS, reliable=True)
class SetCaps(Message):
    """Node → board: the power cap of every GPU.  Reliable; the newest one wins."""

    cap_w: tuple[float, ...] = wire(FloatArray(*POWER_RANGE_W), unit="W")

    def supersede_key(self) -> object | None:
        return MsgType.SET_CAPS


@message(MsgType.SET_RAIL, reliable=True)
class SetRail(Message):
    """Node → board: switch one GPU's power rail.  Reliable."""

    gpu: int = wire(Int(0, MAX_GPUS - 1))
    on: bool = wire(Bool())

    def supersede_key(self) -> object | None:
        return (MsgType.SET_RAIL, self.gpu)


@message(MsgType.RESET_BOARD, reliable=True)
class ResetBoard(Message):
    """Node → board: reboot the board (board time restarts at 0; the node re-handshakes).  Reliable."""

    def supersede_key(self) -> object | None:
        return MsgType.RESET_BOARD


@message(MsgType.CHECKPOINT, reliable=True)
class Checkpoint(Message):
    """Node → board: checkpoint GPU ``gpu``'s job.  Reliable.

    The board pauses that GPU's work for ``pause_s`` board seconds (the time to write the
    checkpoint: its size over the storage bandwidth) and, if no work was lost meanwhile,
    keeps the progress it had when the pause began (SENSOR ``saved``).
    """

    gpu: int = wire(Int(0, MAX_GPUS - 1))
    pause_s: float = wire(Float(0.0, 3600.0), unit="s")

    def supersede_key(self) -> object | None:
        return (MsgType.CHECKPOINT, self.gpu)


@message(MsgType.RESTORE, reliable=True)
class Restore(Message):
    """Node → board: GPU ``gpu``'s job resumes from ``progress`` (a verified checkpoint).  Reliable."""

    gpu: int = wire(Int(0, MAX_GPUS - 1))
    progress: float = wire(Float(0.0, 1e18), unit="work units")

    def supersede_key(self) -> object | None:
        return (MsgType.RESTORE, self.gpu)


@message(MsgType.ACK)
class Ack(Message):
    """Either direction: the reliable frame ``ack_seq`` arrived; ``status`` says how it went."""

    ack_seq: int = wire(Int(1, UINT32_MAX))
    status: int = wire(Int(0, 255), default=int(AckStatus.OK))


@message(MsgType.HIL_SET, reliable=True)
class HilSet(Message):
    """Harness → board (HIL port): set a simulation parameter.  Reliable."""

    name: str = wire(Str())
    value: float | tuple[float, ...] = wire(HilNumber())

    def supersede_key(self) -> object | None:
        return (MsgType.HIL_SET, self.name)


@message(MsgType.HIL_GET)
class HilGet(Message):
    """Harness → board (HIL port): ask for a value; answered by HIL_VALUE.  Best-effort."""

    name: str = wire(Str())


@message(MsgType.HIL_VALUE)
class HilValue(Message):
    """Board → harness (HIL port): a value asked for (``ref`` is the request's sequence)."""

    name: str = wire(Str())
    value: float | tuple[float, ...] = wire(HilNumber())
    ref: int = wire(U32, default=0)


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

    Unknown payload keys are ignored (a later minor revision may add fields); missing
    ones without a default are errors.
    """
    cls = MESSAGE_TYPES.get(type_code)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type 0x{type_code:02x}", reason="unknown_type")
    if not isinstance(payload, dict):
        raise RemoteProtocolError(f"{cls.__name__}: payload is not a map", reason="decode")
    return cls._decode(payload)
