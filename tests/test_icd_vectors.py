"""docs/icd-vectors.json against the codec, both ways, and against node.link.vectors."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from cobs import cobs

from node.errors import RemoteProtocolError
from node.link.codec import (
    DELIMITER,
    MAX_BODY,
    MAX_ENCODED,
    FrameDecoder,
    decode_frame,
    encode_frame,
)
from node.link.messages import MESSAGE_TYPES, PROTOCOL_VERSION, MsgType
from node.link.vectors import message_from_json, message_to_json, messages_equal, to_json

VECTORS_PATH = Path(__file__).resolve().parent.parent / "docs" / "icd-vectors.json"
DOC: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


def _ids(section: str) -> list[str]:
    return [entry["name"] for entry in DOC[section]]


def test_file_is_up_to_date_with_the_module() -> None:
    assert VECTORS_PATH.read_text(encoding="utf-8") == to_json(), (
        "docs/icd-vectors.json is stale: run `python -m node.link.vectors > docs/icd-vectors.json`"
    )


def test_header() -> None:
    assert DOC["protocol_version"] == PROTOCOL_VERSION
    assert DOC["limits"] == {"max_body": MAX_BODY, "max_encoded": MAX_ENCODED}


def test_every_message_type_has_a_canonical_vector() -> None:
    covered = {entry["type"] for entry in DOC["frames"]}
    assert covered == {t.name for t in MsgType}


def test_required_rejections_are_present() -> None:
    reasons = {entry["reason"] for entry in DOC["reject"]}
    assert {"crc", "cobs", "unknown_type", "oversize"} <= reasons


def test_names_are_unique() -> None:
    names = [
        e["name"] for section in ("frames", "accept", "reject", "streams") for e in DOC[section]
    ]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("entry", DOC["frames"], ids=_ids("frames"))
def test_frame_decodes_to_the_message(entry: dict[str, Any]) -> None:
    wire = bytes.fromhex(entry["wire_hex"])
    assert wire.endswith(DELIMITER) and DELIMITER not in wire[:-1]
    frame = decode_frame(wire[:-1])
    assert frame.version == entry["version"] == PROTOCOL_VERSION
    assert frame.seq == entry["seq"]
    assert int(frame.message.TYPE) == entry["type_code"] == MsgType[entry["type"]]
    assert frame.message.RELIABLE is entry["reliable"]
    assert message_to_json(frame.message) == entry["message"]
    assert messages_equal(frame.message, message_from_json(entry["type"], entry["message"]))


@pytest.mark.parametrize("entry", DOC["frames"], ids=_ids("frames"))
def test_message_encodes_to_the_wire_bytes(entry: dict[str, Any]) -> None:
    message = message_from_json(entry["type"], entry["message"])
    assert type(message) is MESSAGE_TYPES[entry["type_code"]]
    assert encode_frame(message, entry["seq"]).hex() == entry["wire_hex"]


@pytest.mark.parametrize("entry", DOC["frames"], ids=_ids("frames"))
def test_intermediate_steps(entry: dict[str, Any]) -> None:
    """body_hex and crc32 let an implementer find which step of the encoding went wrong."""
    body = bytes.fromhex(entry["body_hex"])
    assert f"0x{zlib.crc32(body):08x}" == entry["crc32"]
    raw = body + zlib.crc32(body).to_bytes(4, "little")
    assert bytes(cobs.encode(raw)).hex() + "00" == entry["wire_hex"]
    assert bytes(cobs.decode(bytes.fromhex(entry["wire_hex"])[:-1])) == raw


@pytest.mark.parametrize(
    "entry", DOC["frames"] + DOC["accept"], ids=_ids("frames") + _ids("accept")
)
def test_decoder_accepts_whole_and_bytewise(entry: dict[str, Any]) -> None:
    wire = bytes.fromhex(entry["wire_hex"])
    expected = message_from_json(entry["type"], entry["message"])
    for chunks in ([wire], [wire[i : i + 1] for i in range(len(wire))]):
        decoder = FrameDecoder()
        for chunk in chunks:
            decoder.feed(chunk)
        frames = decoder.frames()
        assert len(frames) == 1
        assert frames[0].seq == entry["seq"]
        assert messages_equal(frames[0].message, expected)
        assert decoder.stats.as_dict() == {
            "frames": 1,
            "bytes_dropped": 0,
            "crc_errors": 0,
            "oversize": 0,
            "decode_errors": 0,
        }


@pytest.mark.parametrize("entry", DOC["accept"], ids=_ids("accept"))
def test_accepted_frames_are_not_canonical_but_mean_the_same(entry: dict[str, Any]) -> None:
    wire = bytes.fromhex(entry["wire_hex"])
    message = message_from_json(entry["type"], entry["message"])
    canonical = encode_frame(message, entry["seq"])
    assert canonical != wire
    assert "body_hex" not in entry  # only canonical vectors publish the body


@pytest.mark.parametrize("entry", DOC["reject"], ids=_ids("reject"))
def test_rejected_with_the_stated_reason(entry: dict[str, Any]) -> None:
    wire = bytes.fromhex(entry["wire_hex"])
    assert wire.endswith(DELIMITER) and DELIMITER not in wire[:-1]
    with pytest.raises(RemoteProtocolError) as info:
        decode_frame(wire[:-1])
    assert info.value.reason == entry["reason"]


@pytest.mark.parametrize("entry", DOC["reject"], ids=_ids("reject"))
def test_decoder_counts_the_rejection(entry: dict[str, Any]) -> None:
    wire = bytes.fromhex(entry["wire_hex"])
    decoder = FrameDecoder()
    decoder.feed(wire)
    assert decoder.next_frame() is None
    stats = decoder.stats.as_dict()
    assert stats[entry["counter"]] == 1
    assert stats["bytes_dropped"] == len(wire)
    assert sum(stats[c] for c in ("crc_errors", "oversize", "decode_errors")) == 1
    # ... and recovers for the next frame.
    decoder.feed(bytes.fromhex(DOC["frames"][0]["wire_hex"]))
    assert decoder.next_frame() is not None


@pytest.mark.parametrize("entry", DOC["streams"], ids=_ids("streams"))
@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_streams(entry: dict[str, Any], chunk: int) -> None:
    stream = bytes.fromhex(entry["stream_hex"])
    decoder = FrameDecoder()
    if chunk == 0:
        decoder.feed(stream)
    else:
        for i in range(0, len(stream), chunk):
            decoder.feed(stream[i : i + chunk])
    frames = decoder.frames()
    assert [f.seq for f in frames] == [e["seq"] for e in entry["frames"]]
    for got, want in zip(frames, entry["frames"], strict=True):
        assert messages_equal(got.message, message_from_json(want["type"], want["message"]))
    assert decoder.stats.as_dict() == entry["stats"]
