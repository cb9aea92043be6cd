"""Control kernels: pure ``@njit(cache=True)`` functions over numpy arrays and numbers.

No objects, logging, I/O or allocation here: callers pass output and state arrays in.
Every kernel has a pure-NumPy twin in :mod:`node.control.reference`; tests check that
they agree and ``make bench`` reports the ratio.  Run with ``NUMBA_DISABLE_JIT=1`` to
step through them as plain Python.

One control step (DESIGN.md "Control, once per sensor frame"):

1. :func:`estimate` — a two-state Kalman filter per GPU (die temperature and the
   temperature it settles towards at zero power, i.e. its cold plate) driven by measured
   power; flags sensors that are NaN, out of range, stuck, or whose innovation stays
   beyond k·σ, and then runs on the model alone — except that a sensor that insists on
   *hotter* than the model is believed (re-seeded), since that error is the safe one.
2. :func:`power_budget` / :func:`heat_budget` — watts the GPUs may draw now.
3. :func:`thermal_caps` — per GPU, the cap whose predicted temperature over a horizon
   stays under the limit, trimmed by a PI loop on temperature error with anti-windup.
4. :func:`water_fill` — share the budget by priority within each GPU's bounds.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Sensor fault flags (bits of the ``flags`` array).
FLAG_NAN = 1
FLAG_RANGE = 2
FLAG_STUCK = 4
FLAG_INNOVATION = 8
FLAG_NEIGHBOURS = 16

SIGMA_SB = 5.670374419e-8  # Stefan–Boltzmann, W/m²K⁴
KELVIN = 273.15


@njit(cache=True)
def estimate(
    z: np.ndarray,  # measured die temperatures, °C (NaN allowed)
    power_w: np.ndarray,  # measured power, W
    dt: float,  # board seconds since the previous frame
    tau_s: float,  # die time constant
    r_k_per_w: float,  # die-to-plate thermal resistance
    q_t: float,  # process noise of the die state, K² per step
    q_b: float,  # process noise of the plate state, K² per second
    r_meas: float,  # measurement noise variance, K²
    innov_k: float,  # innovation gate in σ
    lo_c: float,
    hi_c: float,
    stuck_n: int,  # identical readings in a row that make a sensor stuck
    persist_n: int,  # gated innovations in a row that make a sensor faulty
    x_t: np.ndarray,  # state: die temperature estimate (in/out)
    x_b: np.ndarray,  # state: plate temperature estimate (in/out)
    p_tt: np.ndarray,  # covariance (in/out)
    p_tb: np.ndarray,
    p_bb: np.ndarray,
    last_z: np.ndarray,  # previous reading (in/out)
    stuck_count: np.ndarray,  # (in/out)
    innov_count: np.ndarray,  # (in/out)
    flags: np.ndarray,  # out: fault bits per GPU
) -> int:
    """One predict/update per GPU.  Returns how many sensors are flagged."""
    a = math.exp(-dt / tau_s) if tau_s > 0.0 else 0.0
    g = 1.0 - a
    flagged = 0
    for i in range(z.shape[0]):
        # Predict: T' = a·T + (1−a)·(b + R·P);  b' = b.
        t_pred = a * x_t[i] + g * (x_b[i] + r_k_per_w * power_w[i])
        ptt = a * a * p_tt[i] + 2.0 * a * g * p_tb[i] + g * g * p_bb[i] + q_t
        ptb = a * p_tb[i] + g * p_bb[i]
        pbb = p_bb[i] + q_b * dt
        zi = z[i]
        flag = 0
        s = ptt + r_meas
        innov = 0.0
        if math.isnan(zi):
            flag |= FLAG_NAN
        elif zi < lo_c or zi > hi_c:
            flag |= FLAG_RANGE
        else:
            if zi == last_z[i]:
                stuck_count[i] += 1
            else:
                stuck_count[i] = 0
            last_z[i] = zi
            if stuck_count[i] >= stuck_n:
                flag |= FLAG_STUCK
            innov = zi - t_pred
            if innov * innov > innov_k * innov_k * s:
                innov_count[i] += 1
            else:
                innov_count[i] = 0
            if innov_count[i] >= persist_n:
                flag |= FLAG_INNOVATION
        if flag == FLAG_INNOVATION and (innov > 0.0 or innov_count[i] >= 10 * persist_n):
            # The sensor insists the GPU is hotter than the model thinks.  Believing the
            # hotter of the two is the safe error: re-seed from the reading, shift the
            # plate estimate by the same amount (the model's bias was wrong), start over.
            # A sensor that insists on colder is believed only after ten times as long.
            x_t[i] = zi
            x_b[i] = x_b[i] + innov
            p_tt[i] = r_meas
            p_tb[i] = 0.0
            p_bb[i] = pbb
            innov_count[i] = 0
        elif flag == 0 and innov_count[i] == 0:
            k_t = ptt / s
            k_b = ptb / s
            x_t[i] = t_pred + k_t * innov
            x_b[i] = x_b[i] + k_b * innov
            p_tt[i] = (1.0 - k_t) * ptt
            p_tb[i] = (1.0 - k_t) * ptb
            p_bb[i] = pbb - k_b * ptb
        else:
            # A doubtful reading: coast on the model (a single outlier is doubtful too).
            x_t[i] = t_pred
            p_tt[i] = ptt
            p_tb[i] = ptb
            p_bb[i] = pbb
        flags[i] = flag
        if flag != 0:
            flagged += 1
    return flagged


@njit(cache=True)
def cross_check(
    x_t: np.ndarray,  # die estimates (in/out)
    x_b: np.ndarray,  # plate estimates (in/out)
    power_w: np.ndarray,  # power now (the die follows it within seconds)
    plate_w: np.ndarray,  # power the plates have settled to (through their time constant)
    r_k_per_w: float,  # die-to-plate resistance
    r_plate_k_per_w: float,  # plate-to-loop resistance
    tol_k: float,
    spread_k: float,  # the largest place a healthy GPU may hold among its neighbours, K
    learn: float,  # fraction of the way a place moves towards this frame's (1 − e^(−dt/τ))
    place: np.ndarray,  # (in/out) each GPU's learned place: loop estimate − the others', K; NaN: not yet
    flags: np.ndarray,  # (in/out) FLAG_NEIGHBOURS added where a plate reads cold
) -> int:
    """Check each GPU against its neighbours on the shared coolant loop.

    Every plate sits ``r_plate·P̄`` above the loop (P̄: the power it has settled to), so
    ``b − r_plate·P`` estimates the loop temperature once per GPU, and healthy GPUs agree up
    to a spread of their own (contact resistances, flow): each GPU's *place* — its loop
    estimate less the others' mean — is learned slowly and bounded by ``spread_k``, seeded
    at the first check.  A GPU whose sensor is out (NaN, out of range, stuck, disagreeing
    with the model) has no measurement to keep its plate estimate honest: it follows the
    others' loop estimate plus its place.  A GPU more than ``tol_k`` below its place reads
    cold (a sensor drifting down slowly enough to pass the innovation gate): its plate is
    raised to its place less the tolerance, its die estimate with it, so the controller
    does not over-drive it.  Reading hot is the safe error and is left alone.  A drift
    faster than ``tol_k`` per learning time constant is caught while the place lags
    behind; a slower one once the place reaches the bound.  Needs two good neighbours.
    """
    n = x_b.shape[0]
    total = 0.0
    good = 0
    for i in range(n):
        if flags[i] == 0:
            total += x_b[i] - r_plate_k_per_w * plate_w[i]
            good += 1
    count = 0
    for i in range(n):
        own = x_b[i] - r_plate_k_per_w * plate_w[i]
        others_n = good - 1 if flags[i] == 0 else good
        if others_n < 2:
            continue
        others = (total - (own if flags[i] == 0 else 0.0)) / others_n
        known = place[i] if not math.isnan(place[i]) else 0.0
        if flags[i] != 0:
            target = others + known + r_plate_k_per_w * plate_w[i]
            x_t[i] += target - x_b[i]  # shift the die with its plate
            x_b[i] = target
            continue
        diff = own - others
        if math.isnan(place[i]):
            place[i] = min(max(diff, -spread_k), spread_k)  # first look: where it sits now
        if diff < place[i] - tol_k:
            floor = others + place[i] - tol_k + r_plate_k_per_w * plate_w[i]
            x_t[i] = max(x_t[i], floor + r_k_per_w * power_w[i])
            x_b[i] = floor
            flags[i] |= FLAG_NEIGHBOURS
            count += 1
        else:
            place[i] = min(max(place[i] + learn * (diff - place[i]), -spread_k), spread_k)
    return count


@njit(cache=True)
def power_budget(
    solar_w: float,
    battery_wh: float,
    capacity_wh: float,
    floor_wh: float,  # never plan below this (the depth-of-discharge floor plus a margin)
    avionics_w: float,
    eclipse_in_s: float,  # board seconds to the next eclipse entry (0: in eclipse)
    sun_in_s: float,  # board seconds to the next eclipse exit (0: in sunlight)
    eclipse_s: float,  # predicted length of the next eclipse
    charge_eff: float,
    discharge_eff: float,
    bus_limit_w: float,
    charge_max_w: float,  # most the battery takes while charging (inf: no limit)
) -> float:
    """Watts the GPUs may draw now so that the battery never goes below its floor.

    In eclipse: the energy above the floor, spread evenly over what is left of the
    eclipse, less the avionics.  In sunlight: a receding-horizon plan over this sunlit
    stretch (t_s) and the next eclipse (D).  Work is concave in power, so the plan draws
    the same GPU power P in both when it can: charging in the sun must leave, at
    eclipse entry, E_floor + (A + P)·D/η_d, which gives

        P = [S − A − (E_floor − E + A·D/η_d)/(t_s·η_c)] / (1 + D/(η_d·η_c·t_s)).

    The battery takes at most ``charge_max_w`` and no more than fills it by entry: sunlight
    beyond that would be shunted, so it goes to the GPUs (the eclipse then gets what the
    battery holds, less than P: with work concave, not taking it from the eclipse is right).
    Recomputed every frame, so errors in the prediction are corrected as they show.
    """
    a = avionics_w
    if sun_in_s > 0.0:
        hours_left = max(sun_in_s, 1.0) / 3600.0
        budget = max(0.0, battery_wh - floor_wh) * discharge_eff / hours_left - a + solar_w
    else:
        t_s = max(eclipse_in_s, 60.0) / 3600.0
        d = max(eclipse_s, 0.0) / 3600.0
        p = (solar_w - a - (floor_wh - battery_wh + a * d / discharge_eff) / (t_s * charge_eff)) / (
            1.0 + d / (discharge_eff * charge_eff * t_s)
        )
        charge = min(solar_w - a - p, charge_max_w, max(0.0, capacity_wh - battery_wh) / (t_s * charge_eff))
        budget = solar_w - a - charge
    return min(max(budget, 0.0), bus_limit_w)


@njit(cache=True)
def heat_budget(
    radiator_c: float,
    sink_c: float,
    emissivity_area_m2: float,  # ε·A of the radiator
    capacity_j_per_k: float,  # radiator + loop heat capacity
    radiator_max_c: float,  # hottest the radiator may run
    horizon_s: float,  # how fast the radiator may be brought up to its maximum
    other_heat_w: float,  # heat from avionics into the same loop
) -> float:
    """Watts of GPU heat the radiator can take now (steady rejection plus warm-up room)."""
    if math.isnan(radiator_c):
        return math.inf
    t = radiator_c + KELVIN
    ts = sink_c + KELVIN
    reject = emissivity_area_m2 * SIGMA_SB * (t**4 - ts**4)
    warmup = capacity_j_per_k * (radiator_max_c - radiator_c) / horizon_s
    return max(0.0, reject + warmup - other_heat_w)


@njit(cache=True)
def thermal_caps(
    x_t: np.ndarray,  # die temperature estimates
    x_b: np.ndarray,  # plate temperature estimates
    tau_s: float,
    r_k_per_w: float,
    limit_c: float,  # predicted temperature must stay below this
    horizon_s: float,
    target_c: float,  # PI set point (a little below the limit)
    kp_w_per_k: float,
    ki_w_per_ks: float,
    dt: float,
    cap_min_w: float,
    cap_max_w: float,
    integ: np.ndarray,  # PI integrator per GPU, W (in/out, ≤ 0)
    out_cap_w: np.ndarray,
) -> int:
    """Thermal bound of each GPU's cap.  Returns how many are below the hardware maximum.

    Headroom: with e = exp(−H/τ), T(H) = T_ss + (T₀ − T_ss)·e and T_ss = b + R·P, so
    T(H) ≤ L needs P ≤ ((L − T₀·e)/(1 − e) − b)/R.  The PI term only ever lowers the
    bound; its integrator stops when the bound is pinned at the minimum (anti-windup)
    and bleeds back to zero when the GPU is cool.
    """
    e = math.exp(-horizon_s / tau_s) if tau_s > 0.0 else 0.0
    bound_count = 0
    for i in range(x_t.shape[0]):
        t0 = x_t[i]
        headroom = ((limit_c - t0 * e) / (1.0 - e) - x_b[i]) / r_k_per_w
        err = target_c - t0  # negative when too hot
        pi = kp_w_per_k * min(err, 0.0) + integ[i]
        cap = min(headroom, cap_max_w) + pi
        saturated_low = cap <= cap_min_w
        if not (saturated_low and err < 0.0):
            integ[i] = min(0.0, integ[i] + ki_w_per_ks * err * dt)
        cap = min(max(cap, cap_min_w), cap_max_w)
        out_cap_w[i] = cap
        if cap < cap_max_w:
            bound_count += 1
    return bound_count


@njit(cache=True)
def cap_bounds(
    thermal_w: np.ndarray,  # thermal bound of each cap
    limit_w: np.ndarray,  # ground / FDIR limits (inf: none)
    prev_cap_w: np.ndarray,  # caps commanded last step
    power_w: np.ndarray,  # measured draw
    rails: int,  # bit i: GPU i's rail is on
    slew_w: float,  # most a cap may rise this step
    cap_min_w: float,
    out_lo: np.ndarray,
    out_hi: np.ndarray,
    out_demand: np.ndarray,
) -> None:
    """Each cap's bounds for the allocation, and what each GPU would draw at most.

    A GPU drawing well under its cap shows its job's demand (plus room to grow); a GPU
    with its rail off draws nothing and is held at the minimum.
    """
    for i in range(thermal_w.shape[0]):
        on = (rails >> i) & 1
        hi = min(thermal_w[i], limit_w[i], prev_cap_w[i] + slew_w)
        out_lo[i] = cap_min_w
        if on:
            out_hi[i] = max(hi, cap_min_w)
            p = power_w[i]
            out_demand[i] = p + 20.0 if p < prev_cap_w[i] - 20.0 else math.inf
        else:
            out_hi[i] = cap_min_w
            out_demand[i] = 0.0


@njit(cache=True)
def water_fill(
    budget_w: float,
    weight: np.ndarray,  # priority weights (> 0)
    lo_w: np.ndarray,  # lower bound of each cap
    hi_w: np.ndarray,  # upper bound of each cap (≥ lo)
    demand_w: np.ndarray,  # most each GPU will draw whatever its cap (inf: unknown)
    out_cap_w: np.ndarray,
) -> float:
    """Caps c_i = clamp(w_i·λ, lo_i, hi_i) with Σ min(c_i, demand_i) = budget, by bisection.

    A GPU whose job draws less than its cap leaves the rest of the budget to the others.
    When even the lower bounds exceed the budget every cap is at its lower bound (the
    caller sheds load); when the upper bounds fit, every cap is at its upper bound.
    Returns the expected total draw.
    """
    n = weight.shape[0]
    lam_hi = 0.0
    for i in range(n):
        lam_hi = max(lam_hi, hi_w[i] / weight[i])
    lam_lo = 0.0
    for _ in range(60):
        lam = 0.5 * (lam_lo + lam_hi)
        total = 0.0
        for i in range(n):
            c = min(max(weight[i] * lam, lo_w[i]), hi_w[i])
            total += min(c, demand_w[i])
        if total > budget_w:
            lam_hi = lam
        else:
            lam_lo = lam
    total = 0.0
    for i in range(n):
        c = min(max(weight[i] * lam_lo, lo_w[i]), hi_w[i])
        out_cap_w[i] = c
        total += min(c, demand_w[i])
    return total


@njit(cache=True)
def caps_changed(new_cap_w: np.ndarray, sent_cap_w: np.ndarray, deadband_w: float) -> bool:
    """True when any cap moved more than the deadband from what was last sent."""
    for i in range(new_cap_w.shape[0]):
        if abs(new_cap_w[i] - sent_cap_w[i]) > deadband_w:
            return True
    return False
