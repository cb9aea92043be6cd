"""Checkpoint write throughput (its BLAKE3 hash included) against a raw sequential write + fsync.

Both write the same bytes (an 8 MiB random buffer, repeated) to the same filesystem, in
alternation, in the same run: the raw baseline is ``os.write`` of every chunk then one
``fsync`` (what ``dd bs=8M conv=fsync`` does); the checkpoint is ``CheckpointStore.write``
— temporary file, hashed chunked writes, fsync, rename, directory fsync, manifest (its own
temporary file, fsync, rename, directory fsync).  1 GiB per write; 64 MiB in quick mode.
Set ``UMBRA_BENCH_DIR`` to measure another filesystem (default: the system temp dir).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.registry import Context, Result, benchmark
from node.jobs.store import DEFAULT_HASH, CheckpointStore

_CHUNK = 8 << 20


def _raw_write(path: Path, buf: bytes, count: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(count):
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


@benchmark("checkpoint.write")
def checkpoint_write(ctx: Context) -> Result:
    size = (64 << 20) if ctx.quick else (1 << 30)
    count = size // _CHUNK
    repeats = 3 if ctx.quick else 5
    buf = os.urandom(_CHUNK)
    root = Path(tempfile.mkdtemp(prefix="umbra-bench-ckpt-", dir=os.environ.get("UMBRA_BENCH_DIR")))
    raw_path = root / "raw.bin"
    ours: list[float] = []
    raw: list[float] = []
    try:
        with CheckpointStore(root / "store", keep=1, chunk_size=_CHUNK) as store:

            def checkpoint(n: int) -> None:
                store.write("bench", (buf for _ in range(n)), progress=0)

            for _ in range(repeats):  # alternate, so drifts of a shared disk hit both alike
                raw.append(size / ctx.seconds(lambda n: _raw_write(raw_path, buf, n), count))
                raw_path.unlink()
                ours.append(size / ctx.seconds(checkpoint, count))
                store.delete_job("bench")  # outside the timed write: no pruning inside it
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mib = 1 << 20
    return Result(
        value=statistics.median(ours) / mib,
        unit="MiB/s",
        baseline=statistics.median(raw) / mib,
        notes=f"CheckpointStore.write of {size // mib} MiB ({DEFAULT_HASH}, fsyncs, manifest) vs "
        f"os.write+fsync of the same bytes; median of {repeats}; target ratio >= 0.8",
    )
