"""Frozen, self-validating configuration of the simulated board.

One dataclass per part: :class:`PlantConfig` (physics), :class:`FirmwareConfig` (link
behaviour) and :class:`BoardConfig` (what ``umbra-board`` is asked for, from which the other
two are derived).  A bad value raises :class:`~node.errors.ConfigError` naming its key.
Nothing here imports numba, so the CLI can validate arguments quickly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    watchdog_s: float = 3.0  # of wall time without a valid frame from the node
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
    gpus: int = 8
    rate_hz: float = 10.0
    speed: float = 1.0  # board seconds per wall second
    seed: int | None = None  # None: fresh entropy (the board logs the seed it drew)
    board_id: str = "sim-1"
    watchdog_s: float = 3.0
    demand_w: float = 500.0
    max_step_s: float = 0.1  # longest physics step, board time; frames are split finer
    poll_s: float = 0.02  # wall time between retransmit/watchdog checks

    def __post_init__(self) -> None:
        o = "BoardConfig"
        if not isinstance(self.link, Path):
            raise ConfigError(f"{o}.link: expected a Path, got {self.link!r}", key="link")
        if self.hil is not None and not isinstance(self.hil, Path):
            raise ConfigError(f"{o}.hil: expected a Path, got {self.hil!r}", key="hil")
        if self.hil is not None and self.hil == self.link:
            raise ConfigError(f"{o}.hil: must differ from link ({self.link})", key="hil")
        # Checked here as well as in the derived configs, so errors name the board's keys.
        _integer(o, "gpus", self.gpus, 1, MAX_BOARD_GPUS)
        _number(o, "rate_hz", self.rate_hz, 0.01, 1000.0)
        _number(o, "speed", self.speed, 0.0, 1e4, lo_open=True)
        _name(o, "board_id", self.board_id)
        _number(o, "watchdog_s", self.watchdog_s, 0.1, 3600.0)
        _number(o, "demand_w", self.demand_w, *POWER_RANGE_W)
        if self.seed is not None:
            _integer(o, "seed", self.seed, 0, 2**63 - 1)
        _number(o, "max_step_s", self.max_step_s, 0.0, 3600.0, lo_open=True)
        _number(o, "poll_s", self.poll_s, 0.0, 1.0, lo_open=True)
        self.plant_config()
        self.firmware_config()

    def plant_config(self) -> PlantConfig:
        return PlantConfig(gpu_count=self.gpus, demand_w=self.demand_w)

    def firmware_config(self, *, utc_at_boot: float = 0.0) -> FirmwareConfig:
        return FirmwareConfig(
            board_id=self.board_id,
            sensor_rate_hz=self.rate_hz,
            watchdog_s=self.watchdog_s,
            utc_at_boot=utc_at_boot,
        )
