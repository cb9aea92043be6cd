"""Orbital plant speed: simulated seconds per wall second for 8, 64 and 512 GPUs.

The numba step kernel (firmware_sim.physics.space_step) against its pure-NumPy reference
in the same run; each call advances one 10 Hz sensor period of 0.1 s (one sub-step), as
the board does.  The issue's aim: at least 10,000x real time at 8 GPUs.
"""

from __future__ import annotations

from bench.registry import Context, Result, benchmark
from firmware_sim import physics as ph
from firmware_sim.config import SpaceConfig
from firmware_sim.spaceplant import SpacePlant

_PERIOD_S = 0.1


def _plant(gpus: int) -> SpacePlant:
    plant = SpacePlant(config=SpaceConfig(gpu_count=gpus, demand_w=450.0), seed=1)
    plant.step(600.0)  # warm: GPUs drawing, loop and radiator heating
    return plant


def _bench(ctx: Context, gpus: int) -> Result:
    plant = _plant(gpus)
    p, s, g = plant.p, plant.s, plant.g
    ref_s, ref_g = s.copy(), g.copy()

    def ours(n: int) -> None:
        for _ in range(n):
            ph.space_step(_PERIOD_S, p, s, g)

    def reference(n: int) -> None:
        for _ in range(n):
            ph.space_step_ref(_PERIOD_S, p, ref_s, ref_g)

    return Result(
        value=ctx.rate(ours) * _PERIOD_S,
        unit="sim s/s",
        baseline=ctx.rate(reference) * _PERIOD_S,
        notes=f"{gpus} GPUs, 0.1 s steps: numba space_step vs its NumPy reference",
    )


@benchmark("plant.realtime_8gpu")
def plant_8(ctx: Context) -> Result:
    return _bench(ctx, 8)


@benchmark("plant.realtime_64gpu")
def plant_64(ctx: Context) -> Result:
    return _bench(ctx, 64)


@benchmark("plant.realtime_512gpu")
def plant_512(ctx: Context) -> Result:
    return _bench(ctx, 512)
