"""A PyTorch training loop that survives being killed (CUDA when the job's GPU is visible).

The same two-layer MLP as node/jobs/train_numpy.py, the PyTorch way: a model, an optimiser
with state (SGD with momentum), a generator for the batches.  The checkpoint holds the
model, the optimiser, the step and the generator's state, so a run killed anywhere and
resumed under Umbra ends with the bit-identical parameters of an uninterrupted run on the
same machine (on a GPU with deterministic kernels: this script asks for them).
``--output`` gets their SHA-256 and the last loss::

    python -m node.jobs.train_torch --steps 2000 --output result.txt

PyTorch is not a dependency of Umbra (from PyPI it brings several GB of CUDA libraries):
tests/test_jobs_runner.py runs this where torch is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
from pathlib import Path
from typing import Any

from node.jobs.jobkit import Checkpointer, write_result


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    import torch

    p = argparse.ArgumentParser(prog="python -m node.jobs.train_torch", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)

    torch.use_deterministic_algorithms(True)
    device = torch.device(args.device)
    data = torch.Generator().manual_seed(args.seed)
    x = torch.randn(4096, 16, generator=data)
    y = torch.tanh(x @ torch.randn(16, generator=data)) + 0.1 * torch.randn(4096, generator=data)
    x, y = x.to(device), y[:, None].to(device)

    torch.manual_seed(args.seed + 1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    batches = torch.Generator().manual_seed(args.seed + 2)  # batch order: on the CPU, saved
    step = 0

    ckpt = Checkpointer()
    saved = ckpt.restore()
    if saved is not None:
        state: dict[str, Any] = torch.load(io.BytesIO(saved), map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        batches.set_state(state["batches"])
        step = int(state["step"])
    ckpt.ready()
    while step < args.steps:
        idx = torch.randint(0, x.shape[0], (args.batch,), generator=batches).to(device)
        opt.zero_grad(set_to_none=True)
        torch.mean((model(x[idx]) - y[idx]) ** 2).backward()
        opt.step()
        step += 1
        ckpt.progress(step)
        if ckpt.due:  # a safe point: between two steps
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "batches": batches.get_state()}, buf)
            ckpt.save(buf.getvalue(), progress=step)
            if ckpt.stopping:
                return 0
    with torch.no_grad():  # the loss on all the data: a function of the parameters alone
        loss = torch.mean((model(x) - y) ** 2)
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    answer = f"{digest.hexdigest()} {float(loss)!r}"
    write_result(args.output, answer)
    ckpt.done(step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
