"""Test vectors for the serial link (docs/ICD.md §7), built deterministically.

``python -m node.link.vectors > docs/icd-vectors.json`` writes the published set; the
test suite checks that the file is up to date with this module.  Any implementation of
the link (the node, firmware_sim, a C firmware) checks itself against that file:

* ``frames``: valid frames.  Decoding ``wire_hex`` must give ``message``; encoding
  ``message`` with ``seq`` must give ``wire_hex`` byte for byte (canonical encoding,
  ICD §2.3).
* ``accept``: valid but non-canonical frames a receiver must accept (integers in float
  fields, float32, other key orders, unknown keys).  Decode only.
* ``reject``: frames a receiver must drop, each with the rejection ``reason`` and the
  decoder counter that goes up.
* ``streams``: byte streams with garbage; the frames a decoder must find in them and its
  counters afterwards.

Floats that are NaN appear in the JSON as the string ``"NaN"``.
"""

from __future__ import annotations

import json
import math
import sys
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack
from cobs import cobs

from node.files.vectors import build as files_vectors
from node.link.codec import DELIMITER, MAX_BODY, MAX_ENCODED, encode_frame, frame_from_body
from node.link.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    UINT32_MAX,
    Ack,
    AckStatus,
    BoardFeature,
    Checkpoint,
    Heartbeat,
    Hello,
    HelloAck,
    HilGet,
    HilSet,
    HilValue,
    Message,
    MsgType,
    ResetBoard,
    Restore,
    Sensor,
    SensorFlag,
    SetCaps,
    SetRail,
    StepDone,
)

#: Version of the vector file layout (not of the protocol).
VECTORS_FORMAT = 1
NAN = float("nan")

_NAMES_BY_CLASS: dict[type[Message], str] = {cls: cls.TYPE.name for cls in MESSAGE_TYPES.values()}


# --- JSON form of a message ---------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # plain int, not an IntEnum/IntFlag
    return value


def message_to_json(message: Message) -> dict[str, Any]:
    """The message's fields, in wire order, as JSON-able values (NaN → ``"NaN"``)."""
    return {name: _json_value(value) for name, value in message.payload().items()}


def messages_equal(a: Message, b: Message) -> bool:
    """Equality that treats NaN as equal to NaN (the plain ``==`` of dataclasses does not)."""
    return type(a) is type(b) and message_to_json(a) == message_to_json(b)


def _python_value(value: Any) -> Any:
    if value == "NaN":
        return NAN
    if isinstance(value, list):
        return tuple(_python_value(v) for v in value)
    return value


def message_from_json(type_name: str, fields: dict[str, Any]) -> Message:
    """Build the message a vector describes (the inverse of :func:`message_to_json`)."""
    cls = MESSAGE_TYPES[MsgType[type_name]]
    return cls(**{name: _python_value(value) for name, value in fields.items()})


# --- the vectors --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameVector:
    """A valid frame; ``canonical`` ones must also encode to exactly ``wire``."""

    name: str
    description: str
    seq: int
    message: Message
    wire: bytes
    canonical: bool = True


@dataclass(frozen=True, slots=True)
class RejectVector:
    """Bytes between two delimiters that a receiver must drop."""

    name: str
    description: str
    wire: bytes  # delimiter included
    reason: str  # RemoteProtocolError.reason from decode_frame
    counter: str  # the DecoderStats counter that goes up by one


@dataclass(frozen=True, slots=True)
class StreamVector:
    """A byte stream and what a decoder must make of it."""

    name: str
    description: str
    stream: bytes
    frames: tuple[tuple[int, Message], ...]  # (seq, message) in order
    stats: dict[str, int]


def _padded_body(fill: int) -> bytes:
    """A heartbeat-typed body of MAX_BODY + 1 bytes: an unknown bin field padded to size."""
    empty = len(msgpack.packb([1, 0x03, 1, {"x": b""}], use_bin_type=True))
    pad = MAX_BODY + 1 - empty - 1  # bin8 → bin16: one more length byte
    body: bytes = msgpack.packb([1, 0x03, 1, {"x": bytes([fill]) * pad}], use_bin_type=True)
    assert len(body) == MAX_BODY + 1, len(body)
    return body


def _raw_frame(envelope: Any) -> bytes:
    return frame_from_body(msgpack.packb(envelope, use_bin_type=True))


_CAPS_8 = (700.0, 700.0, 650.0, 650.0, 500.0, 500.0, 350.0, 200.0)

#: A HIL_VALUE whose body and CRC are exactly 254 bytes with no zero byte (4-byte UTF-8 name,
#: floats chosen without a zero byte, a seq found so that the CRC has none either): its COBS
#: form is one full 0xFF block, the case §2.5's "no empty trailing block" rule is about.
FULL_BLOCK = HilValue(
    name="\U0001f6f0" * 32,
    value=(1.1, 1.4700000000000002, 1.8400000000000003, 2.2100000000000004, 2.5800000000000005,
           2.9500000000000006, 3.3200000000000007, 3.690000000000001, 4.0600000000000005, 4.430000000000001),
    ref=0x01020304,
)
FULL_BLOCK_SEQ = 0x01010101

SENSOR_8GPU = Sensor(
    t_board=5025.5,
    utc=1767225600.25,
    temp_c=(61.25, 63.5, 70.0, 68.75, 55.0, NAN, 48.5, 39.0),
    power_w=(688.5, 699.0, 640.25, 612.0, 480.0, 455.5, 349.0, 0.0),
    cap_w=_CAPS_8,
    progress=(120345.5, 119876.0, 101234.25, 99876.5, 80012.0, 79001.0, 50123.5, 31000.0),
    rails=0x7F,
    solar_w=4821.5,
    battery_soc=0.875,
    radiator_c=21.5,
    flags=int(SensorFlag.HW_SLOWDOWN),
    rx_errors=3,
)
"""A realistic 8-GPU sensor frame (GPU 5's sensor gives no reading, GPU 7's rail is off)."""


def _frames() -> list[FrameVector]:
    third = 1.0 / 3.0  # 0x3FD5555555555555: no zero byte in its float64 encoding
    items: list[tuple[str, str, int, Message]] = [
        (
            "hello",
            "node opens a session offering versions 1..1 (session frame, seq 0)",
            0,
            Hello(node_id="umbra-node-01", min_version=1, max_version=1),
        ),
        (
            "hello_offer_range",
            "a later node offering versions 1..3",
            0,
            Hello(node_id="umbra-node-01", min_version=1, max_version=3),
        ),
        (
            "hello_ack",
            "board accepts version 1: 8 GPUs, caps 200..700 W, 10 Hz sensor frames, 1 s watchdog, "
            "declares checkpoints and lockstep",
            0,
            HelloAck(
                version=1,
                board_id="sim-board-0001",
                fw_version="fwsim-1.0.0",
                gpu_count=8,
                cap_min_w=200.0,
                cap_max_w=700.0,
                sensor_rate_hz=10.0,
                watchdog_s=1.0,
                min_version=1,
                max_version=1,
                features=int(BoardFeature.CHECKPOINTS | BoardFeature.LOCKSTEP),
            ),
        ),
        (
            "hello_ack_no_common_version",
            "board speaks only 2..3, node offered 1..1: version 0 (no common version)",
            0,
            HelloAck(
                version=0,
                board_id="devkit-7",
                fw_version="2.4.1",
                gpu_count=4,
                cap_min_w=150.0,
                cap_max_w=350.0,
                sensor_rate_hz=5.0,
                watchdog_s=1.5,
                min_version=2,
                max_version=3,
            ),
        ),
        ("heartbeat", "node heartbeat, first numbered frame of a session", 1, Heartbeat(12.5)),
        (
            "heartbeat_seq_max",
            "largest sequence number 2^32-1 (the next one is 1)",
            UINT32_MAX,
            Heartbeat(86400.0),
        ),
        ("sensor_8gpu", "realistic 8-GPU sensor frame with a NaN temperature", 1234, SENSOR_8GPU),
        (
            "cobs_full_block_at_the_end",
            "body and CRC are 254 bytes without a zero: COBS is one full block `ff <254 bytes>` and no "
            "empty block after it (§2.5)",
            FULL_BLOCK_SEQ,
            FULL_BLOCK,
        ),
        (
            "sensor_1gpu_defaults",
            "1-GPU sensor frame, flags and rx_errors at their defaults (0)",
            2,
            Sensor(
                t_board=0.1,
                utc=1767225600.0,
                temp_c=(-20.0,),
                power_w=(0.0,),
                cap_w=(200.0,),
                progress=(0.0,),
                rails=0,
                solar_w=0.0,
                battery_soc=0.5,
                radiator_c=NAN,
            ),
        ),
        (
            "sensor_watchdog_safe",
            "board in its own safe state: every cap at cap_min_w, WATCHDOG_SAFE and ECLIPSE set",
            40001,
            Sensor(
                t_board=7200.0,
                utc=1767232800.0,
                temp_c=(45.0, 44.5, 46.0, 45.5),
                power_w=(150.0, 149.5, 150.0, 148.0),
                cap_w=(150.0, 150.0, 150.0, 150.0),
                progress=(5000.0, 5000.0, 5000.0, 5000.0),
                rails=0xF,
                solar_w=0.0,
                battery_soc=0.61,
                radiator_c=-5.25,
                flags=int(SensorFlag.WATCHDOG_SAFE | SensorFlag.ECLIPSE),
                rx_errors=0,
            ),
        ),
        (
            "sensor_orbit_fields",
            "4-GPU frame with the optional power, orbit and GPU-health fields: in sunlight, "
            "eclipse in 798 s, GPU 3 dropped out after a thermal shutdown (Xid), GPU 2 slowed",
            5000,
            Sensor(
                t_board=1000.0,
                utc=1767226600.0,
                temp_c=(71.5, 72.25, 89.5, 60.0),
                power_w=(400.5, 399.0, 240.0, 0.0),
                cap_w=(400.0, 400.0, 500.0, 700.0),
                progress=(750.5, 749.0, 600.25, 12.0),
                rails=0xF,
                solar_w=2939.75,
                battery_soc=0.95,
                radiator_c=26.75,
                flags=int(SensorFlag.HW_SLOWDOWN),
                rx_errors=0,
                battery_wh=2280.0,
                battery_capacity_wh=2400.0,
                bus_v=116.5,
                avionics_w=100.0,
                orbit_period_s=5730.125,
                eclipse_in_s=798.5,
                sun_in_s=0.0,
                xid=(0, 0, 0, 1),
                gpu_ok=0x7,
                slowdown=0x4,
            ),
        ),
        ("step_done", "node finished the sensor frame of board time 12.5 (lockstep)", 31, StepDone(12.5)),
        ("reset_board", "node asks the board to reboot", 32, ResetBoard()),
        ("checkpoint", "node checkpoints GPU 3's job: its work pauses 20 s", 33, Checkpoint(gpu=3, pause_s=20.0)),
        ("restore", "node restores GPU 3's job to 1234.5 work units", 34, Restore(gpu=3, progress=1234.5)),
        ("set_caps", "node sets the caps of 8 GPUs", 17, SetCaps(cap_w=_CAPS_8)),
        ("set_rail_off", "node switches GPU 7's rail off", 18, SetRail(gpu=7, on=False)),
        ("set_rail_on", "node switches GPU 0's rail on", 19, SetRail(gpu=0, on=True)),
        ("ack_ok", "board acknowledges frame 17", 1235, Ack(ack_seq=17, status=AckStatus.OK)),
        (
            "ack_bad_argument",
            "board refuses frame 70000 (e.g. a cap outside cap_min_w..cap_max_w)",
            1236,
            Ack(ack_seq=70000, status=AckStatus.BAD_ARGUMENT),
        ),
        (
            "hil_set_demand_all",
            "harness: every GPU's job would draw 650 W uncapped",
            1,
            HilSet(name="demand_w", value=650.0),
        ),
        (
            "hil_set_demand_per_gpu",
            "harness: per-GPU demand",
            2,
            HilSet(name="demand_w", value=(700.0, 700.0, 400.0, 0.0)),
        ),
        ("hil_set_sink", "harness: radiator sink temperature -80 °C", 3, HilSet("sink_c", -80.0)),
        ("hil_get_temp", "harness asks for every GPU's temperature", 4, HilGet(name="temp_c")),
        (
            "hil_value_temp",
            "board answers HIL_GET seq 4 (a NaN reading included)",
            9,
            HilValue(name="temp_c", value=(61.25, NAN, 70.0, 68.75), ref=4),
        ),
        (
            "hil_value_unknown",
            "board answers a HIL_GET (seq 5) for a name it does not know: NaN",
            10,
            HilValue(name="no_such_param", value=NAN, ref=5),
        ),
        (
            "hil_value_cobs_long_run",
            "32 values with no zero byte: the COBS encoding needs a full 0xFF block",
            11,
            HilValue(name="demand_w", value=(third,) * 32, ref=6),
        ),
    ]
    return [FrameVector(n, d, s, m, encode_frame(m, s)) for n, d, s, m in items]


def _accepts() -> list[FrameVector]:
    """Valid, non-canonical encodings that receivers must accept."""
    cap_ints = [1, int(MsgType.SET_CAPS), 20, {"cap_w": [300, 300.0, 250]}]
    float32_body = (
        b"\x94\x01\x03\x15\x81\xa8uptime_s" + b"\xca" + (0x41480000).to_bytes(4, "big")
    )  # 12.5 as float32
    reordered = [1, int(MsgType.SET_RAIL), 22, {"on": True, "gpu": 2}]
    unknown_key = [1, int(MsgType.HEARTBEAT), 23, {"uptime_s": 3.0, "load_avg": [0.5, 0.25]}]
    ack_default = [1, int(MsgType.ACK), 24, {"ack_seq": 9}]
    sensor_v1 = [1, int(MsgType.SENSOR), 25, {
        "t_board": 1.5, "utc": 1767225600.0, "temp_c": [40.0], "power_w": [300.0],
        "cap_w": [700.0], "progress": [1.0], "rails": 1, "solar_w": 100.0,
        "battery_soc": 0.5, "radiator_c": 20.0, "flags": 0, "rx_errors": 0,
    }]
    leading_delimiters = DELIMITER * 3 + encode_frame(Heartbeat(4.0), 25)
    hello_ack_v1 = [1, int(MsgType.HELLO_ACK), 0, {
        "version": 1, "min_version": 1, "max_version": 1, "board_id": "old-board", "fw_version": "1.0",
        "gpu_count": 2, "cap_min_w": 100.0, "cap_max_w": 300.0, "sensor_rate_hz": 10.0, "watchdog_s": 1.0,
    }]
    items: list[tuple[str, str, int, Message, bytes]] = [
        (
            "accept_int_in_float_field",
            "integers where floats are expected are accepted as floats",
            20,
            SetCaps(cap_w=(300.0, 300.0, 250.0)),
            _raw_frame(cap_ints),
        ),
        (
            "accept_float32",
            "a float field sent as msgpack float32",
            21,
            Heartbeat(12.5),
            frame_from_body(float32_body),
        ),
        (
            "accept_key_order",
            "payload keys in another order",
            22,
            SetRail(gpu=2, on=True),
            _raw_frame(reordered),
        ),
        (
            "accept_unknown_key",
            "unknown payload keys are ignored",
            23,
            Heartbeat(3.0),
            _raw_frame(unknown_key),
        ),
        (
            "accept_default_field",
            "a field with a default (ACK status) may be left out",
            24,
            Ack(ack_seq=9),
            _raw_frame(ack_default),
        ),
        (
            "accept_sensor_without_optional_fields",
            "a SENSOR from an older sender without battery_wh … slowdown: they take their defaults",
            25,
            Sensor(t_board=1.5, utc=1767225600.0, temp_c=(40.0,), power_w=(300.0,), cap_w=(700.0,),
                   progress=(1.0,), rails=1, solar_w=100.0, battery_soc=0.5, radiator_c=20.0),
            _raw_frame(sensor_v1),
        ),
        (
            "accept_hello_ack_without_features",
            "a HELLO_ACK from a board written before `features` (doc version 3): it declares none (0)",
            0,
            HelloAck(version=1, board_id="old-board", fw_version="1.0", gpu_count=2, cap_min_w=100.0,
                     cap_max_w=300.0, sensor_rate_hz=10.0, watchdog_s=1.0),
            _raw_frame(hello_ack_v1),
        ),
        (
            "accept_cobs_empty_trailing_block",
            "the full-block frame with an empty block `01` after it: decoders accept both forms (§2.5)",
            FULL_BLOCK_SEQ,
            FULL_BLOCK,
            encode_frame(FULL_BLOCK, FULL_BLOCK_SEQ)[:-1] + b"\x01" + DELIMITER,
        ),
        (
            "accept_leading_delimiters",
            "extra 0x00 bytes before a frame are padding (empty frames are ignored)",
            25,
            Heartbeat(4.0),
            leading_delimiters,
        ),
    ]
    return [FrameVector(n, d, s, m, w, canonical=False) for n, d, s, m, w in items]


def _rejects() -> list[RejectVector]:
    good = encode_frame(Heartbeat(12.5), 1)
    raw = bytearray(cobs.decode(good[:-1]))
    raw[-1] ^= 0x01  # flip one bit of the CRC trailer
    bad_crc = bytes(cobs.encode(bytes(raw))) + DELIMITER
    body_flip = bytearray(cobs.decode(good[:-1]))
    body_flip[-6] ^= 0x80  # flip one bit inside the body, keep the old CRC
    bad_crc_body = bytes(cobs.encode(bytes(body_flip))) + DELIMITER
    # A code byte of 0x20 promises 31 more bytes; only 5 follow before the delimiter.
    bad_cobs = b"\x20\x94\x01\x03\x01\x81" + DELIMITER
    # Oversize: bodies one byte larger than MAX_BODY (a bin payload padded to size).  With
    # zero bytes the COBS form stays within MAX_ENCODED and the body length gives it away;
    # without, the COBS form itself is too long.
    oversize_zeros = _padded_body(0x00)
    oversize_run = _padded_body(0x55)
    items = [
        RejectVector(
            "reject_bad_crc",
            "heartbeat with one bit of the CRC trailer flipped",
            bad_crc,
            "crc",
            "crc_errors",
        ),
        RejectVector(
            "reject_bad_crc_body_bit",
            "heartbeat with one bit of the body flipped (CRC no longer matches)",
            bad_crc_body,
            "crc",
            "crc_errors",
        ),
        RejectVector(
            "reject_bad_cobs",
            "COBS code byte runs past the end of the frame",
            bad_cobs,
            "cobs",
            "decode_errors",
        ),
        RejectVector(
            "reject_unknown_type",
            "type 0x7F is not defined in version 1 (valid CRC)",
            _raw_frame([1, 0x7F, 5, {}]),
            "unknown_type",
            "decode_errors",
        ),
        RejectVector(
            "reject_oversize_body",
            f"body of {MAX_BODY + 1} bytes, one more than MAX_BODY (valid CRC); "
            f"its COBS form is {len(frame_from_body(oversize_zeros)) - 1} bytes",
            frame_from_body(oversize_zeros),
            "oversize",
            "oversize",
        ),
        RejectVector(
            "reject_oversize_run",
            f"body of {MAX_BODY + 1} bytes with no zero byte: its COBS form is "
            f"{len(frame_from_body(oversize_run)) - 1} bytes, more than MAX_ENCODED",
            frame_from_body(oversize_run),
            "oversize",
            "oversize",
        ),
        RejectVector(
            "reject_version",
            "envelope version 2 on a version-1 link",
            _raw_frame([2, int(MsgType.HEARTBEAT), 6, {"uptime_s": 1.0}]),
            "version",
            "decode_errors",
        ),
        RejectVector(
            "reject_envelope",
            "body is a msgpack map, not [version, type, seq, payload]",
            _raw_frame({"type": 3}),
            "decode",
            "decode_errors",
        ),
        RejectVector(
            "reject_not_msgpack",
            "body bytes are not one msgpack value (0xC1 is never used)",
            frame_from_body(b"\xc1\x01\x02"),
            "decode",
            "decode_errors",
        ),
        RejectVector(
            "reject_too_short",
            "frame shorter than the 4-byte CRC plus one body byte",
            bytes(cobs.encode(b"\x01\x02\x03")) + DELIMITER,
            "decode",
            "decode_errors",
        ),
        RejectVector(
            "reject_missing_field",
            "SET_RAIL without its 'on' field",
            _raw_frame([1, int(MsgType.SET_RAIL), 7, {"gpu": 1}]),
            "decode",
            "decode_errors",
        ),
        RejectVector(
            "reject_out_of_range",
            "SET_CAPS with a cap of 9000 W (range 0..5000)",
            _raw_frame([1, int(MsgType.SET_CAPS), 8, {"cap_w": [9000.0]}]),
            "invalid_value",
            "decode_errors",
        ),
        RejectVector(
            "reject_nan_not_allowed",
            "SET_CAPS with a NaN cap (NaN is allowed only where the ICD says so)",
            _raw_frame([1, int(MsgType.SET_CAPS), 9, {"cap_w": [NAN]}]),
            "invalid_value",
            "decode_errors",
        ),
        RejectVector(
            "reject_wrong_type",
            "SET_RAIL with gpu sent as a float",
            _raw_frame([1, int(MsgType.SET_RAIL), 10, {"gpu": 1.0, "on": True}]),
            "invalid_value",
            "decode_errors",
        ),
        RejectVector(
            "reject_array_lengths",
            "SENSOR whose per-GPU arrays differ in length",
            _raw_frame(
                [
                    1,
                    int(MsgType.SENSOR),
                    11,
                    {
                        **SENSOR_8GPU.payload(),
                        "cap_w": list(_CAPS_8[:7]),
                    },
                ]
            ),
            "invalid_value",
            "decode_errors",
        ),
    ]
    for vector in items:
        assert len(vector.wire) - 1 <= MAX_ENCODED or vector.reason == "oversize"
    return items


def _streams() -> list[StreamVector]:
    hb1 = Heartbeat(1.0)
    hb2 = Heartbeat(2.0)
    caps = SetCaps(cap_w=(300.0, 300.0))
    f1, f2, f3 = encode_frame(hb1, 1), encode_frame(hb2, 2), encode_frame(caps, 3)
    garbage = b"\x13\x37\xbe\xef"
    corrupted = bytearray(f2)
    corrupted[3] ^= 0x10
    if 0 in corrupted[:-1]:  # pragma: no cover - depends on the chosen bit
        raise AssertionError("corruption must not create a delimiter")
    long_run = b"\xaa" * (MAX_ENCODED + 10)
    return [
        StreamVector(
            "stream_resync_after_garbage",
            "garbage before the first delimiter is dropped with that delimiter; "
            "frames after it decode",
            garbage + DELIMITER + f1 + f2,
            ((1, hb1), (2, hb2)),
            {
                "frames": 2,
                "bytes_dropped": len(garbage) + 1,
                "crc_errors": 0,
                "oversize": 0,
                "decode_errors": 1,
            },
        ),
        StreamVector(
            "stream_garbage_glued_to_frame",
            "garbage with no delimiter before a frame spoils only that frame",
            f1 + garbage + f2 + f3,
            ((1, hb1), (3, caps)),
            {
                "frames": 2,
                "bytes_dropped": len(garbage) + len(f2),
                "crc_errors": 0,
                "oversize": 0,
                "decode_errors": 1,
            },
        ),
        StreamVector(
            "stream_corrupted_frame",
            "a bit flip inside the middle frame: CRC error, neighbours survive",
            f1 + bytes(corrupted) + f3,
            ((1, hb1), (3, caps)),
            {
                "frames": 2,
                "bytes_dropped": len(f2),
                "crc_errors": 1,
                "oversize": 0,
                "decode_errors": 0,
            },
        ),
        StreamVector(
            "stream_oversize_run",
            f"{len(long_run)} bytes with no delimiter: dropped as one oversize run",
            f1 + long_run + DELIMITER + f3,
            ((1, hb1), (3, caps)),
            {
                "frames": 2,
                "bytes_dropped": len(long_run) + 1,
                "crc_errors": 0,
                "oversize": 1,
                "decode_errors": 0,
            },
        ),
        StreamVector(
            "stream_back_to_back_delimiters",
            "runs of 0x00 between frames are padding, not errors",
            DELIMITER * 2 + f1 + DELIMITER * 5 + f2,
            ((1, hb1), (2, hb2)),
            {"frames": 2, "bytes_dropped": 0, "crc_errors": 0, "oversize": 0, "decode_errors": 0},
        ),
    ]


# --- the published file -------------------------------------------------------------------


def _frame_json(vector: FrameVector) -> dict[str, Any]:
    message = vector.message
    entry: dict[str, Any] = {
        "name": vector.name,
        "description": vector.description,
        "type": message.TYPE.name,
        "type_code": int(message.TYPE),
        "seq": vector.seq,
        "version": PROTOCOL_VERSION,
        "reliable": message.RELIABLE,
        "message": message_to_json(message),
    }
    if vector.canonical:
        body = msgpack.packb(
            [PROTOCOL_VERSION, int(message.TYPE), vector.seq, message.payload()], use_bin_type=True
        )
        entry["body_hex"] = body.hex()
        entry["crc32"] = f"0x{zlib.crc32(body):08x}"
    entry["wire_hex"] = vector.wire.hex()
    return entry


def build() -> dict[str, Any]:
    """The whole vector set as a JSON-able document (deterministic)."""
    frames = _frames()
    return {
        "format": VECTORS_FORMAT,
        "protocol_version": PROTOCOL_VERSION,
        "generator": "python -m node.link.vectors > docs/icd-vectors.json",
        "limits": {"max_body": MAX_BODY, "max_encoded": MAX_ENCODED},
        "frames": [_frame_json(v) for v in frames],
        "accept": [_frame_json(v) for v in _accepts()],
        "reject": [
            {
                "name": v.name,
                "description": v.description,
                "reason": v.reason,
                "counter": v.counter,
                "wire_hex": v.wire.hex(),
            }
            for v in _rejects()
        ],
        "streams": [
            {
                "name": v.name,
                "description": v.description,
                "frames": [
                    {"seq": seq, "type": m.TYPE.name, "message": message_to_json(m)}
                    for seq, m in v.frames
                ],
                "stats": v.stats,
                "stream_hex": v.stream.hex(),
            }
            for v in _streams()
        ],
        # The MQTT file service (ICD §5.9): PDUs, the envelope, a bundle signature.
        "files": files_vectors(),
    }


def frame_vectors() -> list[FrameVector]:
    return _frames()


def accept_vectors() -> list[FrameVector]:
    return _accepts()


def reject_vectors() -> list[RejectVector]:
    return _rejects()


def stream_vectors() -> list[StreamVector]:
    return _streams()


def to_json() -> str:
    """The text of docs/icd-vectors.json."""
    return json.dumps(build(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def main() -> None:
    sys.stdout.write(to_json())


if __name__ == "__main__":
    main()
