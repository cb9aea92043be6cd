"""firmware_sim plant: the numba kernel against its NumPy reference, and the physics."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.config import PlantConfig
from firmware_sim.kernels import plant_step, plant_step_ref
from firmware_sim.plant import FirstOrderPlant, Plant
from node.errors import CommandRejected, ConfigError
from node.link.messages import AckStatus

JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0")

pytestmark = pytest.mark.kernels


def _random_case(rng: np.random.Generator, n: int) -> tuple[tuple[float, ...], list[np.ndarray]]:
    dt = float(rng.choice([1e-9, 1e-3, 0.1, 1.0, 30.0, 1e4]) * rng.uniform(0.5, 1.5))
    scalars = (
        dt,
        float(rng.uniform(0.05, 2.0)),  # tau_power_s
        float(rng.uniform(1.0, 60.0)),  # tau_temp_s
        float(rng.uniform(0.01, 0.3)),  # r_k_per_w
        float(rng.uniform(-20.0, 60.0)),  # sink_c
        float(rng.uniform(0.0, 150.0)),  # idle_w
        float(rng.uniform(300.0, 900.0)),  # ref_w
        float(rng.uniform(0.3, 1.0)),  # work_exponent
        87.0,  # slowdown_c
        85.0,  # release_c
        float(rng.uniform(0.2, 1.0)),  # slowdown_factor
    )
    arrays = [
        rng.uniform(200.0, 700.0, n),  # cap_w
        rng.uniform(0.0, 900.0, n),  # demand_w
        rng.random(n) < 0.8,  # rail_on
        rng.uniform(20.0, 100.0, n),  # temp_c: straddles the slowdown band
        rng.uniform(0.0, 800.0, n),  # power_w
        rng.uniform(0.0, 1e3, n),  # progress
        rng.random(n) < 0.5,  # slowed
    ]
    return scalars, arrays


def test_kernel_is_compiled_unless_the_jit_is_disabled() -> None:
    FirstOrderPlant().step(0.1)
    if JIT:
        assert plant_step.signatures, "plant_step should be a compiled numba dispatcher"
    else:  # the NUMBA_DISABLE_JIT pass: the same code runs as plain Python
        assert not hasattr(plant_step, "signatures")


def test_kernel_matches_numpy_reference_on_random_inputs() -> None:
    rng = np.random.default_rng(20240601)
    for _ in range(300):
        n = int(rng.integers(1, 33))
        scalars, arrays = _random_case(rng, n)
        jit_arrays = [a.copy() for a in arrays]
        ref_arrays = [a.copy() for a in arrays]
        plant_step(*scalars, *jit_arrays)
        plant_step_ref(*scalars, *ref_arrays)
        names = ("cap", "demand", "rail", "temp", "power", "progress", "slowed")
        for name, got, want in zip(names, jit_arrays, ref_arrays, strict=True):
            np.testing.assert_allclose(
                got, want, rtol=1e-12, atol=1e-9, err_msg=f"{name}, {scalars}"
            )
        # Something actually changed, so the comparison is not vacuous.
        assert not np.array_equal(jit_arrays[3], arrays[3]) or scalars[0] < 1e-6


@settings(max_examples=60, deadline=None)
@given(
    dt=st.floats(1e-6, 1e5),
    temp=st.floats(-50.0, 150.0),
    power=st.floats(0.0, 2000.0),
    cap=st.floats(200.0, 700.0),
    demand=st.floats(0.0, 1500.0),
)
def test_kernel_is_stable_and_bounded_for_any_step(
    dt: float, temp: float, power: float, cap: float, demand: float
) -> None:
    """Exact integration: no step length overshoots the range spanned by start and target."""
    t, p = np.array([temp]), np.array([power])
    prog, slowed = np.zeros(1), np.zeros(1, dtype=np.bool_)
    plant_step(
        dt, 0.3, 20.0, 0.1, 25.0, 75.0, 700.0, 0.6, 1e9, 1e9, 0.5,
        np.array([cap]), np.array([demand]), np.ones(1, dtype=np.bool_), t, p, prog, slowed,
    )  # fmt: skip
    target = min(cap, demand)
    assert min(power, target) - 1e-9 <= p[0] <= max(power, target) + 1e-9
    lo = min(temp, 25.0 + 0.1 * min(power, target))
    hi = max(temp, 25.0 + 0.1 * max(power, target))
    assert lo - 1e-9 <= t[0] <= hi + 1e-9
    assert prog[0] >= 0.0 and math.isfinite(prog[0])


@pytest.mark.parametrize(("sink_c", "demand_w"), [(25.0, 300.0), (25.0, 500.0), (-10.0, 650.0)])
def test_steady_state_temperature_is_sink_plus_r_times_p(sink_c: float, demand_w: float) -> None:
    plant = FirstOrderPlant(config=PlantConfig(gpu_count=4, sink_c=sink_c, demand_w=demand_w))
    for _ in range(4000):  # 400 s = 20 thermal time constants
        plant.step(0.1)
    np.testing.assert_allclose(plant.power_w, demand_w, rtol=1e-9)
    np.testing.assert_allclose(plant.temp_c, sink_c + 0.1 * demand_w, atol=1e-5)


def test_700_w_steady_state_is_95_c_without_hardware_slowdown() -> None:
    cfg = PlantConfig(gpu_count=2, demand_w=700.0, slowdown_c=500.0)
    plant = FirstOrderPlant(config=cfg)
    plant.step(1e5)  # one giant step lands on the steady state
    np.testing.assert_allclose(plant.temp_c, 95.0, atol=1e-9)


def test_hardware_slowdown_holds_temperature_near_threshold_and_is_flagged() -> None:
    plant = FirstOrderPlant(config=PlantConfig(gpu_count=2, demand_w=700.0))
    peak = 0.0
    for _ in range(3000):
        plant.step(0.1)
        peak = max(peak, float(plant.temp_c.max()))
    assert 87.0 <= peak < 88.0  # one step past the threshold, never the 95 °C steady state
    assert 80.0 < plant.temp_c.min() < 88.0
    reading = plant.read()
    slowed_now = plant.get_param("slowdown")
    assert reading.hw_slowdown == any(v == 1.0 for v in slowed_now)  # type: ignore[union-attr]


def test_large_step_equals_many_small_steps() -> None:
    """Exact integration: while the target is constant, step length does not matter."""
    cfg = PlantConfig(gpu_count=3, demand_w=400.0, slowdown_c=500.0)
    a, b = FirstOrderPlant(config=cfg), FirstOrderPlant(config=cfg)
    for p in (a, b):
        p.set_caps((300.0, 500.0, 700.0))
    a.step(50.0)
    for _ in range(5000):
        b.step(0.01)
    np.testing.assert_allclose(a.temp_c, b.temp_c, rtol=1e-9)
    np.testing.assert_allclose(a.power_w, b.power_w, rtol=1e-9)
    assert a.temp_c[0] != b.temp_c[1]  # the caps did take effect


def test_temperature_follows_the_power_lag_exactly() -> None:
    """One step against the closed-form solution of the two-lag cascade."""
    plant = FirstOrderPlant(config=PlantConfig(gpu_count=1, demand_w=600.0, slowdown_c=500.0))
    dt, tp, tt = 0.5, 0.3, 20.0
    plant.step(dt)  # from 25 °C and 0 W towards 600 W
    gap = -600.0
    expected = (
        85.0
        + (25.0 - 85.0) * math.exp(-dt / tt)
        + 0.1 * gap * tp / (tp - tt) * (math.exp(-dt / tp) - math.exp(-dt / tt))
    )
    assert plant.temp_c[0] == pytest.approx(expected, rel=1e-12)
    assert plant.power_w[0] == pytest.approx(600.0 * (1 - math.exp(-dt / tp)), rel=1e-12)


def test_cap_change_settles_with_first_order_lag() -> None:
    plant = FirstOrderPlant(config=PlantConfig(gpu_count=2, demand_w=700.0, slowdown_c=500.0))
    plant.step(10.0)
    np.testing.assert_allclose(plant.power_w, 700.0, rtol=1e-9)
    plant.set_caps((300.0, 700.0))
    for _ in range(3):  # 0.3 s = one power time constant
        plant.step(0.1)
    expected = 300.0 + 400.0 * math.exp(-1.0)
    np.testing.assert_allclose(plant.power_w, [expected, 700.0], rtol=1e-9)
    plant.step(3.0)
    np.testing.assert_allclose(plant.power_w, [300.0, 700.0], atol=0.1)


def test_rail_off_drops_power_and_temperature_to_sink() -> None:
    plant = FirstOrderPlant(config=PlantConfig(gpu_count=2, demand_w=500.0))
    plant.step(100.0)
    plant.set_rail(1, False)
    before = plant.progress.copy()
    plant.step(1000.0)
    assert plant.power_w[1] < 1e-9 and plant.temp_c[1] == pytest.approx(25.0, abs=1e-6)
    assert plant.progress[1] == pytest.approx(before[1], abs=1e-3)  # no more work without power
    assert plant.read().rails == 0b01


def test_progress_rate_is_concave_in_power() -> None:
    def rate(demand_w: float) -> float:
        cfg = PlantConfig(gpu_count=1, demand_w=demand_w, slowdown_c=500.0, idle_w=75.0)
        plant = FirstOrderPlant(config=cfg)
        plant.step(10.0)
        start = float(plant.progress[0])
        plant.step(100.0)
        return (float(plant.progress[0]) - start) / 100.0

    assert rate(700.0) == pytest.approx(1.0, rel=1e-6)
    assert rate(387.5) == pytest.approx(0.5**0.6, rel=1e-6)  # half the busy power
    assert rate(60.0) == 0.0  # below idle: no work


def test_same_seed_same_readings_and_different_seed_differs() -> None:
    def run(seed: int) -> list[tuple[float, ...]]:
        plant = FirstOrderPlant(seed=seed)
        out = []
        for i in range(50):
            if i == 20:
                plant.set_caps((250.0,) * 8)
            plant.step(0.1)
            r = plant.read()
            out.append(r.temp_c + r.power_w)
        return out

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_sensor_noise_is_small_and_unbiased() -> None:
    plant = FirstOrderPlant(config=PlantConfig(gpu_count=8, demand_w=300.0), seed=1)
    plant.step(1e4)
    temps = np.array([plant.read().temp_c for _ in range(500)])
    assert abs(float(temps.mean()) - 55.0) < 0.02
    assert 0.05 < float(temps.std()) < 0.2
    powers = np.array([plant.read().power_w for _ in range(200)])
    assert powers.min() >= 0.0


def test_set_caps_rejects_bad_vectors_without_effect() -> None:
    plant = FirstOrderPlant(config=PlantConfig(gpu_count=2))
    for bad in [(300.0,), (300.0, 300.0, 300.0), (199.9, 300.0), (300.0, 700.1), (math.nan, 300.0)]:
        with pytest.raises(CommandRejected) as info:
            plant.set_caps(bad)
        assert info.value.code == AckStatus.BAD_ARGUMENT
    assert plant.cap_w.tolist() == [700.0, 700.0]
    plant.set_caps((200.0, 700.0))
    assert plant.cap_w.tolist() == [200.0, 700.0]
    with pytest.raises(CommandRejected):
        plant.set_rail(2, False)


def test_params_get_set_and_refuse() -> None:
    plant = FirstOrderPlant(config=PlantConfig(gpu_count=2))
    plant.set_param("demand_w", 650.0)
    assert plant.get_param("demand_w") == (650.0, 650.0)
    plant.set_param("demand_w", (100.0, 200.0))
    assert plant.get_param("demand_w") == (100.0, 200.0)
    plant.set_param("sink_c", 40.0)
    assert plant.get_param("sink_c") == 40.0
    for name, value in [
        ("demand_w", (1.0, 2.0, 3.0)),
        ("demand_w", -5.0),
        ("sink_c", math.nan),
        ("sink_c", (1.0, 2.0)),
        ("battery_soc", 1.5),
        ("temp_c", 30.0),  # read-only
        ("no_such_thing", 1.0),
    ]:
        with pytest.raises(CommandRejected):
            plant.set_param(name, value)
    assert plant.get_param("demand_w") == (100.0, 200.0)
    with pytest.raises(CommandRejected):
        plant.get_param("no_such_thing")
    for name in plant.param_names():
        value = plant.get_param(name)
        assert isinstance(value, float) or all(type(v) is float for v in value)


def test_state_views_are_read_only_and_live() -> None:
    plant = FirstOrderPlant()
    assert isinstance(plant, Plant)
    temp = plant.temp_c
    with pytest.raises(ValueError):
        temp[0] = 0.0
    plant.step(5.0)
    assert temp[0] > 25.0  # the view follows the state


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        PlantConfig(cap_min_w=800.0)
    assert info.value.key == "cap_min_w"
    with pytest.raises(ConfigError) as info:
        PlantConfig(gpu_count=33)
    assert info.value.key == "gpu_count"
