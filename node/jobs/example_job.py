"""An example process job that follows the checkpoint protocol (docs/jobs.md).

It computes a SHA-256 hash chain: h₀ = SHA-256(seed), then ``steps`` steps of ``work``
hashings each.  The answer is the final hash, so a run that was killed and resumed from a
checkpoint must print exactly what an uninterrupted run prints.  Run it alone
(``python -m node.jobs.example_job --steps 100``) or under :class:`node.jobs.ProcessJob`.

State file: ``UMBRAEX1`` · step (u64 LE) · steps (u64 LE) · work (u64 LE) · seed hash (32) ·
current hash (32).
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import sys
from pathlib import Path

from node.jobs.jobkit import Checkpointer, write_result

MAGIC = b"UMBRAEX1"
_HEAD = struct.Struct("<8sQQQ32s32s")


def seed_hash(seed: str) -> bytes:
    return hashlib.sha256(seed.encode()).digest()


def advance(digest: bytes, work: int) -> bytes:
    for _ in range(work):
        digest = hashlib.sha256(digest).digest()
    return digest


def compute(seed: str, steps: int, work: int) -> str:
    """The uninterrupted answer, computed in-process."""
    digest = seed_hash(seed)
    for _ in range(steps):
        digest = advance(digest, work)
    return digest.hex()


def encode_state(step: int, steps: int, work: int, seed: str, digest: bytes) -> bytes:
    return _HEAD.pack(MAGIC, step, steps, work, seed_hash(seed), digest)


def decode_state(data: bytes, *, steps: int, work: int, seed: str) -> tuple[int, bytes]:
    """(step, digest) from a state file; ValueError when it is not ours or for other work."""
    if len(data) != _HEAD.size:
        raise ValueError(f"state has {len(data)} bytes, expected {_HEAD.size}")
    magic, step, s_steps, s_work, s_seed, digest = _HEAD.unpack(data)
    if magic != MAGIC:
        raise ValueError("not an example-job state file")
    if (s_steps, s_work, s_seed) != (steps, work, seed_hash(seed)):
        raise ValueError("state file belongs to a different computation")
    if step > steps:
        raise ValueError("state step beyond the end")
    return step, digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.jobs.example_job", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--work", type=int, default=2000, help="hashings per step")
    parser.add_argument("--seed", default="umbra")
    parser.add_argument("--output", type=Path, help="write the final hash here too")
    parser.add_argument("--progress-every", type=int, default=25)
    args = parser.parse_args(argv)

    ckpt = Checkpointer(progress_every_s=0.0)  # PROGRESS every --progress-every steps instead
    step, digest = 0, seed_hash(args.seed)
    saved = ckpt.restore()  # read before READY: the node may prune the file later
    if saved is not None:
        step, digest = decode_state(saved, steps=args.steps, work=args.work, seed=args.seed)
    ckpt.ready()

    while step < args.steps:
        digest = advance(digest, args.work)
        step += 1
        if step % args.progress_every == 0:
            ckpt.progress(step)
        if ckpt.due:
            ckpt.save(encode_state(step, args.steps, args.work, args.seed, digest), progress=step)
            if ckpt.stopping:
                return 0

    write_result(args.output, digest.hex())
    ckpt.done(step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
