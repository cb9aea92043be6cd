"""Serial frame codec, sans-I/O (docs/ICD.md §2).

Wire form of one frame::

    COBS( msgpack([version, type, seq, payload]) + CRC32_LE(msgpack bytes) ) + 0x00

``encode_frame`` makes those bytes.  :class:`FrameDecoder` is fed whatever bytes arrive —
whole frames, single bytes, chunks with garbage in between — and hands back validated
:class:`Frame` values.  Bad frames are counted and skipped; the decoder resynchronises at
the next 0x00 and never raises on input.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: the envelope around a message."""

    version: int
    seq: int
    message: Message


def encode_body(message: Message, seq: int, version: int = PROTOCOL_VERSION) -> bytes:
    """The msgpack body of a frame (no CRC, no COBS)."""
    if not 0 <= seq <= UINT32_MAX:
        raise LocalProtocolError(f"sequence number {seq} outside uint32")
    body: bytes = msgpack.packb(
        [version, int(message.TYPE), seq, message.payload()], use_bin_type=True
    )
    if len(body) > MAX_BODY:
        raise LocalProtocolError(f"{type(message).__name__} body is {len(body)} B > {MAX_BODY}")
    return body


def frame_from_body(body: bytes) -> bytes:
    """Wire bytes for a msgpack body: CRC-32, COBS, delimiter (also for deliberately bad bodies)."""
    return bytes(cobs.encode(body + zlib.crc32(body).to_bytes(4, "little"))) + DELIMITER


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
    body, trailer = raw[:-_CRC_LEN], raw[-_CRC_LEN:]
    if len(body) > MAX_BODY:
        raise RemoteProtocolError(f"body of {len(body)} B exceeds {MAX_BODY}", reason="oversize")
    if zlib.crc32(body) != int.from_bytes(trailer, "little"):
        raise RemoteProtocolError("CRC mismatch", reason="crc")
    try:
        envelope: Any = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise RemoteProtocolError(f"body is not msgpack: {exc}", reason="decode") from None
    if not (
        isinstance(envelope, list)
        and len(envelope) == 4
        and all(isinstance(x, int) and not isinstance(x, bool) for x in envelope[:3])
    ):
        raise RemoteProtocolError("envelope is not [version, type, seq, payload]", reason="decode")
    version, type_code, seq, payload = envelope
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

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(DELIMITER, start)
            if end < 0:
                self._accumulate(data[start:])
                return
            self._accumulate(data[start:end])
            self._end_of_frame()
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
            return
        self.stats.frames += 1
        self._frames.append(frame)

    def next_frame(self) -> Frame | None:
        """The next complete, valid frame, or None when more bytes are needed."""
        return self._frames.popleft() if self._frames else None

    def frames(self) -> list[Frame]:
        """Every frame decoded so far, oldest first."""
        out = list(self._frames)
        self._frames.clear()
        return out
