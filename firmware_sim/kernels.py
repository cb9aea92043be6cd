"""Plant step kernel (numba) and its NumPy reference.

Pure functions over numpy arrays and numbers: no objects, no logging, no allocation.  The
state arrays (``temp_c``, ``power_w``, ``progress``, ``slowed``) are updated in place.

Over a step the target power of each GPU is constant, and the two first-order lags
(power after target, temperature after power) are integrated exactly for that: the power
gap decays as ``a = exp(-dt/tau_p)`` and the temperature obeys the closed-form solution of
the cascade, so a step of any length is stable and exact (one 1 h step equals 36 000 steps
of 0.1 s).  Progress uses the mean power over the step, which the power lag gives in
closed form; its concave rate makes that approximate only while power is still settling.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]


@njit(cache=True)
def plant_step(
    dt: float,
    tau_power_s: float,
    tau_temp_s: float,
    r_k_per_w: float,
    sink_c: float,
    idle_w: float,
    ref_w: float,
    work_exponent: float,
    slowdown_c: float,
    release_c: float,
    slowdown_factor: float,
    cap_w: F64,
    demand_w: F64,
    rail_on: Bool,
    temp_c: F64,
    power_w: F64,
    progress: F64,
    slowed: Bool,
) -> None:
    """Advance every GPU by ``dt`` seconds (in place).  ``dt <= 0`` changes nothing."""
    if dt <= 0.0:
        return
    x = dt / tau_power_s
    a = math.exp(-x)
    # Mean of the exponential approach over the step, as a fraction of the initial gap;
    # expm1 keeps it exact for tiny steps.
    m = -math.expm1(-x) / x
    b = math.exp(-dt / tau_temp_s)
    # How much of the initial power gap is still in the temperature at the end of the step.
    if abs(tau_power_s - tau_temp_s) < 1e-9 * tau_temp_s:
        coupling = dt / tau_temp_s * b  # the limit for equal time constants
    else:
        coupling = tau_power_s / (tau_power_s - tau_temp_s) * (a - b)
    span = ref_w - idle_w
    for i in range(temp_c.shape[0]):
        # Slowdown is decided on the temperature at the start of the step, with hysteresis.
        if slowed[i]:
            if temp_c[i] < release_c:
                slowed[i] = False
        elif temp_c[i] >= slowdown_c:
            slowed[i] = True
        target = 0.0
        if rail_on[i]:
            target = min(cap_w[i], demand_w[i])
            if slowed[i]:
                target *= slowdown_factor
        gap = power_w[i] - target
        mean_p = target + gap * m
        power_w[i] = target + gap * a
        t_eq = sink_c + r_k_per_w * target
        temp_c[i] = t_eq + (temp_c[i] - t_eq) * b + r_k_per_w * gap * coupling
        busy = mean_p - idle_w
        if busy > 0.0:
            progress[i] += dt * (busy / span) ** work_exponent


def plant_step_ref(
    dt: float,
    tau_power_s: float,
    tau_temp_s: float,
    r_k_per_w: float,
    sink_c: float,
    idle_w: float,
    ref_w: float,
    work_exponent: float,
    slowdown_c: float,
    release_c: float,
    slowdown_factor: float,
    cap_w: F64,
    demand_w: F64,
    rail_on: Bool,
    temp_c: F64,
    power_w: F64,
    progress: F64,
    slowed: Bool,
) -> None:
    """NumPy reference of :func:`plant_step`, written as array expressions."""
    if dt <= 0.0:
        return
    x = dt / tau_power_s
    a = np.exp(-x)
    m = -np.expm1(-x) / x
    b = np.exp(-dt / tau_temp_s)
    if abs(tau_power_s - tau_temp_s) < 1e-9 * tau_temp_s:
        coupling = dt / tau_temp_s * b
    else:
        coupling = tau_power_s / (tau_power_s - tau_temp_s) * (a - b)
    slowed[:] = np.where(slowed, temp_c >= release_c, temp_c >= slowdown_c)
    target = np.where(rail_on, np.minimum(cap_w, demand_w), 0.0)
    target = np.where(slowed, target * slowdown_factor, target)
    gap = power_w - target
    mean_p = target + gap * m
    power_w[:] = target + gap * a
    t_eq = sink_c + r_k_per_w * target
    temp_c[:] = t_eq + (temp_c - t_eq) * b + r_k_per_w * gap * coupling
    busy = np.maximum(mean_p - idle_w, 0.0)
    progress += dt * (busy / (ref_w - idle_w)) ** work_exponent
