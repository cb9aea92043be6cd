"""The oracle (hil/oracle.py): its bound bounds, its plan keeps the limits on the real plant.

The scenarios here are shortened (40 minutes of β = 0°: a sunlit stretch and most of an
eclipse) so the LPs solve in about a second; ``umbra-hil run … --compare oracle`` runs the
library's full lengths (docs/control.md §10 has the measured table).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from firmware_sim import physics as ph
from firmware_sim.spaceplant import SpacePlant
from hil.oracle import (
    Limits,
    OracleError,
    make_blocks,
    realise,
    run_oracle,
    scenario_config,
    solve,
    timeline,
)
from hil.runner import OFFLINE_POLICIES, judge
from hil.scenario import library, parse_scenario

MEASURES = [
    {"metric": "max_temp_c", "max": 87.0},
    {"metric": "slowdown_s", "max": 0.0},
    {"metric": "shutdowns", "max": 0.0},
    {"metric": "soc_min", "min": 0.70},
    {"metric": "uv_trips", "max": 0.0},
    {"metric": "telemetry_gaps", "max": 0.0},
    {"metric": "work_vs_oracle", "min": 0.95, "compare": True},
]


def short(**extra):
    data = {"title": "short β = 0°", "orbit": "beta0", "seconds": 2400, "initial": {"demand_w": 700.0},
            "measure": MEASURES, **extra}
    return parse_scenario("short", data)


@pytest.fixture(scope="module")
def beta0_short():
    return solve(short(), block_s=30.0)


def test_the_plan_keeps_every_limit_on_the_plant_and_the_bound_is_above_it(beta0_short):
    out = beta0_short
    m = out.plan.metrics
    assert out.kept_limits
    assert m["max_temp_c"] <= 87.0 and m["soc_min"] >= 0.70
    assert m["slowdown_s"] == 0.0 and m["shutdowns"] == 0.0 and m["uv_trips"] == 0.0
    assert m["board_time_s"] == pytest.approx(2400.0)
    assert 0.0 < m["work_useful"] <= out.bound
    # the plan uses what it is given: hot in the sun, the battery at its floor by the end
    assert m["max_temp_c"] > 85.0
    assert out.gap > 0.85


def test_the_bound_is_tighter_than_the_boards_own(beta0_short):
    # truth.work_bound lets the radiator reject heat at die temperature (board-physics §6)
    assert beta0_short.bound < beta0_short.plan.metrics["work_bound"]


def _thermostat(scenario, *, cap_hot: float, cap_cool: float, soc_stop: float) -> dict[str, float]:
    """A causal controller with perfect sensors, tuned to keep the limits: caps by die
    temperature, every rail off below a state of charge."""
    config = scenario_config(scenario)
    plant = SpacePlant(config=config, seed=scenario.seed)
    for name, value in scenario.initial:
        plant.set_param(name, value)
    plant.reset_truth()
    max_die = -math.inf
    for _ in range(int(scenario.seconds)):
        hot = float(plant.g[ph.G_DIE].max()) > 84.0
        plant.set_caps([cap_hot if hot else cap_cool] * config.gpu_count)
        soc = plant.s[ph.S_EBATT] / plant.p[ph.P_BATT_CAP]
        if soc <= soc_stop and plant.rail_on.any():
            plant.checkpoint()  # an instant, free checkpoint: a stronger competitor than any real one
            for gpu in range(config.gpu_count):
                plant.set_rail(gpu, False)
        plant.step(1.0)
        max_die = max(max_die, float(plant.g[ph.G_DIE].max()))
    t = plant.truth()
    return {"work": t["work_done"] - t["work_lost"], "max_temp_c": max_die, "soc_min": t["soc_min"]}


@pytest.mark.parametrize(("cap_hot", "cap_cool", "soc_stop"), [(300.0, 700.0, 0.71), (450.0, 600.0, 0.72)])
def test_no_controller_that_keeps_the_limits_beats_the_bound(beta0_short, cap_hot, cap_cool, soc_stop):
    run = _thermostat(short(), cap_hot=cap_hot, cap_cool=cap_cool, soc_stop=soc_stop)
    assert run["max_temp_c"] <= 87.0 and run["soc_min"] >= 0.70, run  # a fair competitor
    assert run["work"] <= beta0_short.bound


def test_a_battery_set_in_the_timeline_fixes_the_energy_there():
    scn = short(at=[{"t_s": 1500.0, "set": {"battery_soc": 0.8}}])
    config = scenario_config(scn)
    blocks = make_blocks(scn, config, 2400.0, 30.0, 1.0, scn.seed)
    assert 1500.0 in blocks.t.tolist()
    j = blocks.t.tolist().index(1500.0)
    assert blocks.fixed_e == {j: pytest.approx(0.8 * config.battery_wh * 3600.0)}
    out = solve(scn, block_s=30.0)
    assert out.kept_limits and out.plan.metrics["soc_min"] >= 0.70
    # the set takes energy the plan had: less work than without it
    assert out.plan.metrics["work_useful"] < solve(short(), block_s=30.0).plan.metrics["work_useful"]


def test_the_timeline_keeps_physics_and_drops_what_only_a_controller_sees():
    scn = short(at=[{"t_s": 10.4, "set": {"fault.pump": 1.0, "link.ber": 1e-5, "fault.sensor.0": 3.0}},
                    {"orbit": 0.1, "set": {"board.reset": 1.0}}, {"t_s": 5.0, "action": "node.kill"}])
    events = timeline(scn, 5730.0, 1.0)
    assert [(e.t_s, e.name) for e in events] == [(11.0, "fault.pump"), (573.0, "board.reset")]


def test_a_pump_failure_and_a_reset_are_planned_for():
    scn = short(at=[{"t_s": 600.0, "set": {"fault.pump": 1.0}}, {"t_s": 1200.0, "set": {"board.reset": 1.0}}])
    out = solve(scn, block_s=30.0)
    m = out.plan.metrics
    assert out.kept_limits and m["max_temp_c"] <= 87.0
    # checkpointed before the reset: almost nothing lost to it
    assert m["checkpoints"] >= scn.gpus and m["work_lost"] < 0.01 * m["work_useful"]
    healthy = solve(short(), block_s=30.0)
    assert m["work_useful"] < 0.9 * healthy.plan.metrics["work_useful"]  # the failed pump binds


def test_the_realised_caps_draw_the_planned_power():
    p = np.array([0.0, 20.0, 150.0, 199.0, 200.0, 450.0, 700.0])
    on, cap = realise(p, 8, 200.0, 700.0)
    assert on.tolist() == [0, 0, 6, 7, 8, 8, 8]
    drawn = on * cap
    assert drawn[2:] == pytest.approx(8 * p[2:])  # whenever at least one GPU can be on
    assert (cap >= 200.0).all() and (cap <= 700.0).all()


def test_limits_come_from_the_scenario():
    scn = short()
    assert Limits.of(scn, scenario_config(scn)) == Limits(temp_c=87.0, soc=0.70)
    strict = dataclasses.replace(scn, measures=tuple(
        dataclasses.replace(m, min=0.99) if m.metric == "soc_min" else m for m in scn.measures))
    assert Limits.of(strict, scenario_config(strict)).soc == 0.99


def test_limits_no_plan_can_keep_are_an_error_not_a_crash(tmp_path):
    scn = short()
    strict = dataclasses.replace(scn, measures=tuple(
        dataclasses.replace(m, min=0.99) if m.metric == "soc_min" else m for m in scn.measures))
    with pytest.raises(OracleError, match="LP"):
        solve(strict, block_s=30.0)
    result = run_oracle(strict, run_dir=tmp_path / "o")
    assert result.error.startswith("OracleError") and result.verdict == "error"


def test_an_oracle_run_is_judged_on_what_it_measures_and_others_against_it(tmp_path, beta0_short):
    from hil.runner import RunResult

    assert "oracle" in OFFLINE_POLICIES
    scn = short()
    oracle = run_oracle(scn, run_dir=tmp_path / "oracle")
    judge(oracle)
    outcome = {o.metric: o.outcome for o in oracle.outcomes}
    assert outcome["max_temp_c"] == outcome["soc_min"] == "pass"
    assert outcome["telemetry_gaps"] == "skipped"  # no link, no ground
    assert oracle.verdict == "pass" and oracle.samples and oracle.metrics["oracle_gap"] == pytest.approx(
        beta0_short.gap, rel=0.05)
    umbra = RunResult(scenario=scn, policy="umbra", run_dir=tmp_path / "umbra")
    umbra.metrics = {"work_useful": 0.9 * oracle.metrics["work_useful"], "max_temp_c": 86.0, "slowdown_s": 0.0,
                     "shutdowns": 0.0, "soc_min": 0.71, "uv_trips": 0.0, "telemetry_gaps": 0.0}
    judge(umbra, oracle)
    assert umbra.metrics["work_vs_oracle"] == pytest.approx(0.9)
    assert umbra.metrics["oracle_bound"] == oracle.metrics["oracle_bound"]
    assert {o.metric: o.outcome for o in umbra.outcomes}["work_vs_oracle"] == "fail"  # 0.9 < 0.95
    judge(umbra)
    assert {o.metric: o.outcome for o in umbra.outcomes}["work_vs_oracle"] == "skipped"


def test_every_library_scenario_that_judges_work_judges_it_against_the_oracle():
    for name, scn in library().items():
        metrics = {m.metric for m in scn.measures}
        if "work_vs_peer" in metrics:
            assert "work_vs_oracle" in metrics, name
