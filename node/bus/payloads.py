"""MQTT topics and payloads between node and ground (docs/ICD.md §5).

Topics live under ``umbra/v1/<node_id>/``.  Payloads are msgpack maps; each is a frozen
value here with ``to_wire`` / ``from_wire`` at the edge.  Ground code decodes with the
same classes, so both ends agree by construction.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Self

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
    and all(isinstance(k, str) and _integer(x) for k, x in v.items()),
    "map with str keys": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "bin": lambda v: isinstance(v, bytes),
}


@dataclass(frozen=True, slots=True)
class _Payload:
    LEAF: ClassVar[Leaf]
    #: field name → kind in _KINDS; checked before anything else when a payload is built.
    TYPES: ClassVar[dict[str, str]] = {}

    def _check_types(self) -> None:
        for name, kind in self.TYPES.items():
            value = getattr(self, name)
            if not _KINDS[kind](value):
                raise LocalProtocolError(
                    f"{type(self).__name__}.{name}: expected {kind}, got {type(value).__name__}"
                )

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
            raise RemoteProtocolError(f"{cls.__name__}: bad payload: {exc!r}") from None

    @classmethod
    def _from_map(cls, mapping: dict[str, Any]) -> Self:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in mapping.items() if k in names})


@dataclass(frozen=True, slots=True)
class NodeState(_Payload):
    """``state`` (retained): birth when online, the Last Will when the node vanishes."""

    LEAF = Leaf.STATE
    TYPES = {
        "node_id": "str",
        "online": "bool",
        "boot_id": "str",
        "version": "str",
        "utc": "float",
        "dict_hash": "str",
    }
    node_id: str
    online: bool
    boot_id: str = ""
    version: str = ""
    utc: float = 0.0
    #: node.bus.commands.dictionary_hash() of the node's command and telemetry dictionary.
    dict_hash: str = ""

    def __post_init__(self) -> None:
        self._check_types()
        check_node_id(self.node_id)


@dataclass(frozen=True, slots=True)
class Housekeeping(_Payload):
    """``tm/hk``: the node's periodic housekeeping packet.

    GPU arrays are per GPU index; a temperature of ``None`` is a sensor that gave no
    valid reading (the controller then runs on its estimate).
    """

    LEAF = Leaf.HK
    TYPES = {
        "node_id": "str",
        "seq": "int",
        "utc": "float",
        "t_board": "float",
        "mode": "str",
        "link_up": "bool",
        "temp_c": "array of floats or nils",
        "power_w": "array of floats",
        "cap_w": "array of floats",
        "progress": "array of floats",
        "solar_w": "float",
        "battery_soc": "float",
        "radiator_c": "float or nil",
        "board_flags": "int",
        "link": "map of str to int",
        "control_us": "float",
        "historical": "bool",
        "jobs": "map with str keys",
        "link_state": "str",
    }
    node_id: str
    seq: int
    utc: float
    t_board: float
    mode: str
    link_up: bool
    temp_c: tuple[float | None, ...]
    power_w: tuple[float, ...]
    cap_w: tuple[float, ...]
    progress: tuple[float, ...]
    solar_w: float
    battery_soc: float
    radiator_c: float | None
    board_flags: int
    link: dict[str, int] = field(default_factory=dict)
    control_us: float = 0.0
    #: Set by the outbox when the packet is sent from the backlog after an outage.
    historical: bool = False
    #: Checkpointing per GPU and the interval estimator (docs/jobs.md); empty: no jobs.
    jobs: dict[str, Any] = field(default_factory=dict)
    #: The serial link's session state (ICD §4.2): established, blind, uncommandable, … ("": unknown).
    link_state: str = ""

    def __post_init__(self) -> None:
        self._check_types()
        check_node_id(self.node_id)
        Mode(self.mode)
        if self.seq < 0:
            raise LocalProtocolError("Housekeeping.seq must be >= 0")
        n = len(self.temp_c)
        if not (len(self.power_w) == len(self.cap_w) == len(self.progress) == n):
            raise LocalProtocolError("Housekeeping GPU arrays must have equal lengths")

    @classmethod
    def _from_map(cls, mapping: dict[str, Any]) -> Self:
        fixed = dict(mapping)
        for name in ("temp_c", "power_w", "cap_w", "progress"):
            fixed[name] = tuple(fixed[name])
        return super(Housekeeping, cls)._from_map(fixed)

    @staticmethod
    def temps_for_wire(temps: tuple[float, ...]) -> tuple[float | None, ...]:
        return tuple(_finite_or_none(temps))


@dataclass(frozen=True, slots=True)
class Event(_Payload):
    """``tm/event``: something happened (mode change, link up/down, board watchdog, …)."""

    LEAF = Leaf.EVENT
    TYPES = {
        "node_id": "str",
        "seq": "int",
        "utc": "float",
        "t_board": "float",
        "kind": "str",
        "severity": "int",
        "text": "str",
        "data": "map with str keys",
        "historical": "bool",
    }
    node_id: str
    seq: int
    utc: float
    t_board: float
    kind: str
    severity: int
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    historical: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        check_node_id(self.node_id)
        Severity(self.severity)
        if not self.kind or len(self.kind) > 64:
            raise LocalProtocolError("Event.kind must be 1-64 characters")


#: Largest telecommand accepted (bytes of msgpack); larger ones fail as MALFORMED.
MAX_TC_BYTES = 4096
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Telecommand(_Payload):
    """``tc`` (ground → node): one signed command (docs/ICD.md §5.6)."""

    LEAF = Leaf.TC
    TYPES = {
        "node_id": "str",
        "id": "str",
        "counter": "int",
        "name": "str",
        "args": "map with str keys",
        "expires": "float",
        "exec_at": "float or nil",
        "tag": "bin",
    }
    node_id: str
    id: str
    counter: int
    name: str
    args: dict[str, Any]
    expires: float
    exec_at: float | None = None
    tag: bytes = b""

    def __post_init__(self) -> None:
        self._check_types()
        check_node_id(self.node_id)
        if not COMMAND_ID_RE.fullmatch(self.id):
            raise LocalProtocolError("Telecommand.id must be 1-64 of A-Z a-z 0-9 _ . : -")
        if not 1 <= self.counter < 2**63:
            raise LocalProtocolError("Telecommand.counter must be 1 … 2**63-1")
        if not 1 <= len(self.name) <= 64:
            raise LocalProtocolError("Telecommand.name must be 1-64 characters")
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


@dataclass(frozen=True, slots=True)
class TcReport(_Payload):
    """``tc/report``: one verification report about one telecommand."""

    LEAF = Leaf.TC_REPORT
    TYPES = {
        "node_id": "str",
        "seq": "int",
        "utc": "float",
        "id": "str",
        "counter": "int",
        "name": "str",
        "stage": "str",
        "code": "int",
        "reason": "str",
        "at": "str",
        "text": "str",
        "data": "map with str keys",
        "duplicate": "bool",
        "historical": "bool",
    }
    node_id: str
    seq: int
    utc: float
    id: str
    counter: int
    name: str
    stage: str
    code: int = 0
    reason: str = ""
    at: str = ""
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    duplicate: bool = False
    historical: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        check_node_id(self.node_id)
        Stage(self.stage)
        FailedAt(self.at)
        if self.seq < 0:
            raise LocalProtocolError("TcReport.seq must be >= 0")

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
    """Decode any node-published message; RemoteProtocolError when it is not one."""
    node_id, leaf = parse_topic(topic_name)
    cls = PAYLOAD_FOR_LEAF.get(leaf)
    if cls is None:
        raise RemoteProtocolError(f"no decoder for {leaf.value}")
    return node_id, cls.from_wire(data)
