"""Step kernel of the orbital plant (numba) and its NumPy reference.

Pure functions over numpy arrays and numbers: no objects, no logging, no allocation in
the step.  All state lives in three arrays, updated in place:

- ``p`` — parameters (float64, indexed by the ``P_*`` constants below);
- ``s`` — scalar state and ground-truth accumulators (``S_*``);
- ``g`` — per-GPU state, one row per quantity (``G_*``) and one column per GPU.

A step of ``dt`` seconds is split into ``ceil(dt / p[P_H_MAX])`` equal sub-steps.  In each
sub-step (docs/board-physics.md has the equations):

1. orbit: the array is lit unless the orbit angle is within the eclipse half-angle of
   orbit midnight (cylindrical shadow);
2. GPUs: target power ``max(idle, min(cap, demand))`` (halved in hardware slowdown, 0 with
   the rail off or the GPU dropped out), scaled down together if the bus limit is reached;
   drawn power follows the target through an exact first-order lag;
3. work: rate ``((P − idle)/(ref − idle))^α`` on the mean power of the sub-step;
4. heat: die → cold plate by the exact exponential solution (the die is the stiffest node,
   so any sub-step is stable); the energy the die did not keep goes to the plate; plate →
   loop → radiator → sink by explicit fluxes (time constants of minutes, sub-steps of
   0.1 s), so every joule that leaves one node enters the next: heat is conserved to
   rounding;
5. power: solar in, GPU and avionics loads out, the battery takes the difference with its
   charge / discharge efficiency and charge-rate limit; surplus is shunted; the bus voltage
   follows a linear open-circuit curve minus the internal-resistance drop;
6. protection: undervoltage sheds every GPU rail (their unsaved work is lost); a die at
   the shutdown temperature drops the GPU off the bus (unsaved work lost, Xid counted);
   slowdown with hysteresis.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

F64 = npt.NDArray[np.float64]

SIGMA = 5.670374419e-8  # Stefan–Boltzmann, W/m²K⁴
KELVIN = 273.15

# --- parameters p[...] ----------------------------------------------------------------------
P_PERIOD = 0  # orbital period, s
P_ECL_HALF = 1  # eclipse half-angle, rad (π·f); 0: no eclipse
P_PHASE0 = 2  # orbit angle at t = 0 from orbit noon, rad
P_SOLAR_MAX = 3  # array output in full sun with every string, W
P_STRING_FRAC = 4  # fraction of strings working
P_BATT_CAP = 5  # usable capacity, J
P_ETA_C = 6
P_ETA_D = 7
P_CHARGE_MAX = 8  # W into the battery at most
P_V_EMPTY = 9  # open-circuit pack voltage at SoC 0, V
P_V_FULL = 10
P_R_INT = 11  # ohm
P_UV_CUT = 12  # V: below this the GPU rails are shed
P_SOC_FLOOR = 13
P_AVI_W = 14
P_BUS_MAX = 15  # W
P_TAU_P = 16
P_IDLE = 17
P_REF = 18
P_ALPHA = 19
P_SLOW_C = 20
P_RELEASE_C = 21
P_SLOW_F = 22
P_SHUT_C = 23
P_R_DC = 24  # die → cold plate, K/W
P_C_D = 25  # die heat capacity, J/K
P_R_PL = 26  # cold plate → loop, K/W
P_C_P = 27
P_C_LOOP = 28
P_G_LR = 29  # loop → radiator with the pump working, W/K
P_PUMP = 30  # multiplier of P_G_LR (1 working, pump_fail_factor failed)
P_C_RAD = 31
P_RAD_EA = 32  # ε · σ · effective radiating area (both sides), W/K⁴
P_SINK_C = 33
P_H_MAX = 34  # longest sub-step, s
P_LIM_C = 35  # die limit used by the work bound's heat term
N_P = 36

# --- scalar state s[...] ----------------------------------------------------------------------
S_T = 0  # plant time since the run started (orbit clock; not reset with the board), s
S_LOOP = 1  # loop fluid temperature, °C
S_RAD = 2  # radiator temperature, °C
S_EBATT = 3  # energy in the battery, J
S_SOLAR_W = 4  # array output available at the end of the last sub-step, W
S_LIT = 5  # 1 in sunlight
S_BUS_V = 6
S_BATT_W = 7  # battery terminal power, + charging, W
S_E_AVAIL = 8  # solar energy the array could have delivered, J
S_E_SOLAR = 9  # solar energy delivered to the bus (not shunted), J
S_E_SHUNT = 10
S_E_GPU = 11
S_E_AVI = 12
S_E_BLOSS = 13  # battery charge/discharge losses, J
S_E_UNSERVED = 14  # load the empty battery could not supply, J
S_E_RAD = 15  # heat radiated to the sink, J
S_E_RADMAX = 16  # what the radiator could have radiated at the die limit, J
S_SOC_MIN = 17
S_T_FLOOR = 18  # time below the SoC floor, s
S_UV_TRIPS = 19
S_SHED = 20  # 1 while the undervoltage cutoff holds the rails off
S_RAD_W = 21  # radiated power, last sub-step, W
N_S = 22

# --- per-GPU rows g[row, i] ----------------------------------------------------------------------
G_DIE = 0
G_PLATE = 1
G_POWER = 2
G_PROG = 3  # job progress (falls back to G_SAVED on a loss)
G_SAVED = 4  # progress a checkpoint would keep
G_SLOWED = 5
G_ALIVE = 6  # on the bus (0 after a thermal shutdown)
G_RAIL = 7
G_CAP = 8
G_DEMAND = 9
G_T_SLOW = 10  # time in hardware slowdown, s
G_LOST = 11  # work lost, units
G_DONE = 12  # work executed, units (monotone)
G_XID = 13
G_SHUTDOWNS = 14
G_ECC = 15
N_G = 16


@njit(cache=True)
def lose_unsaved(g: F64, i: int) -> None:
    """GPU ``i`` falls back to its last checkpoint: the work since then is lost."""
    g[G_LOST, i] += g[G_PROG, i] - g[G_SAVED, i]
    g[G_PROG, i] = g[G_SAVED, i]


# Inlined: a call per sub-step cost the 8-GPU board ~10 % of its speed (make bench).
@njit(cache=True, inline="always")
def _power(p: F64, s: F64, h: float, solar: float, lit: float, p_gpu: float) -> tuple[float, float]:
    """Step 5 for one sub-step (scalar: shared by the kernel and its reference).

    Solar in, GPU and avionics out, the battery takes the difference; updates ``s`` and
    returns the battery energy (J) and the bus voltage.
    """
    net = solar - (p_gpu + p[P_AVI_W])
    e = s[S_EBATT]
    cap_j = p[P_BATT_CAP]
    s[S_E_AVAIL] += solar * h
    if net >= 0.0:
        charge = min(net, p[P_CHARGE_MAX], max(cap_j - e, 0.0) / (p[P_ETA_C] * h))
        e += charge * p[P_ETA_C] * h
        s[S_E_BLOSS] += charge * (1.0 - p[P_ETA_C]) * h
        s[S_E_SHUNT] += (net - charge) * h
        s[S_E_SOLAR] += (solar - (net - charge)) * h
        batt_w = charge
    else:
        need = -net
        chem = need / p[P_ETA_D] * h
        s[S_E_SOLAR] += solar * h
        if e >= chem:
            e -= chem
            s[S_E_BLOSS] += chem - need * h
            batt_w = -need
        else:
            supplied = e * p[P_ETA_D] / h
            s[S_E_BLOSS] += e - supplied * h
            s[S_E_UNSERVED] += (need - supplied) * h
            e = 0.0
            batt_w = -supplied
    s[S_EBATT] = e
    s[S_BATT_W] = batt_w
    s[S_SOLAR_W] = solar
    s[S_LIT] = lit
    s[S_E_GPU] += p_gpu * h
    s[S_E_AVI] += p[P_AVI_W] * h
    soc = e / cap_j if cap_j > 0.0 else 0.0
    v_oc = p[P_V_EMPTY] + (p[P_V_FULL] - p[P_V_EMPTY]) * soc
    bus_v = v_oc + p[P_R_INT] * batt_w / v_oc
    s[S_BUS_V] = bus_v
    s[S_SOC_MIN] = min(s[S_SOC_MIN], soc)
    if soc < p[P_SOC_FLOOR]:
        s[S_T_FLOOR] += h
    return e, bus_v


@njit(cache=True)
def space_step(dt: float, p: F64, s: F64, g: F64) -> None:
    """Advance the plant by ``dt`` seconds (in place).  ``dt <= 0`` changes nothing."""
    if dt <= 0.0:
        return
    nsub = max(1, math.ceil(dt / p[P_H_MAX] - 1e-9))
    h = dt / nsub
    n = g.shape[1]
    two_pi = 2.0 * math.pi
    a = math.exp(-h / p[P_TAU_P])
    m = -math.expm1(-h / p[P_TAU_P]) * p[P_TAU_P] / h
    b = math.exp(-h / (p[P_R_DC] * p[P_C_D]))
    span = p[P_REF] - p[P_IDLE]
    sink_k = p[P_SINK_C] + KELVIN
    sink4 = sink_k * sink_k * sink_k * sink_k
    lim_k = p[P_LIM_C] + KELVIN
    for _ in range(nsub):
        # 1. orbit
        theta = p[P_PHASE0] + two_pi * (s[S_T] + 0.5 * h) / p[P_PERIOD]
        x = theta % two_pi - math.pi
        lit = 1.0 if abs(x) >= p[P_ECL_HALF] else 0.0
        solar = lit * p[P_SOLAR_MAX] * p[P_STRING_FRAC]
        # 2. GPU targets and the bus limit
        total = 0.0
        for i in range(n):
            tgt = 0.0
            if g[G_RAIL, i] > 0.5 and g[G_ALIVE, i] > 0.5:
                tgt = max(p[P_IDLE], min(g[G_CAP, i], g[G_DEMAND, i]))
                if g[G_SLOWED, i] > 0.5:
                    tgt = max(p[P_IDLE], tgt * p[P_SLOW_F])
            total += tgt
        scale = 1.0
        room = p[P_BUS_MAX] - p[P_AVI_W]
        if total > room:
            scale = max(room, 0.0) / total
        # 3.-4. power lag, work, die and plate
        p_gpu = 0.0
        to_loop = 0.0
        loop = s[S_LOOP]
        for i in range(n):
            mean_p = 0.0  # a GPU without its rail, or dropped off the bus, draws nothing
            if g[G_RAIL, i] > 0.5 and g[G_ALIVE, i] > 0.5:
                tgt = max(p[P_IDLE], min(g[G_CAP, i], g[G_DEMAND, i]))
                if g[G_SLOWED, i] > 0.5:
                    tgt = max(p[P_IDLE], tgt * p[P_SLOW_F])
                tgt *= scale
                gap = g[G_POWER, i] - tgt
                mean_p = tgt + gap * m
                g[G_POWER, i] = tgt + gap * a
            else:
                g[G_POWER, i] = 0.0
            p_gpu += mean_p
            busy = mean_p - p[P_IDLE]
            if busy > 0.0:
                w = h * (busy / span) ** p[P_ALPHA]
                g[G_PROG, i] += w
                g[G_DONE, i] += w
            die = g[G_DIE, i]
            plate = g[G_PLATE, i]
            t_eq = plate + p[P_R_DC] * mean_p
            new_die = t_eq + (die - t_eq) * b
            q_dp = mean_p * h - p[P_C_D] * (new_die - die)
            q_pl = (plate - loop) / p[P_R_PL] * h
            g[G_DIE, i] = new_die
            g[G_PLATE, i] = plate + (q_dp - q_pl) / p[P_C_P]
            to_loop += q_pl
        # loop and radiator
        q_avi = p[P_AVI_W] * h
        rad = s[S_RAD]
        q_lr = p[P_G_LR] * p[P_PUMP] * (loop - rad) * h
        rad_k = rad + KELVIN
        q_out = p[P_RAD_EA] * (rad_k * rad_k * rad_k * rad_k - sink4) * h
        s[S_LOOP] = loop + (to_loop + q_avi - q_lr) / p[P_C_LOOP]
        s[S_RAD] = rad + (q_lr - q_out) / p[P_C_RAD]
        s[S_E_RAD] += q_out
        s[S_RAD_W] = q_out / h
        s[S_E_RADMAX] += max(p[P_RAD_EA] * (lim_k * lim_k * lim_k * lim_k - sink4) * h, 0.0)
        # 5. power
        e, bus_v = _power(p, s, h, solar, lit, p_gpu)
        # 6. protection
        if bus_v < p[P_UV_CUT] or e <= 0.0:
            if s[S_SHED] < 0.5:
                s[S_UV_TRIPS] += 1.0
                s[S_SHED] = 1.0
            for i in range(n):
                if g[G_RAIL, i] > 0.5:
                    g[G_RAIL, i] = 0.0
                    lose_unsaved(g, i)
        else:
            s[S_SHED] = 0.0
        for i in range(n):
            die = g[G_DIE, i]
            if g[G_ALIVE, i] > 0.5 and die >= p[P_SHUT_C]:
                g[G_ALIVE, i] = 0.0
                g[G_SHUTDOWNS, i] += 1.0
                g[G_XID, i] += 1.0
                lose_unsaved(g, i)
            if g[G_SLOWED, i] > 0.5:
                if die < p[P_RELEASE_C]:
                    g[G_SLOWED, i] = 0.0
            elif die >= p[P_SLOW_C]:
                g[G_SLOWED, i] = 1.0
            if g[G_SLOWED, i] > 0.5:
                g[G_T_SLOW, i] += h
        s[S_T] += h


def space_step_ref(dt: float, p: F64, s: F64, g: F64) -> None:
    """NumPy reference of :func:`space_step`, written with array expressions."""
    if dt <= 0.0:
        return
    nsub = max(1, math.ceil(dt / p[P_H_MAX] - 1e-9))
    h = dt / nsub
    two_pi = 2.0 * math.pi
    a = math.exp(-h / p[P_TAU_P])
    m = -math.expm1(-h / p[P_TAU_P]) * p[P_TAU_P] / h
    b = math.exp(-h / (p[P_R_DC] * p[P_C_D]))
    span = p[P_REF] - p[P_IDLE]
    sink4 = (p[P_SINK_C] + KELVIN) ** 4
    lim4 = (p[P_LIM_C] + KELVIN) ** 4
    for _ in range(nsub):
        theta = p[P_PHASE0] + two_pi * (s[S_T] + 0.5 * h) / p[P_PERIOD]
        lit = 1.0 if abs(theta % two_pi - math.pi) >= p[P_ECL_HALF] else 0.0
        solar = lit * p[P_SOLAR_MAX] * p[P_STRING_FRAC]
        on = (g[G_RAIL] > 0.5) & (g[G_ALIVE] > 0.5)
        tgt = np.maximum(p[P_IDLE], np.minimum(g[G_CAP], g[G_DEMAND]))
        tgt = np.where(g[G_SLOWED] > 0.5, np.maximum(p[P_IDLE], tgt * p[P_SLOW_F]), tgt)
        tgt = np.where(on, tgt, 0.0)
        total = tgt.sum()
        room = p[P_BUS_MAX] - p[P_AVI_W]
        if total > room:
            tgt = tgt * (max(room, 0.0) / total)
        gap = g[G_POWER] - tgt
        mean_p = np.where(on, tgt + gap * m, 0.0)
        g[G_POWER] = np.where(on, tgt + gap * a, 0.0)
        busy = np.maximum(mean_p - p[P_IDLE], 0.0)
        w = np.where(busy > 0.0, h * (busy / span) ** p[P_ALPHA], 0.0)
        g[G_PROG] += w
        g[G_DONE] += w
        loop = s[S_LOOP]
        t_eq = g[G_PLATE] + p[P_R_DC] * mean_p
        new_die = t_eq + (g[G_DIE] - t_eq) * b
        q_dp = mean_p * h - p[P_C_D] * (new_die - g[G_DIE])
        q_pl = (g[G_PLATE] - loop) / p[P_R_PL] * h
        g[G_DIE] = new_die
        g[G_PLATE] = g[G_PLATE] + (q_dp - q_pl) / p[P_C_P]
        q_avi = p[P_AVI_W] * h
        rad = s[S_RAD]
        q_lr = p[P_G_LR] * p[P_PUMP] * (loop - rad) * h
        q_out = p[P_RAD_EA] * ((rad + KELVIN) ** 4 - sink4) * h
        s[S_LOOP] = loop + (q_pl.sum() + q_avi - q_lr) / p[P_C_LOOP]
        s[S_RAD] = rad + (q_lr - q_out) / p[P_C_RAD]
        s[S_E_RAD] += q_out
        s[S_RAD_W] = q_out / h
        s[S_E_RADMAX] += max(p[P_RAD_EA] * (lim4 - sink4) * h, 0.0)
        e, bus_v = _power(p, s, h, solar, lit, float(mean_p.sum()))
        if bus_v < p[P_UV_CUT] or e <= 0.0:
            if s[S_SHED] < 0.5:
                s[S_UV_TRIPS] += 1.0
                s[S_SHED] = 1.0
            shed = g[G_RAIL] > 0.5
            g[G_LOST] += np.where(shed, g[G_PROG] - g[G_SAVED], 0.0)
            g[G_PROG] = np.where(shed, g[G_SAVED], g[G_PROG])
            g[G_RAIL] = np.where(shed, 0.0, g[G_RAIL])
        else:
            s[S_SHED] = 0.0
        die = g[G_DIE]
        trip = (g[G_ALIVE] > 0.5) & (die >= p[P_SHUT_C])
        g[G_ALIVE] = np.where(trip, 0.0, g[G_ALIVE])
        g[G_SHUTDOWNS] += trip
        g[G_XID] += trip
        g[G_LOST] += np.where(trip, g[G_PROG] - g[G_SAVED], 0.0)
        g[G_PROG] = np.where(trip, g[G_SAVED], g[G_PROG])
        slowed = np.where(g[G_SLOWED] > 0.5, die >= p[P_RELEASE_C], die >= p[P_SLOW_C])
        g[G_SLOWED] = slowed
        g[G_T_SLOW] += np.where(slowed, h, 0.0)
        s[S_T] += h
