"""The orbital plant: kernel against its NumPy reference, and the physics the issue asks for."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from firmware_sim import physics as ph
from firmware_sim.config import ORBITS, BoardConfig, SpaceConfig
from firmware_sim.plant import Plant
from firmware_sim.spaceplant import SpacePlant, work_envelope, work_rate
from node.errors import CommandRejected, ConfigError

JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0")
pytestmark = pytest.mark.kernels


def plant(orbit: str = "beta0", **kw: float | int) -> SpacePlant:
    alt, beta = ORBITS[orbit]
    settings: dict[str, float | int] = {"altitude_km": alt, "beta_deg": beta, **kw}
    return SpacePlant(config=SpaceConfig(**settings), seed=1)  # type: ignore[arg-type]


def test_is_a_plant_and_kernel_compiled_unless_jit_disabled() -> None:
    p = plant()
    assert isinstance(p, Plant)
    if JIT:
        assert ph.space_step.signatures
    else:
        assert not hasattr(ph.space_step, "signatures")


@pytest.mark.parametrize("case", range(6))
def test_kernel_matches_numpy_reference(case: int) -> None:
    rng = np.random.default_rng(case)
    n = int(rng.integers(1, 9))
    p = plant(gpu_count=n, beta_deg=float(rng.uniform(0, 60)), phase0_deg=float(rng.uniform(0, 360)),
              battery_soc0=float(rng.uniform(0.3, 1.0)))
    p.g[ph.G_DEMAND] = rng.uniform(0, 900, n)
    p.g[ph.G_CAP] = rng.uniform(200, 700, n)
    p.g[ph.G_RAIL] = rng.random(n) < 0.8
    p.g[ph.G_DIE] = rng.uniform(20, 95, n)
    p.g[ph.G_SLOWED] = rng.random(n) < 0.3
    p.p[ph.P_SINK_C] = float(rng.uniform(-100, 40))
    s_ref, g_ref = p.s.copy(), p.g.copy()
    for dt in (0.05, 1.0, 37.3, 600.0):
        ph.space_step(dt, p.p, p.s, p.g)
        ph.space_step_ref(dt, p.p, s_ref, g_ref)
    np.testing.assert_allclose(p.s, s_ref, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(p.g, g_ref, rtol=1e-9, atol=1e-6)


def test_die_integration_is_stable_for_a_stiff_die() -> None:
    # A die time constant far below the sub-step: the exact exponential stays bounded and
    # lands on the analytic die-over-plate rise.
    p = plant("sso-dawn-dusk", tau_die_s=0.001, step_s=0.1, demand_w=600.0)
    for _ in range(200):
        p.step(0.1)
        die = p.g[ph.G_DIE]
        assert np.all(np.isfinite(die)) and np.all(die < 150)
    rise = p.g[ph.G_DIE] - p.g[ph.G_PLATE]
    np.testing.assert_allclose(rise, 0.035 * p.g[ph.G_POWER], rtol=0.02)


def test_one_long_step_matches_many_short_ones() -> None:
    a, b = plant(demand_w=450.0), plant(demand_w=450.0)
    a.step(600.0)
    for _ in range(6000):
        b.step(0.1)
    np.testing.assert_allclose(a.g[ph.G_DIE], b.g[ph.G_DIE], atol=1e-6)
    assert a.s[ph.S_EBATT] == pytest.approx(b.s[ph.S_EBATT], rel=1e-9)


def test_energy_balance_closes_over_an_orbit() -> None:
    p = plant(demand_w=400.0)
    p.step(p.config.period_s)
    t = p.truth()
    electric_in = t["energy_solar_j"]
    electric_out = (t["energy_stored_j"] + t["energy_gpu_j"] + t["energy_avionics_j"]
                    + t["energy_loss_j"] - t["energy_unserved_j"])
    assert electric_in > 1e7
    assert abs(electric_in - electric_out) < 0.01 * electric_in
    # Heat: everything the GPUs and avionics dissipated is stored or radiated.
    p2 = plant(demand_w=400.0)
    h0 = p2.stored_heat_j()
    p2.step(p2.config.period_s)
    t2 = p2.truth()
    dissipated = t2["energy_gpu_j"] + t2["energy_avionics_j"]
    stored = p2.stored_heat_j() - h0
    assert abs(dissipated - (stored + t2["energy_radiated_j"])) < 0.01 * dissipated


@pytest.mark.parametrize("orbit", ["beta0", "sso-eclipse-season", "sso-dawn-dusk"])
def test_eclipse_timing_matches_the_formula(orbit: str) -> None:
    p = plant(orbit, demand_w=0.0)
    c = p.config
    h, r = c.altitude_km, 6371.0
    x = math.sqrt(h * h + 2 * r * h) / ((r + h) * math.cos(math.radians(c.beta_deg)))
    f = math.degrees(math.acos(x)) / 180.0 if x < 1 else 0.0
    period = 2 * math.pi * math.sqrt((r + h) ** 3 / 398600.4418)
    dark = 0.0
    first_entry = None
    predicted = p.eclipse_times()[0]
    dt = 1.0
    for k in range(int(period)):
        p.step(dt)
        if p.s[ph.S_LIT] < 0.5:
            dark += dt
            if first_entry is None:
                first_entry = k * dt
    assert dark == pytest.approx(f * period, abs=2.0)
    if f > 0:
        assert first_entry == pytest.approx(predicted, abs=2.0)
        assert first_entry == pytest.approx((0.5 - f / 2) * period, abs=2.0)
    else:
        assert predicted == -1.0
    if orbit == "beta0":
        assert f * period / 60 == pytest.approx(35.6, abs=0.1)
        assert period / 60 == pytest.approx(95.5, abs=0.2)
    if orbit == "sso-eclipse-season":
        assert f * period / 60 == pytest.approx(21.7, abs=0.1)


def test_radiator_and_die_steady_state_match_the_analytic_values() -> None:
    p = plant("sso-dawn-dusk", demand_w=300.0, step_s=1.0)  # the die is exact at any step
    p.step(40000.0)
    c = p.config
    q = c.gpu_count * 300.0 + c.avionics_w
    area = c.radiator_m2 * c.radiator_sides
    sink_k = c.sink_c + 273.15
    t_rad = (q / (c.emissivity * ph.SIGMA * area) + sink_k**4) ** 0.25 - 273.15
    assert p.s[ph.S_RAD] == pytest.approx(t_rad, abs=0.05)
    t_loop = t_rad + q / (c.loop_w_per_k_per_gpu * c.gpu_count)
    assert p.s[ph.S_LOOP] == pytest.approx(t_loop, abs=0.05)
    die = t_loop + 300.0 * (c.r_plate_k_per_w + c.r_die_k_per_w)
    np.testing.assert_allclose(p.g[ph.G_DIE], die, atol=0.05)


def test_sizing_makes_the_controllers_job_meaningful() -> None:
    c = SpaceConfig()
    assert c.gpu_count == 8 and (c.cap_min_w, c.cap_max_w) == (200.0, 700.0)
    # Radiator too small for every GPU at full power: the steady die is past shutdown.
    q = c.gpu_count * c.cap_max_w + c.avionics_w
    t_rad = (q / (c.emissivity * ph.SIGMA * c.radiator_m2 * 2) + (c.sink_c + 273.15) ** 4) ** 0.25 - 273.15
    die = t_rad + q / (c.loop_w_per_k_per_gpu * 8) + c.cap_max_w * (c.r_plate_k_per_w + c.r_die_k_per_w)
    assert die > c.shutdown_c
    # Full power through the longest eclipse drains the battery below its floor.
    eclipse_h = c.eclipse_fraction * c.period_s / 3600
    need_wh = q * eclipse_h / c.eta_discharge
    assert need_wh > (1 - c.soc_floor) * c.battery_wh
    # Array ≈ 2× an orbit-average load of about 3 kW (Fortescue's rule).
    assert 1.7 < c.solar_max_w / 3000.0 < 2.3


def test_full_power_through_eclipse_drops_below_the_floor_in_simulation() -> None:
    p = plant(demand_w=700.0, battery_soc0=1.0, phase0_deg=180.0 - 67.0)  # at eclipse entry
    p.set_param("fault.radiator", 0.0)
    p.step(35.5 * 60)
    t = p.truth()
    assert t["soc_min"] < p.config.soc_floor
    assert t["below_floor_s"] > 0


def test_slowdown_and_shutdown_at_their_thresholds_lose_exactly_the_unsaved_work() -> None:
    p = plant("sso-dawn-dusk", gpu_count=2, demand_w=700.0, sink_c=60.0, init_c=30.0)
    p.set_param("fault.pump", 1.0)  # the heat stays in the loop: the dies climb past 92 °C
    p.step(10.0)
    p.checkpoint()
    saved = p.g[ph.G_SAVED].copy()
    slowdowns = releases = 0
    shut = None
    for _ in range(200000):
        die_before, was_slowed = p.g[ph.G_DIE, 0], p.g[ph.G_SLOWED, 0] > 0.5
        before = p.g[ph.G_PROG].copy()
        p.step(0.1)
        die, slowed = p.g[ph.G_DIE, 0], p.g[ph.G_SLOWED, 0] > 0.5
        if slowed and not was_slowed:
            slowdowns += 1
            assert die_before < 89.0 <= die
        if was_slowed and not slowed:
            releases += 1
            assert die < 87.0
        if p.g[ph.G_ALIVE, 0] < 0.5:
            shut = (die_before, die, before)
            break
    assert slowdowns >= 1 and shut is not None
    assert shut[0] < 92.0 <= shut[1]
    assert p.g[ph.G_PROG, 0] == saved[0]
    # Lost = exactly what was done since the checkpoint, up to the tripping sub-step.
    assert shut[2][0] - saved[0] <= p.g[ph.G_LOST, 0] <= shut[2][0] - saved[0] + 0.1
    assert p.g[ph.G_SHUTDOWNS, 0] == 1.0 and p.g[ph.G_XID, 0] == 1.0
    assert p.truth()["slowdown_s"] > 0 and p.truth()["shutdowns"] >= 1
    # Dropped out until a reset: no power, no progress; a rail cycle brings it back.
    p.step(10.0)
    assert p.g[ph.G_POWER, 0] < 1.0 and p.g[ph.G_PROG, 0] == saved[0]
    p.set_rail(0, False)
    p.set_rail(0, True)
    assert p.g[ph.G_ALIVE, 0] == 1.0


def test_slowdown_halves_the_target_power() -> None:
    runs = []
    for slowed in (0.0, 1.0):
        p = plant("sso-dawn-dusk", gpu_count=1, demand_w=600.0)
        p.g[ph.G_POWER, 0] = 600.0
        p.g[ph.G_DIE, 0] = p.g[ph.G_PLATE, 0] = 88.0  # inside the hysteresis band
        p.g[ph.G_SLOWED, 0] = slowed
        p.step(0.2)
        runs.append(p.g[ph.G_POWER, 0])
    assert runs[0] == pytest.approx(600.0)
    assert runs[1] == pytest.approx(300.0 + 300.0 * math.exp(-0.2 / 0.3))


def test_undervoltage_sheds_the_rails_and_their_work() -> None:
    p = plant(demand_w=700.0, phase0_deg=180.0)  # mid-eclipse
    p.set_param("battery_soc", 0.12)
    p.step(5.0)
    assert p.truth()["uv_trips"] == 1.0
    assert not p.rail_on.any()
    assert p.truth()["work_lost"] > 0
    assert np.all(p.g[ph.G_PROG] == 0.0)


def test_seu_crashes_the_job_and_counts_xid() -> None:
    p = plant(demand_w=500.0)
    p.step(20.0)
    p.checkpoint([3])
    p.step(20.0)
    done = p.g[ph.G_PROG, 3] - p.g[ph.G_SAVED, 3]
    p.set_param("fault.seu", 3.0)
    assert p.g[ph.G_XID, 3] == 1 and p.g[ph.G_ECC, 3] == 1
    assert p.g[ph.G_LOST, 3] == pytest.approx(done)
    p.set_param("fault.seu_rate_hz", 0.05)
    p.step(200.0)
    assert p.seu_count > 10


def test_same_seed_same_trajectory_and_different_seed_differs() -> None:
    def run(seed: int) -> list[object]:
        p = SpacePlant(config=SpaceConfig(), seed=seed)
        p.set_param("fault.seu_rate_hz", 0.01)
        p.set_param("fault.sensor.2", (4.0, 0.5))
        out: list[object] = []
        for _ in range(300):
            p.step(1.0)
            out.append(p.read())
        return out

    a, b, c = run(5), run(5), run(6)
    assert repr(a) == repr(b)
    assert repr(a) != repr(c)


def test_work_is_concave_and_the_bound_holds() -> None:
    assert work_rate(700.0, 75.0, 700.0, 0.6) == pytest.approx(1.0)
    assert work_rate(50.0, 75.0, 700.0, 0.6) == 0.0
    # The envelope is concave and above the rate everywhere.
    ps = np.linspace(0, 700, 141)
    env = np.array([work_envelope(x, 75.0, 700.0, 0.6) for x in ps])
    assert np.all(env >= [work_rate(x, 75.0, 700.0, 0.6) - 1e-12 for x in ps])
    assert np.all(np.diff(env, 2) <= 1e-9)
    for demand in (250.0, 450.0, 700.0):
        p = plant(demand_w=demand, step_s=1.0)
        p.step(2 * p.config.period_s)
        t = p.truth()
        assert 0 < t["work_done"] <= t["work_bound"]


def test_params_refuse_bad_values_and_read_only_names() -> None:
    p = plant()
    for name, value in [("fault.radiator", 2.0), ("temp_c", 1.0), ("nope", 1.0),
                        ("fault.sensor.0", 9.0), ("demand_w", (1.0,))]:
        with pytest.raises(CommandRejected):
            p.set_param(name, value)
    assert "truth.work_bound" in p.param_names()


def test_board_config_names_bad_keys() -> None:
    with pytest.raises(ConfigError) as info:
        BoardConfig(link=__import__("pathlib").Path("/tmp/x"), plant_overrides=(("nope", 1.0),))
    assert info.value.key == "nope"
    with pytest.raises(ConfigError) as info:
        BoardConfig(link=__import__("pathlib").Path("/tmp/x"), orbit="geo")
    assert info.value.key == "orbit"


def test_cli_reads_orbit_toml_set_and_timeline(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    from firmware_sim.cli import build_parser, config_from_args

    toml = Path(tmp_path) / "board.toml"
    toml.write_text(
        '[board]\nspeed = 30.0\norbit = "sso-eclipse-season"\n'
        "[plant]\nsink_c = -60.0\nbattery_wh_per_gpu = 500.0\n"
        '[[event]]\nat_s = 100.0\nname = "fault.pump"\nvalue = 1.0\n'
    )
    args = build_parser().parse_args(
        ["--link", str(Path(tmp_path) / "l"), "--config", str(toml), "--set", "sink_c=-70", "--gpus", "4"]
    )
    cfg = config_from_args(args)
    space = cfg.space_config()
    assert cfg.speed == 30.0 and cfg.orbit == "sso-eclipse-season" and cfg.gpus == 4
    assert space.sink_c == -70.0 and space.battery_wh_per_gpu == 500.0 and space.beta_deg == 58.9
    assert cfg.timeline == ((100.0, "fault.pump", 1.0),)
    # A flag given at its default value still wins over the file.
    toml.write_text("[board]\ngpus = 4\nspeed = 30.0\n")
    args = build_parser().parse_args(["--link", "x", "--config", str(toml), "--gpus", "8", "--speed", "1"])
    cfg = config_from_args(args)
    assert cfg.gpus == 8 and cfg.speed == 1.0 and cfg.rate_hz == 10.0
    args = build_parser().parse_args(["--link", "x", "--orbit", "beta0", "--set", "nope=1"])
    with pytest.raises(ConfigError):
        config_from_args(args)
