"""Configuration of the GPU backend (``[gpu]``) and of the lab platform profile (``[platform]``).

Both are frozen dataclasses with only ``str``/``int``/``float`` fields, validated on
construction with errors that name the key, so ``node.config``'s section builder can read
them from TOML like every other section::

    [gpu]
    backend = "nvml"            # "serial" (the board simulates/owns the GPUs), "nvml", "fake-nvml"
    sample_rate_hz = 2.0        # NVML sampling when no serial board sets the pace
    gpus = ""                   # NVML indices to control, e.g. "0,2"; "" = all
    caps = "apply"              # "apply": set power limits; "observe": read only
    on_exit = "min"             # power limit left behind on exit: "min", "default", "keep"
    board_id = "nvml"

    [platform]                  # used only with backend nvml/fake-nvml and no serial port
    solar_w = 1000.0
    battery_soc = 0.8
    radiator_c = 20.0
    eclipse = 0                 # 1: report the ECLIPSE flag
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from node.errors import ConfigError

BACKENDS = ("serial", "nvml", "fake-nvml")


def _range(key: str, value: float, lo: float, hi: float) -> None:
    if (isinstance(value, float) and math.isnan(value)) or not lo <= value <= hi:
        raise ConfigError(f"{key} = {value!r} is outside [{lo}, {hi}]", key=key)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} = {value!r}: choose one of {', '.join(choices)}", key=key)


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuConfig:
    backend: str = "serial"
    sample_rate_hz: float = 2.0
    gpus: str = ""
    caps: str = "apply"
    on_exit: str = "min"
    board_id: str = "nvml"

    def __post_init__(self) -> None:
        _choice("gpu.backend", self.backend, BACKENDS)
        _range("gpu.sample_rate_hz", self.sample_rate_hz, 0.1, 100.0)
        _choice("gpu.caps", self.caps, ("apply", "observe"))
        _choice("gpu.on_exit", self.on_exit, ("min", "default", "keep"))
        if not 1 <= len(self.board_id) <= 32 or not self.board_id.isprintable():
            raise ConfigError("gpu.board_id: use 1-32 printable characters", key="gpu.board_id")
        self.gpu_indices()  # validates

    def gpu_indices(self) -> tuple[int, ...] | None:
        """The selected NVML indices, or None for every GPU."""
        if not self.gpus.strip():
            return None
        try:
            indices = tuple(int(part) for part in self.gpus.split(","))
        except ValueError:
            raise ConfigError(
                f"gpu.gpus = {self.gpus!r}: expected comma-separated GPU indices such as \"0,1\"",
                key="gpu.gpus",
            ) from None
        if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
            raise ConfigError(f"gpu.gpus = {self.gpus!r}: indices must be distinct and >= 0", key="gpu.gpus")
        return indices


@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformProfile:
    """Fixed platform values for a lab machine with no board: what NVML cannot know."""

    solar_w: float = 1000.0
    battery_soc: float = 0.8
    radiator_c: float = 20.0
    eclipse: int = 0

    def __post_init__(self) -> None:
        _range("platform.solar_w", self.solar_w, 0.0, 1e6)
        _range("platform.battery_soc", self.battery_soc, 0.0, 1.0)
        _range("platform.radiator_c", self.radiator_c, -273.15, 500.0)
        _range("platform.eclipse", self.eclipse, 0, 1)
