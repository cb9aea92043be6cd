"""The file service's sans-I/O core (node/files): ranges, PDUs, sender and receiver.

Two :class:`Endpoint` objects joined by an in-memory channel that loses, corrupts and
duplicates messages as told, on a manual clock: whatever the channel does, the file arrives
whole and hash-checked, and a restart of either side resumes without sending again what
arrived.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.errors import LocalProtocolError, RemoteProtocolError
from node.files.endpoint import Admit, Endpoint
from node.files.engine import Receiver, Sender, SendState
from node.files.pdu import Ack, AnyPdu, Data, Eof, Fin, FinStatus, Meta, decode, open_envelope, seal
from node.files.ranges import RangeSet
from node.files.store import TransferDb, TransferRow

CHUNK = 1024


# -- ranges ----------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 60)), max_size=30))
def test_a_range_set_holds_exactly_the_bytes_added(pairs: list[tuple[int, int]]) -> None:
    ranges = RangeSet()
    model: set[int] = set()
    for start, length in pairs:
        new = ranges.add(start, start + length)
        before = len(model)
        model.update(range(start, start + length))
        assert new == len(model) - before
    assert ranges.total == len(model)
    listed = list(ranges)
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(listed, listed[1:], strict=False))  # disjoint, merged
    size = 600
    assert {b for s, e in ranges.missing(size) for b in range(s, e)} == set(range(size)) - model
    assert ranges.contiguous == next(i for i in range(size + 100) if i not in model)
    assert RangeSet.from_wire(ranges.to_wire()) == ranges


# -- PDUs -------------------------------------------------------------------------------------


def _meta(size: int, data: bytes, xfer: str = "d-1", **kw: object) -> Meta:
    return Meta(node_id="n1", xfer=xfer, direction="down", name="f.bin", size=size, chunk=CHUNK, hash="sha256",
                digest=hashlib.sha256(data).hexdigest(), **kw)  # type: ignore[arg-type]


def test_pdus_round_trip_and_bad_ones_are_refused() -> None:
    m = _meta(3, b"abc", info={"job": "j", "seq": 4})
    for pdu in (m, Data.of("n1", "d-1", 0, b"abc"), Eof(node_id="n1", xfer="d-1", size=3, digest=m.digest),
                Ack(node_id="n1", xfer="d-1", received=1, contiguous=1, missing=((1, 3),)),
                Fin(node_id="n1", xfer="d-1", status="ok", info={"path": "x"})):
        assert decode(pdu.to_wire()) == pdu
    for bad in (b"\x01", b"\x93\x01\x02\x03", m.to_wire().replace(b"meta", b"mota"),
                Ack(node_id="n1", xfer="d-1", received=0, contiguous=0).to_wire().replace(b"d-1", b"d/1")):
        with pytest.raises(RemoteProtocolError):
            decode(bad)
    for name in ("../etc/passwd", "a/b", "..", ""):
        with pytest.raises(LocalProtocolError, match="name"):
            Meta(node_id="n1", xfer="d-1", direction="down", name=name, size=1, chunk=CHUNK, hash="sha256",
                 digest="0" * 64)


def test_ground_envelopes_are_authenticated_and_addressed() -> None:
    key, other = b"k" * 32, b"o" * 32
    ack = Ack(node_id="n1", xfer="d-1", received=0, contiguous=0)
    assert open_envelope(key, "n1", seal(key, ack)) == ack
    with pytest.raises(RemoteProtocolError, match="bad tag"):
        open_envelope(key, "n1", seal(other, ack))  # forged
    with pytest.raises(RemoteProtocolError, match="bad tag"):
        open_envelope(key, "n2", seal(key, ack))  # meant for another node
    with pytest.raises(RemoteProtocolError, match="bad tag"):
        open_envelope(None, "n1", seal(key, ack))  # a node without a key takes nothing
    with pytest.raises(RemoteProtocolError):
        open_envelope(key, "n1", ack.to_wire())  # not in an envelope


# -- two endpoints on a lossy channel -----------------------------------------------------------


@dataclass
class Channel:
    rng: random.Random
    loss: float = 0.0
    corrupt: float = 0.0
    duplicate: float = 0.0
    delivered: list[tuple[str, AnyPdu]] = field(default_factory=list)

    def carry(self, pdu: AnyPdu) -> list[AnyPdu]:
        if self.rng.random() < self.loss:
            return []
        if isinstance(pdu, Data) and self.rng.random() < self.corrupt and pdu.data:
            bad = bytearray(pdu.data)
            bad[self.rng.randrange(len(bad))] ^= 0x40
            pdu = Data(node_id=pdu.node_id, xfer=pdu.xfer, offset=pdu.offset, data=bytes(bad), crc=pdu.crc)
        # what crosses the wire is bytes
        out = [decode(pdu.to_wire())]
        if self.rng.random() < self.duplicate:
            out.append(out[0])
        return out


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _sides(tmp: Path, clock: Clock, *, finished: list[TransferRow]) -> tuple[Endpoint, Endpoint]:
    (tmp / "in").mkdir(parents=True, exist_ok=True)

    def admit(meta: Meta) -> Admit:
        return Admit(path=tmp / "in" / f"{meta.xfer}.part")

    def finish(row: TransferRow, path: Path) -> Fin:
        finished.append(row)
        return Fin(node_id=row.node_id, xfer=row.xfer, status=FinStatus.OK, info={"stored": str(path)})

    sender = Endpoint(TransferDb(tmp / "send.sqlite"), admit=admit, finish=finish, window=8 * CHUNK,
                      probe_s=1.0, clock=clock)
    receiver = Endpoint(TransferDb(tmp / "recv.sqlite"), admit=admit, finish=finish, window=8 * CHUNK,
                        probe_s=1.0, clock=clock)
    return sender, receiver


def _run(a: Endpoint, b: Endpoint, channel: Channel, clock: Clock, *, steps: int = 20_000,
         until: object = None) -> None:
    for _ in range(steps):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for _ in range(4):
                pdu = src.next_out()
                if pdu is None:
                    break
                moved = True
                for got in channel.carry(pdu):
                    dst.handle(got)
        a.tick()
        b.tick()
        clock.t += 0.01 if moved else 0.25
        if until is not None and until():  # type: ignore[operator]
            return


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 40 * CHUNK + 17), loss=st.sampled_from([0.0, 0.05, 0.3]),
       corrupt=st.sampled_from([0.0, 0.1]), duplicate=st.sampled_from([0.0, 0.2]), seed=st.integers(0, 2**32))
def test_a_file_arrives_whole_over_a_lossy_corrupting_channel(tmp_path_factory: pytest.TempPathFactory, size: int,
                                                             loss: float, corrupt: float, duplicate: float,
                                                             seed: int) -> None:
    tmp = tmp_path_factory.mktemp("x")
    data = random.Random(seed).randbytes(size)
    (tmp / "src").write_bytes(data)
    clock = Clock()
    finished: list[TransferRow] = []
    node, ground = _sides(tmp, clock, finished=finished)
    node.send(_meta(size, data), tmp / "src")
    channel = Channel(random.Random(seed), loss=loss, corrupt=corrupt, duplicate=duplicate)
    _run(node, ground, channel, clock, until=lambda: not node.senders)
    assert not node.senders, "the sender never heard fin"
    row = node.db.get("d-1")
    assert row is not None and row.state == "done", row
    assert (tmp / "in" / "d-1.part").read_bytes() == data
    assert len(finished) == 1
    got = ground.db.get("d-1")
    assert got is not None and got.state == "done"
    if loss == corrupt == duplicate == 0.0:
        assert row.bytes_resent == 0 and got.bytes_duplicate == 0 and row.bytes_sent == size


def test_a_corrupted_chunk_is_dropped_and_sent_again(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(10 * CHUNK)
    (tmp_path / "src").write_bytes(data)
    clock = Clock()
    node, ground = _sides(tmp_path, clock, finished=[])
    node.send(_meta(len(data), data), tmp_path / "src")

    class OneBad(Channel):
        def carry(self, pdu: AnyPdu) -> list[AnyPdu]:
            if isinstance(pdu, Data) and pdu.offset == 3 * CHUNK and not getattr(self, "done", False):
                self.done = True
                return [Data(node_id=pdu.node_id, xfer=pdu.xfer, offset=pdu.offset,
                             data=b"\xff" + pdu.data[1:], crc=pdu.crc)]
            return super().carry(pdu)

    _run(node, ground, OneBad(random.Random(0)), clock, until=lambda: not node.senders)
    row, got = node.db.get("d-1"), ground.db.get("d-1")
    assert row is not None and got is not None and row.state == got.state == "done"
    assert got.corrupt_chunks == 1
    assert row.bytes_resent == CHUNK  # that chunk, and only it
    assert (tmp_path / "in" / "d-1.part").read_bytes() == data


def test_restarts_of_either_side_resume_without_sending_again_what_arrived(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(64 * CHUNK)
    (tmp_path / "src").write_bytes(data)
    clock = Clock()
    finished: list[TransferRow] = []
    node, ground = _sides(tmp_path, clock, finished=finished)
    node.send(_meta(len(data), data), tmp_path / "src")
    channel = Channel(random.Random(0))
    _run(node, ground, channel, clock, until=lambda: (ground.receivers.get("d-1") is not None
                                                    and ground.receivers["d-1"].have.total >= 20 * CHUNK))
    # both sides die at once (what was in flight is lost with them) and come back from disk
    node.close()
    ground.close()
    node, ground = _sides(tmp_path, clock, finished=finished)
    node.load()
    ground.load()
    assert "d-1" in node.senders and node.senders["d-1"].state == SendState.SYNC
    _run(node, ground, channel, clock, until=lambda: (ground.receivers.get("d-1") is not None
                                                    and ground.receivers["d-1"].have.total >= 45 * CHUNK))
    ground.close()  # ground alone dies this time
    _, ground = _sides(tmp_path, clock, finished=finished)
    ground.load()
    node.reconnected()
    _run(node, ground, channel, clock, until=lambda: not node.senders)
    row, got = node.db.get("d-1"), ground.db.get("d-1")
    assert row is not None and got is not None and row.state == got.state == "done"
    assert (tmp_path / "in" / "d-1.part").read_bytes() == data
    assert got.bytes_duplicate == 0  # nothing that had arrived came again
    assert len(finished) == 1


def test_a_receiver_that_went_away_stalls_the_sender_at_its_window(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(100 * CHUNK)
    meta = _meta(len(data), data)
    sender = Sender(meta, read=lambda o, n: data[o:o + n], window=8 * CHUNK, probe_s=1.0)
    assert sender.next_pdu(0.0) == meta  # SYNC: meta first
    assert sender.next_pdu(0.1) is None  # and nothing until answered or probe_s passed
    # an ack that is not the answer to our meta (older, crossing it on the way) settles nothing
    sender.on_ack(Ack(node_id="n1", xfer="d-1", received=0, contiguous=0), 0.15)
    assert sender.state == SendState.SYNC and sender.next_pdu(0.16) is None
    sender.on_ack(Ack(node_id="n1", xfer="d-1", received=0, contiguous=0, probe=True), 0.2)
    sent = [sender.next_pdu(0.3) for _ in range(20)]
    data_pdus = [p for p in sent if isinstance(p, Data)]
    assert len(data_pdus) == 8  # the window, then a probe at most
    assert sender.next_pdu(0.4) is None
    assert sender.next_pdu(1.5) == meta  # still nobody: ask again


def test_a_hash_that_does_not_match_is_received_again_then_failed(tmp_path: Path) -> None:
    data = b"x" * (3 * CHUNK)

    class Memory:
        def __init__(self) -> None:
            self.buf = bytearray()

        def write(self, offset: int, chunk: bytes) -> None:
            self.buf[offset:offset + len(chunk)] = chunk

        def truncate(self) -> None:
            self.buf.clear()

    sink = Memory()
    r = Receiver(_meta(len(data), data), sink)
    fin = None
    for attempt in range(5):
        outs = [r.handle(Data.of("n1", "d-1", off, data[off:off + CHUNK]), 0.0) for off in range(0, len(data), CHUNK)]
        outs.append(r.handle(Eof(node_id="n1", xfer="d-1", size=len(data), digest=r.meta.digest), 0.0))
        # once whole (at eof, or at the last chunk after a first eof), the caller hashes it, once
        assert sum(o.verify for o in outs) == 1 and r.verifying
        assert not r.handle(Eof(node_id="n1", xfer="d-1", size=len(data), digest=r.meta.digest), 0.0).verify
        out = r.verified("0" * 64, 0.0)  # whatever arrives, the stored file is damaged
        fins = [p for p in out.replies if isinstance(p, Fin)]
        if fins:
            fin = fins[0]
            break
        assert not sink.buf and r.have.total == 0  # started over
        assert isinstance(out.replies[0], Ack) and out.replies[0].missing == ((0, len(data)),)
    assert fin is not None and fin.status == FinStatus.FAILED and fin.reason == "hash_mismatch"
    assert attempt == 2 and r.stats.hash_failures == 3
    # and the right hash completes it
    r2 = Receiver(_meta(len(data), data), Memory())
    for off in range(0, len(data), CHUNK):
        r2.handle(Data.of("n1", "d-1", off, data[off:off + CHUNK]), 0.0)
    assert r2.handle(Eof(node_id="n1", xfer="d-1", size=len(data), digest=r2.meta.digest), 0.0).verify
    assert r2.verified(hashlib.sha256(data).hexdigest(), 0.0).complete


# -- the vectors of docs/icd-vectors.json (ICD §7) ---------------------------------------------

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "docs" / "icd-vectors.json").read_text())["files"]


def _from_json(value: object) -> object:
    if isinstance(value, dict):
        return bytes.fromhex(value["hex"]) if set(value) == {"hex"} else {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


@pytest.mark.parametrize("vector", VECTORS["pdus"], ids=lambda v: v["name"])
def test_pdu_vectors_decode_and_encode_byte_for_byte(vector: dict[str, object]) -> None:
    wire = bytes.fromhex(str(vector["wire_hex"]))
    pdu = decode(wire)
    assert pdu.to_wire() == wire
    fields = _from_json(vector["pdu"])
    assert isinstance(fields, dict) and fields.pop("k") == pdu.KIND
    assert decode(pdu.__class__(**{k: tuple(tuple(x) for x in v) if k == "missing" else v
                                  for k, v in fields.items()}).to_wire()) == pdu


def test_envelope_vector() -> None:
    env = VECTORS["envelope"]
    key = bytes.fromhex(env["key_hex"])
    pdu = open_envelope(key, env["node_id"], bytes.fromhex(env["wire_hex"]))
    assert pdu.to_wire().hex() == env["pdu_hex"]
    assert seal(key, pdu).hex() == env["wire_hex"]
    with pytest.raises(RemoteProtocolError):
        open_envelope(key, env["node_id"], bytes.fromhex(env["reject_other_node_hex"]))


def test_bundle_signature_vector() -> None:
    from node.files import bundle as bundles

    v = VECTORS["bundle_signature"]
    private, public = bytes.fromhex(v["private_key_hex"]), bytes.fromhex(v["public_key_hex"])
    assert bundles.public_key(private) == public and bundles.key_id(public) == v["key_id"]
    assert bundles.signed_bytes(v["name"], v["size"], v["hash"], v["digest"]).hex() == v["signed_hex"]
    signature = bytes.fromhex(v["signature_hex"])
    assert bundles.sign(private, v["name"], v["size"], v["hash"], v["digest"]) == signature  # deterministic
    bundles.verify({v["key_id"]: public}, v["key_id"], signature, v["name"], v["size"], v["hash"], v["digest"])
    with pytest.raises(bundles.BundleRefused, match="does not match"):
        bundles.verify({v["key_id"]: public}, v["key_id"], signature, v["name"], v["size"] + 1, v["hash"],
                       v["digest"])
