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
import os
import signal
import struct
import sys
from pathlib import Path
from types import FrameType

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


class _Control:
    """The job's side of the protocol: the control fd and the signal flags."""

    def __init__(self) -> None:
        fd = os.environ.get("UMBRA_CONTROL_FD", "")
        self.fd = int(fd) if fd else None
        staging = os.environ.get("UMBRA_CHECKPOINT_DIR", "")
        self.staging = Path(staging) if staging else None
        self.checkpoint_asked = False
        self.stop_asked = False

    def install(self) -> None:
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        self.checkpoint_asked = True

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stop_asked = True

    def say(self, line: str) -> None:
        if self.fd is not None:
            os.write(self.fd, (line + "\n").encode())  # < PIPE_BUF: one atomic write

    def checkpoint(self, state: bytes, step: int) -> None:
        if self.staging is None:
            return
        name = f"state-{step:012d}.ckpt"
        part = self.staging / f".part-{name}"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, state)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, self.staging / name)
        self.say(f"CHECKPOINT {name} {step}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.jobs.example_job", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--work", type=int, default=2000, help="hashings per step")
    parser.add_argument("--seed", default="umbra")
    parser.add_argument("--output", type=Path, help="write the final hash here too")
    parser.add_argument("--progress-every", type=int, default=25)
    args = parser.parse_args(argv)

    control = _Control()
    control.install()
    step, digest = 0, seed_hash(args.seed)
    restore = os.environ.get("UMBRA_RESTORE_FROM", "")
    if restore:  # read before READY: the node may prune the file later
        step, digest = decode_state(Path(restore).read_bytes(), steps=args.steps, work=args.work, seed=args.seed)
    control.say("READY")

    while step < args.steps:
        digest = advance(digest, args.work)
        step += 1
        if step % args.progress_every == 0:
            control.say(f"PROGRESS {step}")
        if control.stop_asked:
            control.checkpoint(encode_state(step, args.steps, args.work, args.seed, digest), step)
            return 0
        if control.checkpoint_asked:
            control.checkpoint_asked = False
            control.checkpoint(encode_state(step, args.steps, args.work, args.seed, digest), step)

    answer = digest.hex()
    if args.output is not None:
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(answer + "\n")
        os.replace(tmp, args.output)
    print(answer, flush=True)
    control.say(f"DONE {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
