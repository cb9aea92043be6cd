"""Pure-NumPy references of :mod:`node.control.kernels`: same inputs, same outputs.

Array kernels are rewritten here in vectorised NumPy, independently of the loops in the
kernels, so a test that they agree checks the arithmetic twice.  The two scalar budget
kernels have no arrays to vectorise; their reference is the kernel's own Python source
run uncompiled (``py_func``), which still checks numba's compilation against Python.
"""

from __future__ import annotations

import numpy as np

from node.control import kernels
from node.control.kernels import FLAG_INNOVATION, FLAG_NAN, FLAG_RANGE, FLAG_STUCK

power_budget = kernels.power_budget.py_func if hasattr(kernels.power_budget, "py_func") else kernels.power_budget
heat_budget = kernels.heat_budget.py_func if hasattr(kernels.heat_budget, "py_func") else kernels.heat_budget


def estimate(
    z: np.ndarray,
    power_w: np.ndarray,
    dt: float,
    tau_s: float,
    r_k_per_w: float,
    q_t: float,
    q_b: float,
    r_meas: float,
    innov_k: float,
    lo_c: float,
    hi_c: float,
    stuck_n: int,
    persist_n: int,
    x_t: np.ndarray,
    x_b: np.ndarray,
    p_tt: np.ndarray,
    p_tb: np.ndarray,
    p_bb: np.ndarray,
    last_z: np.ndarray,
    stuck_count: np.ndarray,
    innov_count: np.ndarray,
    flags: np.ndarray,
) -> int:
    a = np.exp(-dt / tau_s) if tau_s > 0.0 else 0.0
    g = 1.0 - a
    t_pred = a * x_t + g * (x_b + r_k_per_w * power_w)
    ptt = a * a * p_tt + 2.0 * a * g * p_tb + g * g * p_bb + q_t
    ptb = a * p_tb + g * p_bb
    pbb = p_bb + q_b * dt
    s = ptt + r_meas
    nan = np.isnan(z)
    with np.errstate(invalid="ignore"):
        out_of_range = ~nan & ((z < lo_c) | (z > hi_c))
    valid = ~nan & ~out_of_range
    same = valid & (z == last_z)
    stuck_count[:] = np.where(valid, np.where(same, stuck_count + 1, 0), stuck_count)
    last_z[:] = np.where(valid, z, last_z)
    innov = np.where(valid, z - t_pred, 0.0)
    gated = valid & (innov * innov > innov_k * innov_k * s)
    innov_count[:] = np.where(valid, np.where(gated, innov_count + 1, 0), innov_count)
    flag = (
        np.where(nan, FLAG_NAN, 0)
        | np.where(out_of_range, FLAG_RANGE, 0)
        | np.where(valid & (stuck_count >= stuck_n), FLAG_STUCK, 0)
        | np.where(valid & (innov_count >= persist_n), FLAG_INNOVATION, 0)
    )
    reseed = (flag == FLAG_INNOVATION) & ((innov > 0.0) | (innov_count >= 10 * persist_n))
    update = ~reseed & (flag == 0) & (innov_count == 0)
    k_t = ptt / s
    k_b = ptb / s
    x_b[:] = np.where(reseed, x_b + innov, np.where(update, x_b + k_b * innov, x_b))
    x_t[:] = np.where(reseed, z, np.where(update, t_pred + k_t * innov, t_pred))
    p_tt[:] = np.where(reseed, r_meas, np.where(update, (1.0 - k_t) * ptt, ptt))
    p_tb[:] = np.where(reseed, 0.0, np.where(update, (1.0 - k_t) * ptb, ptb))
    p_bb[:] = np.where(update, pbb - k_b * ptb, pbb)
    innov_count[:] = np.where(reseed, 0, innov_count)
    flags[:] = flag
    return int(np.count_nonzero(flag))


def cross_check(
    x_t: np.ndarray,
    x_b: np.ndarray,
    power_w: np.ndarray,
    plate_w: np.ndarray,
    r_k_per_w: float,
    r_plate_k_per_w: float,
    tol_k: float,
    spread_k: float,
    learn: float,
    place: np.ndarray,
    flags: np.ndarray,
) -> int:
    loop = x_b - r_plate_k_per_w * plate_w
    ok = flags == 0
    total, good = loop[ok].sum(), int(np.count_nonzero(ok))
    others_n = np.where(ok, good - 1, good)
    enough = others_n >= 2
    others = (total - np.where(ok, loop, 0.0)) / np.maximum(others_n, 1)
    diff = loop - others
    # First look: the place is where the GPU sits now, within the bound.
    place[:] = np.where(enough & ok & np.isnan(place), np.clip(diff, -spread_k, spread_k), place)
    known = np.where(np.isnan(place), 0.0, place)
    follow = enough & ~ok
    cold = enough & ok & (diff < known - tol_k)
    learn_here = enough & ok & ~cold
    follow_b = others + known + r_plate_k_per_w * plate_w
    cold_b = others + known - tol_k + r_plate_k_per_w * plate_w
    new_t = np.where(follow, x_t + (follow_b - x_b), x_t)
    new_t = np.where(cold, np.maximum(x_t, cold_b + r_k_per_w * power_w), new_t)
    x_b[:] = np.where(follow, follow_b, np.where(cold, cold_b, x_b))
    x_t[:] = new_t
    learned = np.clip(known + learn * (diff - known), -spread_k, spread_k)
    place[:] = np.where(learn_here, learned, place)
    flags[:] = np.where(cold, flags | kernels.FLAG_NEIGHBOURS, flags)
    return int(np.count_nonzero(cold))


def thermal_caps(
    x_t: np.ndarray,
    x_b: np.ndarray,
    tau_s: float,
    r_k_per_w: float,
    limit_c: float,
    horizon_s: float,
    target_c: float,
    kp_w_per_k: float,
    ki_w_per_ks: float,
    dt: float,
    cap_min_w: float,
    cap_max_w: float,
    integ: np.ndarray,
    out_cap_w: np.ndarray,
) -> int:
    e = np.exp(-horizon_s / tau_s) if tau_s > 0.0 else 0.0
    headroom = ((limit_c - x_t * e) / (1.0 - e) - x_b) / r_k_per_w
    err = target_c - x_t
    cap = np.minimum(headroom, cap_max_w) + kp_w_per_k * np.minimum(err, 0.0) + integ
    frozen = (cap <= cap_min_w) & (err < 0.0)
    integ[:] = np.where(frozen, integ, np.minimum(0.0, integ + ki_w_per_ks * err * dt))
    out_cap_w[:] = np.clip(cap, cap_min_w, cap_max_w)
    return int(np.count_nonzero(out_cap_w < cap_max_w))


def cap_bounds(
    thermal_w: np.ndarray,
    limit_w: np.ndarray,
    prev_cap_w: np.ndarray,
    power_w: np.ndarray,
    rails: int,
    slew_w: float,
    cap_min_w: float,
    out_lo: np.ndarray,
    out_hi: np.ndarray,
    out_demand: np.ndarray,
) -> None:
    on = (rails >> np.arange(len(thermal_w))) & 1 == 1
    hi = np.minimum(np.minimum(thermal_w, limit_w), prev_cap_w + slew_w)
    out_lo[:] = cap_min_w
    out_hi[:] = np.where(on, np.maximum(hi, cap_min_w), cap_min_w)
    grow = np.where(power_w < prev_cap_w - 20.0, power_w + 20.0, np.inf)
    out_demand[:] = np.where(on, grow, 0.0)


def water_fill(
    budget_w: float,
    weight: np.ndarray,
    lo_w: np.ndarray,
    hi_w: np.ndarray,
    demand_w: np.ndarray,
    out_cap_w: np.ndarray,
) -> float:
    lam_lo, lam_hi = 0.0, float(np.max(hi_w / weight))
    for _ in range(60):
        lam = 0.5 * (lam_lo + lam_hi)
        total = np.minimum(np.clip(weight * lam, lo_w, hi_w), demand_w).sum()
        if total > budget_w:
            lam_hi = lam
        else:
            lam_lo = lam
    out_cap_w[:] = np.clip(weight * lam_lo, lo_w, hi_w)
    return float(np.minimum(out_cap_w, demand_w).sum())


def caps_changed(new_cap_w: np.ndarray, sent_cap_w: np.ndarray, deadband_w: float) -> bool:
    return bool(np.any(np.abs(new_cap_w - sent_cap_w) > deadband_w))
