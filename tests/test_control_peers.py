"""The peer laws (node/control/peers.py): the Linux power_allocator and step_wise governors as
the kernel documents them, and the user's battery rule."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.control.law import ControlParams
from node.control.peers import (
    IpaLaw,
    IpaParams,
    StepWiseLaw,
    StepWiseParams,
    battery_rule_w,
    divvy_up,
)
from node.link.messages import Sensor
from node.policy import POLICIES

N = 4


def reading(t: float, temps: list[float], power: float = 600.0, **kw: object) -> Sensor:
    base = Sensor(t_board=t, utc=1.7e9 + t, temp_c=tuple(temps), power_w=(power,) * len(temps),
                  cap_w=(700.0,) * len(temps), progress=(0.0,) * len(temps), rails=(1 << len(temps)) - 1,
                  solar_w=20000.0, battery_soc=1.0, radiator_c=20.0, flags=0)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def ipa(**kw: float) -> IpaLaw:
    kw.setdefault("sustainable_w_per_gpu", 200.0)  # the figures below: 800 W over four GPUs
    law = IpaLaw(ipa=IpaParams(**kw))
    law.reset(gpu_count=N, cap_min_w=200.0, cap_max_w=700.0, sensor_rate_hz=1.0)
    return law


def test_the_kernels_default_gains_come_from_the_sustainable_power() -> None:
    k_po, k_pu, k_i = IpaParams(t_on_c=75.0, t_set_c=85.0).gains(800.0)
    assert (k_po, k_pu, k_i) == (80.0, 160.0, 16.0)
    assert IpaParams(t_on_c=75.0, t_set_c=85.0).gains(10.0)[2] == 1.0  # k_i at least 1
    law = IpaLaw()
    law.reset(gpu_count=N, cap_min_w=200.0, cap_max_w=700.0)
    assert law._sustainable == N * 400.0  # configured, per GPU
    assert ipa(sustainable_w_per_gpu=0.0)._sustainable == N * 200.0  # unset: every actor's minimum


def test_below_switch_on_every_gpu_is_unthrottled_and_the_integral_cleared() -> None:
    law = ipa(t_on_c=75.0, t_set_c=85.0)
    law.step(reading(0.0, [90.0] * N), limits_w=np.full(N, 700.0), weights=np.ones(N))
    assert law._integral < 0.0  # above T_set: the overshoot accumulates
    result = law.step(reading(1.0, [60.0] * N), limits_w=np.full(N, 700.0), weights=np.ones(N))
    assert result.caps_w.tolist() == [700.0] * N and law._integral == 0.0 and law._prev_err == 0.0


def test_the_budget_is_three_times_sustainable_at_switch_on_and_sustainable_at_the_set_point() -> None:
    law = ipa(t_on_c=75.0, t_set_c=85.0)
    # The hottest GPU is the zone's temperature.
    r = law.step(reading(0.0, [75.0, 60.0, 60.0, 60.0]), limits_w=np.full(N, 700.0), weights=np.ones(N))
    assert r.budget_w == pytest.approx(3 * 800.0)
    r = law.step(reading(1.0, [85.0, 60.0, 60.0, 60.0]), limits_w=np.full(N, 700.0), weights=np.ones(N))
    assert r.budget_w == pytest.approx(800.0)
    assert r.caps_w.tolist() == [200.0] * N  # 800 W over four equal requests, none below the minimum


def test_the_integral_stops_where_its_term_would_pass_the_total_maximum() -> None:
    law = ipa(t_on_c=75.0, t_set_c=85.0)
    for t in range(1000):  # far above T_set for long: the integral winds only so far
        law.step(reading(float(t), [95.0] * N), limits_w=np.full(N, 700.0), weights=np.ones(N))
    k_i = law.ipa.gains(law._sustainable)[2]
    assert abs(k_i * law._integral) < N * 700.0
    assert abs(k_i * (law._integral - 10.0)) >= N * 700.0


@given(st.floats(0.0, 10000.0), st.lists(st.tuples(st.floats(0.0, 700.0), st.floats(0.1, 10.0),
                                                   st.floats(0.0, 700.0)), min_size=1, max_size=8))
def test_the_division_never_grants_more_than_the_budget_or_a_maximum(budget, actors) -> None:
    req, w, mx = (np.array(x) for x in zip(*actors, strict=True))
    out = divvy_up(budget, req, w, mx, np.zeros(len(req)))
    assert (out <= mx + 1e-6).all() and (out >= -1e-9).all()
    assert out.sum() <= budget + 1e-6 * max(1.0, budget)
    if (req * w).sum() > 0 and budget <= float(mx[req * w > 0].sum()) and (mx[req * w > 0] > 0).all():
        # Everything handed out while someone still has room (the surplus goes to headroom).
        assert out.sum() == pytest.approx(min(budget, float(mx.sum())), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize(("budget", "weight", "top"), [(1.5, 1.0, 2.0), (1.625, 2.0, 2.0)])
def test_the_division_of_a_subnormal_request_is_exact(budget, weight, top) -> None:
    # Hypothesis found it: budget × (5e-324 × w) rounded in the subnormals first.
    out = divvy_up(budget, np.array([5e-324]), np.array([weight]), np.array([top]), np.zeros(1))
    assert out.tolist() == [budget]


def test_the_division_is_weighted_and_hands_the_surplus_back_by_headroom() -> None:
    out = divvy_up(900.0, np.array([600.0, 600.0, 600.0]), np.array([2.0, 1.0, 1.0]),
                   np.array([400.0, 700.0, 700.0]), np.zeros(3))
    # 450 / 225 / 225 by weight; the first is capped at 400, its 50 W go to the others' room.
    assert out.tolist() == pytest.approx([400.0, 250.0, 250.0])


def test_step_wise_throttles_a_step_while_hot_and_rising_and_releases_while_cool_and_falling() -> None:
    law = StepWiseLaw(step_wise=StepWiseParams(trip_c=83.0, steps=10))  # a trip of the test's own
    law.reset(gpu_count=2, cap_min_w=200.0, cap_max_w=700.0)
    lim, w = np.full(2, 700.0), np.ones(2)
    assert law.step(reading(0.0, [84.0, 70.0]), limits_w=lim, weights=w).caps_w.tolist() == [700.0, 700.0]
    assert law.step(reading(1.0, [85.0, 71.0]), limits_w=lim, weights=w).caps_w.tolist() == [650.0, 700.0]
    assert law.step(reading(2.0, [85.0, 72.0]), limits_w=lim, weights=w).caps_w.tolist() == [650.0, 700.0]  # hold
    assert law.step(reading(3.0, [86.0, 72.0]), limits_w=lim, weights=w).caps_w.tolist() == [600.0, 700.0]
    assert law.step(reading(4.0, [82.0, 72.0]), limits_w=lim, weights=w).caps_w.tolist() == [650.0, 700.0]
    for t in range(5, 30):
        law.step(reading(float(t), [86.0 + t, 72.0]), limits_w=lim, weights=w)
    assert law._caps[0] == 200.0  # the most throttled state: the minimum cap


def test_the_battery_rule_refills_in_the_sun_and_spends_to_the_floor_in_eclipse() -> None:
    p = ControlParams()
    sun = reading(0.0, [50.0] * N, solar_w=5000.0, battery_wh=900.0, battery_capacity_wh=1000.0,
                  avionics_w=100.0, eclipse_in_s=3600.0)
    assert battery_rule_w(sun, p) == pytest.approx(5000.0 - 100.0 - 100.0 * 3600.0 / p.charge_eff / 3600.0)
    dark = dataclasses.replace(sun, solar_w=0.0, flags=0x02, sun_in_s=1800.0, battery_wh=800.0)
    floor = p.battery_floor_frac * 1000.0
    assert battery_rule_w(dark, p) == pytest.approx((800.0 - floor) * 3600.0 * p.discharge_eff / 1800.0 - 100.0)
    assert battery_rule_w(dataclasses.replace(dark, battery_wh=600.0), p) == 0.0  # below the floor: nothing
    assert battery_rule_w(reading(0.0, [50.0] * N), p) == math.inf  # no battery data: no rule


def test_the_peers_are_policies_with_fixed_checkpoints_and_no_shedding() -> None:
    for name in ("ipa", "step_wise"):
        policy = POLICIES[name]
        assert not policy.sheds_load and policy.make_law(ControlParams()).name == name
        from node.jobs.manager import SimJobConfig
        assert not policy.make_checkpoints(SimJobConfig()).foresees
