"""What the board is wired to: the ``Plant`` interface and a first-order implementation.

The firmware only talks to a :class:`Plant`; a full physics model (orbit, solar array,
battery, radiator) replaces :class:`FirstOrderPlant` later without touching the firmware.

:class:`FirstOrderPlant`, per GPU:

- drawn power follows ``min(cap, demand)`` (0 with the rail off) through a first-order lag
  of ``tau_power_s`` (≈ 0.3 s, the cap-settling time of the power controller);
- die temperature obeys ``dT/dt = (sink + R·P − T) / tau_temp`` (R = 0.1 K/W, tau = 20 s:
  700 W settles at 95 °C, 300 W at 55 °C with a 25 °C sink);
- at ``slowdown_c`` (87 °C) the hardware slows the GPU to ``slowdown_factor`` of its target
  power until it has cooled ``slowdown_hyst_c`` below the threshold;
- progress grows at ``((P − idle) / (ref − idle)) ** 0.6`` units per second: 1/s at 700 W;
- solar power and battery state of charge are constants (settable); the radiator sits a
  fixed fraction of the way from the sink to the mean GPU temperature.

Sensor readings (:meth:`Plant.read`) add Gaussian noise from a seeded generator, so one
seed gives one trajectory.

Parameters (:meth:`Plant.get_param` / :meth:`Plant.set_param`; per-GPU values are tuples):

================  ====  ==================================================================
name              set?  meaning
================  ====  ==================================================================
``demand_w``      yes   power each GPU's job would draw uncapped, W (float: every GPU)
``sink_c``        yes   heat-sink temperature, °C
``solar_w``       yes   solar array output, W
``battery_soc``   yes   battery state of charge, 0…1
``temp_c``        no    true die temperatures, °C (no sensor noise)
``power_w``       no    true drawn power, W
``cap_w``         no    power caps in force, W
``progress``      no    progress counters, work units
``rails``         no    rail states, 1.0 on / 0.0 off
``slowdown``      no    hardware slowdown active, 1.0 / 0.0
``radiator_c``    no    radiator temperature, °C
================  ====  ==================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from firmware_sim.config import PlantConfig
from firmware_sim.kernels import plant_step
from node.errors import CommandRejected
from node.link.messages import POWER_RANGE_W, AckStatus

ParamValue = float | tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of the board's sensors (with their noise), ready for a SENSOR frame."""

    temp_c: tuple[float, ...]
    power_w: tuple[float, ...]
    cap_w: tuple[float, ...]
    progress: tuple[float, ...]
    rails: int  # bit i set: GPU i's rail is on
    solar_w: float
    battery_soc: float
    radiator_c: float
    eclipse: bool = False
    hw_slowdown: bool = False
    # Optional SENSOR fields (docs/ICD.md §4.4); -1 / empty / defaults: not reported.
    battery_wh: float = -1.0
    battery_capacity_wh: float = -1.0
    bus_v: float = -1.0
    avionics_w: float = -1.0
    orbit_period_s: float = -1.0
    eclipse_in_s: float = -1.0
    sun_in_s: float = -1.0
    xid: tuple[int, ...] = ()
    gpu_ok: int = 0xFFFF_FFFF
    slowdown: int = 0
    saved: tuple[float, ...] = ()
    ckpt: int = 0


@runtime_checkable
class Plant(Protocol):
    """The hardware behind the board: GPUs, power system, radiator."""

    @property
    def gpu_count(self) -> int: ...

    @property
    def cap_range_w(self) -> tuple[float, float]: ...

    @property
    def temp_c(self) -> npt.NDArray[np.float64]:
        """True die temperatures (read-only view)."""
        ...

    @property
    def power_w(self) -> npt.NDArray[np.float64]: ...

    @property
    def cap_w(self) -> npt.NDArray[np.float64]: ...

    @property
    def progress(self) -> npt.NDArray[np.float64]: ...

    @property
    def rail_on(self) -> npt.NDArray[np.bool_]: ...

    @property
    def keeps_checkpoints(self) -> bool:
        """Jobs with checkpoints (CHECKPOINT/RESTORE, SENSOR saved): declared in HELLO_ACK."""
        ...

    def step(self, dt: float) -> None:
        """Advance the physics by ``dt`` seconds of board time."""
        ...

    def read(self) -> Reading:
        """Sample the sensors now."""
        ...

    def set_caps(self, cap_w: Sequence[float]) -> None:
        """Apply one cap per GPU; raises CommandRejected(BAD_ARGUMENT) on a bad vector."""
        ...

    def set_rail(self, gpu: int, on: bool) -> None: ...

    def start_checkpoint(self, gpu: int, pause_s: float) -> None:
        """CHECKPOINT (ICD §4.6.2); CommandRejected(UNSUPPORTED) from a plant without jobs."""
        ...

    def restore(self, gpu: int, progress: float) -> None:
        """RESTORE (ICD §4.6.2); CommandRejected(UNSUPPORTED) from a plant without jobs."""
        ...

    def reboot(self) -> None:
        """Board reset: what the GPUs lose when the board restarts."""
        ...

    def get_param(self, name: str) -> ParamValue:
        """A named value; raises CommandRejected(BAD_ARGUMENT) for unknown names."""
        ...

    def set_param(self, name: str, value: ParamValue) -> None:
        """Change a settable parameter; raises CommandRejected(BAD_ARGUMENT) when refused."""
        ...

    def param_names(self) -> tuple[str, ...]: ...


def bad_argument(message: str) -> CommandRejected:
    return CommandRejected(message, code=AckStatus.BAD_ARGUMENT)


_A = TypeVar("_A", bound=np.ndarray)


def readonly_view(array: _A) -> _A:
    view = array.view()
    view.flags.writeable = False
    return view


def checked_number(name: str, value: ParamValue, lo: float, hi: float) -> float:
    """One finite number within [lo, hi], or BAD_ARGUMENT naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, float | int):
        raise bad_argument(f"{name}: expected one number, got {value!r}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise bad_argument(f"{name}: {value!r} outside [{lo:g}, {hi:g}]")
    return float(value)


def checked_caps(cap_w: Sequence[float], gpu_count: int, lo: float, hi: float) -> Sequence[float]:
    """SET_CAPS's vector, or BAD_ARGUMENT: one cap per GPU, each within the hardware range."""
    if len(cap_w) != gpu_count:
        raise bad_argument(f"{len(cap_w)} caps for {gpu_count} GPUs")
    for i, cap in enumerate(cap_w):
        if not lo <= cap <= hi:  # NaN fails this too
            raise bad_argument(f"cap {i} = {cap} W outside [{lo:g}, {hi:g}] W")
    return cap_w


def checked_demand(value: ParamValue, gpu_count: int) -> tuple[float, ...]:
    """HIL ``demand_w``: one number for every GPU or one per GPU, each a valid power."""
    values = value if isinstance(value, tuple) else (value,) * gpu_count
    if len(values) != gpu_count:
        raise bad_argument(f"demand_w: need one float or {gpu_count} floats")
    lo, hi = POWER_RANGE_W
    for v in values:
        if isinstance(v, bool) or not isinstance(v, float | int) or not lo <= v <= hi:
            raise bad_argument(f"demand_w: {v!r} outside [{lo:g}, {hi:g}] W")
    return values


class ParamTable:
    """Named values of a plant for the HIL port: getters, and setters for the settable ones.

    Plants fill ``_getters`` and ``_setters`` in their constructor; this gives them the
    Plant protocol's ``get_param`` / ``set_param`` / ``param_names``.
    """

    _getters: dict[str, Callable[[], ParamValue]]
    _setters: dict[str, Callable[[ParamValue], None]]

    def get_param(self, name: str) -> ParamValue:
        getter = self._getters.get(name)
        if getter is None:
            raise bad_argument(f"unknown parameter {name!r}")
        return getter()

    def set_param(self, name: str, value: ParamValue) -> None:
        setter = self._setters.get(name)
        if setter is None:
            what = "read-only" if name in self._getters else "unknown"
            raise bad_argument(f"{what} parameter {name!r}")
        setter(value)

    def param_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self._getters, *self._setters)))


class FirstOrderPlant(ParamTable):
    """First-order GPU power and thermal model behind the :class:`Plant` interface."""

    keeps_checkpoints = False

    def __init__(self, *, config: PlantConfig | None = None, seed: int | None = None) -> None:
        self.config = cfg = config if config is not None else PlantConfig()
        n = cfg.gpu_count
        self._rng = np.random.default_rng(seed)
        self._cap = np.full(n, cfg.cap_max_w)  # the hardware's own default until told
        self._demand = np.full(n, cfg.demand_w)
        self._rail = np.ones(n, dtype=np.bool_)
        self._temp = np.full(n, cfg.sink_c)  # a cold board
        self._power = np.zeros(n)
        self._progress = np.zeros(n)
        self._slowed = np.zeros(n, dtype=np.bool_)
        self._noise = np.empty(n)
        self._sink_c = cfg.sink_c
        self._solar_w = cfg.solar_w
        self._battery_soc = cfg.battery_soc
        self._temp_view = readonly_view(self._temp)
        self._power_view = readonly_view(self._power)
        self._cap_view = readonly_view(self._cap)
        self._progress_view = readonly_view(self._progress)
        self._rail_view = readonly_view(self._rail)
        self._getters: dict[str, Callable[[], ParamValue]] = {
            "demand_w": lambda: tuple(self._demand.tolist()),
            "sink_c": lambda: self._sink_c,
            "solar_w": lambda: self._solar_w,
            "battery_soc": lambda: self._battery_soc,
            "temp_c": lambda: tuple(self._temp.tolist()),
            "power_w": lambda: tuple(self._power.tolist()),
            "cap_w": lambda: tuple(self._cap.tolist()),
            "progress": lambda: tuple(self._progress.tolist()),
            "rails": lambda: tuple(self._rail.astype(np.float64).tolist()),
            "slowdown": lambda: tuple(self._slowed.astype(np.float64).tolist()),
            "radiator_c": self._radiator_c,
        }
        self._setters: dict[str, Callable[[ParamValue], None]] = {
            "demand_w": self._set_demand,
            "sink_c": self._scalar_setter("sink_c", -273.15, 200.0),
            "solar_w": self._scalar_setter("solar_w", 0.0, 1e6),
            "battery_soc": self._scalar_setter("battery_soc", 0.0, 1.0),
        }
        # Compile (or load from cache) now, not on the board's first clock tick.
        self.step(0.0)

    # --- Plant interface ------------------------------------------------------------------

    @property
    def gpu_count(self) -> int:
        return self.config.gpu_count

    @property
    def cap_range_w(self) -> tuple[float, float]:
        return self.config.cap_min_w, self.config.cap_max_w

    @property
    def temp_c(self) -> npt.NDArray[np.float64]:
        return self._temp_view

    @property
    def power_w(self) -> npt.NDArray[np.float64]:
        return self._power_view

    @property
    def cap_w(self) -> npt.NDArray[np.float64]:
        return self._cap_view

    @property
    def progress(self) -> npt.NDArray[np.float64]:
        return self._progress_view

    @property
    def rail_on(self) -> npt.NDArray[np.bool_]:
        return self._rail_view

    def step(self, dt: float) -> None:
        c = self.config
        plant_step(
            float(dt), c.tau_power_s, c.tau_temp_s, c.r_k_per_w, self._sink_c, c.idle_w,
            c.ref_w, c.work_exponent, c.slowdown_c, c.slowdown_c - c.slowdown_hyst_c,
            c.slowdown_factor, self._cap, self._demand, self._rail, self._temp, self._power,
            self._progress, self._slowed,
        )  # fmt: skip

    def read(self) -> Reading:
        c = self.config
        self._rng.standard_normal(out=self._noise)
        temp = self._temp + c.noise_temp_c * self._noise
        self._rng.standard_normal(out=self._noise)
        # A power sensor never reads below zero.
        power = np.maximum(self._power + c.noise_power_w * self._noise, 0.0)
        return Reading(
            temp_c=tuple(temp.tolist()),
            power_w=tuple(power.tolist()),
            cap_w=tuple(self._cap.tolist()),
            progress=tuple(self._progress.tolist()),
            rails=sum(1 << i for i, on in enumerate(self._rail.tolist()) if on),
            solar_w=self._solar_w,
            battery_soc=self._battery_soc,
            radiator_c=self._radiator_c(),
            hw_slowdown=bool(self._slowed.any()),
        )

    def set_caps(self, cap_w: Sequence[float]) -> None:
        self._cap[:] = checked_caps(cap_w, self.gpu_count, *self.cap_range_w)

    def set_rail(self, gpu: int, on: bool) -> None:
        if not 0 <= gpu < self.gpu_count:
            raise bad_argument(f"no GPU {gpu} (board has {self.gpu_count})")
        self._rail[gpu] = bool(on)


    # --- helpers --------------------------------------------------------------------------

    def start_checkpoint(self, gpu: int, pause_s: float) -> None:
        raise CommandRejected("this plant keeps no checkpoints", code=AckStatus.UNSUPPORTED)

    def restore(self, gpu: int, progress: float) -> None:
        raise CommandRejected("this plant keeps no checkpoints", code=AckStatus.UNSUPPORTED)

    def reboot(self) -> None:
        """Nothing to lose: the first-order plant runs no jobs."""

    def _radiator_c(self) -> float:
        return self._sink_c + self.config.radiator_gain * (float(self._temp.mean()) - self._sink_c)

    def _set_demand(self, value: ParamValue) -> None:
        self._demand[:] = checked_demand(value, self.gpu_count)

    def _scalar_setter(self, name: str, lo: float, hi: float) -> Callable[[ParamValue], None]:
        def setter(value: ParamValue) -> None:
            setattr(self, f"_{name}", checked_number(name, value, lo, hi))

        return setter
