"""Young's and Daly's intervals (the paper's test vectors) and the interval estimator."""

from __future__ import annotations

import math

import pytest

from node.errors import ConfigError
from node.jobs import IntervalEstimator, PolicyConfig, daly_interval, young_interval


@pytest.mark.parametrize(
    ("mtbf_min", "expected_min"),
    [(24 * 60, 117.0), (6 * 60, 57.0), (15, 9.1)],
)
def test_daly_test_vectors(mtbf_min: float, expected_min: float) -> None:
    # Daly (2006): δ = 5 min; M = 24 h, 6 h, 15 min → τ ≈ 117, 57, 9.1 min.
    tau = daly_interval(5.0, mtbf_min)
    assert tau == pytest.approx(expected_min, abs=0.5 if expected_min > 10 else 0.05)
    # Units do not matter: the same in seconds.
    assert daly_interval(300.0, mtbf_min * 60) == pytest.approx(tau * 60, rel=1e-12)


def test_daly_exact_values() -> None:
    assert daly_interval(5.0, 1440.0) == pytest.approx(116.69, abs=0.01)
    assert daly_interval(5.0, 360.0) == pytest.approx(56.71, abs=0.01)
    assert daly_interval(5.0, 15.0) == pytest.approx(9.14, abs=0.01)


def test_daly_beyond_two_mtbf_is_the_mtbf() -> None:
    assert daly_interval(30.0, 15.0) == 15.0
    assert daly_interval(100.0, 15.0) == 15.0


def test_young() -> None:
    assert young_interval(5.0, 1440.0) == pytest.approx(120.0)
    assert young_interval(2.0, 8.0) == pytest.approx(math.sqrt(32.0))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_arguments(bad: float) -> None:
    with pytest.raises(ValueError):
        daly_interval(bad, 10.0)
    with pytest.raises(ValueError):
        young_interval(10.0, bad)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_estimator_starts_from_the_prior() -> None:
    clock = FakeClock()
    cfg = PolicyConfig(prior_cost_s=300.0, prior_mtbf_s=6 * 3600.0, min_interval_s=1.0, max_interval_s=1e6)
    est = IntervalEstimator(cfg, clock=clock)
    assert est.mtbf_s == pytest.approx(6 * 3600.0)
    assert est.interval_s() == pytest.approx(56.71 * 60, rel=1e-3)


def test_estimator_learns_cost_and_fault_rate() -> None:
    clock = FakeClock()
    cfg = PolicyConfig(prior_cost_s=300.0, prior_mtbf_s=3600.0, prior_weight=1.0, cost_alpha=0.5,
                       min_interval_s=1.0, max_interval_s=1e6)
    est = IntervalEstimator(cfg, clock=clock)
    est.observe_checkpoint(10.0)  # the first measurement replaces the prior
    assert est.cost_s == 10.0
    est.observe_checkpoint(20.0)
    assert est.cost_s == pytest.approx(15.0)
    clock.t += 3 * 3600.0
    est.observe_fault(3)
    # (1·3600 + 10800) / (1 + 3) = 3600
    assert est.mtbf_s == pytest.approx(3600.0)
    assert est.interval_s() == pytest.approx(daly_interval(15.0, 3600.0))
    # More faults → shorter interval; more quiet exposure → longer.
    before = est.interval_s()
    est.observe_fault()
    assert est.interval_s() < before
    clock.t += 100 * 3600.0
    assert est.interval_s() > before


def test_exposure_only_while_running() -> None:
    clock = FakeClock()
    est = IntervalEstimator(clock=clock, running=False)
    clock.t += 100.0
    assert est.exposure_s == 0.0
    est.resume()
    clock.t += 50.0
    est.pause()
    clock.t += 1000.0
    est.add_exposure(5.0)
    assert est.exposure_s == pytest.approx(55.0)


def test_interval_is_clamped_and_due() -> None:
    clock = FakeClock()
    est = IntervalEstimator(PolicyConfig(prior_cost_s=0.001, min_interval_s=120.0, max_interval_s=600.0),
                            clock=clock)
    assert est.interval_s() == 120.0
    assert not est.due(clock.t - 100.0)
    assert est.due(clock.t - 120.0)
    est.observe_checkpoint(5000.0)
    assert est.interval_s() == 600.0
    e = est.estimate()
    assert e.interval_s == 600.0 and e.faults == 0


def test_policy_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        PolicyConfig(cost_alpha=0.0)
    assert info.value.key == "checkpoints.cost_alpha"
    with pytest.raises(ConfigError) as info:
        PolicyConfig(prior_mtbf_s=-1.0)
    assert info.value.key == "checkpoints.prior_mtbf_s"
