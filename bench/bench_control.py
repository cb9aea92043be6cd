"""Control kernels against their pure-NumPy references, at several GPU counts."""

from __future__ import annotations

import numpy as np

from bench.registry import Context, Result, benchmark
from node.control import kernels, reference


def _throttle(gpus: int):  # type: ignore[no-untyped-def]
    def run(ctx: Context) -> Result:
        rng = np.random.default_rng(7)
        temps = rng.uniform(60.0, 95.0, gpus)
        out = np.zeros(gpus)
        kernels.throttle_caps(temps, 200.0, 700.0, 80.0, 40.0, out)  # compile outside the clock

        def fast(n: int) -> None:
            for _ in range(n):
                kernels.throttle_caps(temps, 200.0, 700.0, 80.0, 40.0, out)

        def ref(n: int) -> None:
            for _ in range(n):
                reference.throttle_caps(temps, 200.0, 700.0, 80.0, 40.0, out)

        ours = ctx.rate(fast)
        return Result(
            value=ours,
            unit="steps/s",
            baseline=ctx.rate(ref),
            notes=f"throttle_caps over {gpus} GPUs, numba vs NumPy reference "
            f"({1e6 / ours:.2f} µs/step incl. call overhead)",
        )

    return run


for _gpus in (8, 64, 1024):
    benchmark(f"control.throttle.{_gpus}gpu")(_throttle(_gpus))
