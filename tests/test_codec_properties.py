"""Hypothesis properties of the frame codec (docs/ICD.md §2, §4)."""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Any

import msgpack
from cobs import cobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.errors import RemoteProtocolError
from node.link.codec import (
    DELIMITER,
    MAX_BODY,
    MAX_ENCODED,
    Frame,
    FrameDecoder,
    decode_frame,
    encode_body,
    encode_frame,
)
from node.link.messages import (
    MAX_GPUS,
    MAX_NAME_LEN,
    MESSAGE_TYPES,
    POWER_RANGE_W,
    TEMP_RANGE_C,
    UINT32_MAX,
    Ack,
    Checkpoint,
    Heartbeat,
    Hello,
    HelloAck,
    HilGet,
    HilSet,
    HilValue,
    Message,
    ResetBoard,
    Restore,
    Sensor,
    SetCaps,
    SetRail,
    StepDone,
)
from node.link.vectors import messages_equal

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAN = float("nan")

# --- strategies for valid messages -----------------------------------------------------------


def floats(lo: float, hi: float, *, nan: bool = False) -> st.SearchStrategy[float]:
    finite = st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)
    return finite | st.just(NAN) if nan else finite


u32 = st.integers(0, UINT32_MAX)
seqs = st.integers(0, UINT32_MAX)
versions = st.integers(0, 255)
names = st.text(
    st.characters(
        codec="utf-8",
        exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
        include_characters=" ",
    ),
    min_size=1,
    max_size=MAX_NAME_LEN,
).filter(str.isprintable)
gpu_counts = st.integers(1, MAX_GPUS)
power = floats(*POWER_RANGE_W)


def float_tuples(
    elements: st.SearchStrategy[float], n: int
) -> st.SearchStrategy[tuple[float, ...]]:
    return st.lists(elements, min_size=n, max_size=n).map(tuple)


hil_values = floats(-1e12, 1e12, nan=True) | st.lists(
    floats(-1e12, 1e12, nan=True), min_size=1, max_size=MAX_GPUS
).map(tuple)


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    lo = draw(st.integers(1, 255))
    return Hello(draw(names), lo, draw(st.integers(lo, 255)))


@st.composite
def hello_acks(draw: st.DrawFn) -> HelloAck:
    cap_lo, cap_hi = sorted((draw(power), draw(power)))
    return HelloAck(
        version=draw(versions),
        board_id=draw(names),
        fw_version=draw(names),
        gpu_count=draw(gpu_counts),
        cap_min_w=cap_lo,
        cap_max_w=cap_hi,
        sensor_rate_hz=draw(floats(0.01, 1000.0)),
        watchdog_s=draw(floats(0.1, 3600.0)),
        min_version=draw(versions),
        max_version=draw(versions),
    )


@st.composite
def sensors(draw: st.DrawFn) -> Sensor:
    n = draw(gpu_counts)
    return Sensor(
        t_board=draw(floats(0.0, 1e10)),
        utc=draw(floats(0.0, 1e11)),
        temp_c=draw(float_tuples(floats(*TEMP_RANGE_C, nan=True), n)),
        power_w=draw(float_tuples(power, n)),
        cap_w=draw(float_tuples(power, n)),
        progress=draw(float_tuples(floats(0.0, 1e18), n)),
        rails=draw(u32),
        solar_w=draw(floats(0.0, 1e6)),
        battery_soc=draw(floats(0.0, 1.0)),
        radiator_c=draw(floats(*TEMP_RANGE_C, nan=True)),
        flags=draw(u32),
        rx_errors=draw(u32),
        **draw(sensor_extras(n)),
    )


@st.composite
def sensor_extras(draw: st.DrawFn, n: int) -> dict[str, object]:
    """The optional SENSOR fields (ICD §4.4): absent, -1 (not reported) or a value."""
    extras: dict[str, object] = {}
    if not draw(st.booleans()):
        return extras
    for name in ("battery_wh", "battery_capacity_wh", "bus_v", "avionics_w", "orbit_period_s",
                 "eclipse_in_s", "sun_in_s"):  # fmt: skip
        extras[name] = draw(st.one_of(st.just(-1.0), floats(0.0, 5000.0)))
    extras["xid"] = draw(st.one_of(st.just(()), st.tuples(*[u32] * n)))
    extras["saved"] = draw(st.one_of(st.just(()), float_tuples(floats(0.0, 1e18), n)))
    extras["ckpt"] = draw(u32)
    extras["gpu_ok"] = draw(u32)
    extras["slowdown"] = draw(u32)
    return extras


MESSAGE_STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: hellos(),
    HelloAck: hello_acks(),
    Heartbeat: st.builds(Heartbeat, floats(0.0, 1e10)),
    Sensor: sensors(),
    SetCaps: st.lists(power, min_size=1, max_size=MAX_GPUS).map(lambda c: SetCaps(tuple(c))),
    SetRail: st.builds(SetRail, st.integers(0, MAX_GPUS - 1), st.booleans()),
    Ack: st.builds(Ack, st.integers(1, UINT32_MAX), st.integers(0, 255)),
    HilSet: st.builds(HilSet, names, hil_values),
    HilGet: st.builds(HilGet, names),
    HilValue: st.builds(HilValue, names, hil_values, u32),
    StepDone: st.builds(StepDone, floats(0.0, 1e10)),
    ResetBoard: st.just(ResetBoard()),
    Checkpoint: st.builds(Checkpoint, st.integers(0, MAX_GPUS - 1), floats(0.0, 3600.0)),
    Restore: st.builds(Restore, st.integers(0, MAX_GPUS - 1), floats(0.0, 1e18)),
}
messages = st.one_of(*MESSAGE_STRATEGIES.values())
wires = st.builds(encode_frame, messages, seqs)


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGE_STRATEGIES) == set(MESSAGE_TYPES.values())


# --- round trip ------------------------------------------------------------------------------


@PROPS
@given(message=messages, seq=seqs)
def test_round_trip(message: Message, seq: int) -> None:
    wire = encode_frame(message, seq)
    assert wire.endswith(DELIMITER) and DELIMITER not in wire[:-1]
    assert len(encode_body(message, seq)) <= MAX_BODY
    frame = decode_frame(wire[:-1])
    assert frame.seq == seq
    assert messages_equal(frame.message, message)
    assert encode_frame(frame.message, seq) == wire  # canonical: decoding loses nothing


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip_each_type(data: st.DataObject) -> None:
    """Every type, explicitly, so a broad strategy cannot starve one of them."""
    for strategy in MESSAGE_STRATEGIES.values():
        message = data.draw(strategy)
        frame = decode_frame(encode_frame(message, 1)[:-1])
        assert messages_equal(frame.message, message)


# --- garbage ---------------------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)


def _framed(body: bytes) -> bytes:
    return bytes(cobs.encode(body + zlib.crc32(body).to_bytes(4, "little")))


def _decode_or_protocol_error(encoded: bytes) -> Frame | None:
    try:
        return decode_frame(encoded)
    except RemoteProtocolError as exc:
        assert exc.reason in {
            "oversize",
            "cobs",
            "crc",
            "decode",
            "unknown_type",
            "invalid_value",
            "version",
        }
        return None


@PROPS
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    _decode_or_protocol_error(data)


@PROPS
@given(st.binary(max_size=600))
def test_arbitrary_bodies_with_valid_crc_raise_only_remote_protocol_error(body: bytes) -> None:
    _decode_or_protocol_error(_framed(body))


@PROPS
@given(
    version=st.sampled_from([0, 1, 2]),
    type_code=st.sampled_from([*MESSAGE_TYPES, 0, 0x7F, 256, -1]),
    seq=st.integers(-1, UINT32_MAX + 1),
    payload=msgpack_values,
)
def test_arbitrary_envelopes_raise_only_remote_protocol_error(
    version: int, type_code: int, seq: int, payload: Any
) -> None:
    body = msgpack.packb([version, type_code, seq, payload], use_bin_type=True)
    _decode_or_protocol_error(_framed(body))


@PROPS
@given(message=messages, data=st.data())
def test_valid_payload_with_one_field_replaced_raises_only_remote_protocol_error(
    message: Message, data: st.DataObject
) -> None:
    payload = message.payload()
    # A field-less message (RESET_BOARD) gets an unknown key instead, which must be ignored.
    key = data.draw(st.sampled_from(sorted(payload))) if payload else "extra"
    payload[key] = data.draw(msgpack_values)
    if data.draw(st.booleans()):
        del payload[data.draw(st.sampled_from(sorted(payload)))]
    body = msgpack.packb([1, int(message.TYPE), 1, payload], use_bin_type=True)
    frame = _decode_or_protocol_error(_framed(body))
    if frame is not None:  # accepted: then it must be a valid message of the same type
        assert type(frame.message) is type(message)


@PROPS
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_frame_decoder_never_raises(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        decoder.feed(chunk)
    decoder.frames()
    stats = decoder.stats
    assert stats.bytes_dropped <= sum(len(c) for c in chunks)


# --- chunking does not matter ----------------------------------------------------------------

stream_parts = st.one_of(
    wires,
    wires,
    st.binary(max_size=30),
    st.just(DELIMITER),
    st.just(b"\x55" * (MAX_ENCODED + 3)),  # an oversize run
    wires.map(lambda w: w[: len(w) // 2]),  # a frame cut short
)


def _run(chunks: list[bytes]) -> tuple[list[bytes], dict[str, int]]:
    decoder = FrameDecoder()
    for chunk in chunks:
        decoder.feed(chunk)
    frames = [encode_frame(f.message, f.seq) for f in decoder.frames()]
    return frames, decoder.stats.as_dict()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(stream_parts, max_size=8), cuts=st.lists(st.integers(0, 10_000)))
def test_chunking_does_not_change_frames_or_stats(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    whole = _run([stream])
    bytewise = _run([stream[i : i + 1] for i in range(len(stream))])
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunked = _run([stream[a:b] for a, b in itertools.pairwise(points)])
    assert whole == bytewise == chunked


# --- garbage loses only the frames it touches ------------------------------------------------


@PROPS
@given(
    frames=st.lists(st.tuples(messages, seqs), min_size=1, max_size=6),
    data=st.data(),
)
def test_garbage_loses_only_the_frames_it_touches(
    frames: list[tuple[Message, int]], data: st.DataObject
) -> None:
    wires_ = [encode_frame(m, s) for m, s in frames]
    garbage = [data.draw(st.binary(max_size=40)) for _ in wires_]
    tail = data.draw(st.binary(max_size=40))
    decoder = FrameDecoder()
    decoder.feed(b"".join(g + w for g, w in zip(garbage, wires_, strict=True)) + tail)
    got = decoder.frames()
    # Frame i survives unless garbage with no delimiter at its end sits right before it.
    survivors = [i for i, g in enumerate(garbage) if not g or g.endswith(DELIMITER)]
    assert [f.seq for f in got] == [frames[i][1] for i in survivors]
    for frame, i in zip(got, survivors, strict=True):
        assert messages_equal(frame.message, frames[i][0])
    lost_bytes = sum(len(wires_[i]) for i in range(len(wires_)) if i not in survivors)
    noise = sum(map(len, garbage)) + len(tail)
    assert lost_bytes <= decoder.stats.bytes_dropped <= lost_bytes + noise
    assert decoder.stats.frames == len(survivors)


@PROPS
@given(message=messages, seq=seqs, data=st.data())
def test_any_corruption_of_one_frame_is_never_accepted_as_another(
    message: Message, seq: int, data: st.DataObject
) -> None:
    raw = bytearray(cobs.decode(encode_frame(message, seq)[:-1]))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    with_crc_error = False
    try:
        decode_frame(bytes(cobs.encode(bytes(raw))))
    except RemoteProtocolError as exc:
        with_crc_error = exc.reason == "crc"
    assert with_crc_error  # one corrupted byte is always a CRC error


def test_nan_compares_equal_in_round_trip() -> None:
    message = HilValue("x", (NAN, 1.0), 2)
    frame = decode_frame(encode_frame(message, 3)[:-1])
    assert math.isnan(frame.message.value[0])  # type: ignore[attr-defined, index]
    assert messages_equal(frame.message, message)


# --- the compiled decoders agree with the generic one ----------------------------------------

# Values a decoded msgpack payload field may hold (arrays as tuples, as the codec decodes).
wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64) + 1, 2**64 - 1) | st.floats() | st.text(max_size=40)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=6).map(tuple) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
# Items that stress the fast array checks: ints and bools among floats, NaN, infinities.
array_items = st.one_of(
    st.floats(), st.integers(-5, 6000), st.booleans(), st.just(NAN), st.just(math.inf), st.just(-math.inf),
    st.floats(-300.0, 600.0),
)


def _outcome(decode: Any, cls: type[Message], payload: dict[str, Any]) -> tuple[str, Any]:
    try:
        message = decode(payload)
    except RemoteProtocolError as exc:
        return "error", exc.reason
    return "message", repr(message)  # repr: NaN fields compare as text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages, data=st.data())
def test_compiled_decoder_agrees_with_the_generic_one(message: Message, data: st.DataObject) -> None:
    """The fast path accepts only what the generic path accepts, and builds the same value."""
    from node.link.messages import _decode_generic

    cls = type(message)
    payload = dict(message.payload())
    for _ in range(data.draw(st.integers(0, 3))):
        if not payload:
            break
        key = data.draw(st.sampled_from(sorted(payload)))
        choice = data.draw(st.integers(0, 3))
        if choice == 0:
            del payload[key]
        elif choice == 1 and isinstance(payload[key], tuple):
            items = list(payload[key])
            if items:
                items[data.draw(st.integers(0, len(items) - 1))] = data.draw(array_items)
            payload[key] = tuple(items)
        else:
            payload[key] = data.draw(wire_values | array_items)
    fast = _outcome(cls._decode, cls, payload)
    generic = _outcome(lambda p: _decode_generic(cls, p), cls, payload)
    assert fast == generic, (payload, fast, generic)
