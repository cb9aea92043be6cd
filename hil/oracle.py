"""The oracle: a perfect-foresight upper bound and an achievable plan for a scenario.

Offline, in this process, no node and no link: the oracle knows the plant's parameters, its
initial state and the scenario's timeline, and solves for the most useful work under the
scenario's own limits (die ≤ the ``max_temp_c`` limit, battery ≥ the ``soc_min`` limit).
docs/control.md §10 states every relaxation; in short:

- **Model.** GPUs are identical and see the same timeline, so the problem is symmetric and
  concave: averaging any feasible plan over the permutations of the GPUs is feasible and
  does at least as much work (Jensen), so one per-GPU power per block loses nothing.  Time
  is cut into blocks (``block_s``, aligned with the timeline).  Per block: the GPU power
  ``p`` (block mean), its work rate ``w`` ≤ the concave envelope of the work law (outer
  tangents: an over-estimate), the radiator's emission ``q``, battery charge ``c`` /
  discharge ``d`` and shunt ``s``; per block boundary the temperatures of die, plate, loop,
  radiator and the battery energy.  The plate, loop and radiator move with time constants
  of minutes and are integrated with the trapezoidal rule (energy-conserving).
- **Upper bound** (``bound``): the die enters only through its heat balance — with the die
  ≤ L at every instant, the heat it passes to the plate over a block is at most
  Δ·(L − plate)/R_die — so any power profile inside a block is allowed; emission ≤ the
  chord of εσA(T⁴ − T_sink⁴) over [T_lo(t), L], where T_lo(t) is the radiator with every
  GPU off (the network is monotone: no policy is colder) — the chord of a convex function
  lies above it; the battery with both charge and discharge allowed at once, the SoC floor
  kept at block boundaries only; GPU power anywhere in [0, cap_max] (no idle floor when
  on); no work lost to upsets, resets or checkpoints.
- **Achievable plan** (``plan``): the same LP with the die following its step response
  inside the block, emission ≤ the tangent of T⁴ at a reference trajectory (below the
  true emission, so the plant ends cooler than planned), small margins on the limits; the
  reference is re-linearised around each replay (sequential LP).  Each block's power is
  realised as ``m`` GPUs on at a common cap (``m·cap`` = the planned total, cap ≥ cap_min);
  a GPU checkpoints before each rail it sheds and each board reset, and, while upsets are
  expected, at Young's interval √(2·δ/λ) for the known rate λ — the oracle knows the
  timeline and the rate, not when the random upsets strike.  The plan is **replayed open
  loop on the real plant** (firmware_sim's SpacePlant, stepped like the board in lockstep)
  and judged like any run: its useful work is a lower bound of the optimum.

``solve(scenario)`` returns both; ``run_oracle`` wraps them as a :class:`~hil.runner.RunResult`
(policy ``"oracle"``), so ``umbra-hil run … --compare oracle`` reports them beside the others.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from firmware_sim import physics as ph
from firmware_sim.config import SpaceConfig, orbit_space_config
from firmware_sim.spaceplant import SpacePlant, work_rate
from hil.scenario import Scenario
from node.jobs.manager import SimJobConfig
from node.jobs.policy import young_interval

if TYPE_CHECKING:
    from hil.runner import RunResult

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Term = tuple[I64, F64 | float]

#: HIL names the oracle applies to its plant; the rest (link.*, sensor faults, harness
#: actions) change what a controller sees, not the physics a plan with perfect knowledge meets.
BOARD_RESET = ("board.reset", "board.resets")
IGNORED_PREFIXES = ("link.", "fault.sensor.", "time.", "truth.", "fault.clear")

#: The node's checkpoint of a simulated job (its default state size over its bandwidth).
PAUSE_S = SimJobConfig().pause_s


class OracleError(Exception):
    """The LP could not be solved (infeasible limits, a solver failure)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The scenario's own limits the oracle must keep."""

    temp_c: float
    soc: float

    @classmethod
    def of(cls, scenario: Scenario, config: SpaceConfig) -> Limits:
        temp, soc = config.slowdown_c, config.soc_floor
        for m in scenario.measures:
            if m.metric == "max_temp_c" and m.max is not None:
                temp = min(temp, m.max)
            if m.metric == "soc_min" and m.min is not None:
                soc = max(soc, m.min)
        return cls(temp_c=temp, soc=soc)


def scenario_config(scenario: Scenario) -> SpaceConfig:
    """The SpaceConfig the board builds for this scenario (umbra-board --orbit, --set)."""
    return orbit_space_config(scenario.orbit, gpus=scenario.gpus, overrides=scenario.plant)


@dataclass(frozen=True, slots=True)
class Event:
    t_s: float
    name: str
    value: float | tuple[float, ...]


def timeline(scenario: Scenario, period_s: float, dt: float) -> list[Event]:
    """The scenario's physical sets, at the first step boundary at or after their time."""
    out = []
    for entry in scenario.timeline:
        at = math.ceil(entry.at_s(period_s) / dt - 1e-9) * dt
        for name, value in entry.set:
            if not name.startswith(IGNORED_PREFIXES):
                out.append(Event(at, name, value))
    return sorted(out, key=lambda e: e.t_s)


def apply(plant: SpacePlant, event: Event) -> None:
    if event.name in BOARD_RESET:
        plant.reboot()
    else:
        plant.set_param(event.name, event.value)


@dataclass
class Blocks:
    """The time grid and each block's parameters, read from a probe plant."""

    t: F64  # boundaries, K + 1
    solar_w: F64  # mean array output available, K
    g_lr: F64  # loop → radiator conductance, W/K
    ea: F64  # ε·σ·A, W/K⁴
    sink_k: F64
    avi_w: F64
    room_w: F64  # bus room for the GPUs
    batt_j: F64  # capacity
    p_max: F64  # per-GPU power ceiling: min(cap_max, demand)
    fixed_e: dict[int, float]  # boundary → battery energy set there
    resets: list[int]  # boundaries where the board resets

    @property
    def dt(self) -> F64:
        return np.diff(self.t)

    @property
    def k(self) -> int:
        return len(self.t) - 1


def make_blocks(scenario: Scenario, config: SpaceConfig, duration_s: float, block_s: float, dt: float,
                seed: int) -> Blocks:
    events = timeline(scenario, config.period_s, dt)
    cuts = {0.0, duration_s, *(e.t_s for e in events if e.t_s < duration_s)}
    step = max(dt, round(block_s / dt) * dt)
    grid = sorted(cuts | set(np.arange(0.0, duration_s, step).tolist()))
    t = np.array([x for x in grid if x <= duration_s])
    k = len(t) - 1
    probe = SpacePlant(config=config, seed=seed)
    for name, value in scenario.initial:
        probe.set_param(name, value)
    out = Blocks(t=t, solar_w=np.zeros(k), g_lr=np.zeros(k), ea=np.zeros(k), sink_k=np.zeros(k),
                 avi_w=np.zeros(k), room_w=np.zeros(k), batt_j=np.zeros(k + 1), p_max=np.zeros(k),
                 fixed_e={}, resets=[])
    pending = list(events)
    h = config.step_s
    for j in range(k + 1):
        while pending and pending[0].t_s <= t[j] + 1e-9:
            e = pending.pop(0)
            if e.name in BOARD_RESET:
                out.resets.append(j)
            else:
                probe.set_param(e.name, e.value)
                if e.name == "battery_soc":
                    out.fixed_e[j] = float(e.value) * probe.p[ph.P_BATT_CAP]  # type: ignore[arg-type]
        p = probe.p
        out.batt_j[j] = p[ph.P_BATT_CAP]
        if j == k:
            break
        # sunlight as the kernel sees it: sub-step midpoints
        mids = np.arange(t[j] + 0.5 * h, t[j + 1], h)
        theta = p[ph.P_PHASE0] + 2.0 * math.pi * mids / p[ph.P_PERIOD]
        lit = np.abs(np.mod(theta, 2.0 * math.pi) - math.pi) >= p[ph.P_ECL_HALF]
        out.solar_w[j] = float(lit.mean()) * p[ph.P_SOLAR_MAX] * p[ph.P_STRING_FRAC]
        out.g_lr[j] = p[ph.P_G_LR] * p[ph.P_PUMP]
        out.ea[j] = p[ph.P_RAD_EA]
        out.sink_k[j] = p[ph.P_SINK_C] + ph.KELVIN
        out.avi_w[j] = p[ph.P_AVI_W]
        out.room_w[j] = max(p[ph.P_BUS_MAX] - p[ph.P_AVI_W], 0.0)
        out.p_max[j] = min(config.cap_max_w, float(probe.g[ph.G_DEMAND].max()))
    return out


def coldest_radiator(scenario: Scenario, config: SpaceConfig, blocks: Blocks, dt: float, seed: int) -> F64:
    """The radiator at each boundary with every GPU off: no policy keeps it colder."""
    plant = SpacePlant(config=config, seed=seed)
    for name, value in scenario.initial:
        plant.set_param(name, value)
    events = [e for e in timeline(scenario, config.period_s, dt) if e.name not in BOARD_RESET]
    out = np.empty(blocks.k + 1)
    out[0] = plant.s[ph.S_RAD]
    for i in range(plant.gpu_count):
        plant.set_rail(i, False)
    for j in range(blocks.k):
        while events and events[0].t_s <= blocks.t[j] + 1e-9:
            apply(plant, events.pop(0))
        plant.step(float(blocks.t[j + 1] - blocks.t[j]))
        out[j + 1] = plant.s[ph.S_RAD]
    return out


# --- the LP ------------------------------------------------------------------------------------


class _Vars:
    """Column indices: states per boundary, controls per block."""

    STATES = ("die", "plate", "loop", "rad", "e")
    CONTROLS = ("p", "w", "q", "c", "d", "s")

    def __init__(self, k: int) -> None:
        self.k = k
        self.n_state = len(self.STATES) * (k + 1)
        self.size = self.n_state + len(self.CONTROLS) * k

    def state(self, name: str, j: int | npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return self.STATES.index(name) * (self.k + 1) + np.asarray(j)

    def control(self, name: str, k: int | npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return self.n_state + self.CONTROLS.index(name) * self.k + np.asarray(k)


class _Rows:
    """Sparse rows built block-wise: each call adds one row per block, columns and values per term."""

    def __init__(self) -> None:
        self.r: list[npt.NDArray[np.int64]] = []
        self.c: list[npt.NDArray[np.int64]] = []
        self.v: list[F64] = []
        self.b: list[F64] = []
        self.n = 0

    def add(self, terms: list[Term], rhs: F64 | float, count: int) -> None:
        rows = self.n + np.arange(count)
        for cols, vals in terms:
            self.r.append(rows)
            self.c.append(np.broadcast_to(cols, (count,)).astype(np.int64))
            self.v.append(np.broadcast_to(np.asarray(vals, dtype=float), (count,)).astype(float))
        self.b.append(np.broadcast_to(np.asarray(rhs, dtype=float), (count,)).astype(float))
        self.n += count

    def matrix(self, ncols: int) -> tuple[Any, F64]:
        from scipy.sparse import coo_matrix

        if not self.n:
            return None, np.zeros(0)
        a = coo_matrix((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
                       shape=(self.n, ncols)).tocsr()
        return a, np.concatenate(self.b)


def _emission(ea: F64, sink_k: F64, x_c: F64) -> F64:
    return ea * ((x_c + ph.KELVIN) ** 4 - sink_k**4)


@dataclass
class LpSolution:
    work: float  # the LP's objective, units
    p: F64  # per-GPU power per block
    rad_mid: F64
    die: F64
    e: F64
    solve_s: float
    rows: int
    cols: int


def solve_lp(config: SpaceConfig, blocks: Blocks, limits: Limits, *, kind: str, t_lo: F64,
             rad_ref: F64 | None = None, margin_c: float = 0.0, margin_soc: float = 0.0,
             tangents: int = 32) -> LpSolution:
    """``kind`` = ``"bound"`` (the relaxation) or ``"plan"`` (the conservative model)."""
    from scipy.optimize import linprog

    c = config
    n, k = c.gpu_count, blocks.k
    v = _Vars(k)
    kk = np.arange(k)
    dt = blocks.dt
    r_d, c_d = c.r_die_k_per_w, c.tau_die_s / c.r_die_k_per_w
    r_p, c_p = c.r_plate_k_per_w, c.tau_plate_s / c.r_plate_k_per_w
    c_l = c.loop_j_per_k_per_gpu * n
    c_r = c.radiator_j_per_k_m2 * c.radiator_m2
    lim = limits.temp_c - margin_c
    eq, ub = _Rows(), _Rows()

    def st(name: str, off: int = 0) -> npt.NDArray[np.int64]:
        return v.state(name, kk + off)

    def ct(name: str) -> npt.NDArray[np.int64]:
        return v.control(name, kk)

    # heat the die passes to the plate over block k: Δ·p − C_d·(die₊ − die)
    q_dp: list[Term] = [(ct("p"), dt), (st("die", 1), -c_d), (st("die"), c_d)]
    half = 0.5 * dt
    if kind == "bound":
        # ≤ Δ·(L − plate_mid)/R_die: the die never above L inside the block
        ub.add([*q_dp, (st("plate"), half / r_d), (st("plate", 1), half / r_d)], dt * lim / r_d, k)
    else:
        # the die's step response with the plate at its block mean (τ_die ≪ Δ)
        a = np.exp(-dt / c.tau_die_s)
        eq.add([(st("die", 1), 1.0), (st("die"), -a), (st("plate"), -(1 - a) / 2), (st("plate", 1), -(1 - a) / 2),
                (ct("p"), -(1 - a) * r_d)], 0.0, k)
    # plate: C_p·Δplate = q_dp − Δ·(plate_mid − loop_mid)/R_plate
    eq.add([(st("plate", 1), c_p + half / r_p), (st("plate"), -c_p + half / r_p),
            (st("loop"), -half / r_p), (st("loop", 1), -half / r_p),
            *((cols, -np.asarray(vals, dtype=float)) for cols, vals in q_dp)], 0.0, k)
    # loop: C_loop·Δloop = n·Δ·(plate_mid − loop_mid)/R_plate + Δ·avionics − Δ·G·(loop_mid − rad_mid)
    g = blocks.g_lr
    eq.add([(st("loop", 1), c_l + n * half / r_p + g * half), (st("loop"), -c_l + n * half / r_p + g * half),
            (st("plate"), -n * half / r_p), (st("plate", 1), -n * half / r_p),
            (st("rad"), -g * half), (st("rad", 1), -g * half)], dt * blocks.avi_w, k)
    # radiator: C_rad·Δrad = Δ·G·(loop_mid − rad_mid) − Δ·q
    eq.add([(st("rad", 1), c_r + g * half), (st("rad"), -c_r + g * half),
            (st("loop"), -g * half), (st("loop", 1), -g * half), (ct("q"), dt)], 0.0, k)
    # emission
    if kind == "bound":
        lo = np.minimum(t_lo[:-1], t_lo[1:])
        hi = np.full(k, limits.temp_c)
        f_lo, f_hi = _emission(blocks.ea, blocks.sink_k, lo), _emission(blocks.ea, blocks.sink_k, hi)
        slope = (f_hi - f_lo) / np.maximum(hi - lo, 1e-9)
        ub.add([(ct("q"), 1.0), (st("rad"), -slope / 2), (st("rad", 1), -slope / 2)], f_lo - slope * lo, k)
    else:
        assert rad_ref is not None
        f0 = _emission(blocks.ea, blocks.sink_k, rad_ref)
        slope = 4.0 * blocks.ea * (rad_ref + ph.KELVIN) ** 3
        ub.add([(ct("q"), 1.0), (st("rad"), -slope / 2), (st("rad", 1), -slope / 2)], f0 - slope * rad_ref, k)
    # power: solar − n·p − avionics = c − d + s
    eq.add([(ct("p"), float(n)), (ct("c"), 1.0), (ct("d"), -1.0), (ct("s"), 1.0)], blocks.solar_w - blocks.avi_w, k)
    # battery: E₊ = E + Δ·(η_c·c − d/η_d), or the value the timeline sets there
    free = np.array([j + 1 not in blocks.fixed_e for j in range(k)])
    fk = kk[free]
    eq.add([(v.state("e", fk + 1), 1.0), (v.state("e", fk), -1.0), (v.control("c", fk), -dt[free] * c.eta_charge),
            (v.control("d", fk), dt[free] / c.eta_discharge)], 0.0, len(fk))
    # work: w ≤ the envelope's tangents (outer: the envelope is concave)
    p_star = c.idle_w / (1.0 - c.work_exponent)
    p_top = float(blocks.p_max.max())
    slope0 = work_rate(p_star, c.idle_w, c.ref_w, c.work_exponent) / p_star
    ub.add([(ct("w"), 1.0), (ct("p"), -slope0)], 0.0, k)
    span = c.ref_w - c.idle_w
    for x in np.linspace(p_star, max(p_top, p_star + 1.0), tangents):
        wr = work_rate(x, c.idle_w, c.ref_w, c.work_exponent)
        d = c.work_exponent * ((x - c.idle_w) / span) ** (c.work_exponent - 1.0) / span
        ub.add([(ct("w"), 1.0), (ct("p"), -d)], wr - d * x, k)
    a_eq, b_eq = eq.matrix(v.size)
    a_ub, b_ub = ub.matrix(v.size)
    # bounds: the initial state fixed; limits on the rest
    lo_b = np.full(v.size, -np.inf)
    hi_b = np.full(v.size, np.inf)
    for name, value in (("die", c.init_c), ("plate", c.init_c), ("loop", c.init_c), ("rad", c.init_c)):
        lo_b[v.state(name, 0)] = hi_b[v.state(name, 0)] = value
    e0 = c.battery_soc0 * blocks.batt_j[0]
    lo_b[v.state("e", 0)] = hi_b[v.state("e", 0)] = blocks.fixed_e.get(0, e0)
    jj = np.arange(1, k + 1)
    hi_b[v.state("die", jj)] = lim
    if kind == "bound":
        hi_b[v.state("rad", jj)] = limits.temp_c
        lo_b[v.state("rad", jj)] = t_lo[1:] - 1e-6
    floor = np.full(k + 1, (limits.soc + margin_soc) * blocks.batt_j)
    forced = math.inf
    for j in range(k + 1):  # a set below the floor holds the floor at that value from there
        forced = blocks.fixed_e.get(j, forced)
        floor[j] = min(floor[j], forced)
    lo_b[v.state("e", jj)] = floor[1:]
    hi_b[v.state("e", jj)] = blocks.batt_j[1:]
    for j, value in blocks.fixed_e.items():
        if j > 0:
            lo_b[v.state("e", j)] = hi_b[v.state("e", j)] = value
    lo_b[ct("p")] = 0.0
    hi_b[ct("p")] = np.minimum(blocks.p_max, blocks.room_w / n)
    for name in ("c", "d", "s"):
        lo_b[ct(name)] = 0.0
    hi_b[ct("c")] = c.charge_c_rate * c.battery_wh
    lo_b[ct("w")] = 0.0
    cost = np.zeros(v.size)
    cost[ct("w")] = -n * dt
    t0 = time.perf_counter()
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=np.column_stack([lo_b, hi_b]),
                  method="highs")
    solve_s = time.perf_counter() - t0
    if res.status != 0:
        raise OracleError(f"{kind} LP: {res.message}")
    x = res.x
    rad = x[v.state("rad", np.arange(k + 1))]
    return LpSolution(work=float(-res.fun), p=x[ct("p")], rad_mid=0.5 * (rad[:-1] + rad[1:]),
                      die=x[v.state("die", np.arange(k + 1))], e=x[v.state("e", np.arange(k + 1))],
                      solve_s=solve_s, rows=(a_eq.shape[0] if a_eq is not None else 0) + a_ub.shape[0],
                      cols=v.size)


# --- the plan on the real plant --------------------------------------------------------------------


@dataclass
class Replay:
    """What the plan did on the plant: the run's metrics and a trace for the plots."""

    metrics: dict[str, float]
    trace: list[tuple[float, list[float], list[float], list[float], float, float, float, bool, float, float, float]]
    rad_mid: F64


def realise(p: F64, n: int, cap_min: float, cap_max: float) -> tuple[npt.NDArray[np.int64], F64]:
    """Per block, how many GPUs are on and their common cap for a per-GPU mean power ``p``."""
    total = n * np.maximum(p, 0.0)
    on = np.minimum(n, np.floor(total / cap_min + 1e-9)).astype(np.int64)
    cap = np.where(on > 0, np.clip(total / np.maximum(on, 1), cap_min, cap_max), cap_min)
    return on, cap


def replay(scenario: Scenario, config: SpaceConfig, blocks: Blocks, p: F64, duration_s: float, dt: float,
           seed: int, *, trace_every_s: float = 10.0) -> Replay:
    """Run the plan open loop on the plant, stepped like the board (``dt`` per sensor frame)."""
    n = config.gpu_count
    on, cap = realise(p, n, config.cap_min_w, config.cap_max_w)
    plant = SpacePlant(config=config, seed=seed)
    for name, value in scenario.initial:
        plant.set_param(name, value)
    plant.reset_truth()
    events = timeline(scenario, config.period_s, dt)
    steps = round(duration_s / dt)
    block_of_step = np.searchsorted(blocks.t, np.arange(steps) * dt + 1e-9, side="right") - 1
    # checkpoints before each shed rail and each reset (start steps per GPU)
    starts: dict[int, list[int]] = {}
    lead = math.ceil(PAUSE_S / dt) + 2

    def want(step: int, gpu: int) -> None:
        starts.setdefault(max(step, 0), []).append(gpu)

    for j in range(1, blocks.k):
        s = round(float(blocks.t[j]) / dt)
        for gpu in range(on[j], on[j - 1]):
            want(s - lead, gpu)
    for j in blocks.resets:
        for gpu in range(n):
            want(round(float(blocks.t[j]) / dt) - lead, gpu)
    max_die = -math.inf
    trace = []
    rad_sum = np.zeros(blocks.k)
    rad_cnt = np.zeros(blocks.k)
    every = max(1, round(trace_every_s / dt))
    current = -1
    caps = np.full(n, config.cap_min_w)
    last_ckpt = np.zeros(n)
    for i in range(steps):
        t = i * dt
        reset = False
        while events and events[0].t_s <= t + 1e-9:
            ev = events.pop(0)
            apply(plant, ev)
            reset = reset or ev.name in BOARD_RESET
        k = int(block_of_step[i])
        if k != current or reset:
            current = k
            caps = np.full(n, cap[k])
            plant.set_caps(caps.tolist())
            for gpu in range(n):
                plant.set_rail(gpu, gpu < on[k])
        due = list(starts.get(i, ()))
        if plant.seu_rate_hz > 0.0:  # the upset rate is known, not the upsets: Young/Daly
            interval = young_interval(PAUSE_S, 1.0 / plant.seu_rate_hz)
            due += [gpu for gpu in range(n) if t - last_ckpt[gpu] >= interval]
        for gpu in due:
            if plant.g[ph.G_RAIL, gpu] > 0.5 and plant.g[ph.G_ALIVE, gpu] > 0.5:
                plant.start_checkpoint(gpu, PAUSE_S)
                last_ckpt[gpu] = t
        plant.step(dt)
        max_die = max(max_die, float(plant.g[ph.G_DIE].max()))
        rad_sum[k] += plant.s[ph.S_RAD]
        rad_cnt[k] += 1
        if i % every == 0 or i == steps - 1:
            tr = plant.truth()
            trace.append((tr["t_s"], plant.g[ph.G_DIE].tolist(), plant.g[ph.G_CAP].tolist(),
                          plant.g[ph.G_POWER].tolist(), float(plant.s[ph.S_EBATT] / plant.p[ph.P_BATT_CAP]),
                          tr["work_done"], tr["work_lost"], plant.s[ph.S_LIT] < 0.5, tr["shutdowns"], tr["seu"],
                          float(plant.s[ph.S_RAD])))
    tr = plant.truth()
    m = {
        "max_temp_c": max_die,
        "slowdown_s": tr["slowdown_s"],
        "shutdowns": tr["shutdowns"],
        "soc_min": tr["soc_min"],
        "below_floor_s": tr["below_floor_s"],
        "uv_trips": tr["uv_trips"],
        "work_lost": tr["work_lost"],
        "work_useful": tr["work_done"] - tr["work_lost"],
        "work_bound": tr["work_bound"],
        "board_time_s": tr["t_s"],
        "checkpoints": float(plant.checkpoints_done),
    }
    m["work_vs_bound"] = m["work_useful"] / m["work_bound"] if m["work_bound"] > 0 else math.nan
    rad_mid = np.where(rad_cnt > 0, rad_sum / np.maximum(rad_cnt, 1), 0.0)
    return Replay(metrics=m, trace=trace, rad_mid=rad_mid)


@dataclass
class OracleResult:
    bound: float  # upper bound on useful work, units
    plan: Replay  # the best plan that kept every limit on the plant (or the last one tried)
    kept_limits: bool
    iterations: int
    solve_s: float
    lp_rows: int
    lp_cols: int
    blocks: int
    notes: list[str] = field(default_factory=list)

    @property
    def gap(self) -> float:
        """Plan over bound: how much of the bound the oracle proves reachable."""
        return self.plan.metrics["work_useful"] / self.bound if self.bound > 0 else math.nan


def _kept(m: dict[str, float], limits: Limits) -> bool:
    return (m["max_temp_c"] <= limits.temp_c and m["soc_min"] >= limits.soc and m["slowdown_s"] <= 0.0
            and m["shutdowns"] <= 0.0 and m["uv_trips"] <= 0.0)


def solve(scenario: Scenario, *, quick: bool = False, seed: int | None = None, block_s: float | None = None,
          iterations: int = 4) -> OracleResult:
    """The bound and the best achievable plan found in ``iterations`` sequential LPs."""
    config = scenario_config(scenario)
    seed = scenario.seed if seed is None else seed
    dt = 1.0 / scenario.rate_hz
    duration = scenario.duration_s(config.period_s, quick=quick)
    block_s = block_s if block_s is not None else (20.0 if quick else 30.0)
    limits = Limits.of(scenario, config)
    blocks = make_blocks(scenario, config, duration, block_s, dt, seed)
    t_lo = coldest_radiator(scenario, config, blocks, dt, seed)
    bound = solve_lp(config, blocks, limits, kind="bound", t_lo=t_lo)
    solve_s = bound.solve_s
    margin_c, margin_soc = 0.3, 0.002
    rad_ref = bound.rad_mid
    best: Replay | None = None
    last: Replay | None = None
    notes = []
    used = 0
    rows = bound.rows
    for _ in range(iterations):
        used += 1
        try:
            plan = solve_lp(config, blocks, limits, kind="plan", t_lo=t_lo, rad_ref=rad_ref,
                            margin_c=margin_c, margin_soc=margin_soc)
        except OracleError as exc:
            notes.append(str(exc))
            break
        solve_s += plan.solve_s
        last = replay(scenario, config, blocks, plan.p, duration, dt, seed)
        m = last.metrics
        if _kept(m, limits):
            if best is None or m["work_useful"] > best.metrics["work_useful"]:
                best = last
        else:
            margin_c += max(m["max_temp_c"] - limits.temp_c, 0.0) + 0.1 * (m["max_temp_c"] > limits.temp_c)
            margin_soc += max(limits.soc - m["soc_min"], 0.0) + 0.001 * (m["soc_min"] < limits.soc)
        rad_ref = last.rad_mid
    if best is None and last is None:
        raise OracleError("; ".join(notes) or "no plan")
    chosen = best if best is not None else last
    assert chosen is not None
    return OracleResult(bound=bound.work, plan=chosen, kept_limits=best is not None, iterations=used,
                        solve_s=solve_s, lp_rows=rows, lp_cols=bound.cols, blocks=blocks.k, notes=notes)


def run_oracle(scenario: Scenario, *, run_dir: Path, quick: bool = False, seed: int | None = None) -> RunResult:
    """The oracle as a run of policy ``"oracle"``: its plan's metrics, judged like any run's."""
    from hil.runner import RunResult, Sample

    config = scenario_config(scenario)
    result = RunResult(scenario=scenario, policy="oracle", run_dir=run_dir,
                       bench={"kind": "oracle", "plant": "firmware_sim.SpacePlant in-process"},
                       seed=scenario.seed if seed is None else seed, quick=quick, started_utc=time.time(),
                       period_s=config.period_s, duration_s=scenario.duration_s(config.period_s, quick=quick))
    wall0 = time.monotonic()
    try:
        out = solve(scenario, quick=quick, seed=seed)
    except Exception as exc:  # a failed solve is this run's error, not the harness's
        result.error = f"{type(exc).__name__}: {exc}"
        result.wall_s = time.monotonic() - wall0
        return result
    result.wall_s = time.monotonic() - wall0
    for t_s, temp, cap, power, soc, done, lost, ecl, shut, seu, rad in out.plan.trace:
        result.samples.append(Sample(t_s=t_s, wall_s=0.0, temp_c=temp, cap_w=cap, power_w=power, soc=soc,
                                     work_done=done, work_lost=lost, eclipse=ecl, shutdowns=shut, seu=seu,
                                     radiator_c=rad))
    result.metrics = dict(out.plan.metrics)
    result.metrics.update({
        "oracle_bound": out.bound,
        "oracle_plan": out.plan.metrics["work_useful"],
        "oracle_gap": out.gap,
        "oracle_kept_limits": 1.0 if out.kept_limits else 0.0,
        "oracle_solve_s": out.solve_s,
        "oracle_blocks": float(out.blocks),
        "oracle_iterations": float(out.iterations),
    })
    result.logs["oracle"] = (f"{out.blocks} blocks, LP {out.lp_rows} rows × {out.lp_cols} columns, "
                             f"{out.iterations} plan iterations, HiGHS {out.solve_s:.2f} s"
                             + (f"; {'; '.join(out.notes)}" if out.notes else ""))
    return result
