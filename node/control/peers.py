"""Peer control laws: what a user would configure instead of Umbra (../shared/PEERS.md).

- :class:`IpaLaw` — the Linux kernel's ``power_allocator`` governor (IPA,
  ``drivers/thermal/gov_power_allocator.c``): one thermal zone (the hottest GPU die), every
  GPU an actor; a PID on ``T_set − T`` with the kernel's default gains derived from the
  sustainable power, the integral only below ``integral_cutoff`` and only while its term stays
  under the actors' total maximum power (anti-windup); the budget divided in proportion to
  each actor's weighted request (its power now), capped at its maximum, the surplus handed
  back in proportion to each actor's remaining headroom.  Below ``T_on`` the integral and
  the previous error are cleared and every actor is unthrottled.
- :class:`StepWiseLaw` — the kernel's ``step_wise`` governor, one zone per GPU: one cooling
  step down (a lower cap) when the die is at or above the trip and rising, one step up when
  below it and falling, hold otherwise.

Neither knows batteries or eclipses; the user adds the plain rule :func:`battery_rule_w`
(total GPU power ≤ solar input less the avionics, less what refills the battery before the
next eclipse in the sun, plus what the floor allows to discharge over the rest of an
eclipse), and, like the baseline, fixed-interval checkpoints and no load shedding
(node/policy.py).  The set points are chosen so each respects the 87 °C limit Umbra keeps
(docs/control.md, "Peers").  The laws use the sensor readings as they come: no estimator,
no sensor fault detection (the kernel has none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from node.control.law import ControlParams, StepResult, _opt
from node.link.messages import Sensor


@dataclass(frozen=True, slots=True)
class IpaParams:
    """The thermal zone's trips and the governor's tunables (kernel defaults derived)."""

    #: First passive trip: the switch-on temperature.
    t_on_c: float = 76.0
    #: Last passive trip: the control temperature (the PID's set point).
    t_set_c: float = 86.0
    #: The configured ``sustainable_power`` per GPU, W: what the zone dissipates at T_set, as a
    #: careful user measures and sets it (8 GPUs × 400 W in the sun on the simulated board).
    #: 0: the kernel's default, every actor's power at its most throttled state (cap_min),
    #: which leaves the proportional term a 6 K droop below T_set.
    sustainable_w_per_gpu: float = 400.0
    #: Integral cutoff, K (kernel default 0: the error accumulates only while above T_set).
    integral_cutoff_k: float = 0.0
    k_d: float = 0.0

    def gains(self, sustainable_w: float) -> tuple[float, float, float]:
        """(k_po, k_pu, k_i) as the kernel derives them."""
        span = self.t_set_c - self.t_on_c
        k_po = sustainable_w / span
        k_pu = 2.0 * sustainable_w / span
        return k_po, k_pu, max(k_pu / 10.0, 1.0)


@dataclass(frozen=True, slots=True)
class StepWiseParams:
    #: The passive trip of each GPU's zone.
    trip_c: float = 85.5
    #: Cooling states between the maximum and the minimum cap.
    steps: int = 10


def battery_rule_w(sensor: Sensor, params: ControlParams) -> float:
    """The user's battery rule: the total GPU power the battery allows now (inf: no battery data).

    In the sun: solar input less the avionics less the charge that refills the battery by the
    next eclipse.  In eclipse: solar (≈ 0) less the avionics plus the discharge that brings the
    battery to its floor exactly when the sun returns."""
    capacity = _opt(sensor, "battery_capacity_wh")
    stored = _opt(sensor, "battery_wh")
    if not (capacity > 0.0 and stored == stored):
        return math.inf
    avionics = _opt(sensor, "avionics_w")
    avionics = avionics if avionics == avionics else params.avionics_w
    if sensor.flags & 0x02:  # in eclipse
        sun_in = _opt(sensor, "sun_in_s")
        left = sun_in if sun_in > 0.0 else params.eclipse_s
        floor = params.battery_floor_frac * capacity
        discharge = max(0.0, stored - floor) * 3600.0 * params.discharge_eff / max(left, 60.0)
        return max(0.0, sensor.solar_w + discharge - avionics)
    eclipse_in = _opt(sensor, "eclipse_in_s")
    until = eclipse_in if eclipse_in > 0.0 else math.inf
    refill = max(0.0, capacity - stored) * 3600.0 / params.charge_eff / max(until, 600.0)
    return max(0.0, sensor.solar_w - avionics - refill)


def divvy_up(budget: float, requests: np.ndarray, weights: np.ndarray, max_w: np.ndarray,
             out: np.ndarray) -> np.ndarray:
    """The kernel's division (weighted form): grants in proportion to weight × request, each
    capped at its maximum, the surplus handed back in proportion to the headroom left."""
    weighted = requests * weights
    total = float(weighted.sum())
    if total <= 0.0:
        out[:] = 0.0
        return out
    share = budget * (weighted / total)  # the ratio first: tiny requests lose no precision
    np.minimum(share, max_w, out=out)
    extra = float(np.maximum(share - max_w, 0.0).sum())
    headroom = max_w - out
    room = float(headroom.sum())
    if room > 0.0 and extra > 0.0:
        out += headroom * (min(extra, room) / room)
    return out


@dataclass
class IpaLaw:
    params: ControlParams = field(default_factory=ControlParams)
    ipa: IpaParams = field(default_factory=IpaParams)
    name: str = "ipa"

    def update_params(self, params: ControlParams) -> None:
        self.params = params

    def reset(self, *, gpu_count: int, cap_min_w: float, cap_max_w: float, sensor_rate_hz: float = 10.0) -> None:
        self.cap_min_w, self.cap_max_w = cap_min_w, cap_max_w
        self._sustainable = gpu_count * (self.ipa.sustainable_w_per_gpu or cap_min_w)
        self._integral = 0.0
        self._prev_err = 0.0
        self._t_last = math.nan
        self._caps = np.full(gpu_count, cap_max_w)
        self._grant = np.zeros(gpu_count)
        self._flags = np.zeros(gpu_count, dtype=np.int64)
        self._temps = np.zeros(gpu_count)

    def _zone_budget(self, temp: float, dt: float, max_total: float) -> float:
        """The PID's power budget for the zone at ``temp`` (inf below the switch-on trip)."""
        ipa = self.ipa
        if not temp >= ipa.t_on_c:  # below T_on (or no reading): reset, unthrottled
            self._integral = 0.0
            self._prev_err = 0.0
            return math.inf
        k_po, k_pu, k_i = ipa.gains(self._sustainable)
        err = ipa.t_set_c - temp
        p = (k_po if err < 0.0 else k_pu) * err
        if err < ipa.integral_cutoff_k and abs(k_i * (self._integral + err)) < max_total:
            self._integral += err  # anti-windup: only while the I term stays under the maximum
        d = ipa.k_d * (err - self._prev_err) / dt
        self._prev_err = err
        return min(max(self._sustainable + p + k_i * self._integral + d, 0.0), max_total)

    def step(self, sensor: Sensor, *, limits_w: np.ndarray, weights: np.ndarray) -> StepResult:
        dt = 0.1 if math.isnan(self._t_last) else min(max(sensor.t_board - self._t_last, 1e-3), 60.0)
        self._t_last = sensor.t_board
        self._temps[:] = sensor.temp_c
        n = len(self._caps)
        on = np.array([(sensor.rails >> g) & 1 for g in range(n)], dtype=bool)
        max_w = np.where(on, np.minimum(limits_w, self.cap_max_w), 0.0)
        hot = self._temps[on & ~np.isnan(self._temps)]
        zone_t = float(hot.max()) if hot.size else math.nan
        budget = min(self._zone_budget(zone_t, dt, float(max_w.sum())), battery_rule_w(sensor, self.params))
        if math.isinf(budget):
            self._caps[:] = np.where(on, max_w, self.cap_max_w)
        else:
            requests = np.where(on, np.asarray(sensor.power_w, dtype=float), 0.0)
            divvy_up(budget, requests, np.asarray(weights, dtype=float), max_w, self._grant)
            # An actor's most throttled state is its minimum cap: it cannot be granted less.
            np.clip(self._grant, self.cap_min_w, np.maximum(max_w, self.cap_min_w), out=self._caps)
        return StepResult(
            caps_w=self._caps, temp_est_c=self._temps, sensor_flags=self._flags,
            thermal_bound=int(np.sum(self._caps < self.cap_max_w - 1e-6)),
            power_limited=not math.isinf(budget) and budget < float(np.sum(sensor.power_w)),
            budget_w=budget, expected_w=float(np.minimum(self._caps, sensor.power_w).sum()),
        )


@dataclass
class StepWiseLaw:
    params: ControlParams = field(default_factory=ControlParams)
    step_wise: StepWiseParams = field(default_factory=StepWiseParams)
    name: str = "step_wise"

    def update_params(self, params: ControlParams) -> None:
        self.params = params

    def reset(self, *, gpu_count: int, cap_min_w: float, cap_max_w: float, sensor_rate_hz: float = 10.0) -> None:
        self.cap_min_w, self.cap_max_w = cap_min_w, cap_max_w
        self._state = np.zeros(gpu_count, dtype=np.int64)  # 0: unthrottled … steps: most throttled
        self._prev = np.full(gpu_count, math.nan)
        self._caps = np.full(gpu_count, cap_max_w)
        self._flags = np.zeros(gpu_count, dtype=np.int64)
        self._temps = np.zeros(gpu_count)

    def step(self, sensor: Sensor, *, limits_w: np.ndarray, weights: np.ndarray) -> StepResult:
        sw = self.step_wise
        self._temps[:] = sensor.temp_c
        t, prev = self._temps, self._prev
        rising = t > prev
        falling = t < prev
        hot = t >= sw.trip_c
        self._state[hot & rising] += 1
        self._state[~hot & falling & ~np.isnan(t)] -= 1
        np.clip(self._state, 0, sw.steps, out=self._state)
        prev[:] = t
        step_w = (self.cap_max_w - self.cap_min_w) / sw.steps
        np.subtract(self.cap_max_w, self._state * step_w, out=self._caps)
        np.minimum(self._caps, np.maximum(limits_w, self.cap_min_w), out=self._caps)
        budget = battery_rule_w(sensor, self.params)
        total = float(self._caps.sum())
        if budget < total:  # the battery rule: every cap scaled down alike, not below the minimum
            self._caps *= budget / total if total > 0 else 0.0
            np.maximum(self._caps, self.cap_min_w, out=self._caps)
        return StepResult(
            caps_w=self._caps, temp_est_c=self._temps, sensor_flags=self._flags,
            thermal_bound=int(np.sum(self._state > 0)), power_limited=budget < total,
            budget_w=budget, expected_w=float(np.minimum(self._caps, sensor.power_w).sum()),
        )
