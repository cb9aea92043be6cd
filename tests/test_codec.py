"""Frame codec examples: framing, resynchronisation, counters, limits (docs/ICD.md §2)."""

from __future__ import annotations

import math
import zlib

import msgpack
import pytest
from cobs import cobs

from node.errors import LocalProtocolError, RemoteProtocolError
from node.link.codec import (
    DELIMITER,
    MAX_BODY,
    MAX_ENCODED,
    FrameDecoder,
    decode_frame,
    encode_body,
    encode_frame,
)
from node.link.messages import (
    MAX_GPUS,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    UINT32_MAX,
    Ack,
    Checkpoint,
    Heartbeat,
    Hello,
    HelloAck,
    HilSet,
    HilValue,
    MsgType,
    ResetBoard,
    Restore,
    Sensor,
    SetCaps,
    SetRail,
    StepDone,
)
from node.link.vectors import SENSOR_8GPU, messages_equal

NAN = float("nan")
ZERO_STATS = {"frames": 0, "bytes_dropped": 0, "crc_errors": 0, "oversize": 0, "decode_errors": 0}


def _frame_from_body(body: bytes) -> bytes:
    return bytes(cobs.encode(body + zlib.crc32(body).to_bytes(4, "little"))) + DELIMITER


def _padded_body(size: int, fill: int) -> bytes:
    """A valid heartbeat body of exactly ``size`` bytes (an unknown bin field pads it)."""
    for pad in range(size, -1, -1):
        body: bytes = msgpack.packb(
            [1, int(MsgType.HEARTBEAT), 1, {"uptime_s": 1.0, "pad": bytes([fill]) * pad}],
            use_bin_type=True,
        )
        if len(body) == size:
            return body
    raise AssertionError(size)


def _decode_all(data: bytes) -> tuple[list[tuple[int, object]], dict[str, int]]:
    decoder = FrameDecoder()
    decoder.feed(data)
    return [(f.seq, f.message) for f in decoder.frames()], decoder.stats.as_dict()


# --- encoding -----------------------------------------------------------------------------


def test_frame_layout() -> None:
    wire = encode_frame(Heartbeat(12.5), 1)
    assert wire.endswith(DELIMITER)
    assert DELIMITER not in wire[:-1]
    raw = cobs.decode(wire[:-1])
    body, trailer = raw[:-4], raw[-4:]
    assert msgpack.unpackb(body) == [PROTOCOL_VERSION, 0x03, 1, {"uptime_s": 12.5}]
    assert int.from_bytes(trailer, "little") == zlib.crc32(body)
    assert body == encode_body(Heartbeat(12.5), 1)


def test_crc_is_the_zlib_ieee_crc() -> None:
    # The standard check value of CRC-32/ISO-HDLC, as a C implementer would test it.
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_floats_are_float64_and_ints_smallest() -> None:
    body = encode_body(SetRail(gpu=3, on=True), 300)
    assert body == bytes.fromhex("94 01 21 cd012c 82 a3677075 03 a26f6e c3")
    body = encode_body(Heartbeat(0.5), 1)
    assert body.endswith(b"\xcb" + (0x3FE0000000000000).to_bytes(8, "big"))


def test_round_trip_every_type_example() -> None:
    examples = [
        Hello("node-a"),
        HelloAck(1, "b", "fw", 8, 200.0, 700.0, 10.0, 2.0),
        Heartbeat(1.0),
        SENSOR_8GPU,
        SetCaps((300.0,) * 8),
        SetRail(1, False),
        Ack(5, 1),
        HilSet("demand_w", 650.0),
        HilValue("x", NAN, 3),
    ]
    examples.append(HilSet("demand_w", (1.0, 2.0)))
    examples += [StepDone(12.5), ResetBoard(), Checkpoint(3, 20.0), Restore(3, 1234.5)]
    assert {type(m) for m in examples} == set(MESSAGE_TYPES.values()) - {
        MESSAGE_TYPES[MsgType.HIL_GET]
    }
    for seq, message in enumerate(examples):
        frame = decode_frame(encode_frame(message, seq)[:-1])
        assert frame.seq == seq
        assert messages_equal(frame.message, message)


@pytest.mark.parametrize("seq", [-1, UINT32_MAX + 1])
def test_encode_rejects_sequence_outside_uint32(seq: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(Heartbeat(1.0), seq)


def test_largest_messages_fit_in_max_body() -> None:
    long_name = "\U0001f6f0" * 32  # 32 four-byte characters
    biggest = [
        Sensor(
            t_board=1e10,
            utc=1e11,
            temp_c=(-1.5e2,) * MAX_GPUS,
            power_w=(4999.5,) * MAX_GPUS,
            cap_w=(4999.5,) * MAX_GPUS,
            progress=(1e17,) * MAX_GPUS,
            rails=UINT32_MAX,
            solar_w=1e6,
            battery_soc=1.0,
            radiator_c=400.0,
            flags=UINT32_MAX,
            rx_errors=UINT32_MAX,
        ),
        HelloAck(255, long_name, long_name, MAX_GPUS, 5000.0, 5000.0, 1000.0, 3600.0,
                     min_version=255, max_version=255, features=UINT32_MAX),
        HilValue(long_name, (1e12,) * MAX_GPUS, UINT32_MAX),
        SetCaps((5000.0,) * MAX_GPUS),
    ]
    for message in biggest:
        assert len(encode_body(message, UINT32_MAX)) <= MAX_BODY


def test_sensor_rails_cover_every_gpu() -> None:
    """Bit i of ``rails`` is GPU i's rail, so a 64-GPU board needs 64 bits.

    Finds a schema bug: ``Sensor.rails`` is limited to uint32 while MAX_GPUS is 64.
    """
    all_on = (1 << MAX_GPUS) - 1
    sensor = Sensor(
        t_board=1.0,
        utc=1.0,
        temp_c=(40.0,) * MAX_GPUS,
        power_w=(300.0,) * MAX_GPUS,
        cap_w=(300.0,) * MAX_GPUS,
        progress=(0.0,) * MAX_GPUS,
        rails=all_on,
        solar_w=0.0,
        battery_soc=0.5,
        radiator_c=20.0,
    )
    assert decode_frame(encode_frame(sensor, 1)[:-1]).message == sensor


# --- decoding one frame ---------------------------------------------------------------------


def test_every_single_bit_flip_is_detected_by_the_crc() -> None:
    raw = bytearray(cobs.decode(encode_frame(SENSOR_8GPU, 77)[:-1]))
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(bytes(cobs.encode(bytes(flipped))))
        assert info.value.reason == "crc", bit


def test_bit_flips_on_the_wire_are_never_accepted() -> None:
    wire = encode_frame(SetCaps((300.0, 250.0, 200.0)), 9)[:-1]
    for bit in range(len(wire) * 8):
        flipped = bytearray(wire)
        flipped[bit // 8] ^= 1 << (bit % 8)
        decoder = FrameDecoder()
        decoder.feed(bytes(flipped) + DELIMITER)
        assert decoder.next_frame() is None, bit
        assert decoder.stats.frames == 0


def test_burst_errors_up_to_32_bits_are_detected() -> None:
    raw = bytearray(cobs.decode(encode_frame(Heartbeat(3.0), 3)[:-1]))
    for start in range(0, len(raw) * 8 - 32, 5):
        flipped = bytearray(raw)
        for bit in (start, start + 31):  # a burst is bounded by its first and last bit
            flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(bytes(cobs.encode(bytes(flipped))))
        assert info.value.reason == "crc"


def test_body_of_exactly_max_body_is_accepted_with_any_content() -> None:
    for fill in (0x00, 0x55):  # zero bytes keep COBS short; none make it longest
        body = _padded_body(MAX_BODY, fill)
        wire = _frame_from_body(body)
        assert len(wire) - 1 <= MAX_ENCODED
        assert decode_frame(wire[:-1]).message == Heartbeat(1.0)
        frames, stats = _decode_all(wire)
        assert len(frames) == 1 and stats["frames"] == 1


def test_max_encoded_is_the_cobs_bound_for_max_body() -> None:
    worst = bytes(cobs.encode(b"\x55" * (MAX_BODY + 4)))
    assert len(worst) == MAX_ENCODED


def test_body_one_byte_too_long_is_oversize() -> None:
    for fill in (0x00, 0x55):
        wire = _frame_from_body(_padded_body(MAX_BODY + 1, fill))
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(wire[:-1])
        assert info.value.reason == "oversize"
        frames, stats = _decode_all(wire)
        assert frames == []
        assert stats == {**ZERO_STATS, "oversize": 1, "bytes_dropped": len(wire)}


@pytest.mark.parametrize(
    ("encoded", "reason"),
    [
        (b"\x05\x01", "cobs"),
        (bytes(cobs.encode(b"\x01\x02\x03\x04")), "decode"),  # CRC only, no body
        (_frame_from_body(msgpack.packb([1, 3, 1]))[:-1], "decode"),
        (_frame_from_body(msgpack.packb([1, 3, "1", {}]))[:-1], "decode"),
        (_frame_from_body(msgpack.packb([1, 3, -1, {"uptime_s": 1.0}]))[:-1], "decode"),
        (_frame_from_body(msgpack.packb([1, 3, 1 << 32, {"uptime_s": 1.0}]))[:-1], "decode"),
        (_frame_from_body(msgpack.packb([1, 3, 1, [1.0]]))[:-1], "decode"),
        (_frame_from_body(msgpack.packb([True, 3, 1, {"uptime_s": 1.0}]))[:-1], "decode"),
        (_frame_from_body(msgpack.packb([0, 3, 1, {"uptime_s": 1.0}]))[:-1], "version"),
        (_frame_from_body(msgpack.packb([1, 0x11, 1, {}]))[:-1], "unknown_type"),
        (_frame_from_body(msgpack.packb([1, 3, 1, {"uptime_s": -1.0}]))[:-1], "invalid_value"),
        (_frame_from_body(msgpack.packb([1, 3, 1, {"uptime_s": "1"}]))[:-1], "invalid_value"),
        (_frame_from_body(msgpack.packb([1, 3, 1, {"uptime_s": 1.0}]) + b"\x00")[:-1], "decode"),
    ],
)
def test_decode_frame_reasons(encoded: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frame(encoded)
    assert info.value.reason == reason


def test_wire_integers_are_accepted_in_float_fields_but_not_the_reverse() -> None:
    ok = _frame_from_body(msgpack.packb([1, 0x03, 1, {"uptime_s": 7}]))
    assert decode_frame(ok[:-1]).message == Heartbeat(7.0)
    assert isinstance(decode_frame(ok[:-1]).message.uptime_s, float)  # type: ignore[attr-defined]
    bad = _frame_from_body(msgpack.packb([1, 0x30, 1, {"ack_seq": 7.0}]))
    with pytest.raises(RemoteProtocolError):
        decode_frame(bad[:-1])


def test_nan_only_where_the_schema_allows_it() -> None:
    sensor = SENSOR_8GPU.payload()
    for name, allowed in [("temp_c", True), ("power_w", False), ("cap_w", False)]:
        payload = {**sensor, name: [NAN] * 8}
        wire = _frame_from_body(msgpack.packb([1, 0x10, 1, payload]))
        if allowed:
            assert all(math.isnan(t) for t in decode_frame(wire[:-1]).message.temp_c)  # type: ignore[attr-defined]
        else:
            with pytest.raises(RemoteProtocolError):
                decode_frame(wire[:-1])
    payload = {**sensor, "radiator_c": NAN}
    wire = _frame_from_body(msgpack.packb([1, 0x10, 1, payload]))
    assert math.isnan(decode_frame(wire[:-1]).message.radiator_c)  # type: ignore[attr-defined]


# --- the stream decoder ---------------------------------------------------------------------


def test_resync_after_garbage() -> None:
    f1, f2 = encode_frame(Heartbeat(1.0), 1), encode_frame(Heartbeat(2.0), 2)
    garbage = b"\xde\xad\xbe\xef\x42"
    frames, stats = _decode_all(garbage + DELIMITER + f1 + garbage + DELIMITER + f2)
    assert [seq for seq, _ in frames] == [1, 2]
    assert stats == {**ZERO_STATS, "frames": 2, "decode_errors": 2, "bytes_dropped": 12}


def test_garbage_glued_to_a_frame_spoils_only_that_frame() -> None:
    f1, f2, f3 = (encode_frame(Heartbeat(float(i)), i) for i in (1, 2, 3))
    frames, stats = _decode_all(f1 + b"\x17\x99" + f2 + f3)
    assert [seq for seq, _ in frames] == [1, 3]
    assert stats["bytes_dropped"] == 2 + len(f2)
    assert stats["crc_errors"] + stats["decode_errors"] == 1


def test_partial_frame_waits_for_its_delimiter() -> None:
    wire = encode_frame(SENSOR_8GPU, 5)
    decoder = FrameDecoder()
    decoder.feed(wire[:-1])
    assert decoder.next_frame() is None
    decoder.feed(DELIMITER)
    frame = decoder.next_frame()
    assert frame is not None and frame.seq == 5
    assert decoder.next_frame() is None


def test_back_to_back_delimiters_are_padding() -> None:
    f1 = encode_frame(Heartbeat(1.0), 1)
    frames, stats = _decode_all(DELIMITER * 10 + f1 + DELIMITER * 3 + f1)
    assert len(frames) == 2
    assert stats == {**ZERO_STATS, "frames": 2}


def test_counters_one_of_each() -> None:
    good = encode_frame(Heartbeat(1.0), 1)
    raw = bytearray(cobs.decode(good[:-1]))
    raw[0] ^= 0x02
    bad_crc = bytes(cobs.encode(bytes(raw))) + DELIMITER
    bad_cobs = b"\x09\x01\x02" + DELIMITER
    unknown = _frame_from_body(msgpack.packb([1, 0x7E, 2, {}]))
    run = b"\x01" * (MAX_ENCODED + 1) + DELIMITER
    stream = good + bad_crc + bad_cobs + unknown + run + good
    decoder = FrameDecoder()
    decoder.feed(stream)
    assert len(decoder.frames()) == 2
    assert decoder.stats.as_dict() == {
        "frames": 2,
        "bytes_dropped": len(bad_crc) + len(bad_cobs) + len(unknown) + len(run),
        "crc_errors": 1,
        "oversize": 1,
        "decode_errors": 2,
    }
    assert decoder.last_error is not None and decoder.last_error.reason == "unknown_type"


def test_oversize_run_is_dropped_without_buffering_it() -> None:
    decoder = FrameDecoder()
    for _ in range(100):  # 100 kB of line noise with no delimiter
        decoder.feed(b"\x55" * 1000)
    assert decoder.stats.oversize == 1
    assert decoder.stats.bytes_dropped == 100_000
    assert len(decoder._buffer) == 0  # bounded memory, whatever arrives
    decoder.feed(DELIMITER + encode_frame(Heartbeat(1.0), 1))
    assert decoder.next_frame() is not None
    assert decoder.stats.bytes_dropped == 100_001
    assert decoder.stats.oversize == 1


def test_run_of_exactly_max_encoded_bytes_is_not_oversize() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x55" * MAX_ENCODED)
    assert decoder.stats.oversize == 0
    decoder.feed(DELIMITER)
    assert decoder.stats.oversize == 0
    assert decoder.stats.decode_errors + decoder.stats.crc_errors == 1


def test_next_frame_and_frames_keep_order() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(Heartbeat(float(i)), i) for i in range(1, 6)))
    first = decoder.next_frame()
    assert first is not None and first.seq == 1
    assert [f.seq for f in decoder.frames()] == [2, 3, 4, 5]
    assert decoder.frames() == []
    assert decoder.next_frame() is None
