"""Serial codec throughput against plain msgpack on the same bodies."""

from __future__ import annotations

import msgpack

from bench.registry import Context, Result, benchmark
from node.link.codec import FrameDecoder, encode_body, encode_frame
from node.link.messages import PROTOCOL_VERSION, Message
from node.link.vectors import SENSOR_8GPU

#: Distinct frames cycled through, so every call sees a different sequence number.
_FRAMES = 1024
_MASK = _FRAMES - 1


def _sensor() -> Message:
    return SENSOR_8GPU  # realistic 8-GPU frame: ~430 bytes on the wire, one NaN


def _note(message: Message) -> str:
    size = len(encode_frame(message, 1))
    return f"8-GPU SENSOR, {size} B on the wire"


@benchmark("codec.encode")
def codec_encode(ctx: Context) -> Result:
    message = _sensor()
    code = int(message.TYPE)

    def ours(n: int) -> None:
        for i in range(n):
            encode_frame(message, (i & _MASK) + 1)

    def plain(n: int) -> None:
        payload = message.payload()  # built once: the baseline is the serialisation alone
        for i in range(n):
            msgpack.packb([PROTOCOL_VERSION, code, (i & _MASK) + 1, payload], use_bin_type=True)

    value, baseline = ctx.paired_rates(ours, plain)
    return Result(
        value=value,
        unit="frames/s",
        baseline=baseline,
        notes=f"encode_frame (payload map, msgpack, CRC-32, COBS) vs msgpack.packb of "
        f"the same body; {_note(message)}",
    )


@benchmark("codec.decode")
def codec_decode(ctx: Context) -> Result:
    message = _sensor()
    wires = [encode_frame(message, s + 1) for s in range(_FRAMES)]
    bodies = [encode_body(message, s + 1) for s in range(_FRAMES)]
    check = FrameDecoder()
    check.feed(wires[0])
    assert check.next_frame() is not None, "benchmark frame does not decode"

    def ours(n: int) -> None:
        decoder = FrameDecoder()
        for i in range(n):
            decoder.feed(wires[i & _MASK])
            decoder.next_frame()

    def plain(n: int) -> None:
        for i in range(n):
            msgpack.unpackb(bodies[i & _MASK])

    value, baseline = ctx.paired_rates(ours, plain)
    return Result(
        value=value,
        unit="frames/s",
        baseline=baseline,
        notes=f"FrameDecoder.feed + next_frame (COBS, CRC, msgpack, validation) vs "
        f"msgpack.unpackb of the same body; {_note(message)}",
    )
