"""Serial frame codec, sans-I/O (docs/ICD.md §2).

Wire form of one frame::

    COBS( msgpack([version, type, seq, payload]) + CRC32_LE(msgpack bytes) ) + 0x00

``encode_frame`` makes those bytes.  :class:`FrameDecoder` is fed whatever bytes arrive —
whole frames, single bytes, chunks with garbage in between — and hands back validated
:class:`Frame` values.  Bad frames are counted and skipped; the decoder resynchronises at
the next 0x00 and never raises on input.
"""

from __future__ import annotations

import threading
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
from cobs import cobs

from node.errors import LocalProtocolError, RemoteProtocolError
from node.link.messages import PROTOCOL_VERSION, UINT32_MAX, Message, message_from_payload

DELIMITER = b"\x00"
#: Largest msgpack body a receiver must accept (bytes, before CRC and COBS).
MAX_BODY = 4096
_CRC_LEN = 4
#: COBS adds at most one byte per 254 plus one.
MAX_ENCODED = MAX_BODY + _CRC_LEN + (MAX_BODY + _CRC_LEN) // 254 + 1


class Frame(NamedTuple):
    """One decoded frame: the envelope around a message (a tuple: built once per frame)."""

    version: int
    seq: int
    message: Message


_local = threading.local()


def _packer() -> msgpack.Packer:
    """One msgpack Packer per thread (a Packer is not thread-safe; making one per call costs)."""
    try:
        packer: msgpack.Packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer


def encode_body(message: Message, seq: int, version: int = PROTOCOL_VERSION) -> bytes:
    """The msgpack body of a frame (no CRC, no COBS)."""
    if not 0 <= seq <= UINT32_MAX:
        raise LocalProtocolError(f"sequence number {seq} outside uint32")
    body: bytes = _packer().pack((version, message.TYPE.value, seq, message.payload()))
    if len(body) > MAX_BODY:
        raise LocalProtocolError(f"{type(message).__name__} body is {len(body)} B > {MAX_BODY}")
    return body


def frame_from_body(body: bytes) -> bytes:
    """Wire bytes for a msgpack body: CRC-32, COBS, delimiter (also for deliberately bad bodies)."""
    encoded: bytes = cobs.encode(body + zlib.crc32(body).to_bytes(4, "little"))
    return encoded + DELIMITER


def encode_frame(message: Message, seq: int, version: int = PROTOCOL_VERSION) -> bytes:
    """Complete wire bytes of one frame, delimiter included."""
    return frame_from_body(encode_body(message, seq, version))


def decode_frame(encoded: bytes) -> Frame:
    """Decode the bytes between two delimiters (without the 0x00).

    Raises :class:`RemoteProtocolError` with ``reason`` one of ``oversize``, ``cobs``,
    ``crc``, ``decode``, ``unknown_type``, ``invalid_value``, ``version``.
    """
    if len(encoded) > MAX_ENCODED:
        raise RemoteProtocolError(f"frame of {len(encoded)} B exceeds {MAX_ENCODED}", reason="oversize")
    try:
        raw = cobs.decode(encoded)
    except cobs.DecodeError as exc:
        raise RemoteProtocolError(f"bad COBS: {exc}", reason="cobs") from None
    if len(raw) <= _CRC_LEN:
        raise RemoteProtocolError(f"frame of {len(raw)} B is too short", reason="decode")
    size = len(raw) - _CRC_LEN
    if size > MAX_BODY:
        raise RemoteProtocolError(f"body of {size} B exceeds {MAX_BODY}", reason="oversize")
    body = raw[:size]
    if zlib.crc32(body) != int.from_bytes(raw[size:], "little"):
        raise RemoteProtocolError("CRC mismatch", reason="crc")
    try:
        return _decode_body(body)
    except RemoteProtocolError as exc:
        exc.whole = True  # the CRC matched: whoever sent it is alive, it only sent nonsense
        raise


def _decode_body(body: bytes) -> Frame:
    try:
        # Arrays as tuples: messages keep tuples, and the compiled decoders expect them.
        envelope: Any = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=False)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise RemoteProtocolError(f"body is not msgpack: {exc}", reason="decode") from None
    if type(envelope) is not tuple or len(envelope) != 4:
        raise RemoteProtocolError("envelope is not [version, type, seq, payload]", reason="decode")
    version, type_code, seq, payload = envelope
    if not (type(version) is int and type(type_code) is int and type(seq) is int):
        raise RemoteProtocolError("envelope is not [version, type, seq, payload]", reason="decode")
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(f"protocol version {version} not spoken", reason="version")
    if not 0 <= seq <= UINT32_MAX:
        raise RemoteProtocolError(f"sequence number {seq} outside uint32", reason="decode")
    return Frame(version, seq, message_from_payload(type_code, payload))


@dataclass(slots=True)
class DecoderStats:
    """Counters for what the decoder threw away.  They go into telemetry."""

    frames: int = 0
    bytes_dropped: int = 0
    crc_errors: int = 0
    oversize: int = 0
    decode_errors: int = 0  # bad COBS, bad msgpack, bad envelope or values, unknown type

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass
class FrameDecoder:
    """Feed bytes in, take validated frames out.  Never raises on input."""

    stats: DecoderStats = field(default_factory=DecoderStats)
    _buffer: bytearray = field(default_factory=bytearray)
    _frames: deque[Frame] = field(default_factory=deque)
    _discarding: bool = False  # inside an oversize run: drop until the next delimiter
    #: The last rejected frame's error, for logs.
    last_error: RemoteProtocolError | None = None
    #: Errors of rejected frames not yet taken by the caller (``take_rejected``), bounded.
    rejected: deque[RemoteProtocolError] = field(default_factory=lambda: deque(maxlen=64))

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(0, start)
            if end < 0:
                self._accumulate(data[start:])
                return
            if self._buffer or self._discarding:
                self._accumulate(data[start:end])
                self._end_of_frame()
            elif end > start:  # a whole frame inside this chunk: no copy through the buffer
                self._frame(data[start:end])
            start = end + 1

    def _accumulate(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._discarding:
            self.stats.bytes_dropped += len(chunk)
            return
        self._buffer += chunk
        if len(self._buffer) > MAX_ENCODED:
            # No delimiter in sight: this cannot become a valid frame; stop buffering.
            self.stats.bytes_dropped += len(self._buffer)
            self.stats.oversize += 1
            self._buffer.clear()
            self._discarding = True

    def _end_of_frame(self) -> None:
        if self._discarding:
            self._discarding = False
            self.stats.bytes_dropped += 1  # the delimiter that ended the bad run
            return
        if not self._buffer:
            return  # back-to-back delimiters are legal padding
        encoded = bytes(self._buffer)
        self._buffer.clear()
        self._frame(encoded)

    def _frame(self, encoded: bytes) -> None:
        if len(encoded) > MAX_ENCODED:  # one oversize run, as if it had been buffered
            self.stats.bytes_dropped += len(encoded) + 1
            self.stats.oversize += 1
            return
        try:
            frame = decode_frame(encoded)
        except RemoteProtocolError as exc:
            self.last_error = exc
            self.stats.bytes_dropped += len(encoded) + 1
            if exc.reason == "crc":
                self.stats.crc_errors += 1
            elif exc.reason == "oversize":
                self.stats.oversize += 1
            else:
                self.stats.decode_errors += 1
            self.rejected.append(exc)
            return
        self.stats.frames += 1
        self._frames.append(frame)

    def next_frame(self) -> Frame | None:
        """The next complete, valid frame, or None when more bytes are needed."""
        return self._frames.popleft() if self._frames else None

    def take_rejected(self) -> list[RemoteProtocolError]:
        """Why frames were rejected since the last call (oldest first, at most 64 kept)."""
        out = list(self.rejected)
        self.rejected.clear()
        return out

    def frames(self) -> list[Frame]:
        """Every frame decoded so far, oldest first."""
        out = list(self._frames)
        self._frames.clear()
        return out
