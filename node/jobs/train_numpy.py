"""A NumPy training loop that survives being killed: the pattern for your own job.

A two-layer MLP learns a synthetic regression by minibatch SGD.  Everything that decides
the result is in the checkpoint — the weights, the step and the random generator's state —
so a run killed at any moment and resumed under Umbra ends with exactly (bit for bit) the
weights of an uninterrupted run.  ``--output`` gets the SHA-256 of the final weights and the
final loss::

    python -m node.jobs.train_numpy --steps 3000 --output result.txt        # alone
    [[jobs]] command = ["python", "-m", "node.jobs.train_numpy", "--steps", "3000"]  # under the node
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from node.jobs.jobkit import Checkpointer, write_result

PARAMS = ("w1", "b1", "w2", "b2")


@dataclass
class State:
    """Everything that decides the result: the weights, the step, the generator."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    step: int
    rng: np.random.Generator


def dataset(seed: int, n: int = 4096, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = np.tanh(x @ rng.standard_normal(d)) + 0.1 * rng.standard_normal(n)
    return x, y[:, None]


def fresh(seed: int, d: int = 16, hidden: int = 64) -> State:
    rng = np.random.default_rng(seed + 1)
    return State(w1=rng.standard_normal((d, hidden)) / np.sqrt(d), b1=np.zeros(hidden),
                 w2=rng.standard_normal((hidden, 1)) / np.sqrt(hidden), b2=np.zeros(1),
                 step=0, rng=np.random.default_rng(seed + 2))


def save(state: State) -> bytes:
    buf = io.BytesIO()
    rng_state = json.dumps(state.rng.bit_generator.state).encode()
    np.savez(buf, **{k: getattr(state, k) for k in PARAMS}, step=np.array(state.step),
             rng=np.frombuffer(rng_state, dtype=np.uint8))
    return buf.getvalue()


def load(data: bytes) -> State:
    with np.load(io.BytesIO(data)) as z:
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(z["rng"].tobytes())
        return State(**{k: z[k].copy() for k in PARAMS}, step=int(z["step"]), rng=rng)


def train_step(state: State, x: np.ndarray, y: np.ndarray, lr: float, batch: int) -> float:
    idx = state.rng.integers(0, len(x), batch)
    xb, yb = x[idx], y[idx]
    h = np.tanh(xb @ state.w1 + state.b1)
    err = h @ state.w2 + state.b2 - yb
    g_out = 2.0 * err / batch
    g_h = (g_out @ state.w2.T) * (1.0 - h * h)
    state.w2 = state.w2 - lr * (h.T @ g_out)
    state.b2 = state.b2 - lr * g_out.sum(axis=0)
    state.w1 = state.w1 - lr * (xb.T @ g_h)
    state.b1 = state.b1 - lr * g_h.sum(axis=0)
    state.step += 1
    return float(np.mean(err * err))


def fingerprint(state: State) -> str:
    h = hashlib.sha256()
    for k in PARAMS:
        h.update(np.ascontiguousarray(getattr(state, k)).tobytes())
    return h.hexdigest()


def gpu_speed(path: Path | None) -> float:
    """The simulated GPU's speed from ``path`` (1.0 without one, or while it cannot be read)."""
    if path is None:
        return 1.0
    try:
        return max(0.0, float(path.read_text()))
    except (OSError, ValueError):
        return 1.0


def pace(step_s: float, speed_file: Path | None, began: float, ckpt: Checkpointer) -> None:
    """Make the step last ``step_s`` / speed of wall time; wait while the GPU does no work
    (a request from the node still gets its answer meanwhile)."""
    while True:
        speed = gpu_speed(speed_file)
        if speed > 0.0:
            time.sleep(max(0.0, step_s / speed - (time.monotonic() - began)))
            return
        if ckpt.due:
            return
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m node.jobs.train_numpy", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--output", type=Path)
    p.add_argument("--step-s", type=float, default=0.0, metavar="S",
                   help="take at least S wall seconds a step: stands in for a GPU's step time on a "
                        "CPU-only bench (HIL scenarios), without using the CPU the bench needs")
    p.add_argument("--speed-file", type=Path, metavar="PATH",
                   help="with --step-s: a file holding the simulated GPU's speed (1.0 = full; 0 = off), "
                        "which divides the step time; a HIL bench writes it (docs/hil.md)")
    args = p.parse_args(argv)

    ckpt = Checkpointer()
    x, y = dataset(args.seed)
    saved = ckpt.restore()
    state = load(saved) if saved is not None else fresh(args.seed)
    ckpt.ready()
    loss = float("nan")
    while state.step < args.steps:
        began = time.monotonic()
        loss = train_step(state, x, y, args.lr, args.batch)
        if args.step_s > 0.0:
            pace(args.step_s, args.speed_file, began, ckpt)
        ckpt.progress(state.step)
        if ckpt.due:  # a safe point: between two steps
            ckpt.save(save(state), progress=state.step)
            if ckpt.stopping:
                return 0
    answer = f"{fingerprint(state)} {loss!r}"
    write_result(args.output, answer)
    ckpt.done(state.step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
