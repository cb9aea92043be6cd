"""The control law: a typed wrapper that owns the kernels' state and runs one step.

``ControlParams`` is the parameter table (validated ranges; ground can change entries by
command; the node persists them).  ``UmbraLaw`` runs estimate → budget → allocate over
preallocated arrays; ``BaselineLaw`` is what a node gets without Umbra: every GPU at its
maximum cap, hardware slowdown the only thermal protection, no energy reserve.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from node.control import kernels
from node.errors import ConfigError
from node.link.messages import Sensor


def param(default: float, lo: float, hi: float, unit: str, meaning: str) -> Any:
    """Declare a control parameter: its default, range, unit and meaning (one place for all)."""
    return field(default=default, metadata={"range": (lo, hi), "unit": unit, "meaning": meaning})


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlParams:
    """The parameter table: validated ranges; ground can change entries by command."""

    tau_s: float = param(5.0, 0.1, 600.0, "s", "die thermal time constant of the estimator's model")
    r_k_per_w: float = param(0.03, 0.001, 1.0, "K/W", "die-to-cold-plate thermal resistance")
    q_t: float = param(0.05, 1e-06, 100.0, "K²", "die-state process noise per step")
    q_b: float = param(0.02, 1e-06, 100.0, "K²/s", "plate-state process noise")
    r_meas: float = param(0.25, 0.0001, 100.0, "K²", "temperature sensor noise variance")
    innov_k: float = param(6.0, 1.0, 100.0, "σ", "innovation gate")
    sensor_lo_c: float = param(-40.0, -100.0, 50.0, "°C", "lowest physical sensor reading")
    sensor_hi_c: float = param(150.0, 60.0, 300.0, "°C", "highest physical sensor reading")
    stuck_s: float = param(5.0, 0.1, 3600.0, "s", "identical readings for this long (board time) make a sensor stuck")
    persist_n: float = param(5.0, 1.0, 1000.0, "frames", "gated innovations in a row that make a sensor faulty")
    # Slowdown is 87–89 °C on H100-class parts: plan to stay under 87, regulate at 85.8.
    limit_c: float = param(86.6, 40.0, 95.0, "°C", "predicted die temperature must stay below this")
    horizon_s: float = param(10.0, 0.5, 600.0, "s", "prediction horizon of the thermal headroom")
    target_c: float = param(85.8, 30.0, 95.0, "°C", "PI set point for die temperature")
    kp_w_per_k: float = param(20.0, 0.0, 1000.0, "W/K", "PI proportional gain")
    ki_w_per_ks: float = param(2.0, 0.0, 1000.0, "W/(K·s)", "PI integral gain")
    slew_w_per_s: float = param(200.0, 1.0, 100000.0, "W/s", "fastest rise of a cap (falls are immediate)")
    deadband_w: float = param(5.0, 0.0, 100.0, "W", "caps moving less than this are not re-sent")
    # The floor is a state of charge: 0.70 is a 30 % depth of discharge per LEO cycle.
    battery_floor_frac: float = param(0.7, 0.0, 0.95, "1", "lowest state of charge allowed (1 − depth of discharge)")
    battery_margin_frac: float = param(0.005, 0.0, 0.5, "1", "planning margin above the floor")
    charge_eff: float = param(0.95, 0.5, 1.0, "1", "battery charge efficiency")
    discharge_eff: float = param(0.95, 0.5, 1.0, "1", "battery discharge efficiency")
    # Li-ion cells charge at about 0.5 C (PHYSICS.md): sunlight beyond that is shunted anyway.
    charge_max_c: float = param(0.5, 0.01, 10.0, "1/h", "most the battery takes while charging, W per Wh of capacity")
    avionics_w: float = param(100.0, 0.0, 10000.0, "W", "avionics load when the board does not report it")
    # 35.6 min: the longest eclipse at 550 km (PHYSICS.md).
    eclipse_s: float = param(2136.0, 0.0, 10000.0, "s", "eclipse length assumed until one is observed or reported")
    radiator_ea_m2: float = param(0.0, 0.0, 1000.0, "m²", "radiator emissivity × area (0: no heat budget)")
    radiator_cap_j_per_k: float = param(0.0, 0.0, 1000000000.0, "J/K", "radiator and loop heat capacity")
    radiator_max_c: float = param(60.0, 0.0, 150.0, "°C", "hottest the radiator may be run")
    radiator_horizon_s: float = param(600.0, 1.0, 100000.0, "s", "how fast the radiator may be warmed to its maximum")
    sink_c: float = param(-40.0, -273.0, 100.0, "°C", "radiative sink temperature")
    hysteresis_k: float = param(2.0, 0.0, 50.0, "K", "thermal margin before THERMAL_LIMIT is left")
    r_plate_k_per_w: float = param(0.025, 0.0, 1.0, "K/W", "cold-plate-to-loop thermal resistance")
    neighbour_tol_k: float = param(2.0, 0.5, 100.0, "K", "a loop estimate this far below its learned place among the others': the sensor reads cold")
    neighbour_spread_k: float = param(5.0, 0.0, 50.0, "K", "largest place a healthy GPU may hold among its neighbours (learned within this bound)")
    neighbour_learn_s: float = param(600.0, 1.0, 1e6, "s", "time constant of learning each GPU's place among its neighbours")
    tau_plate_s: float = param(120.0, 1.0, 10000.0, "s", "cold-plate time constant: how slowly a plate follows its GPU's power")

    def __post_init__(self) -> None:
        for name, (lo, hi, _unit, _meaning) in PARAM_SPECS.items():
            value = getattr(self, name)
            if not isinstance(value, float | int) or math.isnan(value) or not lo <= value <= hi:
                raise ConfigError(f"control.{name} = {value!r} is outside [{lo}, {hi}]", key=f"control.{name}")
        if self.target_c > self.limit_c:
            raise ConfigError("control.target_c must not exceed control.limit_c", key="control.target_c")

    def replace(self, **changes: Any) -> ControlParams:
        unknown = set(changes) - set(PARAM_SPECS)
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(f"unknown parameter control.{name}", key=f"control.{name}")
        return dataclasses.replace(self, **{k: float(v) for k, v in changes.items()})


#: name → (lo, hi, unit, meaning), derived from the declarations: for validation, docs, commands.
PARAM_SPECS: dict[str, tuple[float, float, str, str]] = {
    f.name: (*f.metadata["range"], f.metadata["unit"], f.metadata["meaning"]) for f in dataclasses.fields(ControlParams)
}


@dataclass(frozen=True, slots=True)
class StepResult:
    caps_w: np.ndarray  # what to command (a view of the law's array: copy to keep)
    temp_est_c: np.ndarray  # die temperature estimates
    sensor_flags: np.ndarray  # kernels.FLAG_* bits per GPU
    thermal_bound: int  # GPUs whose thermal bound is below the hardware maximum
    power_limited: bool  # the energy or heat budget is what holds the GPUs back
    budget_w: float
    expected_w: float


class Law(Protocol):
    name: str

    def reset(self, *, gpu_count: int, cap_min_w: float, cap_max_w: float, sensor_rate_hz: float = 10.0) -> None: ...

    def step(self, sensor: Sensor, *, limits_w: np.ndarray, weights: np.ndarray) -> StepResult: ...

    def update_params(self, params: ControlParams) -> None:
        """Ground changed the parameter table; state (estimates, integrators) carries over."""
        ...


#: Frames after a (re)start before GPUs are checked against their neighbours.
WARMUP_FRAMES = 30


def _opt(sensor: Sensor, name: str) -> float:
    """An optional SENSOR field (ICD §4.4), NaN when not reported (absent or -1)."""
    value = getattr(sensor, name, math.nan)
    if not isinstance(value, int | float) or value < 0.0:
        return math.nan
    return float(value)


@dataclass
class UmbraLaw:
    params: ControlParams = field(default_factory=ControlParams)
    name: str = "umbra"

    def update_params(self, params: ControlParams) -> None:
        self.params = params
        self._stuck_frames = max(2, round(params.stuck_s * getattr(self, "_rate_hz", 10.0)))

    def reset(self, *, gpu_count: int, cap_min_w: float, cap_max_w: float, sensor_rate_hz: float = 10.0) -> None:
        n = gpu_count
        self.cap_min_w, self.cap_max_w = cap_min_w, cap_max_w
        self._rate_hz = sensor_rate_hz
        self._stuck_frames = max(2, round(self.params.stuck_s * sensor_rate_hz))  # the detector counts frames
        self._t_last = math.nan
        self._x_t = np.full(n, math.nan)
        self._x_b = np.zeros(n)
        self._p_tt = np.full(n, 4.0)
        self._p_tb = np.zeros(n)
        self._p_bb = np.full(n, 100.0)
        self._last_z = np.full(n, math.nan)
        self._stuck = np.zeros(n, dtype=np.int64)
        self._innov = np.zeros(n, dtype=np.int64)
        self._flags = np.zeros(n, dtype=np.int64)
        self._integ = np.zeros(n)
        self._thermal = np.zeros(n)
        self._lo = np.zeros(n)
        self._hi = np.zeros(n)
        self._demand = np.zeros(n)
        self._caps = np.full(n, cap_max_w)
        self._z = np.zeros(n)
        self._power = np.zeros(n)
        self._plate_w = np.zeros(n)
        self._plate_step = np.zeros(n)  # scratch: this frame's move of _plate_w
        self._place = np.full(n, math.nan)  # each GPU's learned place among its neighbours, K
        self._eclipse_started: float | None = None
        self._eclipse_s = math.nan
        self._frames = 0

    def _seed(self, sensor: Sensor) -> None:
        # First frame: start the estimate at the reading (or a cool guess when it has none).
        z = np.asarray(sensor.temp_c, dtype=float)
        p = np.asarray(sensor.power_w, dtype=float)
        guess = np.where(np.isnan(z), 40.0, z)
        self._x_t[:] = guess
        self._x_b[:] = guess - self.params.r_k_per_w * p
        self._caps[:] = np.asarray(sensor.cap_w, dtype=float)
        self._plate_w[:] = p

    def _eclipse_length(self, sensor: Sensor) -> float:
        sun_in = _opt(sensor, "sun_in_s")
        # Learn the eclipse length: the board's countdown at entry, else the observed one.
        in_eclipse = bool(sensor.flags & 0x02)
        if in_eclipse and self._eclipse_started is None:
            self._eclipse_started = sensor.t_board
            if sun_in > 0.0:
                self._eclipse_s = sun_in
        elif not in_eclipse and self._eclipse_started is not None:
            if not sun_in > 0.0:
                self._eclipse_s = sensor.t_board - self._eclipse_started
            self._eclipse_started = None
        return self._eclipse_s if self._eclipse_s == self._eclipse_s else self.params.eclipse_s

    def step(self, sensor: Sensor, *, limits_w: np.ndarray, weights: np.ndarray) -> StepResult:
        p = self.params
        if math.isnan(self._t_last):
            self._seed(sensor)
            dt = 0.1
        else:
            dt = min(max(sensor.t_board - self._t_last, 1e-3), 60.0)
        self._t_last = sensor.t_board
        self._z[:] = sensor.temp_c
        self._power[:] = sensor.power_w
        kernels.estimate(
            self._z, self._power, dt, p.tau_s, p.r_k_per_w, p.q_t, p.q_b, p.r_meas, p.innov_k,
            p.sensor_lo_c, p.sensor_hi_c, self._stuck_frames, int(p.persist_n),
            self._x_t, self._x_b, self._p_tt, self._p_tb, self._p_bb,
            self._last_z, self._stuck, self._innov, self._flags,
        )  # fmt: skip
        # GPUs on one coolant loop share a plate temperature: a plate estimate far below the
        # others' means a sensor reading cold (drift), the one error that would over-drive.
        # A plate sits r_plate·P above the loop for the power it has *settled* to: P seen
        # through the plate's time constant.  Using the instantaneous power made a blind
        # GPU's plate jump with its own cap, and its cap oscillate against it.
        np.subtract(self._power, self._plate_w, out=self._plate_step)  # in place: a per-frame path
        self._plate_step *= -math.expm1(-dt / p.tau_plate_s)
        self._plate_w += self._plate_step
        self._frames += 1
        if self._frames > WARMUP_FRAMES:  # the plate estimates settle first
            kernels.cross_check(
                self._x_t, self._x_b, self._power, self._plate_w, p.r_k_per_w, p.r_plate_k_per_w,
                p.neighbour_tol_k, p.neighbour_spread_k, -math.expm1(-dt / p.neighbour_learn_s),
                self._place, self._flags,
            )  # fmt: skip
        bound = kernels.thermal_caps(
            self._x_t, self._x_b, p.tau_s, p.r_k_per_w, p.limit_c, p.horizon_s, p.target_c,
            p.kp_w_per_k, p.ki_w_per_ks, dt, self.cap_min_w, self.cap_max_w, self._integ, self._thermal,
        )  # fmt: skip
        # Bounds of each cap: hardware, thermal, ground and FDIR limits, slew on the way up.
        kernels.cap_bounds(
            self._thermal, limits_w, self._caps, self._power, sensor.rails, p.slew_w_per_s * dt,
            self.cap_min_w, self._lo, self._hi, self._demand,
        )  # fmt: skip
        budget = self._budget(sensor)
        expected = kernels.water_fill(budget, weights, self._lo, self._hi, self._demand, self._caps)
        wanted = float(np.minimum(self._hi, self._demand).sum())
        return StepResult(
            caps_w=self._caps,
            temp_est_c=self._x_t,
            sensor_flags=self._flags,
            thermal_bound=bound,
            power_limited=expected < wanted - p.deadband_w,
            budget_w=budget,
            expected_w=expected,
        )

    def _budget(self, sensor: Sensor) -> float:
        p = self.params
        capacity = _opt(sensor, "battery_capacity_wh")
        stored = _opt(sensor, "battery_wh")
        budget = math.inf
        if capacity > 0.0 and stored == stored:
            avionics = _opt(sensor, "avionics_w")
            eclipse_in = _opt(sensor, "eclipse_in_s")
            sun_in = _opt(sensor, "sun_in_s")
            eclipse_s = self._eclipse_length(sensor)
            if eclipse_in != eclipse_in:
                if _opt(sensor, "orbit_period_s") > 0.0 and not sun_in > 0.0:
                    eclipse_in, sun_in, eclipse_s = 1e7, 0.0, 0.0  # the orbit has no eclipse ahead
                else:  # no orbit data: an eclipse may start any time
                    eclipse_in, sun_in = 60.0, 0.0
            budget = kernels.power_budget(
                sensor.solar_w, stored, capacity,
                (p.battery_floor_frac + p.battery_margin_frac) * capacity,
                avionics if avionics == avionics else p.avionics_w,
                eclipse_in, sun_in if sun_in == sun_in else 0.0, eclipse_s,
                p.charge_eff, p.discharge_eff, math.inf, p.charge_max_c * capacity,
            )  # fmt: skip
        if p.radiator_ea_m2 > 0.0:
            budget = min(
                budget,
                kernels.heat_budget(
                    sensor.radiator_c, p.sink_c, p.radiator_ea_m2, p.radiator_cap_j_per_k,
                    p.radiator_max_c, p.radiator_horizon_s, 0.0,
                ),
            )  # fmt: skip
        return budget


@dataclass
class BaselineLaw:
    """Every GPU at its maximum cap; the hardware's slowdown is the only protection."""

    name: str = "baseline"

    def update_params(self, params: ControlParams) -> None:
        """The baseline has no parameters to follow."""

    def reset(self, *, gpu_count: int, cap_min_w: float, cap_max_w: float, sensor_rate_hz: float = 10.0) -> None:
        self._caps = np.full(gpu_count, cap_max_w)
        self._flags = np.zeros(gpu_count, dtype=np.int64)
        self._temps = np.zeros(gpu_count)

    def step(self, sensor: Sensor, *, limits_w: np.ndarray, weights: np.ndarray) -> StepResult:
        self._temps[:] = sensor.temp_c
        return StepResult(
            caps_w=self._caps,
            temp_est_c=self._temps,
            sensor_flags=self._flags,
            thermal_bound=0,
            power_limited=False,
            budget_w=math.inf,
            expected_w=float(np.sum(sensor.power_w)),
        )


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel before the first frame needs it."""
    one = np.zeros(1)
    ints = np.zeros(1, dtype=np.int64)
    kernels.estimate(
        one, one, 0.1, 5.0, 0.03, 0.05, 0.02, 0.25, 6.0, -40.0, 150.0, 50, 5,
        one.copy(), one.copy(), one + 1.0, one.copy(), one + 1.0, one.copy(), ints.copy(), ints.copy(), ints.copy(),
    )  # fmt: skip
    kernels.thermal_caps(one, one, 5.0, 0.03, 85.0, 10.0, 82.0, 20.0, 2.0, 0.1, 200.0, 700.0, one.copy(), one.copy())
    kernels.cap_bounds(one, one, one, one, 1, 1.0, 0.0, one.copy(), one.copy(), one.copy())
    kernels.water_fill(100.0, one + 1.0, one, one + 1.0, one + 1.0, one.copy())
    kernels.power_budget(1.0, 1.0, 2.0, 0.5, 1.0, 100.0, 0.0, 100.0, 0.9, 0.9, 1e9, 1e9)
    kernels.heat_budget(20.0, -40.0, 1.0, 1.0, 60.0, 600.0, 0.0)
    kernels.caps_changed(one, one, 1.0)
    kernels.cross_check(one.copy(), one.copy(), one, one, 0.03, 0.025, 2.0, 5.0, 0.01, one.copy(), ints.copy())
