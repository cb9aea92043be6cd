"""The C firmware's codec (firmware/src, built for the host) against docs/icd-vectors.json,
and against the Python codec on generated frames (differential), under ASan/UBSan too.

The library comes from `make firmware` (firmware/build/libumbra_codec.so); UMBRA_CODEC_LIB
names another build (the sanitizer run below points it at libumbra_codec_asan.so).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.cboard import build_dir
from node.errors import RemoteProtocolError
from node.link.codec import MAX_BODY, FrameDecoder, decode_frame, frame_from_body
from node.link.messages import MESSAGE_TYPES

DOC: dict[str, Any] = json.loads((Path(__file__).resolve().parent.parent / "docs" / "icd-vectors.json")
                                 .read_text(encoding="utf-8"))
REASONS = ["", "oversize", "cobs", "decode", "crc", "version", "unknown_type", "invalid_value"]
STATS = ["frames", "bytes_dropped", "crc_errors", "oversize", "decode_errors"]
#: Examples for each generated-input test (the sanitizer run asks for more).
FUZZ_EXAMPLES = int(os.environ.get("UMBRA_FUZZ_EXAMPLES", "0"))


def _load() -> ctypes.CDLL:
    path = os.environ.get("UMBRA_CODEC_LIB") or str(build_dir() / "libumbra_codec.so")
    if not Path(path).exists():
        pytest.fail(f"{path} is missing: `make firmware` builds it (make test does)")
    lib = ctypes.CDLL(path)
    p, z = ctypes.c_char_p, ctypes.c_size_t
    u32p = ctypes.POINTER(ctypes.c_uint32)
    lib.umb_host_decode.argtypes = [p, z, p, z]
    lib.umb_host_decode.restype = ctypes.c_int
    lib.umb_host_reencode.argtypes = [p, z, p, z]
    lib.umb_host_reencode.restype = z
    lib.umb_host_stream.argtypes = [p, z, z, p, z, u32p]
    lib.umb_host_stream.restype = ctypes.c_int
    return lib


LIB = _load()


def c_decode(encoded: bytes) -> tuple[str, dict[str, Any] | None]:
    out = ctypes.create_string_buffer(1 << 17)
    reason = REASONS[LIB.umb_host_decode(encoded, len(encoded), out, len(out))]
    return reason, (json.loads(out.value) if not reason else None)


def c_stream(data: bytes, chunk: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    out = ctypes.create_string_buffer(1 << 22)
    stats = (ctypes.c_uint32 * 5)()
    LIB.umb_host_stream(data, len(data), chunk, out, len(out), stats)
    return json.loads(out.value), dict(zip(STATS, stats, strict=True))


def same(got: Any, want: Any) -> bool:
    """Equal as the vectors mean it: "NaN" for NaN, numbers by value, lists element-wise."""
    if isinstance(want, str) and want == "NaN":
        return got == "NaN"
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same, got, want))
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, int | float):
        return isinstance(got, int | float) and float(got) == float(want)
    return bool(got == want)


def _check_message(got: dict[str, Any], entry: dict[str, Any]) -> None:
    assert got["type"] == entry["type_code"] and got["seq"] == entry["seq"]
    for key, value in entry["message"].items():
        assert same(got["message"].get(key), value), (key, got["message"].get(key), value)


@pytest.mark.parametrize("entry", DOC["frames"], ids=lambda e: e["name"])
def test_every_canonical_frame_decodes_and_re_encodes_byte_for_byte(entry: dict[str, Any]) -> None:
    wire = bytes.fromhex(entry["wire_hex"])
    reason, got = c_decode(wire[:-1])
    assert reason == "" and got is not None
    _check_message(got, entry)
    out = ctypes.create_string_buffer(8192)
    n = LIB.umb_host_reencode(wire[:-1], len(wire) - 1, out, len(out))
    assert out.raw[:n].hex() == entry["wire_hex"]


@pytest.mark.parametrize("entry", DOC["accept"], ids=lambda e: e["name"])
def test_every_accepted_variant_decodes_to_its_message(entry: dict[str, Any]) -> None:
    frames, stats = c_stream(bytes.fromhex(entry["wire_hex"]), 4096)
    assert len(frames) == 1 and stats["frames"] == 1, stats
    _check_message(frames[0], entry)


@pytest.mark.parametrize("entry", DOC["reject"], ids=lambda e: e["name"])
def test_every_rejected_frame_gives_its_reason_and_counter(entry: dict[str, Any]) -> None:
    wire = bytes.fromhex(entry["wire_hex"])
    reason, _ = c_decode(wire[:-1] if wire.endswith(b"\0") else wire)
    assert reason == entry["reason"]
    frames, stats = c_stream(wire, len(wire))
    assert frames == [] and stats["frames"] == 0
    assert stats[entry["counter"]] == 1 and stats["bytes_dropped"] == len(wire), stats


@pytest.mark.parametrize("entry", DOC["streams"], ids=lambda e: e["name"])
@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_every_stream_gives_its_frames_and_counters_in_any_chunking(entry: dict[str, Any], chunk: int) -> None:
    data = bytes.fromhex(entry["stream_hex"])
    frames, stats = c_stream(data, chunk or max(len(data), 1))
    assert stats == {k: entry["stats"][k] for k in STATS}
    assert len(frames) == len(entry["frames"])
    for got, want in zip(frames, entry["frames"], strict=True):
        assert got["seq"] == want["seq"]
        assert all(same(got["message"].get(k), v) for k, v in want["message"].items())


# --- differential: the C decoder and the Python one agree on generated frames ---------------

_FIELDS = sorted({name for cls in MESSAGE_TYPES.values() for name in cls.__dataclass_fields__})
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.floats(width=32), st.text(max_size=40), st.binary(max_size=8),
    st.sampled_from([0.0, -0.0, 1e308, 5e-324, 2**32 - 1, 2**32, -1, 0.5, 700.0]),
)
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=40) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=60)
_payload = st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=12), _value, max_size=12)
_envelope = st.tuples(st.sampled_from([1, 1, 1, 1, 0, 2, -1, 1.0, "1"]),
                      st.sampled_from([*sorted(int(t) for t in MESSAGE_TYPES), 0, 200, -3]),
                      st.sampled_from([0, 1, 7, 2**32 - 1, 2**32, -1]) | st.integers(0, 2**32 - 1),
                      _payload)


def _body(envelope: Any, shape: int) -> bytes:
    """The envelope packed as the ICD's array, or deliberately not (shape 1: a map; 2: 3 items)."""
    if shape == 1:
        return msgpack.packb(dict(enumerate(envelope)), use_bin_type=True, strict_types=False)
    if shape == 2:
        return msgpack.packb(list(envelope[:3]), use_bin_type=True)
    return msgpack.packb(list(envelope), use_bin_type=True)


def _py_reason(encoded: bytes) -> str:
    try:
        decode_frame(encoded)
    except RemoteProtocolError as exc:
        return exc.reason
    return ""


def _run_differential(envelopes: list[Any], shapes: list[int], noise: bytes) -> None:
    stream = b"".join(frame_from_body(_body(e, s)) for e, s in zip(envelopes, shapes, strict=False))
    stream = noise[: len(noise) // 2] + stream + noise[len(noise) // 2:]
    for e, s in zip(envelopes, shapes, strict=False):
        body = _body(e, s)
        if len(body) > MAX_BODY:
            continue
        encoded = frame_from_body(body)[:-1]
        reason, got = c_decode(encoded)
        assert reason == _py_reason(encoded), (body.hex(), reason)
        if got is not None:
            frame = decode_frame(encoded)
            assert got["type"] == int(frame.message.TYPE) and got["seq"] == frame.seq
    py = FrameDecoder()
    py.feed(stream)
    py_frames = []
    while (frame := py.next_frame()) is not None:
        py_frames.append((int(frame.message.TYPE), frame.seq))
    for chunk in (len(stream) or 1, 1, 13):
        frames, stats = c_stream(stream, chunk)
        assert stats == py.stats.as_dict(), (chunk, stats, py.stats.as_dict())
        assert [(f["type"], f["seq"]) for f in frames] == py_frames


def _settings(examples: int) -> Any:
    # The default run is the same examples every time; the sanitizer run draws fresh ones.
    return settings(max_examples=FUZZ_EXAMPLES or examples, deadline=None, database=None,
                    derandomize=not FUZZ_EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_settings(400)
@given(st.lists(_envelope, min_size=1, max_size=4), st.lists(st.sampled_from([0, 0, 0, 0, 1, 2]), max_size=4),
       st.binary(max_size=64))
def test_the_c_decoder_agrees_with_the_python_one_on_generated_frames(envelopes, shapes, noise) -> None:
    _run_differential(envelopes, [*shapes, *[0] * len(envelopes)], noise)


@_settings(300)
@given(st.binary(max_size=3000), st.integers(1, 64))
def test_any_bytes_give_only_counted_errors_in_any_chunking(data: bytes, chunk: int) -> None:
    whole, stats = c_stream(data, len(data) or 1)
    pieces, stats2 = c_stream(data, chunk)
    assert stats == stats2 and whole == pieces
    py = FrameDecoder()
    py.feed(data)
    assert stats == py.stats.as_dict()
    assert stats["bytes_dropped"] <= len(data)
    for frame in whole:  # whatever decoded is a well-formed message
        assert frame["type"] in {int(t) for t in MESSAGE_TYPES}
        assert 0 <= frame["seq"] < 2**32


@pytest.mark.timeout(400)
def test_the_decoder_survives_a_fuzz_under_address_and_undefined_behaviour_sanitizers(tmp_path) -> None:
    """The two generated-input tests again, in a child with the ASan/UBSan build and fresh
    random examples (600 each, about a minute on two cores): any out-of-bounds access, overflow or
    undefined behaviour aborts the child and fails this test."""
    asan_lib = build_dir() / "libumbra_codec_asan.so"
    runtime = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert asan_lib.exists() and Path(runtime).exists(), (asan_lib, runtime)
    env = {**os.environ, "UMBRA_CODEC_LIB": str(asan_lib), "UMBRA_FUZZ_EXAMPLES": os.environ.get("UMBRA_FUZZ_EXAMPLES", "600"), "LD_PRELOAD": runtime,
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           __file__, "-k", "agrees or counted", "-x"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "ERROR: AddressSanitizer" not in out and "runtime error" not in out
    assert "2 passed" in out, out[-2000:]
