"""Fault detection, isolation and recovery as data.

A *monitor* watches one channel (per GPU or node-wide) against yellow and red limits; a
level holds only after ``persistence`` frames in a row, and clears the same way.  Each
level is bound to an action the controller carries out:

========== ==============================================================================
event      report it (yellow: WARNING, red: ERROR)
throttle   hold the GPU (or every GPU, for node-wide channels) at its minimum cap
rail_cycle switch the GPU's rail off and on again (an Xid: the GPU needs a reset)
checkpoint ask the job manager to checkpoint now
safe       enter SAFE (a critical fault); SAFE is left when the monitor is green again
========== ==============================================================================

Defaults below; the node's TOML overrides any field by monitor name (``[fdir.gpu_temp]
red_hi = 88.0``) or adds monitors.  Link loss is not a monitor: the link layer reports it
and the mode table sends the node to SAFE within a second.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from node.errors import ConfigError


class Level(enum.IntEnum):
    GREEN = 0
    YELLOW = 1
    RED = 2


class Action(enum.StrEnum):
    NONE = "none"
    EVENT = "event"
    THROTTLE = "throttle"
    RAIL_CYCLE = "rail_cycle"
    CHECKPOINT = "checkpoint"
    SAFE = "safe"


#: Channels a monitor can watch; the controller supplies their values each frame.
CHANNELS = {
    "gpu.temp_c": "per-GPU die temperature estimate, °C",
    "gpu.xid": "per-GPU new Xid errors since the last frame (counts)",
    "gpu.sensor_fault": "per-GPU temperature sensor fault flags (nonzero: faulty)",
    "battery.soc": "battery state of charge, 0–1",
    "radiator.temp_c": "radiator temperature, °C",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorSpec:
    name: str
    channel: str
    yellow_hi: float = math.inf
    red_hi: float = math.inf
    yellow_lo: float = -math.inf
    red_lo: float = -math.inf
    persistence: int = 3
    yellow_action: Action = Action.EVENT
    red_action: Action = Action.EVENT
    description: str = ""

    def __post_init__(self) -> None:
        key = f"fdir.{self.name}"
        if self.channel not in CHANNELS:
            raise ConfigError(f"{key}.channel = {self.channel!r}: use one of {', '.join(CHANNELS)}", key=f"{key}.channel")
        if not self.red_lo <= self.yellow_lo <= self.yellow_hi <= self.red_hi:
            raise ConfigError(f"{key}: need red_lo <= yellow_lo <= yellow_hi <= red_hi", key=key)
        if not 1 <= self.persistence <= 10_000:
            raise ConfigError(f"{key}.persistence = {self.persistence} outside [1, 10000]", key=f"{key}.persistence")

    def level_of(self, value: float) -> Level:
        if math.isnan(value):
            return Level.GREEN  # missing data is the estimator's business, not a limit's
        if value >= self.red_hi or value <= self.red_lo:
            return Level.RED
        if value >= self.yellow_hi or value <= self.yellow_lo:
            return Level.YELLOW
        return Level.GREEN

    def action(self, level: Level) -> Action:
        return {Level.GREEN: Action.NONE, Level.YELLOW: self.yellow_action, Level.RED: self.red_action}[level]


DEFAULT_MONITORS: tuple[MonitorSpec, ...] = (
    MonitorSpec(
        name="gpu_temp", channel="gpu.temp_c", yellow_hi=87.0, red_hi=88.5, persistence=3,
        yellow_action=Action.EVENT, red_action=Action.THROTTLE,
        description="die temperature near hardware slowdown (87–89 °C on H100-class parts)",
    ),
    MonitorSpec(
        name="gpu_xid", channel="gpu.xid", yellow_hi=1.0, red_hi=1.0, persistence=1,
        red_action=Action.RAIL_CYCLE, description="an Xid error (radiation upset): reset the GPU",
    ),
    MonitorSpec(
        name="sensor_fault", channel="gpu.sensor_fault", yellow_hi=1.0, red_hi=math.inf, persistence=1,
        yellow_action=Action.EVENT, description="temperature sensor faulty; the estimate stands in",
    ),
    MonitorSpec(
        name="battery_low", channel="battery.soc", yellow_lo=0.73, red_lo=0.70, persistence=5,
        yellow_action=Action.CHECKPOINT, red_action=Action.SAFE,
        description="battery approaching its floor (state of charge 0.70: 30 % depth of discharge)",
    ),
    MonitorSpec(
        name="radiator_high", channel="radiator.temp_c", yellow_hi=65.0, red_hi=75.0, persistence=5,
        yellow_action=Action.EVENT, red_action=Action.THROTTLE,
        description="radiator near the top of its range: heat is not leaving",
    ),
)  # fmt: skip


def monitors_from_mapping(raw: Mapping[str, Any], *, source: str = "<config>") -> tuple[MonitorSpec, ...]:
    """Defaults, overridden or extended by ``[fdir.<name>]`` tables."""
    specs = {m.name: m for m in DEFAULT_MONITORS}
    fields = {f.name: f for f in dataclasses.fields(MonitorSpec)}
    for name, table in raw.items():
        key = f"fdir.{name}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: {key} must be a table", key=key, source=source)
        changes: dict[str, Any] = {}
        for k, v in table.items():
            if k not in fields or k == "name":
                raise ConfigError(f"{source}: unknown key {key}.{k}", key=f"{key}.{k}", source=source)
            try:
                if k.endswith("_action"):
                    v = Action(v)
                elif k == "persistence":
                    if isinstance(v, bool) or not isinstance(v, int):
                        raise TypeError
                elif k in ("channel", "description"):
                    if not isinstance(v, str):
                        raise TypeError
                else:
                    if isinstance(v, bool) or not isinstance(v, int | float):
                        raise TypeError
                    v = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: {key}.{k} = {v!r} has the wrong type or value", key=f"{key}.{k}",
                                  source=source) from None
            changes[k] = v
        try:
            if name in specs:
                specs[name] = dataclasses.replace(specs[name], **changes)
            else:
                # A new monitor with only red limits has no separate yellow band.
                changes.setdefault("yellow_hi", changes.get("red_hi", math.inf))
                changes.setdefault("yellow_lo", changes.get("red_lo", -math.inf))
                specs[name] = MonitorSpec(name=name, **changes)
        except TypeError as exc:
            raise ConfigError(f"{source}: {key}: {exc}", key=key, source=source) from None
    return tuple(specs.values())


@dataclass(frozen=True, slots=True)
class Change:
    """A monitor element changed level (after persistence)."""

    monitor: MonitorSpec
    index: int  # GPU index, or -1 for node-wide channels
    before: Level
    after: Level
    value: float

    @property
    def action(self) -> Action:
        return self.monitor.action(self.after)


@dataclass
class Monitor:
    spec: MonitorSpec
    levels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def reset(self, size: int) -> None:
        self.levels = np.zeros(size, dtype=np.int64)
        self._pending = np.zeros(size, dtype=np.int64)
        self._count = np.zeros(size, dtype=np.int64)

    def update(self, values: np.ndarray) -> list[Change]:
        if len(self.levels) != len(values):
            self.reset(len(values))
        changes = []
        for i, value in enumerate(values):
            level = self.spec.level_of(float(value))
            if level == self.levels[i]:
                self._count[i] = 0
                continue
            if level == self._pending[i]:
                self._count[i] += 1
            else:
                self._pending[i] = level
                self._count[i] = 1
            if self._count[i] >= self.spec.persistence:
                before = Level(int(self.levels[i]))
                self.levels[i] = level
                self._count[i] = 0
                changes.append(Change(self.spec, i if len(values) > 1 or self.per_gpu else -1, before, level, float(value)))
        return changes

    @property
    def per_gpu(self) -> bool:
        return self.spec.channel.startswith("gpu.")


@dataclass
class Fdir:
    specs: tuple[MonitorSpec, ...] = DEFAULT_MONITORS
    monitors: list[Monitor] = field(init=False)

    def __post_init__(self) -> None:
        self.monitors = [Monitor(spec) for spec in self.specs]

    def reset(self) -> None:
        for m in self.monitors:
            m.reset(0)

    def evaluate(self, channels: Mapping[str, np.ndarray]) -> list[Change]:
        """Feed this frame's channel values; the level changes that took effect."""
        changes: list[Change] = []
        for m in self.monitors:
            values = channels.get(m.spec.channel)
            if values is not None:
                changes += m.update(values)
        return changes

    def red(self, action: Action) -> list[tuple[MonitorSpec, int]]:
        """Elements now at a level whose action is ``action``."""
        out = []
        for m in self.monitors:
            for i, level in enumerate(m.levels):
                if level and m.spec.action(Level(int(level))) is action:
                    out.append((m.spec, i if m.per_gpu else -1))
        return out
