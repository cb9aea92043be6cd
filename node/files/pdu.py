"""The file service's messages (docs/ICD.md §5.9): frozen values, msgpack at the edge.

A transfer moves one file from a *sender* to a *receiver* in the manner of CCSDS CFDP
class 2: the sender announces it (``meta``), sends its bytes in chunks (``data``, each with
its offset and a CRC-32 of its bytes) and says it has sent them all (``eof``); the
receiver says what it holds and what it still needs (``ack``, with missing ranges) and,
once it holds every byte and the whole file's hash matches, that it is done (``fin``).
Either side may give up (``cancel``).  A downlink's sender is the node, an uplink's is
ground.

Topics: everything the node says goes on ``umbra/v1/<node>/file/tm`` as a plain PDU map;
everything ground says goes on ``umbra/v1/<node>/file/tc`` inside an authenticated envelope
``{"pdu": bin, "tag": bin}``, the tag being HMAC-SHA256 under the node's telecommand key of
``"umbra-file-v1" 0x00 <node_id> 0x00 <pdu bytes>``: a forged ``fin`` must not make a
node drop a file ground never got, nor a forged chunk spoil an uplink.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import zlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import msgpack

from node.bus.payloads import check_nesting, check_node_id
from node.errors import LocalProtocolError, RemoteProtocolError

DOMAIN = b"umbra-file-v1"
XFER_RE = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
#: A file's hash (either algorithm in HASHES), as lowercase hex.
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
#: A file name: one path component, printable, no separators.
NAME_RE = re.compile(r"^[A-Za-z0-9_.+=@,-][A-Za-z0-9_.+=@, -]{0,199}$")
MAX_FILE_BYTES = 2**40
MIN_CHUNK = 1024
#: A chunk and its envelope stay well inside the broker's 256 KiB message limit (ICD §5.8).
MAX_CHUNK = 200 * 1024
#: Missing ranges one ``ack`` carries at most (the rest follow in the next one).
MAX_RANGES = 256
HASHES = ("blake3", "sha256")
DIRECTIONS = ("down", "up")
KINDS = ("checkpoint", "result", "bundle", "file")


class FinStatus(enum.StrEnum):
    OK = "ok"                # every byte held and the hash matched (and, for a bundle, it was installed)
    FAILED = "failed"        # the receiver gave up (reason says why)
    REFUSED = "refused"      # the receiver will not take this file at all (too big, unsigned, unsafe, …)
    CANCELLED = "cancelled"  # the sender or an operator cancelled it


class Pdu:
    """Common wire handling; subclasses are frozen slots dataclasses with a ``KIND``."""

    KIND: ClassVar[str]

    def to_map(self) -> dict[str, Any]:
        return {"k": self.KIND, **asdict(self)}  # type: ignore[call-overload]

    def to_wire(self) -> bytes:
        data: bytes = msgpack.packb(self.to_map(), use_bin_type=True)
        return data


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise LocalProtocolError(what)


def _int(value: Any, lo: int, hi: int, what: str) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi,
           f"{what} = {value!r}: expected an integer in [{lo}, {hi}]")


def _str(value: Any, what: str, limit: int = 200) -> None:
    _check(isinstance(value, str) and len(value) <= limit and value.isprintable(),
           f"{what}: expected printable text of at most {limit} characters")


def _digest(value: Any) -> None:
    _check(isinstance(value, str) and DIGEST_RE.fullmatch(value) is not None, "digest: 64 lowercase hex digits")


def _ids(node_id: str, xfer: str) -> None:
    check_node_id(node_id)
    _check(isinstance(xfer, str) and XFER_RE.fullmatch(xfer) is not None,
           f"xfer {xfer!r}: 1-48 letters, digits, '-' or '_'")


@dataclass(frozen=True, slots=True, kw_only=True)
class Meta(Pdu):
    KIND: ClassVar[str] = "meta"
    node_id: str
    xfer: str
    direction: str
    name: str
    size: int
    chunk: int
    hash: str
    digest: str
    kind: str = "file"
    priority: int = 5
    #: What the file is: for a checkpoint its job, seq and manifest; for a result its job
    #: and path; for a bundle what it is for.  At most 8 levels, 1024 elements.
    info: dict[str, Any] = field(default_factory=dict)
    #: A bundle's Ed25519 signature (docs/ICD.md §5.9.5) and the id of the key that made it.
    signature: bytes = b""
    key_id: str = ""

    def __post_init__(self) -> None:
        _ids(self.node_id, self.xfer)
        _check(self.direction in DIRECTIONS, f"direction {self.direction!r}: up or down")
        _check(isinstance(self.name, str) and NAME_RE.fullmatch(self.name) is not None
               and self.name not in (".", ".."), f"name {self.name!r}: one file name, no '/'")
        _int(self.size, 0, MAX_FILE_BYTES, "size")
        _int(self.chunk, MIN_CHUNK, MAX_CHUNK, "chunk")
        _check(self.hash in HASHES, f"hash {self.hash!r}: one of {', '.join(HASHES)}")
        _digest(self.digest)
        _check(self.kind in KINDS, f"kind {self.kind!r}: one of {', '.join(KINDS)}")
        _int(self.priority, 0, 9, "priority")
        _check(isinstance(self.info, dict) and all(isinstance(k, str) for k in self.info), "info: a map")
        check_nesting(self.info, "Meta.info")
        _check(isinstance(self.signature, bytes) and len(self.signature) in (0, 64), "signature: 64 bytes")
        _str(self.key_id, "key_id", 64)

    @property
    def chunks(self) -> int:
        return -(-self.size // self.chunk)


@dataclass(frozen=True, slots=True, kw_only=True)
class Data(Pdu):
    KIND: ClassVar[str] = "data"
    node_id: str
    xfer: str
    offset: int
    data: bytes
    #: CRC-32 (IEEE, as zlib) of ``data``: a chunk damaged on the way is dropped and asked again.
    crc: int

    def __post_init__(self) -> None:
        _ids(self.node_id, self.xfer)
        _int(self.offset, 0, MAX_FILE_BYTES, "offset")
        _check(isinstance(self.data, bytes) and len(self.data) <= MAX_CHUNK, f"data: at most {MAX_CHUNK} bytes")
        _int(self.crc, 0, 2**32 - 1, "crc")

    def to_map(self) -> dict[str, Any]:  # the hot path: no dataclasses.asdict
        return {"k": "data", "node_id": self.node_id, "xfer": self.xfer, "offset": self.offset, "data": self.data,
                "crc": self.crc}

    @classmethod
    def of(cls, node_id: str, xfer: str, offset: int, data: bytes) -> Data:
        return cls(node_id=node_id, xfer=xfer, offset=offset, data=data, crc=zlib.crc32(data))

    @property
    def intact(self) -> bool:
        return zlib.crc32(self.data) == self.crc


@dataclass(frozen=True, slots=True, kw_only=True)
class Eof(Pdu):
    """Every byte has been sent once (also sent again to ask the receiver where it stands)."""

    KIND: ClassVar[str] = "eof"
    node_id: str
    xfer: str
    size: int
    digest: str

    def __post_init__(self) -> None:
        _ids(self.node_id, self.xfer)
        _int(self.size, 0, MAX_FILE_BYTES, "size")
        _digest(self.digest)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Pdu):
    """Where the receiver stands: bytes held, the run held from 0, the ranges it needs."""

    KIND: ClassVar[str] = "ack"
    node_id: str
    xfer: str
    received: int
    contiguous: int
    #: Ranges ``[start, end)`` the receiver needs, in order: below the highest byte it holds,
    #: and after an ``eof`` up to the size too.  At most MAX_RANGES.
    missing: tuple[tuple[int, int], ...] = ()
    #: The receiver knows no ``meta`` for this transfer: send it again.
    need_meta: bool = False
    #: One past the highest byte held.
    high: int = 0
    #: An answer to the sender's ``meta`` or ``eof``: whatever the sender sent before that
    #: and the receiver does not hold (below the sender's position, from ``high`` on) was lost.
    probe: bool = False

    def __post_init__(self) -> None:
        _ids(self.node_id, self.xfer)
        _int(self.received, 0, MAX_FILE_BYTES, "received")
        _int(self.contiguous, 0, MAX_FILE_BYTES, "contiguous")
        _check(isinstance(self.missing, tuple) and len(self.missing) <= MAX_RANGES,
               f"missing: at most {MAX_RANGES} ranges")
        at = 0
        for pair in self.missing:
            _check(isinstance(pair, tuple) and len(pair) == 2, "missing: [start, end] pairs")
            s, e = pair
            _int(s, at, MAX_FILE_BYTES, "missing start")
            _int(e, s + 1, MAX_FILE_BYTES, "missing end")
            at = e
        _check(isinstance(self.need_meta, bool) and isinstance(self.probe, bool), "need_meta, probe: bools")
        _int(self.high, 0, MAX_FILE_BYTES, "high")

    def to_map(self) -> dict[str, Any]:
        m = Pdu.to_map(self)
        m["missing"] = [list(p) for p in self.missing]
        return m


@dataclass(frozen=True, slots=True, kw_only=True)
class Fin(Pdu):
    KIND: ClassVar[str] = "fin"
    node_id: str
    xfer: str
    status: str
    #: A short code: hash_mismatch, too_big, unsigned, bad_signature, unsafe_path, spool_full, …
    reason: str = ""
    text: str = ""
    #: What the receiver made of it (where it stored the file, what a bundle installed).
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _ids(self.node_id, self.xfer)
        _check(self.status in set(FinStatus), f"status {self.status!r}")
        _str(self.reason, "reason", 64)
        _str(self.text, "text", 2000)
        _check(isinstance(self.info, dict), "info: a map")
        check_nesting(self.info, "Fin.info")


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel(Pdu):
    KIND: ClassVar[str] = "cancel"
    node_id: str
    xfer: str
    reason: str = ""

    def __post_init__(self) -> None:
        _ids(self.node_id, self.xfer)
        _str(self.reason, "reason", 200)


PDUS: dict[str, type[Meta] | type[Data] | type[Eof] | type[Ack] | type[Fin] | type[Cancel]] = {
    c.KIND: c for c in (Meta, Data, Eof, Ack, Fin, Cancel)
}
AnyPdu = Meta | Data | Eof | Ack | Fin | Cancel


def decode(data: bytes) -> AnyPdu:
    """One PDU from its msgpack map; RemoteProtocolError when it is not one."""
    try:
        mapping = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise RemoteProtocolError(f"file PDU is not msgpack: {exc}") from None
    if not isinstance(mapping, dict):
        raise RemoteProtocolError("file PDU is not a map")
    cls = PDUS.get(mapping.get("k"))  # type: ignore[arg-type]
    if cls is None:
        raise RemoteProtocolError(f"file PDU of unknown kind {mapping.get('k')!r}", reason="unknown_kind")
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in mapping.items() if k in names}
    if cls is Ack and isinstance(values.get("missing"), list):
        values["missing"] = tuple(tuple(p) if isinstance(p, list) else p for p in values["missing"])
    try:
        return cls(**values)
    except (TypeError, ValueError, LocalProtocolError) as exc:
        raise RemoteProtocolError(f"bad {cls.KIND} PDU: {exc}", reason="invalid_value") from None


# -- the envelope of what ground sends --------------------------------------------------------


def envelope_tag(key: bytes, node_id: str, pdu: bytes) -> bytes:
    return hmac.new(key, DOMAIN + b"\0" + node_id.encode() + b"\0" + pdu, hashlib.sha256).digest()


def seal(key: bytes, pdu: AnyPdu) -> bytes:
    """``pdu`` in an authenticated envelope for ``file/tc``."""
    body = pdu.to_wire()
    data: bytes = msgpack.packb({"pdu": body, "tag": envelope_tag(key, pdu.node_id, body)}, use_bin_type=True)
    return data


def open_envelope(key: bytes | None, node_id: str, data: bytes) -> AnyPdu:
    """The PDU in an envelope addressed to ``node_id``; RemoteProtocolError (reason
    ``bad_tag``) unless its tag is right under ``key``."""
    try:
        mapping = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise RemoteProtocolError(f"file envelope is not msgpack: {exc}") from None
    if not isinstance(mapping, dict) or not isinstance(mapping.get("pdu"), bytes) \
            or not isinstance(mapping.get("tag"), bytes):
        raise RemoteProtocolError("file envelope is not a map of pdu and tag")
    body, tag = mapping["pdu"], mapping["tag"]
    if key is None or not hmac.compare_digest(envelope_tag(key, node_id, body), tag):
        raise RemoteProtocolError("file envelope: bad tag", reason="bad_tag")
    pdu = decode(body)
    if pdu.node_id != node_id:
        raise RemoteProtocolError(f"file PDU for node {pdu.node_id!r}", reason="wrong_node")
    return pdu


__all__ = ["DOMAIN", "MAX_CHUNK", "MAX_RANGES", "Ack", "AnyPdu", "Cancel", "Data", "Eof", "Fin", "FinStatus",
           "Meta", "decode", "envelope_tag", "open_envelope", "seal"]

