"""A JAX training loop that survives being killed (CPU or GPU; the job sees its GPUs only).

The same two-layer MLP as node/jobs/train_numpy.py, written the JAX way: a jitted update,
explicit PRNG keys.  The checkpoint holds the parameters, the step and the key, so a run
killed anywhere and resumed under Umbra ends with the bit-identical parameters of an
uninterrupted run on the same machine.  ``--output`` gets their SHA-256 and the last loss::

    python -m node.jobs.train_jax --steps 2000 --output result.txt
"""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from node.jobs.jobkit import Checkpointer, write_result

PARAMS = ("w1", "b1", "w2", "b2")


def main(argv: list[str] | None = None) -> int:
    import jax
    import jax.numpy as jnp

    p = argparse.ArgumentParser(prog="python -m node.jobs.train_jax", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)

    data_key, init_key, key = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    kx, kw, kn = jax.random.split(data_key, 3)
    x = jax.random.normal(kx, (4096, 16))
    y = (jnp.tanh(x @ jax.random.normal(kw, (16,))) + 0.1 * jax.random.normal(kn, (4096,)))[:, None]

    def fresh() -> dict[str, Any]:
        k1, k2 = jax.random.split(init_key)
        return {"w1": jax.random.normal(k1, (16, 64)) / 4.0, "b1": jnp.zeros(64),
                "w2": jax.random.normal(k2, (64, 1)) / 8.0, "b2": jnp.zeros(1)}

    def loss_fn(params: dict[str, Any], xb: Any, yb: Any) -> Any:
        h = jnp.tanh(xb @ params["w1"] + params["b1"])
        return jnp.mean((h @ params["w2"] + params["b2"] - yb) ** 2)

    @jax.jit
    def update(params: dict[str, Any], key: Any) -> tuple[dict[str, Any], Any, Any]:
        key, sub = jax.random.split(key)
        idx = jax.random.randint(sub, (args.batch,), 0, x.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
        return {k: params[k] - args.lr * grads[k] for k in PARAMS}, key, loss

    ckpt = Checkpointer()
    saved = ckpt.restore()
    if saved is not None:
        with np.load(io.BytesIO(saved)) as z:
            params = {k: jnp.asarray(z[k]) for k in PARAMS}
            step = int(z["step"])
            key = jnp.asarray(z["key"])
    else:
        params, step = fresh(), 0
    ckpt.ready()
    loss = float("nan")
    while step < args.steps:
        params, key, loss_value = update(params, key)
        step += 1
        ckpt.progress(step)
        if ckpt.due:  # a safe point: between two steps
            buf = io.BytesIO()
            arrays: dict[str, Any] = {k: np.asarray(params[k]) for k in PARAMS}
            np.savez(buf, step=np.array(step), key=np.asarray(key), **arrays)
            ckpt.save(buf.getvalue(), progress=step)
            if ckpt.stopping:
                return 0
        loss = float(loss_value) if step == args.steps else loss
    digest = hashlib.sha256()
    for k in PARAMS:
        digest.update(np.ascontiguousarray(np.asarray(params[k])).tobytes())
    answer = f"{digest.hexdigest()} {loss!r}"
    write_result(args.output, answer)
    ckpt.done(step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
