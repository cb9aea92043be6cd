"""Frozen, self-validating configuration of the simulated board.

One dataclass per part: :class:`PlantConfig` (physics), :class:`FirmwareConfig` (link
behaviour) and :class:`BoardConfig` (what ``umbra-board`` is asked for, from which the other
two are derived).  A bad value raises :class:`~node.errors.ConfigError` naming its key.
Nothing here imports numba, so the CLI can validate arguments quickly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from importlib import metadata
from pathlib import Path

from node.errors import ConfigError
from node.link.messages import MAX_NAME_LEN, POWER_RANGE_W, SUPPORTED_VERSIONS

try:
    __version__ = metadata.version("umbra")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

#: Sensor.rails is a uint32 bit mask, so a board can report at most 32 rails.
MAX_BOARD_GPUS = 32
FW_VERSION = f"sim-{__version__}"


def _number(
    owner: str, key: str, value: object, lo: float, hi: float, *, lo_open: bool = False
) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{owner}.{key}: expected a finite number, got {value!r}", key=key)
    if value < lo or value > hi or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise ConfigError(f"{owner}.{key}: {value!r} outside {bracket}{lo:g}, {hi:g}]", key=key)


def _integer(owner: str, key: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{owner}.{key}: expected an integer, got {value!r}", key=key)
    if not lo <= value <= hi:
        raise ConfigError(f"{owner}.{key}: {value} outside [{lo}, {hi}]", key=key)


def _name(owner: str, key: str, value: object) -> None:
    # Same rule as the protocol's string fields, so HELLO_ACK can always carry it.
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_LEN or not value.isprintable():
        raise ConfigError(
            f"{owner}.{key}: {value!r} must be 1-{MAX_NAME_LEN} printable characters", key=key
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PlantConfig:
    """Physics of :class:`~firmware_sim.plant.FirstOrderPlant` (defaults: 8 × H100 SXM)."""

    gpu_count: int = 8
    cap_min_w: float = 200.0
    cap_max_w: float = 700.0
    demand_w: float = 500.0  # what each GPU's job would draw uncapped
    sink_c: float = 25.0  # temperature a GPU settles to at zero power
    r_k_per_w: float = 0.1  # die-to-sink thermal resistance: 700 W → 95 °C at 25 °C sink
    tau_temp_s: float = 20.0
    tau_power_s: float = 0.3  # how fast drawn power follows a new cap or demand
    idle_w: float = 75.0  # power below which a GPU does no useful work
    ref_w: float = 700.0  # power at which a GPU makes 1 progress unit per second
    work_exponent: float = 0.6  # work rate ∝ (P − idle)^0.6: the last watts buy the least
    slowdown_c: float = 87.0  # hardware thermal slowdown threshold
    slowdown_hyst_c: float = 2.0  # slowdown ends this far below the threshold
    slowdown_factor: float = 0.5  # fraction of its target power a slowed GPU draws
    solar_w: float = 2000.0
    battery_soc: float = 0.8
    radiator_gain: float = 0.6  # radiator sits this fraction of the way from sink to mean GPU
    noise_temp_c: float = 0.1  # sensor noise (standard deviation)
    noise_power_w: float = 1.0

    def __post_init__(self) -> None:
        o = "PlantConfig"
        _integer(o, "gpu_count", self.gpu_count, 1, MAX_BOARD_GPUS)
        _number(o, "cap_min_w", self.cap_min_w, *POWER_RANGE_W)
        _number(o, "cap_max_w", self.cap_max_w, *POWER_RANGE_W)
        if self.cap_min_w > self.cap_max_w:
            raise ConfigError(f"{o}.cap_min_w: exceeds cap_max_w", key="cap_min_w")
        _number(o, "demand_w", self.demand_w, *POWER_RANGE_W)
        _number(o, "sink_c", self.sink_c, -273.15, 200.0)
        _number(o, "r_k_per_w", self.r_k_per_w, 0.0, 10.0)
        _number(o, "tau_temp_s", self.tau_temp_s, 0.0, 1e5, lo_open=True)
        _number(o, "tau_power_s", self.tau_power_s, 0.0, 1e3, lo_open=True)
        _number(o, "idle_w", self.idle_w, 0.0, POWER_RANGE_W[1])
        _number(o, "ref_w", self.ref_w, self.idle_w, POWER_RANGE_W[1], lo_open=True)
        _number(o, "work_exponent", self.work_exponent, 0.0, 1.0, lo_open=True)
        _number(o, "slowdown_c", self.slowdown_c, -273.15, 500.0)
        _number(o, "slowdown_hyst_c", self.slowdown_hyst_c, 0.0, 100.0)
        _number(o, "slowdown_factor", self.slowdown_factor, 0.0, 1.0)
        _number(o, "solar_w", self.solar_w, 0.0, 1e6)
        _number(o, "battery_soc", self.battery_soc, 0.0, 1.0)
        _number(o, "radiator_gain", self.radiator_gain, 0.0, 1.0)
        _number(o, "noise_temp_c", self.noise_temp_c, 0.0, 100.0)
        _number(o, "noise_power_w", self.noise_power_w, 0.0, 1000.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class FirmwareConfig:
    """How the board firmware behaves on the link."""

    board_id: str = "sim-1"
    fw_version: str = FW_VERSION
    sensor_rate_hz: float = 10.0  # of board time
    watchdog_s: float = 1.0  # of wall time without a valid frame of a session from the node (ICD §4.3: ≤ 1 s recommended)
    heartbeat_s: float = 0.2  # wall time; only sent when nothing else was sent for this long (ICD: never silent > 0.25 s)
    retry_timeout_s: float = 0.25
    max_tries: int = 5
    utc_at_boot: float = 0.0  # UTC of board time 0 (seconds since the Unix epoch)
    min_version: int = SUPPORTED_VERSIONS[0]
    max_version: int = SUPPORTED_VERSIONS[1]

    def __post_init__(self) -> None:
        o = "FirmwareConfig"
        _name(o, "board_id", self.board_id)
        _name(o, "fw_version", self.fw_version)
        # Ranges as HELLO_ACK allows them.
        _number(o, "sensor_rate_hz", self.sensor_rate_hz, 0.01, 1000.0)
        _number(o, "watchdog_s", self.watchdog_s, 0.1, 3600.0)
        _number(o, "heartbeat_s", self.heartbeat_s, 0.01, 3600.0)
        _number(o, "retry_timeout_s", self.retry_timeout_s, 0.0, 60.0, lo_open=True)
        _integer(o, "max_tries", self.max_tries, 1, 100)
        _number(o, "utc_at_boot", self.utc_at_boot, 0.0, 1e11)
        _integer(o, "min_version", self.min_version, 1, 255)
        _integer(o, "max_version", self.max_version, self.min_version, 255)


@dataclass(frozen=True, slots=True, kw_only=True)
class BoardConfig:
    """Everything ``umbra-board`` is asked for.  Validated whole when built."""

    link: Path
    hil: Path | None = None
    #: True: ``link`` / ``hil`` name serial devices that exist (``--link-dev``), opened at
    #: ``baud``; False: ptys the board creates and publishes there.
    link_device: bool = False
    hil_device: bool = False
    baud: int = 115_200
    gpus: int = 8
    rate_hz: float = 10.0
    speed: float = 1.0  # board seconds per wall second
    seed: int | None = None  # None: fresh entropy (the board logs the seed it drew)
    board_id: str = "sim-1"
    watchdog_s: float = 1.0  # wall seconds; ICD §4.3 recommends ≤ 1 s (the 2 s rule of a blind node)
    demand_w: float = 500.0
    poll_s: float = 0.02  # wall time between retransmit/watchdog checks
    model: str = "space"  # "space" (orbital plant) or "first-order" (the foundation's stand-in)
    orbit: str = "beta0"
    #: SpaceConfig overrides (key, value), e.g. from --config FILE.toml or --set KEY=VALUE.
    plant_overrides: tuple[tuple[str, float | int], ...] = ()
    #: Scheduled HIL settings (board run time s, name, value), from the [[event]] tables.
    timeline: tuple[tuple[float, str, float | tuple[float, ...]], ...] = ()
    lockstep: bool = False
    lockstep_timeout_s: float = 1.0  # wall time the board waits for STEP_DONE
    paused: bool = False  # start with board time held (HIL time.pause / time.step_s)

    def __post_init__(self) -> None:
        o = "BoardConfig"
        if not isinstance(self.link, Path):
            raise ConfigError(f"{o}.link: expected a Path, got {self.link!r}", key="link")
        if self.hil is not None and not isinstance(self.hil, Path):
            raise ConfigError(f"{o}.hil: expected a Path, got {self.hil!r}", key="hil")
        if self.hil is not None and self.hil == self.link:
            raise ConfigError(f"{o}.hil: must differ from link ({self.link})", key="hil")
        if self.hil_device and self.hil is None:
            raise ConfigError(f"{o}.hil_device: no hil port given", key="hil")
        _integer(o, "baud", self.baud, 50, 4_000_000)
        # Checked here as well as in the derived configs, so errors name the board's keys.
        _integer(o, "gpus", self.gpus, 1, MAX_BOARD_GPUS)
        _number(o, "rate_hz", self.rate_hz, 0.01, 1000.0)
        _number(o, "speed", self.speed, 0.0, 1e4, lo_open=True)
        _name(o, "board_id", self.board_id)
        _number(o, "watchdog_s", self.watchdog_s, 0.1, 3600.0)
        _number(o, "demand_w", self.demand_w, *POWER_RANGE_W)
        if self.seed is not None:
            _integer(o, "seed", self.seed, 0, 2**63 - 1)
        _number(o, "poll_s", self.poll_s, 0.0, 1.0, lo_open=True)
        if self.model not in ("space", "first-order"):
            raise ConfigError(f"{o}.model: {self.model!r} is not space or first-order", key="model")
        if self.orbit not in ORBITS:
            raise ConfigError(
                f"{o}.orbit: {self.orbit!r} is not one of {', '.join(ORBITS)}", key="orbit"
            )
        _number(o, "lockstep_timeout_s", self.lockstep_timeout_s, 0.001, 3600.0)
        for at, name, _value in self.timeline:
            _number(o, "timeline", at, 0.0, 1e10)
            _name(o, "timeline", name)
        self.plant_config()
        self.space_config()
        self.firmware_config()

    def space_config(self) -> SpaceConfig:
        return orbit_space_config(self.orbit, gpus=self.gpus, demand_w=self.demand_w,
                                  overrides=self.plant_overrides)

    def plant_config(self) -> PlantConfig:
        return PlantConfig(gpu_count=self.gpus, demand_w=self.demand_w)

    def firmware_config(self, *, utc_at_boot: float = 0.0) -> FirmwareConfig:
        return FirmwareConfig(
            board_id=self.board_id,
            sensor_rate_hz=self.rate_hz,
            watchdog_s=self.watchdog_s,
            utc_at_boot=utc_at_boot,
        )


# --- the orbital plant -------------------------------------------------------------------

#: Orbit presets: name → (altitude km, β angle °).  docs/board-physics.md §1.
ORBITS: dict[str, tuple[float, float]] = {
    "beta0": (550.0, 0.0),  # worst-case inclined LEO: longest eclipse, 35.6 min of 95.5
    "sso-dawn-dusk": (550.0, 75.0),  # dawn-dusk SSO out of eclipse season: β > 67°, no eclipse
    "sso-eclipse-season": (550.0, 58.9),  # dawn-dusk SSO, worst day of eclipse season: 21.7 min
}
EARTH_RADIUS_KM = 6371.0


def orbit_space_config(orbit: str, *, gpus: int, demand_w: float = 500.0,
                       overrides: tuple[tuple[str, float | int], ...] = ()) -> SpaceConfig:
    """The plant ``umbra-board --orbit ORBIT --set KEY=VALUE…`` simulates (also the oracle's).

    A whole number given for an integer parameter (a scenario's ``[plant]`` values are
    floats) is taken as that integer.
    """
    altitude, beta = ORBITS[orbit]
    settings: dict[str, float | int] = {"gpu_count": gpus, "demand_w": demand_w, "altitude_km": altitude,
                                        "beta_deg": beta}
    types = {f.name: f.type for f in fields(SpaceConfig)}
    for key, value in overrides:
        if key not in types:
            raise ConfigError(f"BoardConfig.plant: unknown parameter {key!r}", key=key)
        whole = isinstance(value, float) and value.is_integer()
        settings[key] = int(value) if types[key] in ("int", int) and whole else value
    try:
        return SpaceConfig(**settings)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"BoardConfig.plant: {exc}", key="plant") from None
EARTH_MU_KM3_S2 = 398600.4418


@dataclass(frozen=True, slots=True, kw_only=True)
class SpaceConfig:
    """Physics of :class:`~firmware_sim.spaceplant.SpacePlant`.  Sources: docs/board-physics.md.

    Sizes that grow with the node (array, battery, radiator, loop) are given per GPU, so a
    4-GPU board is half an 8-GPU one; avionics do not scale.
    """

    gpu_count: int = 8
    # orbit
    altitude_km: float = 550.0
    beta_deg: float = 0.0
    phase0_deg: float = 0.0  # orbit angle at t = 0 measured from orbit noon; eclipse centred on 180°
    solar_const_w_m2: float = 1361.0
    # solar array
    array_m2_per_gpu: float = 1.8
    cell_eff: float = 0.30
    array_degradation: float = 0.0
    incidence_deg: float = 0.0
    solar_strings: int = 8
    # battery
    battery_wh_per_gpu: float = 600.0
    battery_soc0: float = 0.95
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    charge_c_rate: float = 0.5
    cells_series: int = 28
    cell_v_empty: float = 3.0
    cell_v_full: float = 4.2
    r_int_ohm: float = 0.05
    uv_cutoff_v: float = 89.6  # 3.2 V per cell
    soc_floor: float = 0.7  # 30 % depth of discharge
    # bus
    avionics_w: float = 100.0
    bus_max_w: float = 6000.0
    # GPUs
    cap_min_w: float = 200.0
    cap_max_w: float = 700.0
    demand_w: float = 500.0
    tau_power_s: float = 0.3
    idle_w: float = 75.0
    ref_w: float = 700.0
    work_exponent: float = 0.6
    slowdown_c: float = 89.0
    slowdown_hyst_c: float = 2.0
    slowdown_factor: float = 0.5
    shutdown_c: float = 92.0
    # heat
    r_die_k_per_w: float = 0.035
    tau_die_s: float = 5.0
    r_plate_k_per_w: float = 0.025
    tau_plate_s: float = 120.0
    loop_j_per_k_per_gpu: float = 8000.0
    loop_w_per_k_per_gpu: float = 100.0
    pump_fail_factor: float = 0.05
    radiator_m2_per_gpu: float = 0.5
    radiator_sides: int = 2
    emissivity: float = 0.9
    radiator_j_per_k_m2: float = 2700.0  # 3 kg/m² × 900 J/kg·K
    sink_c: float = -40.0
    init_c: float = 20.0
    # sensors and integration
    noise_temp_c: float = 0.1
    noise_power_w: float = 1.0
    step_s: float = 0.1

    def __post_init__(self) -> None:
        o = "SpaceConfig"
        _integer(o, "gpu_count", self.gpu_count, 1, 4096)
        _number(o, "altitude_km", self.altitude_km, 100.0, 40000.0)
        _number(o, "beta_deg", self.beta_deg, -90.0, 90.0)
        _number(o, "phase0_deg", self.phase0_deg, -360.0, 360.0)
        _number(o, "solar_const_w_m2", self.solar_const_w_m2, 0.0, 2000.0)
        for key in ("array_m2_per_gpu", "battery_wh_per_gpu", "radiator_m2_per_gpu"):
            _number(o, key, getattr(self, key), 0.0, 1e4, lo_open=True)
        for key in ("cell_eff", "eta_charge", "eta_discharge", "pump_fail_factor", "emissivity"):
            _number(o, key, getattr(self, key), 0.0, 1.0, lo_open=True)
        for key in ("array_degradation", "battery_soc0", "soc_floor", "slowdown_factor"):
            _number(o, key, getattr(self, key), 0.0, 1.0)
        _number(o, "incidence_deg", self.incidence_deg, 0.0, 90.0)
        _integer(o, "solar_strings", self.solar_strings, 1, 1000)
        _number(o, "charge_c_rate", self.charge_c_rate, 0.0, 10.0, lo_open=True)
        _integer(o, "cells_series", self.cells_series, 1, 1000)
        _number(o, "cell_v_empty", self.cell_v_empty, 0.0, 10.0, lo_open=True)
        _number(o, "cell_v_full", self.cell_v_full, self.cell_v_empty, 10.0)
        _number(o, "r_int_ohm", self.r_int_ohm, 0.0, 10.0)
        _number(o, "uv_cutoff_v", self.uv_cutoff_v, 0.0, 10000.0)
        _number(o, "avionics_w", self.avionics_w, 0.0, 1e5)
        _number(o, "bus_max_w", self.bus_max_w, 0.0, 1e7, lo_open=True)
        _number(o, "cap_min_w", self.cap_min_w, *POWER_RANGE_W)
        _number(o, "cap_max_w", self.cap_max_w, self.cap_min_w, POWER_RANGE_W[1])
        _number(o, "demand_w", self.demand_w, *POWER_RANGE_W)
        _number(o, "tau_power_s", self.tau_power_s, 0.0, 1e3, lo_open=True)
        _number(o, "idle_w", self.idle_w, 0.0, self.cap_min_w)
        _number(o, "ref_w", self.ref_w, self.idle_w, POWER_RANGE_W[1], lo_open=True)
        _number(o, "work_exponent", self.work_exponent, 0.0, 1.0, lo_open=True)
        _number(o, "slowdown_c", self.slowdown_c, -100.0, 500.0)
        _number(o, "slowdown_hyst_c", self.slowdown_hyst_c, 0.0, 100.0)
        _number(o, "shutdown_c", self.shutdown_c, self.slowdown_c, 500.0)
        for key in ("r_die_k_per_w", "r_plate_k_per_w", "tau_die_s", "tau_plate_s"):
            _number(o, key, getattr(self, key), 0.0, 1e5, lo_open=True)
        for key in ("loop_j_per_k_per_gpu", "loop_w_per_k_per_gpu", "radiator_j_per_k_m2"):
            _number(o, key, getattr(self, key), 0.0, 1e8, lo_open=True)
        _integer(o, "radiator_sides", self.radiator_sides, 1, 2)
        _number(o, "sink_c", self.sink_c, -273.15, 200.0)
        _number(o, "init_c", self.init_c, -100.0, 200.0)
        _number(o, "noise_temp_c", self.noise_temp_c, 0.0, 100.0)
        _number(o, "noise_power_w", self.noise_power_w, 0.0, 1000.0)
        _number(o, "step_s", self.step_s, 1e-4, 1.0)
        # Explicit plate/loop/radiator fluxes need sub-steps well inside their time constants.
        if self.step_s > 0.1 * min(self.tau_plate_s, self.radiator_tau_s(), self.loop_tau_s()):
            raise ConfigError(f"{o}.step_s: too long for the plate, loop or radiator", key="step_s")

    # --- derived quantities (docs/board-physics.md) ----------------------------------------

    @property
    def period_s(self) -> float:
        r = EARTH_RADIUS_KM + self.altitude_km
        return 2.0 * math.pi * math.sqrt(r**3 / EARTH_MU_KM3_S2)

    @property
    def eclipse_fraction(self) -> float:
        """f = (1/180°)·acos(√(h² + 2Rh) / ((R+h)·cos β)); 0 when there is no eclipse."""
        h, r = self.altitude_km, EARTH_RADIUS_KM
        c = math.cos(math.radians(self.beta_deg))
        x = math.sqrt(h * h + 2.0 * r * h) / ((r + h) * c) if c > 0 else 2.0
        return math.degrees(math.acos(x)) / 180.0 if x < 1.0 else 0.0

    @property
    def array_m2(self) -> float:
        return self.array_m2_per_gpu * self.gpu_count

    @property
    def solar_max_w(self) -> float:
        return (
            self.solar_const_w_m2 * self.array_m2 * self.cell_eff * (1.0 - self.array_degradation)
            * math.cos(math.radians(self.incidence_deg))
        )  # fmt: skip

    @property
    def battery_wh(self) -> float:
        return self.battery_wh_per_gpu * self.gpu_count

    @property
    def radiator_m2(self) -> float:
        return self.radiator_m2_per_gpu * self.gpu_count

    def radiator_tau_s(self) -> float:
        """Linearised radiator time constant at 320 K (about 200 s for the defaults)."""
        c = self.radiator_j_per_k_m2
        return c / (self.radiator_sides * 4.0 * self.emissivity * 5.670374419e-8 * 320.0**3)

    def loop_tau_s(self) -> float:
        return self.loop_j_per_k_per_gpu / self.loop_w_per_k_per_gpu

    @property
    def release_c(self) -> float:
        return self.slowdown_c - self.slowdown_hyst_c
