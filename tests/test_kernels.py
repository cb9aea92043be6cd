"""Control kernels: they agree with their NumPy references and do what their names say."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from node.control import kernels, reference
from node.control.kernels import FLAG_INNOVATION, FLAG_NAN, FLAG_RANGE, FLAG_STUCK

pytestmark = pytest.mark.kernels

finite = st.floats(-50, 200, allow_nan=False)
temps = arrays(np.float64, st.integers(1, 32), elements=st.one_of(finite, st.just(math.nan)))


def kf_state(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [
        rng.uniform(20, 90, n), rng.uniform(10, 70, n),  # x_t, x_b
        rng.uniform(0.01, 5, n), rng.uniform(-0.5, 0.5, n), rng.uniform(0.5, 50, n),  # P
        rng.choice([math.nan, 50.0, 60.0], n),  # last_z
        rng.integers(0, 60, n).astype(np.int64), rng.integers(0, 60, n).astype(np.int64),
        np.zeros(n, dtype=np.int64),
    ]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(z=temps, seed=st.integers(0, 2**32 - 1), dt=st.floats(0.01, 10), persist=st.integers(1, 8))
def test_estimate_matches_reference(z, seed, dt, persist):
    rng = np.random.default_rng(seed)
    n = len(z)
    power = rng.uniform(0, 700, n)
    params = (dt, 5.0, 0.03, 0.05, 0.02, 0.25, 6.0, -40.0, 150.0, 50, persist)
    a, b = kf_state(n, rng), None
    b = [x.copy() for x in a]
    na = kernels.estimate(z, power, *params, *a)
    nb = reference.estimate(z, power, *params, *b)
    assert na == nb
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True)


def run_estimator(readings: np.ndarray, power: float, dt: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Feed one GPU's readings; return the estimates and flags after each frame."""
    state = [np.array([40.0]), np.array([40.0]), np.array([4.0]), np.array([0.0]), np.array([100.0]),
             np.array([math.nan]), np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64)]  # fmt: skip
    est, flags = [], []
    for z in readings:
        kernels.estimate(np.array([z]), np.array([power]), dt, 5.0, 0.03, 0.05, 0.02, 0.25, 6.0, -40.0, 150.0, 30, 5, *state)
        est.append(state[0][0])
        flags.append(state[8][0])
    return np.array(est), np.array(flags)


def first_order(t: np.ndarray, t0: float, t_ss: float, tau: float) -> np.ndarray:
    return t_ss + (t0 - t_ss) * np.exp(-t / tau)


def test_estimate_tracks_a_noisy_first_order_gpu():
    rng = np.random.default_rng(1)
    t = np.arange(600) * 0.1
    truth = first_order(t, 40.0, 40.0 + 0.03 * 600.0 + 20.0, 5.0)  # plate 20 K warmer than assumed
    est, flags = run_estimator(truth + rng.normal(0, 0.5, t.size), power=600.0)
    assert not flags.any()
    # After settling, the estimate is much closer to the truth than a single reading.
    assert np.abs(est[-100:] - truth[-100:]).mean() < 0.3


def test_estimate_flags_nan_range_and_stuck_and_carries_on():
    t = np.arange(100) * 0.1
    truth = first_order(t, 50.0, 60.0, 5.0)
    readings = truth.copy()
    readings[20] = math.nan
    readings[30] = 400.0
    readings[60:] = readings[60]  # stuck from frame 60
    est, flags = run_estimator(readings, power=300.0)
    assert flags[20] == FLAG_NAN and flags[30] == FLAG_RANGE
    assert flags[95] & FLAG_STUCK and not flags[50]
    assert abs(est[20] - truth[20]) < 1.0  # the model carried it through the gap


def test_estimate_believes_a_hotter_sensor_quickly_and_a_colder_one_slowly():
    hot, hot_flags = run_estimator(np.r_[np.full(50, 50.0), np.full(20, 80.0)] + np.tile([0, 0.01], 35), power=300.0)
    assert hot_flags.max() & FLAG_INNOVATION
    assert abs(hot[-1] - 80.0) < 1.0  # re-seeded to the hotter reading within a few frames
    cold, _ = run_estimator(np.r_[np.full(50, 80.0), np.full(20, 50.0)] + np.tile([0, 0.01], 35), power=300.0)
    assert cold[-1] > 70.0  # still distrusts the sudden drop


@settings(max_examples=200, deadline=None)
@given(temp=arrays(np.float64, st.integers(1, 32), elements=finite), seed=st.integers(0, 2**32 - 1))
def test_thermal_caps_match_reference(temp, seed):
    rng = np.random.default_rng(seed)
    n = len(temp)
    plate = temp - rng.uniform(0, 30, n)
    ia, ib = -rng.uniform(0, 100, n), None
    ib = ia.copy()
    oa, ob = np.zeros(n), np.zeros(n)
    args = (5.0, 0.03, 85.0, 10.0, 82.0, 20.0, 2.0, 0.1, 200.0, 700.0)
    assert kernels.thermal_caps(temp, plate, *args, ia, oa) == reference.thermal_caps(temp, plate, *args, ib, ob)
    np.testing.assert_allclose(oa, ob, atol=1e-9)
    np.testing.assert_allclose(ia, ib, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(t0=st.floats(30, 84), plate=st.floats(10, 80))
def test_thermal_headroom_keeps_the_prediction_under_the_limit(t0, plate):
    tau, r, limit, horizon = 5.0, 0.03, 85.0, 10.0
    out, integ = np.zeros(1), np.zeros(1)
    kernels.thermal_caps(np.array([t0]), np.array([plate]), tau, r, limit, horizon, limit, 0.0, 0.0, 0.1, 0.0, 5000.0, integ, out)
    cap = out[0]
    t_ss = plate + r * cap
    predicted = t_ss + (t0 - t_ss) * math.exp(-horizon / tau)
    if cap > 0.0:  # not pinned at the minimum: the bound is exactly the limit
        assert predicted == pytest.approx(limit, abs=1e-6)


def test_pi_integrator_winds_down_and_never_up():
    integ, out = np.zeros(1), np.zeros(1)
    hot, cool = np.array([84.0]), np.array([60.0])
    for _ in range(50):
        kernels.thermal_caps(hot, np.array([40.0]), 5.0, 0.03, 85.0, 10.0, 82.0, 20.0, 2.0, 0.1, 200.0, 700.0, integ, out)
    assert integ[0] < 0.0
    for _ in range(500):
        kernels.thermal_caps(cool, np.array([40.0]), 5.0, 0.03, 85.0, 10.0, 82.0, 20.0, 2.0, 0.1, 200.0, 700.0, integ, out)
    assert integ[0] == 0.0 and out[0] == 700.0


bounds = st.integers(1, 32).flatmap(
    lambda n: st.tuples(
        arrays(np.float64, n, elements=st.floats(0.5, 4)),  # weights
        arrays(np.float64, n, elements=st.floats(0, 300)),  # lo
        arrays(np.float64, n, elements=st.floats(0, 500)),  # extra above lo
        arrays(np.float64, n, elements=st.one_of(st.floats(0, 900), st.just(math.inf))),  # demand
    )
)


@settings(max_examples=300, deadline=None)
@given(b=bounds, budget=st.floats(0, 20_000))
def test_water_fill_matches_reference_and_respects_bounds(b, budget):
    weight, lo, extra, demand = b
    hi = lo + extra
    oa, ob = np.zeros_like(lo), np.zeros_like(lo)
    ta = kernels.water_fill(budget, weight, lo, hi, demand, oa)
    tb = reference.water_fill(budget, weight, lo, hi, demand, ob)
    np.testing.assert_allclose(oa, ob, rtol=1e-9, atol=1e-6)
    assert ta == pytest.approx(tb, rel=1e-9, abs=1e-6)
    assert np.all(oa >= lo - 1e-9) and np.all(oa <= hi + 1e-9)
    floor = np.minimum(lo, demand).sum()
    ceiling = np.minimum(hi, demand).sum()
    if floor <= budget <= ceiling:
        assert ta == pytest.approx(budget, rel=1e-6, abs=1e-3)  # the whole budget is used


def test_water_fill_shares_by_priority_and_gives_unused_demand_away():
    caps = np.zeros(3)
    lo, hi = np.full(3, 100.0), np.full(3, 700.0)
    kernels.water_fill(900.0, np.array([1.0, 2.0, 1.0]), lo, hi, np.full(3, np.inf), caps)
    assert caps == pytest.approx([225.0, 450.0, 225.0])
    # GPU 0's job only draws 120 W: the other two get what it leaves.
    kernels.water_fill(900.0, np.ones(3), lo, hi, np.array([120.0, np.inf, np.inf]), caps)
    assert caps[1] == pytest.approx(390.0) and caps[2] == pytest.approx(390.0)


budget_args = st.tuples(
    st.floats(0, 5000),  # solar
    st.floats(0, 5000),  # stored
    st.floats(100, 5000),  # capacity
    st.floats(0, 0.6),  # floor fraction
    st.floats(0, 300),  # avionics
    st.floats(0, 6000),  # eclipse in
    st.floats(0, 2500),  # sun in
    st.floats(0, 2500),  # eclipse length
    st.one_of(st.just(math.inf), st.floats(0, 5000)),  # charge limit
)


@settings(max_examples=300, deadline=None)
@given(a=budget_args)
def test_power_budget_matches_reference(a):
    solar, stored, cap, floor, av, ecl_in, sun_in, ecl, charge = a
    args = (solar, min(stored, cap), cap, floor * cap, av, ecl_in, sun_in, ecl, 0.95, 0.95, 1e9, charge)
    got = kernels.power_budget(*args)
    assert got == pytest.approx(reference.power_budget(*args), rel=1e-12, abs=1e-9)
    assert got >= 0.0


def test_power_budget_in_eclipse_lands_on_the_floor_at_sunrise():
    capacity, floor, stored, avionics, left_s, eff = 2000.0, 600.0, 1400.0, 100.0, 1800.0, 0.95
    p = kernels.power_budget(0.0, stored, capacity, floor, avionics, 0.0, left_s, left_s, 0.95, eff, 1e9, math.inf)
    energy_used_wh = (p + avionics) * left_s / 3600.0 / eff
    assert stored - energy_used_wh == pytest.approx(floor)


def test_power_budget_in_sunlight_plans_equal_power_through_the_eclipse():
    capacity, floor, stored, avionics, solar = 5000.0, 1500.0, 2000.0, 100.0, 4000.0
    t_sun, d, eff = 3600.0, 2136.0, 0.95
    p = kernels.power_budget(solar, stored, capacity, floor, avionics, t_sun, 0.0, d, eff, eff, 1e9, math.inf)
    # Spend p through the sunlit hour, charging with the rest ...
    at_entry = stored + (solar - avionics - p) * eff * t_sun / 3600.0
    # ... and the eclipse at the same p ends exactly on the floor.
    assert at_entry - (avionics + p) * d / 3600.0 / eff == pytest.approx(floor)
    assert at_entry <= capacity


def test_power_budget_fills_the_battery_when_the_eclipse_could_not_use_more():
    capacity, floor, avionics, solar = 1000.0, 300.0, 100.0, 9000.0
    p = kernels.power_budget(solar, 500.0, capacity, floor, avionics, 3600.0, 0.0, 2136.0, 0.95, 0.95, 1e9, math.inf)
    assert p == pytest.approx(solar - avionics - 500.0 / 0.95)  # the battery is full at entry


def test_power_budget_gives_the_gpus_what_the_battery_cannot_take():
    # Five minutes of sun left before a long eclipse: the equal-power plan would charge at
    # ~4.7 kW, but the battery takes 2.4 kW (0.5 C of 4.8 kWh); the rest would be shunted.
    capacity, floor, stored, avionics, solar, t_sun, d, eff = 4800.0, 3384.0, 3840.0, 100.0, 5880.0, 300.0, 2136.0, 0.95
    unlimited = kernels.power_budget(solar, stored, capacity, floor, avionics, t_sun, 0.0, d, eff, eff, 1e9, math.inf)
    p = kernels.power_budget(solar, stored, capacity, floor, avionics, t_sun, 0.0, d, eff, eff, 1e9, 2400.0)
    assert solar - avionics - unlimited > 2400.0  # the limit binds here
    assert p == pytest.approx(solar - avionics - 2400.0)
    # the eclipse gets less than p (what a full-rate charge leaves above the floor) and is not robbed
    at_entry = stored + 2400.0 * eff * t_sun / 3600.0
    eclipse_p = (at_entry - floor) * eff * 3600.0 / d - avionics
    assert eclipse_p < p
    assert eclipse_p > 0.0


def test_heat_budget_is_steady_rejection_at_the_radiator_limit():
    ea, sink = 0.9 * 2.0, -40.0
    q = kernels.heat_budget(60.0, sink, ea, 50_000.0, 60.0, 600.0, 0.0)
    expected = ea * kernels.SIGMA_SB * ((60.0 + 273.15) ** 4 - (sink + 273.15) ** 4)
    assert q == pytest.approx(expected)
    assert kernels.heat_budget(30.0, sink, ea, 50_000.0, 60.0, 600.0, 0.0) > kernels.heat_budget(
        30.0, sink, ea, 0.0, 60.0, 600.0, 0.0
    )  # a cool radiator has room to warm up
    assert math.isinf(kernels.heat_budget(math.nan, sink, ea, 1.0, 60.0, 600.0, 0.0))


@settings(max_examples=200, deadline=None)
@given(
    a=arrays(np.float64, 8, elements=st.floats(0, 1000)),
    b=arrays(np.float64, 8, elements=st.floats(0, 1000)),
    deadband=st.floats(0, 50),
)
def test_caps_changed_matches_reference(a, b, deadband):
    assert kernels.caps_changed(a, b, deadband) == reference.caps_changed(a, b, deadband)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 32), rails=st.integers(0, 2**32 - 1))
def test_cap_bounds_match_reference(seed, n, rails):
    rng = np.random.default_rng(seed)
    thermal = rng.uniform(100, 800, n)
    limit = np.where(rng.random(n) < 0.3, rng.uniform(200, 700, n), np.inf)
    prev, power = rng.uniform(200, 700, n), rng.uniform(0, 700, n)
    a = [np.zeros(n) for _ in range(3)]
    b = [np.zeros(n) for _ in range(3)]
    kernels.cap_bounds(thermal, limit, prev, power, rails, 20.0, 200.0, *a)
    reference.cap_bounds(thermal, limit, prev, power, rails, 20.0, 200.0, *b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    off = [(rails >> i) & 1 == 0 for i in range(n)]
    assert all(a[2][i] == 0.0 and a[1][i] == 200.0 for i in range(n) if off[i])


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 32))
def test_cross_check_matches_reference(seed, n):
    rng = np.random.default_rng(seed)
    x_t, x_b = rng.uniform(40, 90, n), rng.uniform(30, 70, n)
    power, plate = rng.uniform(0, 700, n), rng.uniform(0, 700, n)
    flags = rng.integers(0, 16, n).astype(np.int64)
    place = np.where(rng.random(n) < 0.3, np.nan, rng.uniform(-6.0, 6.0, n))
    learn = float(rng.uniform(0.0, 1.0))
    a = [x_t.copy(), x_b.copy(), flags.copy(), place.copy()]
    b = [x_t.copy(), x_b.copy(), flags.copy(), place.copy()]
    na = kernels.cross_check(a[0], a[1], power, plate, 0.03, 0.025, 2.0, 5.0, learn, a[3], a[2])
    nb = reference.cross_check(b[0], b[1], power, plate, 0.03, 0.025, 2.0, 5.0, learn, b[3], b[2])
    assert na == nb
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-9)


def test_cross_check_raises_a_plate_that_reads_cold_and_moves_a_blind_one():
    # Loop at 45 °C under every GPU at 600 W: plates at 45 + 0.025·600 = 60.
    x_t = np.array([80.0, 80.0, 80.0, 60.0, 50.0])
    x_b = np.array([60.0, 61.0, 59.0, 40.0, 30.0])
    flags = np.array([0, 0, 0, 0, kernels.FLAG_STUCK], dtype=np.int64)
    power = np.full(5, 600.0)
    place = np.full(5, np.nan)  # first look: places seeded, bounded by the 5 K spread
    assert kernels.cross_check(x_t, x_b, power, power, 0.03, 0.025, 2.0, 5.0, 0.0, place, flags) == 1
    assert flags.tolist() == [0, 0, 0, kernels.FLAG_NEIGHBOURS, kernels.FLAG_STUCK]
    # GPU 3 reads 20 K cold, beyond any healthy spread: raised to the others' loop (45 °C)
    # less the bound and the tolerance, plus its plate rise.
    assert place[3] == -5.0 and np.isnan(place[4])
    assert x_b[3] == pytest.approx(45.0 - 5.0 - 2.0 + 15.0) and x_t[3] == pytest.approx(x_b[3] + 18.0)
    # GPU 4's sensor is stuck: its plate follows the good GPUs' loop (mean 40 °C) + 15 K,
    # and its die moves with it.
    assert x_b[4] == pytest.approx(40.0 + 15.0) and x_t[4] == pytest.approx(50.0 + 25.0)
