"""The orbital plant: orbit, solar array, battery, GPUs, pumped loop, radiator, faults.

:class:`SpacePlant` implements :class:`~firmware_sim.plant.Plant` on top of the pure step
kernel of :mod:`firmware_sim.physics`; the model and the source of every default are in
docs/board-physics.md, the HIL names in docs/ICD.md §4.12.  Randomness (sensor noise, the
SEU process, sensor dropouts) comes from generators seeded from one seed, so one seed and
one sequence of inputs give one trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from firmware_sim import physics as ph
from firmware_sim.config import SpaceConfig
from firmware_sim.plant import (
    ParamTable,
    ParamValue,
    Reading,
    bad_argument,
    checked_caps,
    checked_demand,
    checked_number,
    readonly_view,
)
from node.link.messages import POWER_RANGE_W, TEMP_RANGE_C

WH = 3600.0

#: Sensor fault modes (``fault.sensor.<k>`` = mode or [mode, argument]).
SENSOR_OK, SENSOR_STUCK, SENSOR_DRIFT, SENSOR_NAN, SENSOR_DROPOUT = 0, 1, 2, 3, 4


def work_rate(power_w: float, idle_w: float, ref_w: float, alpha: float) -> float:
    """Work units per second of one GPU drawing ``power_w``."""
    busy = power_w - idle_w
    return (busy / (ref_w - idle_w)) ** alpha if busy > 0 else 0.0


def work_envelope(power_w: float, idle_w: float, ref_w: float, alpha: float) -> float:
    """Concave envelope of :func:`work_rate`: the tangent from the origin below P* = idle/(1−α)."""
    p_star = idle_w / (1.0 - alpha) if alpha < 1.0 else idle_w
    if power_w >= p_star or p_star <= 0.0:
        return work_rate(power_w, idle_w, ref_w, alpha)
    return work_rate(p_star, idle_w, ref_w, alpha) * power_w / p_star


class SpacePlant(ParamTable):
    """GPUs on an orbiting node, behind the :class:`~firmware_sim.plant.Plant` interface."""

    keeps_checkpoints = True

    def __init__(self, *, config: SpaceConfig | None = None, seed: int | None = None) -> None:
        self.config = cfg = config if config is not None else SpaceConfig()
        n = cfg.gpu_count
        seeds = np.random.SeedSequence(seed).spawn(3)
        self._noise_rng = np.random.default_rng(seeds[0])
        self._seu_rng = np.random.default_rng(seeds[1])
        self._fault_rng = np.random.default_rng(seeds[2])
        self.p = np.zeros(ph.N_P)
        self.s = np.zeros(ph.N_S)
        self.g = np.zeros((ph.N_G, n))
        self._fill_params()
        s, g = self.s, self.g
        s[ph.S_LOOP] = s[ph.S_RAD] = cfg.init_c
        s[ph.S_EBATT] = cfg.battery_soc0 * self.p[ph.P_BATT_CAP]
        v_oc = cfg.cells_series * (cfg.cell_v_empty + (cfg.cell_v_full - cfg.cell_v_empty) * cfg.battery_soc0)
        s[ph.S_BUS_V] = v_oc
        s[ph.S_SOC_MIN] = cfg.battery_soc0
        g[ph.G_DIE] = g[ph.G_PLATE] = cfg.init_c
        g[ph.G_ALIVE] = 1.0
        g[ph.G_RAIL] = 1.0
        g[ph.G_CAP] = cfg.cap_max_w
        g[ph.G_DEMAND] = cfg.demand_w
        self.seu_rate_hz = 0.0
        self.radiator_loss = 0.0
        self.pump_failed = False
        self.strings_lost = 0
        self.battery_loss = 0.0
        self.seu_count = 0
        # Checkpoints the node asked for (CHECKPOINT): pause end (−inf: none), progress kept.
        self._ckpt_until = np.full(n, -np.inf)
        self._ckpt_prog = np.zeros(n)
        self._ckpt_overhead_s = 0.0
        self.checkpoints_done = 0
        self.checkpoints_failed = 0
        # sensor faults: index 0..n-1 GPU temperatures, n radiator, n+1 battery SoC
        self._sfault = np.zeros(n + 2, dtype=np.int64)
        self._sarg = np.zeros(n + 2)
        self._shold = np.zeros(n + 2)
        self._sstart = np.zeros(n + 2)
        self._noise = np.empty(n)
        self._truth0_s = self.s.copy()
        self._truth0_g = self.g.copy()
        self._truth0_heat = self._heat_room()
        self._views: dict[str, npt.NDArray[np.float64]] = {
            k: readonly_view(self.g[row]) for k, row in (
                ("temp", ph.G_DIE), ("power", ph.G_POWER), ("cap", ph.G_CAP), ("progress", ph.G_PROG))
        }
        self._rail_bool = np.ones(n, dtype=np.bool_)
        self._getters: dict[str, Callable[[], ParamValue]] = {}
        self._setters: dict[str, Callable[[ParamValue], None]] = {}
        self._register()
        self.step(0.0)  # compile (or load from the cache) now

    # --- parameters of the kernel -------------------------------------------------------

    def _fill_params(self) -> None:
        c, p, n = self.config, self.p, self.config.gpu_count
        p[ph.P_PERIOD] = c.period_s
        p[ph.P_ECL_HALF] = math.pi * c.eclipse_fraction
        p[ph.P_PHASE0] = math.radians(c.phase0_deg)
        p[ph.P_SOLAR_MAX] = c.solar_max_w
        p[ph.P_STRING_FRAC] = 1.0
        p[ph.P_BATT_CAP] = c.battery_wh * WH
        p[ph.P_ETA_C] = c.eta_charge
        p[ph.P_ETA_D] = c.eta_discharge
        p[ph.P_CHARGE_MAX] = c.charge_c_rate * c.battery_wh
        p[ph.P_V_EMPTY] = c.cells_series * c.cell_v_empty
        p[ph.P_V_FULL] = c.cells_series * c.cell_v_full
        p[ph.P_R_INT] = c.r_int_ohm
        p[ph.P_UV_CUT] = c.uv_cutoff_v
        p[ph.P_SOC_FLOOR] = c.soc_floor
        p[ph.P_AVI_W] = c.avionics_w
        p[ph.P_BUS_MAX] = c.bus_max_w
        p[ph.P_TAU_P] = c.tau_power_s
        p[ph.P_IDLE] = c.idle_w
        p[ph.P_REF] = c.ref_w
        p[ph.P_ALPHA] = c.work_exponent
        p[ph.P_SLOW_C] = c.slowdown_c
        p[ph.P_RELEASE_C] = c.release_c
        p[ph.P_SLOW_F] = c.slowdown_factor
        p[ph.P_SHUT_C] = c.shutdown_c
        p[ph.P_R_DC] = c.r_die_k_per_w
        p[ph.P_C_D] = c.tau_die_s / c.r_die_k_per_w
        p[ph.P_R_PL] = c.r_plate_k_per_w
        p[ph.P_C_P] = c.tau_plate_s / c.r_plate_k_per_w
        p[ph.P_C_LOOP] = c.loop_j_per_k_per_gpu * n
        p[ph.P_G_LR] = c.loop_w_per_k_per_gpu * n
        p[ph.P_PUMP] = 1.0
        p[ph.P_C_RAD] = c.radiator_j_per_k_m2 * c.radiator_m2
        p[ph.P_RAD_EA] = c.emissivity * ph.SIGMA * c.radiator_m2 * c.radiator_sides
        p[ph.P_SINK_C] = c.sink_c
        p[ph.P_H_MAX] = c.step_s
        p[ph.P_LIM_C] = c.slowdown_c

    def _apply_faults(self) -> None:
        c, p = self.config, self.p
        p[ph.P_RAD_EA] = (
            c.emissivity * ph.SIGMA * c.radiator_m2 * c.radiator_sides * (1.0 - self.radiator_loss)
        )
        p[ph.P_PUMP] = c.pump_fail_factor if self.pump_failed else 1.0
        p[ph.P_STRING_FRAC] = 1.0 - self.strings_lost / c.solar_strings
        new_cap = c.battery_wh * WH * (1.0 - self.battery_loss)
        p[ph.P_BATT_CAP] = new_cap
        self.s[ph.S_EBATT] = min(self.s[ph.S_EBATT], new_cap)

    # --- Plant interface -------------------------------------------------------------------

    @property
    def gpu_count(self) -> int:
        return self.config.gpu_count

    @property
    def cap_range_w(self) -> tuple[float, float]:
        return self.config.cap_min_w, self.config.cap_max_w

    @property
    def temp_c(self) -> npt.NDArray[np.float64]:
        return self._views["temp"]

    @property
    def power_w(self) -> npt.NDArray[np.float64]:
        return self._views["power"]

    @property
    def cap_w(self) -> npt.NDArray[np.float64]:
        return self._views["cap"]

    @property
    def progress(self) -> npt.NDArray[np.float64]:
        return self._views["progress"]

    @property
    def rail_on(self) -> npt.NDArray[np.bool_]:
        np.greater(self.g[ph.G_RAIL], 0.5, out=self._rail_bool)
        return readonly_view(self._rail_bool)

    @property
    def t_s(self) -> float:
        """Plant (orbit) time since start, s; unlike board time it survives board resets."""
        return float(self.s[ph.S_T])

    def step(self, dt: float) -> None:
        g = self.g
        paused = self._ckpt_until > -np.inf
        if paused.any():
            lost_before = g[ph.G_LOST].copy()
            prog_before = g[ph.G_PROG].copy()
            done_before = g[ph.G_DONE].copy()
        if dt > 0.0 and self.seu_rate_hz > 0.0:
            hits = int(self._seu_rng.poisson(self.seu_rate_hz * self.gpu_count * dt))
            for _ in range(hits):
                self.upset(int(self._seu_rng.integers(self.gpu_count)))
        ph.space_step(float(dt), self.p, self.s, g)
        if paused.any():
            self._checkpoint_progress(paused, lost_before, prog_before, done_before)

    def _checkpoint_progress(
        self, paused: np.ndarray, lost_before: np.ndarray, prog_before: np.ndarray, done_before: np.ndarray
    ) -> None:
        """A checkpointing GPU does no work; it keeps its progress when the pause ends.

        Work lost during the pause (an upset, a shutdown, a shed rail) fails the checkpoint.
        """
        g = self.g
        failed = paused & (g[ph.G_LOST] > lost_before)
        holding = paused & ~failed
        g[ph.G_PROG] = np.where(holding, prog_before, g[ph.G_PROG])
        g[ph.G_DONE] = np.where(holding, done_before, g[ph.G_DONE])
        finished = holding & (self.t_s >= self._ckpt_until)
        g[ph.G_SAVED] = np.where(finished, self._ckpt_prog, g[ph.G_SAVED])
        self._ckpt_until = np.where(failed | finished, -np.inf, self._ckpt_until)
        self.checkpoints_failed += int(np.count_nonzero(failed))
        self.checkpoints_done += int(np.count_nonzero(finished))

    def start_checkpoint(self, gpu: int, pause_s: float) -> None:
        """Node's CHECKPOINT: pause ``gpu``'s work for ``pause_s``, then keep its progress."""
        if not 0 <= gpu < self.gpu_count:
            raise bad_argument(f"no GPU {gpu} (board has {self.gpu_count})")
        g = self.g
        if g[ph.G_RAIL, gpu] < 0.5 or g[ph.G_ALIVE, gpu] < 0.5:
            raise bad_argument(f"GPU {gpu} is off or off the bus: nothing to checkpoint")
        if self._ckpt_until[gpu] > -np.inf:
            return  # one checkpoint at a time per GPU; the running one stands
        self._ckpt_prog[gpu] = g[ph.G_PROG, gpu]
        self._ckpt_until[gpu] = self.t_s + pause_s
        self._ckpt_overhead_s += pause_s

    def restore(self, gpu: int, progress: float) -> None:
        """Node's RESTORE: the job on ``gpu`` resumes from a verified checkpoint's progress."""
        if not 0 <= gpu < self.gpu_count:
            raise bad_argument(f"no GPU {gpu} (board has {self.gpu_count})")
        g = self.g
        self._ckpt_until[gpu] = -np.inf
        g[ph.G_PROG, gpu] = progress
        g[ph.G_SAVED, gpu] = progress

    def upset(self, gpu: int) -> None:
        """A single-event upset on ``gpu``: double-bit ECC, Xid 48, its job crashes."""
        g = self.g
        self.seu_count += 1
        g[ph.G_ECC, gpu] += 1.0
        if g[ph.G_RAIL, gpu] > 0.5 and g[ph.G_ALIVE, gpu] > 0.5:
            g[ph.G_XID, gpu] += 1.0
            ph.lose_unsaved(self.g, gpu)

    def read(self) -> Reading:
        c, g, s, n = self.config, self.g, self.s, self.gpu_count
        self._noise_rng.standard_normal(out=self._noise)
        temp = g[ph.G_DIE] + c.noise_temp_c * self._noise
        self._noise_rng.standard_normal(out=self._noise)
        power = np.maximum(g[ph.G_POWER] + c.noise_power_w * self._noise, 0.0)
        temps = [self._sensed(i, float(temp[i])) for i in range(n)]
        radiator = self._sensed(n, float(s[ph.S_RAD]))
        cap_j = self.p[ph.P_BATT_CAP]
        soc = min(max(float(s[ph.S_EBATT] / cap_j), 0.0), 1.0) if cap_j > 0 else 0.0
        soc_read = self._sensed(n + 1, soc)
        soc_read = soc if math.isnan(soc_read) else min(max(soc_read, 0.0), 1.0)
        eclipse_in, sun_in = self.eclipse_times()
        alive = g[ph.G_ALIVE] > 0.5
        slowed = g[ph.G_SLOWED] > 0.5
        return Reading(
            temp_c=tuple(temps),
            power_w=tuple(min(v, POWER_RANGE_W[1]) for v in power.tolist()),
            cap_w=tuple(g[ph.G_CAP].tolist()),
            progress=tuple(g[ph.G_PROG].tolist()),
            rails=_mask(g[ph.G_RAIL] > 0.5),
            solar_w=float(s[ph.S_SOLAR_W]),
            battery_soc=soc_read,
            radiator_c=radiator,
            eclipse=s[ph.S_LIT] < 0.5,
            hw_slowdown=bool(slowed.any()),
            battery_wh=float(s[ph.S_EBATT] / WH),
            battery_capacity_wh=float(cap_j / WH),
            bus_v=float(s[ph.S_BUS_V]),
            avionics_w=float(self.p[ph.P_AVI_W]),
            orbit_period_s=float(self.p[ph.P_PERIOD]),
            eclipse_in_s=eclipse_in,
            sun_in_s=sun_in,
            xid=tuple(int(x) for x in g[ph.G_XID].tolist()),
            gpu_ok=_mask(alive),
            slowdown=_mask(slowed),
            saved=tuple(g[ph.G_SAVED].tolist()),
            ckpt=_mask(self._ckpt_until > -np.inf),
        )

    def _sensed(self, k: int, true: float) -> float:
        mode = int(self._sfault[k])
        if mode == SENSOR_OK:
            return true
        if mode == SENSOR_STUCK:
            return float(self._shold[k])
        if mode == SENSOR_DRIFT:
            value = true + float(self._sarg[k]) * (self.t_s - float(self._sstart[k]))
            return min(max(value, TEMP_RANGE_C[0]), TEMP_RANGE_C[1])
        if mode == SENSOR_NAN:
            return math.nan
        # dropout: no reading with probability arg (default 0.5)
        return math.nan if self._fault_rng.random() < self._sarg[k] else true

    def eclipse_times(self) -> tuple[float, float]:
        """(seconds to the next eclipse entry, 0 in eclipse; to the next sun, 0 in sunlight).

        An orbit without eclipse gives (−1, 0): no eclipse ahead, in sunlight.
        """
        p = self.p
        half = p[ph.P_ECL_HALF]
        if half <= 0.0:
            return -1.0, 0.0
        period = p[ph.P_PERIOD]
        omega = 2.0 * math.pi / period
        x = (p[ph.P_PHASE0] + omega * self.t_s) % (2.0 * math.pi)  # from orbit noon
        entry, exit_ = math.pi - half, math.pi + half
        if entry <= x < exit_:
            return 0.0, (exit_ - x) / omega
        to_entry = (entry - x) % (2.0 * math.pi)
        return to_entry / omega, 0.0

    def set_caps(self, cap_w: Sequence[float]) -> None:
        self.g[ph.G_CAP] = checked_caps(cap_w, self.gpu_count, *self.cap_range_w)

    def set_rail(self, gpu: int, on: bool) -> None:
        """Switch a rail.  Off loses the job's unsaved work; on re-enumerates a dropped GPU."""
        if not 0 <= gpu < self.gpu_count:
            raise bad_argument(f"no GPU {gpu} (board has {self.gpu_count})")
        g = self.g
        was_on = g[ph.G_RAIL, gpu] > 0.5
        if was_on and not on:
            ph.lose_unsaved(self.g, gpu)
        if on and not was_on:
            g[ph.G_ALIVE, gpu] = 1.0
            g[ph.G_SLOWED, gpu] = 0.0
        g[ph.G_RAIL, gpu] = 1.0 if on else 0.0

    def checkpoint(self, gpus: Sequence[int] | None = None) -> None:
        """Keep the progress of ``gpus`` (all when None), as a finished checkpoint would."""
        idx = list(range(self.gpu_count)) if gpus is None else list(gpus)
        self.g[ph.G_SAVED, idx] = self.g[ph.G_PROG, idx]

    def reboot(self) -> None:
        """Board reset: every GPU re-initialised, unsaved work lost, counters of this boot cleared."""
        g, c = self.g, self.config
        for i in range(self.gpu_count):
            ph.lose_unsaved(self.g, i)
        g[ph.G_ALIVE] = 1.0
        g[ph.G_SLOWED] = 0.0
        g[ph.G_RAIL] = 1.0
        # Safe boot: hot GPUs must not run at full power until the node is back in control.
        g[ph.G_CAP] = c.cap_min_w
        g[ph.G_XID] = 0.0
        g[ph.G_ECC] = 0.0
        self._ckpt_until[:] = -np.inf  # a checkpoint in progress dies with the board

    # --- ground truth ------------------------------------------------------------------------

    def _heat_room(self) -> float:
        """Heat the plant could still store before every node reached the die limit, J."""
        p, s, g = self.p, self.s, self.g
        lim = p[ph.P_LIM_C]
        room = p[ph.P_C_D] * np.maximum(lim - g[ph.G_DIE], 0.0).sum()
        room += p[ph.P_C_P] * np.maximum(lim - g[ph.G_PLATE], 0.0).sum()
        room += p[ph.P_C_LOOP] * max(lim - s[ph.S_LOOP], 0.0)
        room += p[ph.P_C_RAD] * max(lim - s[ph.S_RAD], 0.0)
        return float(room)

    def reset_truth(self) -> None:
        self._truth0_s = self.s.copy()
        self._truth0_g = self.g.copy()
        self._truth0_heat = self._heat_room()

    def _ds(self, k: int) -> float:
        return float(self.s[k] - self._truth0_s[k])

    def _dg(self, row: int) -> float:
        return float((self.g[row] - self._truth0_g[row]).sum())

    def stored_heat_j(self) -> float:
        """Heat stored in dies, plates, loop and radiator above 0 °C, J."""
        p, s, g = self.p, self.s, self.g
        return float(
            p[ph.P_C_D] * g[ph.G_DIE].sum() + p[ph.P_C_P] * g[ph.G_PLATE].sum()
            + p[ph.P_C_LOOP] * s[ph.S_LOOP] + p[ph.P_C_RAD] * s[ph.S_RAD]
        )  # fmt: skip

    def work_bound(self) -> float:
        """Upper bound on work since the truth reset (docs/board-physics.md §6)."""
        c, p = self.config, self.p
        elapsed = self._ds(ph.S_T)
        if elapsed <= 0.0:
            return 0.0
        floor = c.soc_floor * p[ph.P_BATT_CAP]
        e_avi = self._ds(ph.S_E_AVI)
        e_power = self._ds(ph.S_E_AVAIL) + max(self._truth0_s[ph.S_EBATT] - floor, 0.0) - e_avi
        e_heat = self._ds(ph.S_E_RADMAX) + self._truth0_heat - e_avi
        e_gpu = max(0.0, min(e_power, e_heat))
        n = self.gpu_count
        mean_w = min(e_gpu / (n * elapsed), c.cap_max_w)
        return float(n * elapsed) * work_envelope(mean_w, c.idle_w, c.ref_w, c.work_exponent)

    def truth(self) -> dict[str, float]:
        """Every scalar of ground truth since the last truth reset."""
        return {key: read() for key, read in self._truth_readers().items()}

    def _truth_readers(self) -> dict[str, Callable[[], float]]:
        """One reader per truth scalar, so the HIL port computes only the one it is asked."""
        return {
            "t_s": lambda: self._ds(ph.S_T),
            "energy_avail_j": lambda: self._ds(ph.S_E_AVAIL),
            "energy_solar_j": lambda: self._ds(ph.S_E_SOLAR),
            "energy_shunt_j": lambda: self._ds(ph.S_E_SHUNT),
            "energy_gpu_j": lambda: self._ds(ph.S_E_GPU),
            "energy_avionics_j": lambda: self._ds(ph.S_E_AVI),
            "energy_loss_j": lambda: self._ds(ph.S_E_BLOSS),
            "energy_unserved_j": lambda: self._ds(ph.S_E_UNSERVED),
            "energy_stored_j": lambda: self._ds(ph.S_EBATT),
            "energy_radiated_j": lambda: self._ds(ph.S_E_RAD),
            "work_done": lambda: self._dg(ph.G_DONE),
            "work_lost": lambda: self._dg(ph.G_LOST),
            "work_saved": lambda: float(self.g[ph.G_SAVED].sum()),
            "work_bound": lambda: self.work_bound(),
            "shutdowns": lambda: self._dg(ph.G_SHUTDOWNS),
            "slowdown_s": lambda: self._dg(ph.G_T_SLOW),
            "soc_min": lambda: float(self.s[ph.S_SOC_MIN]),
            "below_floor_s": lambda: self._ds(ph.S_T_FLOOR),
            "uv_trips": lambda: self._ds(ph.S_UV_TRIPS),
            "seu": lambda: float(self.seu_count),
            "loop_c": lambda: float(self.s[ph.S_LOOP]),
            "radiator_c": lambda: float(self.s[ph.S_RAD]),
        }

    # --- HIL parameters ------------------------------------------------------------------------

    def _register(self) -> None:
        g, s, p = self.g, self.s, self.p

        def per_gpu(row: int) -> Callable[[], ParamValue]:
            return lambda: tuple(g[row].tolist())

        def scalar(k: int, arr: npt.NDArray[np.float64]) -> Callable[[], ParamValue]:
            return lambda: float(arr[k])

        get = self._getters
        get.update({
            "demand_w": per_gpu(ph.G_DEMAND),
            "sink_c": scalar(ph.P_SINK_C, p),
            "solar_w": scalar(ph.S_SOLAR_W, s),
            "battery_soc": lambda: float(s[ph.S_EBATT] / p[ph.P_BATT_CAP]),
            "temp_c": per_gpu(ph.G_DIE),
            "power_w": per_gpu(ph.G_POWER),
            "cap_w": per_gpu(ph.G_CAP),
            "progress": per_gpu(ph.G_PROG),
            # Work units per board second each GPU does now (1.0 at ref_w; 0 when off or
            # dropped out): how fast a process job "on" that GPU may step on a bench.
            "gpu_speed": lambda: tuple(
                work_rate(float(g[ph.G_POWER, i]), float(p[ph.P_IDLE]), float(p[ph.P_REF]), float(p[ph.P_ALPHA]))
                if g[ph.G_RAIL, i] > 0.5 and g[ph.G_ALIVE, i] > 0.5 else 0.0
                for i in range(g.shape[1])),
            "rails": per_gpu(ph.G_RAIL),
            "slowdown": per_gpu(ph.G_SLOWED),
            "radiator_c": scalar(ph.S_RAD, s),
            "orbit.beta_deg": lambda: self.config.beta_deg if self._beta is None else self._beta,
            "orbit.period_s": scalar(ph.P_PERIOD, p),
            "orbit.eclipse_fraction": lambda: float(p[ph.P_ECL_HALF] / math.pi),
            "orbit.phase_deg": lambda: math.degrees(
                (p[ph.P_PHASE0] + 2 * math.pi * s[ph.S_T] / p[ph.P_PERIOD]) % (2 * math.pi)),
            "orbit.eclipse": lambda: 1.0 - float(s[ph.S_LIT]),
            "orbit.eclipse_in_s": lambda: self.eclipse_times()[0],
            "orbit.sun_in_s": lambda: self.eclipse_times()[1],
            "orbit.t_s": scalar(ph.S_T, s),
            "power.solar_max_w": lambda: float(p[ph.P_SOLAR_MAX] * p[ph.P_STRING_FRAC]),
            "power.battery_wh": lambda: float(s[ph.S_EBATT] / WH),
            "power.battery_capacity_wh": lambda: float(p[ph.P_BATT_CAP] / WH),
            "power.battery_w": scalar(ph.S_BATT_W, s),
            "power.bus_v": scalar(ph.S_BUS_V, s),
            "power.avionics_w": scalar(ph.P_AVI_W, p),
            "power.bus_max_w": scalar(ph.P_BUS_MAX, p),
            "power.shed": scalar(ph.S_SHED, s),
            "thermal.loop_c": scalar(ph.S_LOOP, s),
            "thermal.plate_c": per_gpu(ph.G_PLATE),
            "thermal.radiated_w": scalar(ph.S_RAD_W, s),
            "gpu.ok": per_gpu(ph.G_ALIVE),
            "gpu.xid": per_gpu(ph.G_XID),
            "gpu.ecc": per_gpu(ph.G_ECC),
            "job.saved": per_gpu(ph.G_SAVED),
            "job.lost": per_gpu(ph.G_LOST),
            "job.checkpoints": lambda: float(self.checkpoints_done),
            "job.checkpoints_failed": lambda: float(self.checkpoints_failed),
            "job.checkpoint_s": lambda: self._ckpt_overhead_s,
            "fault.seu_rate_hz": lambda: self.seu_rate_hz,
            "fault.radiator": lambda: self.radiator_loss,
            "fault.pump": lambda: 1.0 if self.pump_failed else 0.0,
            "fault.strings_lost": lambda: float(self.strings_lost),
            "fault.battery_loss": lambda: self.battery_loss,
        })
        for k in range(self.gpu_count + 2):
            get[f"fault.sensor.{self._sensor_name(k)}"] = self._sensor_getter(k)
        for key, read in self._truth_readers().items():
            get[f"truth.{key}"] = read
        get["truth.temp_c"] = per_gpu(ph.G_DIE)
        self._beta: float | None = None

        c = self.config
        st = self._setters
        st.update({
            "demand_w": self._set_demand,
            "sink_c": self._p_setter("sink_c", ph.P_SINK_C, -273.15, 200.0),
            "battery_soc": self._set_soc,
            "orbit.beta_deg": self._set_beta,
            "power.avionics_w": self._p_setter("power.avionics_w", ph.P_AVI_W, 0.0, 1e5),
            "power.bus_max_w": self._p_setter("power.bus_max_w", ph.P_BUS_MAX, 1.0, 1e7),
            "job.checkpoint": self._set_checkpoint,
            "fault.seu_rate_hz": self._fault_setter("seu_rate_hz", 0.0, 1e3),
            "fault.seu": self._set_seu,
            "fault.radiator": self._fault_setter("radiator_loss", 0.0, 1.0),
            "fault.pump": self._fault_setter("pump_failed", 0.0, 1.0),
            "fault.strings_lost": self._fault_setter("strings_lost", 0.0, float(c.solar_strings)),
            "fault.battery_loss": self._fault_setter("battery_loss", 0.0, 1.0),
            "fault.clear": lambda _v: self.clear_faults(),
            "truth.reset": lambda _v: self.reset_truth(),
        })
        for k in range(self.gpu_count + 2):
            st[f"fault.sensor.{self._sensor_name(k)}"] = self._sensor_setter(k)

    def _sensor_name(self, k: int) -> str:
        n = self.gpu_count
        return str(k) if k < n else ("radiator" if k == n else "soc")

    def _sensor_getter(self, k: int) -> Callable[[], ParamValue]:
        return lambda: (float(self._sfault[k]), float(self._sarg[k]))

    def _sensor_setter(self, k: int) -> Callable[[ParamValue], None]:
        name = f"fault.sensor.{self._sensor_name(k)}"

        def setter(value: ParamValue) -> None:
            mode_v, arg = (value[0], value[1]) if isinstance(value, tuple) and len(value) == 2 else (
                value, math.nan)
            mode = checked_number(name, mode_v, 0, 4)
            if mode != int(mode):
                raise bad_argument(f"{name}: mode must be 0-4, got {mode_v!r}")
            if math.isnan(arg):
                arg = {SENSOR_DRIFT: 0.1, SENSOR_DROPOUT: 0.5}.get(int(mode), 0.0)
            arg = checked_number(name, arg, -1e3, 1e3)
            self.set_sensor_fault(k, int(mode), arg)

        return setter

    def set_sensor_fault(self, k: int, mode: int, arg: float = 0.0) -> None:
        """Sensor ``k`` (GPU index, n = radiator, n+1 = SoC) fails as ``mode`` (SENSOR_*)."""
        n = self.gpu_count
        true = (float(self.g[ph.G_DIE, k]) if k < n else float(self.s[ph.S_RAD]) if k == n
                else float(self.s[ph.S_EBATT] / self.p[ph.P_BATT_CAP]))
        self._sfault[k] = mode
        self._sarg[k] = arg
        self._shold[k] = true
        self._sstart[k] = self.t_s

    def clear_faults(self) -> None:
        self.seu_rate_hz = 0.0
        self.radiator_loss = 0.0
        self.pump_failed = False
        self.strings_lost = 0
        self.battery_loss = 0.0
        self._sfault[:] = SENSOR_OK
        self._apply_faults()

    def _fault_setter(self, attr: str, lo: float, hi: float) -> Callable[[ParamValue], None]:
        def setter(value: ParamValue) -> None:
            v = checked_number(f"fault.{attr}", value, lo, hi)
            current = getattr(self, attr)
            setattr(self, attr, type(current)(v) if not isinstance(current, bool) else v >= 0.5)
            self._apply_faults()

        return setter

    def _p_setter(self, name: str, k: int, lo: float, hi: float) -> Callable[[ParamValue], None]:
        def setter(value: ParamValue) -> None:
            self.p[k] = checked_number(name, value, lo, hi)

        return setter

    def _set_beta(self, value: ParamValue) -> None:
        beta = checked_number("orbit.beta_deg", value, -90.0, 90.0)
        c = self.config
        probe = SpaceConfig(gpu_count=c.gpu_count, altitude_km=c.altitude_km, beta_deg=beta)
        self.p[ph.P_ECL_HALF] = math.pi * probe.eclipse_fraction
        self._beta = beta

    def _set_soc(self, value: ParamValue) -> None:
        self.s[ph.S_EBATT] = checked_number("battery_soc", value, 0.0, 1.0) * self.p[ph.P_BATT_CAP]

    def _set_seu(self, value: ParamValue) -> None:
        gpu = checked_number("fault.seu", value, 0, self.gpu_count - 1)
        self.upset(int(gpu))

    def _set_checkpoint(self, value: ParamValue) -> None:
        if isinstance(value, tuple):
            if len(value) != self.gpu_count:
                raise bad_argument(f"job.checkpoint: need {self.gpu_count} flags")
            self.checkpoint([i for i, v in enumerate(value) if v >= 0.5])
            return
        gpu = checked_number("job.checkpoint", value, -1, self.gpu_count - 1)
        self.checkpoint(None if gpu < 0 else [int(gpu)])

    def _set_demand(self, value: ParamValue) -> None:
        self.g[ph.G_DEMAND] = checked_demand(value, self.gpu_count)


def _mask(flags: npt.NDArray[np.bool_]) -> int:
    return sum(1 << i for i, on in enumerate(flags.tolist()) if on and i < 32)
