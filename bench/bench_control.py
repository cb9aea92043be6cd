"""The control step (estimate + budget + allocate) at 8, 64 and 1,024 GPUs.

Three implementations of the same step run in one process: the numba kernels, their
pure-NumPy references, and the kernels' own Python source uncompiled (``py_func``: a
pure-Python loop).  The figure is steps per second of the numba pipeline; the baseline
is the NumPy reference, and the notes give the pure-Python rate and the whole
``UmbraLaw.step`` (kernels plus the Python wrapper) in µs against the issue's targets
(≤ 20 µs at 8 GPUs, ≤ 200 µs at 1,024).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable

import numpy as np

from bench.registry import Context, Result, benchmark
from node.control import kernels, reference
from node.control.law import UmbraLaw

_NAMES = ("estimate", "thermal_caps", "cap_bounds", "power_budget", "water_fill")


def _pure_python() -> types.SimpleNamespace:
    return types.SimpleNamespace(**{n: getattr(getattr(kernels, n), "py_func", getattr(kernels, n)) for n in _NAMES})


def _pipeline(mod: object, gpus: int) -> Callable[[int], None]:
    rng = np.random.default_rng(7)
    z = rng.uniform(60.0, 90.0, gpus)
    power = rng.uniform(200.0, 700.0, gpus)
    x_t, x_b = z.copy(), z - 15.0
    p_tt, p_tb, p_bb = np.full(gpus, 1.0), np.zeros(gpus), np.full(gpus, 10.0)
    last_z = np.full(gpus, math.nan)
    stuck, innov, flags = (np.zeros(gpus, dtype=np.int64) for _ in range(3))
    integ, thermal = np.zeros(gpus), np.zeros(gpus)
    limits, caps = np.full(gpus, np.inf), np.full(gpus, 700.0)
    lo, hi, demand = np.zeros(gpus), np.zeros(gpus), np.zeros(gpus)
    weights = np.ones(gpus)
    rails = (1 << min(gpus, 62)) - 1
    est, tc, cb, pb, wf = (getattr(mod, n) for n in _NAMES)

    def run(n: int) -> None:
        for _ in range(n):
            est(z, power, 0.1, 5.0, 0.03, 0.05, 0.02, 0.25, 6.0, -40.0, 150.0, 50, 5,
                x_t, x_b, p_tt, p_tb, p_bb, last_z, stuck, innov, flags)  # fmt: skip
            tc(x_t, x_b, 5.0, 0.03, 85.0, 10.0, 82.0, 20.0, 2.0, 0.1, 200.0, 700.0, integ, thermal)
            cb(thermal, limits, caps, power, rails, 20.0, 200.0, lo, hi, demand)
            budget = pb(3000.0, 1500.0, 3000.0, 1000.0, 100.0, 1800.0, 0.0, 2136.0, 0.95, 0.95, 1e9)
            wf(budget * gpus / 8.0, weights, lo, hi, demand, caps)

    run(1)  # compile outside the clock
    return run


def _law_step_us(ctx: Context, gpus: int) -> float:
    """µs per ``UmbraLaw.step``: the kernels plus the Python wrapper around them."""
    law = UmbraLaw()
    law.reset(gpu_count=gpus, cap_min_w=200.0, cap_max_w=700.0)
    # The law only reads attributes, so a mutable stand-in of SENSOR's shape lets board
    # time advance (and lets 1,024 GPUs through: on the wire a board carries at most 32).
    frame = types.SimpleNamespace(
        t_board=1.0, temp_c=np.linspace(60.0, 90.0, gpus), power_w=np.full(gpus, 500.0),
        cap_w=np.full(gpus, 700.0), rails=(1 << min(gpus, 62)) - 1, solar_w=3000.0,
        battery_soc=0.8, radiator_c=20.0, flags=0,
    )  # fmt: skip
    limits, weights = np.full(gpus, np.inf), np.ones(gpus)
    step = law.step

    def run(n: int) -> None:
        for _ in range(n):
            frame.t_board += 0.1
            step(frame, limits_w=limits, weights=weights)  # type: ignore[arg-type]

    run(1)
    return 1e6 * ctx.duration(run)


def _control_step(gpus: int) -> Callable[[Context], Result]:
    def measure(ctx: Context) -> Result:
        fast = ctx.rate(_pipeline(kernels, gpus))
        ref = ctx.rate(_pipeline(reference, gpus))
        slow = ctx.rate(_pipeline(_pure_python(), gpus), n=max(4, 2048 // gpus))
        law_us = _law_step_us(ctx, gpus)
        target = 20.0 if gpus <= 8 else 200.0 if gpus >= 1024 else float("nan")
        return Result(
            value=fast,
            unit="steps/s",
            baseline=ref,
            notes=f"{gpus} GPUs: numba {1e6 / fast:.1f} µs, NumPy {1e6 / ref:.1f} µs, pure Python "
            f"{1e6 / slow:.0f} µs ({fast / slow:.0f}x); UmbraLaw.step {law_us:.1f} µs"
            + (f" (target ≤ {target:.0f} µs)" if target == target else ""),
        )

    return measure


for _gpus in (8, 64, 1024):
    benchmark(f"control.step.{_gpus}gpu")(_control_step(_gpus))
