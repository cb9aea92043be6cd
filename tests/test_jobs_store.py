"""The checkpoint store: atomic commits, keep-K, verification and fallback, recovery, kill -9.

Run as a script (``python tests/test_jobs_store.py --writer ROOT``) this file is the child
process the kill -9 test starts: it writes checkpoints in a loop until it is killed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import blake3
import pytest

from node.jobs import (
    AsyncCheckpointStore,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointStore,
    CorruptCheckpoint,
    StoreLocked,
)

JOB = "job-a"


def pattern(i: int) -> bytes:
    """The deterministic content of the writer's i-th checkpoint (64 KiB .. 3 MiB)."""
    rng = random.Random(i)
    return rng.randbytes(rng.randint(64 << 10, 3 << 20))


def _store(root: Path, **kwargs: object) -> CheckpointStore:
    return CheckpointStore(root, chunk_size=64 << 10, **kwargs)  # type: ignore[arg-type]


def test_write_commit_and_read_back(tmp_path: Path) -> None:
    with _store(tmp_path, clock=lambda: 1234.5) as store:
        info = store.write_bytes(JOB, b"hello", progress=7.0, meta={"step": 7})
        assert (info.seq, info.size, info.progress, info.created) == (1, 5, 7.0, 1234.5)
        assert info.meta["step"] == 7
        got = store.read(JOB)
        assert got is not None and got[1] == b"hello" and got[0].seq == 1
        manifest = json.loads((tmp_path / JOB / "ckpt-0000000001.json").read_text())
        assert manifest["digest"] == info.digest and manifest["size"] == 5
        assert manifest["hash"] == info.algorithm == "blake3" and manifest["format"] == 2
        assert info.digest == blake3.blake3(b"hello").hexdigest()


def test_streaming_sources_give_the_same_checkpoint(tmp_path: Path) -> None:
    data = pattern(1)
    with _store(tmp_path) as store:
        a = store.write(JOB, data, progress=1)
        b = store.write(JOB, io.BytesIO(data), progress=2)
        c = store.write(JOB, (data[i : i + 10_000] for i in range(0, len(data), 10_000)), progress=3)
        assert a.digest == b.digest == c.digest and a.size == b.size == c.size == len(data)
        assert [x.seq for x in store.checkpoints(JOB)] == [1, 2, 3]


def test_only_the_last_k_are_kept(tmp_path: Path) -> None:
    with _store(tmp_path, keep=3) as store:
        for i in range(6):
            store.write_bytes(JOB, bytes([i]) * 100, progress=i)
        assert [c.seq for c in store.checkpoints(JOB)] == [4, 5, 6]
        names = sorted(p.name for p in (tmp_path / JOB).iterdir())
        assert names == [f"ckpt-{s:010d}.{ext}" for s in (4, 5, 6) for ext in ("data", "json")]


def test_flipped_bit_is_detected_and_the_previous_one_used(tmp_path: Path) -> None:
    seen: list[CorruptCheckpoint] = []
    with _store(tmp_path, on_corrupt=seen.append) as store:
        store.write_bytes(JOB, pattern(1), progress=1)
        latest = store.write_bytes(JOB, pattern(2), progress=2)
        raw = bytearray(latest.data_path.read_bytes())
        raw[len(raw) // 3] ^= 0x10
        latest.data_path.write_bytes(raw)
        with pytest.raises(CheckpointCorrupt):
            store.verify(latest)
        got = store.read(JOB)
        assert got is not None
        assert got[0].seq == 1 and got[1] == pattern(1)
        assert [(e.seq, e.reason) for e in seen] == [(2, "hash")]
        # Set aside: never offered again, and its number is never reused.
        assert [c.seq for c in store.checkpoints(JOB)] == [1]
        assert store.write_bytes(JOB, b"next", progress=3).seq == 3


def test_truncated_missing_and_damaged_manifest_fall_back(tmp_path: Path) -> None:
    seen: list[CorruptCheckpoint] = []
    with _store(tmp_path, keep=5, on_corrupt=seen.append) as store:
        infos = [store.write_bytes(JOB, pattern(i), progress=i) for i in range(4)]
        with open(infos[3].data_path, "r+b") as f:
            f.truncate(100)  # torn data under a manifest (e.g. a lying disk)
        infos[2].data_path.unlink()
        manifest = tmp_path / JOB / "ckpt-0000000002.json"
        manifest.write_text(manifest.read_text().replace('"progress":1.0', '"progress":9.0'))
        restored = store.restore(JOB)
        assert restored is not None and restored.seq == 1
        assert sorted((e.seq, e.reason) for e in seen) == [(2, "manifest"), (3, "missing"), (4, "size")]


def test_no_checkpoint_restores_to_none(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        assert store.restore(JOB) is None
        assert store.read(JOB) is None


def test_startup_recovery_removes_temp_and_uncommitted_files(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        store.write_bytes(JOB, b"one", progress=1)
    job_dir = tmp_path / JOB
    (job_dir / ".tmp-0000000002-abc.data").write_bytes(b"half")
    (job_dir / "ckpt-0000000002.data").write_bytes(b"renamed, never committed")
    with _store(tmp_path) as store:
        assert len(store.recovery.removed_temp) == 1 and len(store.recovery.removed_orphans) == 1
        assert sorted(p.name for p in job_dir.iterdir()) == ["ckpt-0000000001.data", "ckpt-0000000001.json"]
        assert store.write_bytes(JOB, b"two", progress=2).seq == 2


def test_failed_source_commits_nothing(tmp_path: Path) -> None:
    def chunks():
        yield b"a" * 100_000
        yield b"b" * 100_000
        raise RuntimeError("source broke")

    with _store(tmp_path) as store:
        with pytest.raises(RuntimeError):
            store.write(JOB, chunks(), progress=1)
        assert store.checkpoints(JOB) == ()
        assert list((tmp_path / JOB).iterdir()) == []


def test_adopt_moves_a_staged_file_in(tmp_path: Path) -> None:
    staged = tmp_path / "staging" / "state.ckpt"
    staged.parent.mkdir()
    staged.write_bytes(pattern(5))
    with _store(tmp_path / "store") as store:
        with pytest.raises(CheckpointCorrupt):
            store.adopt(JOB, staged, progress=5, expected_digest="00" * 32)
        staged.write_bytes(pattern(5))
        info = store.adopt(JOB, staged, progress=5)
        assert not staged.exists()
        assert store.read(JOB) == (info, pattern(5))
        with pytest.raises(CheckpointError):
            store.adopt(JOB, staged, progress=6)


def test_catalogue_lists_jobs_and_checkpoints(tmp_path: Path) -> None:
    with _store(tmp_path, keep=2) as store:
        for job in ("b", "a"):
            for i in range(3):
                store.write_bytes(job, b"x" * (i + 1), progress=i)
        cat = store.catalogue()
        assert [j.job_id for j in cat] == ["a", "b"]
        assert [(c.seq, c.size) for c in cat[0].checkpoints] == [(2, 2), (3, 3)]
        assert cat[0].latest is not None and cat[0].latest.progress == 2.0
        wire = cat[0].to_wire()
        assert json.dumps(wire) and wire["checkpoints"][0]["digest"] == cat[0].checkpoints[0].digest
        assert wire["checkpoints"][0]["hash"] == "blake3"


def _format1_manifest(job_dir: Path, seq: int, data: bytes) -> None:
    """A checkpoint exactly as the store wrote it before manifests named their hash."""
    from node.jobs.store import _canonical

    (job_dir / f"ckpt-{seq:010d}.data").write_bytes(data)
    body = {"format": 1, "job_id": job_dir.name, "seq": seq, "data": f"ckpt-{seq:010d}.data",
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "progress": float(seq),
            "created": 1.0, "meta": {}, "duration_s": 0.1}
    body["check"] = hashlib.sha256(_canonical(body)).hexdigest()
    (job_dir / f"ckpt-{seq:010d}.json").write_bytes(_canonical(body) + b"\n")


def test_format_1_manifests_still_verify_and_restore(tmp_path: Path) -> None:
    job_dir = tmp_path / JOB
    job_dir.mkdir()
    _format1_manifest(job_dir, 1, b"old one")
    _format1_manifest(job_dir, 2, b"old two")
    (job_dir / "ckpt-0000000002.data").write_bytes(b"old tw0")  # bit rot in the newest
    corrupt: list[object] = []
    with _store(tmp_path, on_corrupt=corrupt.append) as store:
        info = store.restore(JOB)
        assert info is not None and (info.seq, info.algorithm) == (1, "sha256")
        assert store.read(JOB) == (info, b"old one")
        assert [c.reason for c in corrupt] == ["hash"]  # type: ignore[attr-defined]
        new = store.write_bytes(JOB, b"new", progress=9)  # new ones in the store's algorithm
        assert (new.seq, new.algorithm) == (3, "blake3")
        assert [c.algorithm for c in store.checkpoints(JOB)] == ["sha256", "blake3"]


def test_the_hash_algorithm_is_chosen_and_checked(tmp_path: Path) -> None:
    with _store(tmp_path, algorithm="sha256") as store:
        info = store.write_bytes(JOB, b"abc", progress=1)
        assert info.algorithm == "sha256" and info.digest == hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(CheckpointError, match="unknown checkpoint hash"):
        _store(tmp_path / "other", algorithm="md5")


def test_bad_job_ids_and_values_are_refused(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        for bad in ("", "../x", ".hidden", "a/b"):
            with pytest.raises(CheckpointError):
                store.write_bytes(bad, b"x", progress=0)
        with pytest.raises(CheckpointError):
            store.write_bytes(JOB, b"x", progress=-1)
        with pytest.raises(CheckpointError):
            store.write_bytes(JOB, b"x", progress=0, meta={"f": object()})


def test_one_owner_at_a_time(tmp_path: Path) -> None:
    with _store(tmp_path):
        with pytest.raises(StoreLocked):
            _store(tmp_path)
    _store(tmp_path).close()


async def test_async_store_bounds_concurrent_writes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    active = 0
    peak = 0
    lock = threading.Lock()
    real_write = store.write

    def slow_write(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        try:
            return real_write(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                active -= 1

    store.write = slow_write  # type: ignore[method-assign]
    wrapper = AsyncCheckpointStore(store, max_concurrent=2)
    try:
        infos = await asyncio.gather(
            *(wrapper.write_bytes(f"j{i}", b"x" * 1000, progress=i) for i in range(6))
        )
        assert len(infos) == 6 and peak == 2
        assert (await wrapper.restore("j3")) is not None
    finally:
        store.close()


# -- kill -9 of a process writing checkpoints ---------------------------------------------


def _writer(root: Path) -> None:
    store = CheckpointStore(root, keep=3, chunk_size=64 << 10)
    latest = store.restore(JOB)
    i = int(latest.progress) + 1 if latest else 1
    print("ready", flush=True)
    while True:
        store.write(JOB, pattern(i), progress=i)
        i += 1


def test_kill_9_while_writing_never_leaves_a_torn_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with _store(root, keep=3) as store:
        store.write(JOB, pattern(0), progress=0)
    rng = random.Random(20240605)
    previous = 0.0
    cleaned = 0
    kills = 24
    for _ in range(kills):
        child = subprocess.Popen(
            [sys.executable, __file__, "--writer", str(root)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.12))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        assert child.returncode == -signal.SIGKILL
        corrupt: list[CorruptCheckpoint] = []
        with _store(root, keep=3, on_corrupt=corrupt.append) as store:
            cleaned += len(store.recovery.removed_temp) + len(store.recovery.removed_orphans)
            assert not [p for p in (root / JOB).iterdir() if p.name.startswith(".tmp-")]
            got = store.read(JOB)
            assert got is not None, "the store must always offer a checkpoint"
            info, data = got
            assert data == pattern(int(info.progress)), "latest checkpoint is torn"
            assert corrupt == [], "a committed checkpoint was torn"
            assert info.progress >= previous
            assert len(store.checkpoints(JOB)) <= 3
            for c in store.checkpoints(JOB):
                store.verify(c)
            previous = info.progress
    assert previous > 0, "the writer never committed anything"
    assert cleaned > 0, "no kill landed in the middle of a write"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--writer":
        _writer(Path(sys.argv[2]))


def test_ground_catalogue_is_bounded_and_says_the_age(tmp_path: Path) -> None:
    from node.jobs.store import CATALOGUE_CHECKPOINTS, ground_catalogue

    now = [1000.0]
    with _store(tmp_path, keep=12, clock=lambda: now[0]) as store:
        for i in range(10):
            now[0] = 1000.0 + i
            store.write_bytes("train", bytes([i]) * (i + 1), progress=float(i))
        store.write_bytes("other", b"x", progress=1.0)
        (a, b) = ground_catalogue(store, now=1100.0)
        assert a["job"] == "other" and not a["truncated"] and len(a["checkpoints"]) == 1
        assert b["job"] == "train" and b["truncated"]
        assert [c["seq"] for c in b["checkpoints"]] == list(range(3, 11))[-CATALOGUE_CHECKPOINTS:]
        newest = b["checkpoints"][-1]
        assert newest["age_s"] == 91.0 and newest["size"] == 10 and newest["hash"] == "blake3"
        assert newest["digest"] == blake3.blake3(bytes([9]) * 10).hexdigest()
        (only,) = ground_catalogue(store, now=1100.0, job="other")
        assert only["job"] == "other"
        with pytest.raises(CheckpointError, match="no checkpoints"):
            ground_catalogue(store, now=1100.0, job="nope")
