"""MQTT topics and payloads between node and ground (docs/ICD.md §5).

Topics live under ``umbra/v1/<node_id>/``.  Payloads are msgpack maps; each is a frozen
value here with ``to_wire`` / ``from_wire`` at the edge.  Ground code decodes with the
same classes, so both ends agree by construction.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self, TypeVar, dataclass_transform

import msgpack

from node.errors import LocalProtocolError, RemoteProtocolError

TOPIC_ROOT = "umbra/v1"
NODE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class Leaf(enum.StrEnum):
    STATE = "state"
    HK = "tm/hk"
    EVENT = "tm/event"
    TC = "tc"
    TC_REPORT = "tc/report"
    #: The file service (ICD §5.9): PDUs node → ground, and envelopes ground → node.
    FILE_TM = "file/tm"
    FILE_TC = "file/tc"


def check_node_id(node_id: str) -> str:
    if not NODE_ID_RE.fullmatch(node_id):
        raise LocalProtocolError(
            f"node id {node_id!r} must be 1-32 characters of letters, digits, '-' or '_'"
        )
    return node_id


def topic(node_id: str, leaf: Leaf) -> str:
    return f"{TOPIC_ROOT}/{check_node_id(node_id)}/{leaf.value}"


def topic_filter(leaf: Leaf, node_id: str | None = None) -> str:
    """Subscription filter for one leaf of one node, or of every node (``+``)."""
    return f"{TOPIC_ROOT}/{check_node_id(node_id) if node_id else '+'}/{leaf.value}"


def parse_topic(name: str) -> tuple[str, Leaf]:
    """``umbra/v1/<node>/<leaf>`` → (node, leaf); anything else raises RemoteProtocolError."""
    prefix = TOPIC_ROOT + "/"
    if not name.startswith(prefix):
        raise RemoteProtocolError(f"topic {name!r} is not under {TOPIC_ROOT}")
    node_id, _, leaf = name[len(prefix) :].partition("/")
    try:
        return check_node_id(node_id), Leaf(leaf)
    except (ValueError, LocalProtocolError):
        raise RemoteProtocolError(f"topic {name!r} is not an Umbra topic") from None


class Severity(enum.IntEnum):
    """Event severity, as in F´: higher is worse."""

    DEBUG = 0
    INFO = 1
    WARNING = 2
    ERROR = 3
    CRITICAL = 4


class Mode(enum.StrEnum):
    BOOT = "BOOT"
    NOMINAL = "NOMINAL"
    POWER_SAVE = "POWER_SAVE"
    THERMAL_LIMIT = "THERMAL_LIMIT"
    SAFE = "SAFE"


def _finite_or_none(values: tuple[float, ...]) -> list[float | None]:
    # msgpack carries NaN fine, but ground tools (CSV, JSON, plots) prefer an explicit gap.
    return [None if math.isnan(v) else v for v in values]


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: Field kinds of the MQTT payloads (docs/ICD.md §5.4) and how to recognise them.
_KINDS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "int": _integer,
    "float": _number,
    "float or nil": lambda v: v is None or _number(v),
    "array of floats": lambda v: isinstance(v, tuple) and all(_number(x) for x in v),
    "array of floats or nils": lambda v: isinstance(v, tuple)
    and all(x is None or _number(x) for x in v),
    "map of str to int": lambda v: isinstance(v, dict)
    and all(isinstance(k, str) and _integer(x) and 0 <= x <= 2**63 - 1 for k, x in v.items()),
    "map with str keys": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "bin": lambda v: isinstance(v, bytes),
}


UINT63_MAX = 2**63 - 1  # a telemetry seq or counter still fits a signed 64-bit column
#: Longest event text (characters); a node cuts its own texts to this before publishing.
MAX_EVENT_TEXT = 2000
#: Deepest nesting of maps and arrays inside ``args`` / ``data`` maps (the map itself is 1).
MAX_NESTING = 8
#: Most elements (keys, values, array items) inside one ``args`` / ``data`` map, all levels.
MAX_ELEMENTS = 1024


def check_nesting(value: Any, what: str) -> None:
    """Refuse a structure nested deeper than MAX_NESTING or holding more than MAX_ELEMENTS.

    Iterative on purpose: it runs before anything recursive (canonicalisation, JSON) sees
    the value, so a hostile 900-deep map cannot raise RecursionError there.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_NESTING:
            raise LocalProtocolError(f"{what} is nested deeper than {MAX_NESTING} levels")
        seen += len(children)
        if seen > MAX_ELEMENTS:
            raise LocalProtocolError(f"{what} holds more than {MAX_ELEMENTS} elements")
        stack.extend((c, depth + 1) for c in children)


def clip_text(text: str, limit: int = MAX_EVENT_TEXT) -> str:
    """A text cut to ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def wire(
    kind: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    unit: str = "",
    lo: float | None = None,
    hi: float | None = None,
) -> Any:
    """Declare a payload field: its wire kind (a key of ``_KINDS``), unit, range and default."""
    if kind not in _KINDS:
        raise ValueError(f"unknown payload kind {kind!r}")
    metadata = {"kind": kind, "unit": unit, "range": None if lo is None and hi is None else (lo, hi)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_P = TypeVar("_P", bound="type[_Payload]")


@dataclass_transform(frozen_default=True, field_specifiers=(wire,))
def payload(leaf: Leaf) -> Callable[[_P], _P]:
    """Class decorator: a frozen slots dataclass whose schema (``TYPES``, ``UNITS``,
    ``RANGES``) is derived from its field declarations."""

    def decorate(cls: _P) -> _P:
        cls.LEAF = leaf
        made: Any = dataclass(frozen=True, slots=True)(cls)
        fields = dataclasses.fields(made)
        made.TYPES = {f.name: f.metadata["kind"] for f in fields}
        made.UNITS = {f.name: f.metadata["unit"] for f in fields if f.metadata["unit"]}
        made.RANGES = {f.name: f.metadata["range"] for f in fields if f.metadata["range"] is not None}
        return made  # type: ignore[no-any-return]

    return decorate


@dataclass(frozen=True, slots=True)
class _Payload:
    LEAF: ClassVar[Leaf]
    #: field name → kind in _KINDS; checked before anything else when a payload is built.
    TYPES: ClassVar[dict[str, str]] = {}
    UNITS: ClassVar[dict[str, str]] = {}
    #: field name → (lo, hi) of a number (None: unbounded on that side; NaN never passes).
    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {}

    def _check_types(self) -> None:
        for name, kind in self.TYPES.items():
            value = getattr(self, name)
            if not _KINDS[kind](value):
                raise LocalProtocolError(
                    f"{type(self).__name__}.{name}: expected {kind}, got {type(value).__name__}"
                )
        for name, (lo, hi) in self.RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
                raise LocalProtocolError(f"{type(self).__name__}.{name} = {value!r} outside [{lo}, {hi}]")

    def to_wire(self) -> bytes:
        data: bytes = msgpack.packb(self._to_map(), use_bin_type=True)
        return data

    def _to_map(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        try:
            mapping = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:
            raise RemoteProtocolError(f"{cls.__name__}: payload is not msgpack: {exc}") from None
        if not isinstance(mapping, dict):
            raise RemoteProtocolError(f"{cls.__name__}: payload is not a map")
        try:
            return cls._from_map(mapping)
        except (KeyError, TypeError, ValueError, LocalProtocolError) as exc:
            raise RemoteProtocolError(f"{cls.__name__}: bad payload: {exc!r}",
                                      reason="invalid_value") from None

    @classmethod
    def _from_map(cls, mapping: dict[str, Any]) -> Self:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in mapping.items() if k in names})


@payload(Leaf.STATE)
class NodeState(_Payload):
    """``state`` (retained): birth when online, the Last Will when the node vanishes."""

    node_id: str = wire("str")
    online: bool = wire("bool")
    boot_id: str = wire("str", default="")
    version: str = wire("str", default="")
    utc: float = wire("float", default=0.0, unit="s", lo=0.0, hi=1e11)
    #: node.bus.commands.dictionary_hash() of the node's command and telemetry dictionary.
    dict_hash: str = wire("str", default="")

    def __post_init__(self) -> None:
        self._check_types()
        check_node_id(self.node_id)


@payload(Leaf.HK)
class Housekeeping(_Payload):
    """``tm/hk``: the node's periodic housekeeping packet.

    GPU arrays are per GPU index; a temperature of ``None`` is a sensor that gave no
    valid reading (the controller then runs on its estimate).
    """

    node_id: str = wire("str")
    seq: int = wire("int", lo=0, hi=UINT63_MAX)
    utc: float = wire("float", unit="s", lo=0.0, hi=1e11)
    t_board: float = wire("float", unit="s", lo=0.0, hi=1e10)
    mode: str = wire("str")
    link_up: bool = wire("bool")
    temp_c: tuple[float | None, ...] = wire("array of floats or nils", unit="°C")
    power_w: tuple[float, ...] = wire("array of floats", unit="W")
    cap_w: tuple[float, ...] = wire("array of floats", unit="W")
    progress: tuple[float, ...] = wire("array of floats", unit="work units")
    solar_w: float = wire("float", unit="W")
    battery_soc: float = wire("float", unit="1")
    radiator_c: float | None = wire("float or nil", unit="°C")
    board_flags: int = wire("int", lo=0, hi=0xFFFF_FFFF)
    link: dict[str, int] = wire("map of str to int", default_factory=dict)
    control_us: float = wire("float", default=0.0, unit="µs", lo=0.0, hi=1e12)
    #: Set by the outbox when the packet is sent from the backlog after an outage.
    historical: bool = wire("bool", default=False)
    #: Checkpointing per GPU and the interval estimator (docs/jobs.md); empty: no jobs.
    jobs: dict[str, Any] = wire("map with str keys", default_factory=dict)
    #: The serial link's session state (ICD §4.3.1): established, blind, uncommandable, … ("": unknown).
    link_state: str = wire("str", default="")

    def __post_init__(self) -> None:
        self._check_types()
        check_node_id(self.node_id)
        Mode(self.mode)
        n = len(self.temp_c)
        if not (len(self.power_w) == len(self.cap_w) == len(self.progress) == n):
            raise LocalProtocolError("Housekeeping GPU arrays must have equal lengths")

    @classmethod
    def _from_map(cls, mapping: dict[str, Any]) -> Self:
        fixed = dict(mapping)
        for name in ("temp_c", "power_w", "cap_w", "progress"):
            fixed[name] = tuple(fixed[name])
        # Explicit: a slots dataclass is a new class, and zero-argument super() would see the old one.
        return super(Housekeeping, cls)._from_map(fixed)  # noqa: UP008

    @staticmethod
    def temps_for_wire(temps: tuple[float, ...]) -> tuple[float | None, ...]:
        return tuple(_finite_or_none(temps))


@payload(Leaf.EVENT)
class Event(_Payload):
    """``tm/event``: something happened (mode change, link up/down, board watchdog, …)."""

    node_id: str = wire("str")
    seq: int = wire("int", lo=0, hi=UINT63_MAX)
    utc: float = wire("float", unit="s", lo=0.0, hi=1e11)
    t_board: float = wire("float", unit="s", lo=0.0, hi=1e10)
    kind: str = wire("str")
    severity: int = wire("int", lo=0, hi=4)
    text: str = wire("str")
    data: dict[str, Any] = wire("map with str keys", default_factory=dict)
    historical: bool = wire("bool", default=False)

    def __post_init__(self) -> None:
        self._check_types()
        check_node_id(self.node_id)
        Severity(self.severity)
        if not self.kind or len(self.kind) > 64:
            raise LocalProtocolError("Event.kind must be 1-64 characters")
        if len(self.text) > MAX_EVENT_TEXT:
            raise LocalProtocolError(f"Event.text is longer than {MAX_EVENT_TEXT} characters")
        check_nesting(self.data, "Event.data")


#: A counter may run ahead of the receiver's UTC in µs by this much at most (ICD §5.6.3):
#: ground's counters are ``max(last + 1, UTC in µs)``, so only a broken clock or file gets there.
COUNTER_AHEAD_S = 86_400.0


def counter_limit(now: float) -> int:
    """The highest counter acceptable at UTC ``now``."""
    return int((now + COUNTER_AHEAD_S) * 1_000_000)


#: Largest telecommand accepted (bytes of msgpack); larger ones fail as MALFORMED.
MAX_TC_BYTES = 4096
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@payload(Leaf.TC)
class Telecommand(_Payload):
    """``tc`` (ground → node): one signed command (docs/ICD.md §5.6)."""

    node_id: str = wire("str")
    id: str = wire("str")
    counter: int = wire("int", lo=1, hi=UINT63_MAX)
    name: str = wire("str")
    args: dict[str, Any] = wire("map with str keys")
    expires: float = wire("float", unit="s")
    exec_at: float | None = wire("float or nil", default=None, unit="s")
    tag: bytes = wire("bin", default=b"")

    def __post_init__(self) -> None:
        self._check_types()
        check_node_id(self.node_id)
        if not COMMAND_ID_RE.fullmatch(self.id):
            raise LocalProtocolError("Telecommand.id must be 1-64 of A-Z a-z 0-9 _ . : -")
        if not 1 <= len(self.name) <= 64:
            raise LocalProtocolError("Telecommand.name must be 1-64 characters")
        check_nesting(self.args, "Telecommand.args")
        for name in ("expires", "exec_at"):
            value = getattr(self, name)
            if value is not None:
                if not math.isfinite(value):
                    raise LocalProtocolError(f"Telecommand.{name} must be finite")
                object.__setattr__(self, name, float(value))


class Stage(enum.StrEnum):
    """Verification stages of a telecommand (ECSS PUS service 1)."""

    ACCEPTED = "accepted"
    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"


class FailedAt(enum.StrEnum):
    NONE = ""
    ACCEPTANCE = "acceptance"
    START = "start"
    PROGRESS = "progress"
    COMPLETION = "completion"


@payload(Leaf.TC_REPORT)
class TcReport(_Payload):
    """``tc/report``: one verification report about one telecommand."""

    node_id: str = wire("str")
    seq: int = wire("int", lo=0, hi=UINT63_MAX)
    utc: float = wire("float", unit="s", lo=0.0, hi=1e11)
    id: str = wire("str")
    counter: int = wire("int", lo=0, hi=UINT63_MAX)
    name: str = wire("str")
    stage: str = wire("str")
    code: int = wire("int", default=0, lo=0, hi=255)
    reason: str = wire("str", default="")
    at: str = wire("str", default="")
    text: str = wire("str", default="")
    data: dict[str, Any] = wire("map with str keys", default_factory=dict)
    duplicate: bool = wire("bool", default=False)
    historical: bool = wire("bool", default=False)

    def __post_init__(self) -> None:
        self._check_types()
        check_node_id(self.node_id)
        Stage(self.stage)
        FailedAt(self.at)
        if len(self.text) > MAX_EVENT_TEXT:
            raise LocalProtocolError(f"TcReport.text is longer than {MAX_EVENT_TEXT} characters")
        check_nesting(self.data, "TcReport.data")

    @property
    def final(self) -> bool:
        return self.stage in (Stage.COMPLETED, Stage.FAILED)


PAYLOAD_FOR_LEAF: dict[Leaf, type[_Payload]] = {
    Leaf.STATE: NodeState,
    Leaf.HK: Housekeeping,
    Leaf.EVENT: Event,
    Leaf.TC_REPORT: TcReport,
}


def decode_message(topic_name: str, data: bytes) -> tuple[str, _Payload]:
    """Decode any node-published message; RemoteProtocolError when it is not one.

    The topic names the publisher (the broker's ACL lets a node write only under its own
    id), so a payload claiming another node's id is refused (``reason="node_mismatch"``):
    otherwise node-1's credentials could speak for node-2.
    """
    node_id, leaf = parse_topic(topic_name)
    cls = PAYLOAD_FOR_LEAF.get(leaf)
    if cls is None:
        raise RemoteProtocolError(f"no decoder for {leaf.value}", reason="no_decoder")
    decoded = cls.from_wire(data)
    claimed = getattr(decoded, "node_id", node_id)
    if claimed != node_id:
        raise RemoteProtocolError(
            f"payload on {topic_name} claims node {claimed!r}", reason="node_mismatch")
    return node_id, decoded
