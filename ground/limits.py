"""Telemetry limits: which housekeeping values are green, yellow or red.

The command dictionary (node/bus/commands.py) has no telemetry limits yet; until it does,
ground keeps them here, one row per channel.  The archive's alarm table, the console's
colours and the CLI use this one table.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class Level(enum.IntEnum):
    OK = 0
    WARNING = 1  # yellow
    CRITICAL = 2  # red


@dataclass(frozen=True, slots=True)
class Limit:
    """``high``: worse when larger (temperatures); otherwise worse when smaller (battery)."""

    channel: str
    unit: str
    yellow: float
    red: float
    high: bool = True
    description: str = ""

    def level(self, value: float | None) -> Level:
        if value is None:
            return Level.OK
        if self.high:
            return Level.CRITICAL if value >= self.red else Level.WARNING if value >= self.yellow else Level.OK
        return Level.CRITICAL if value <= self.red else Level.WARNING if value <= self.yellow else Level.OK


LIMITS: dict[str, Limit] = {
    lim.channel: lim
    for lim in (
        Limit("temp_c", "°C", 83.0, 87.0, description="GPU temperature; red at hardware slowdown"),
        Limit("battery_soc", "", 0.30, 0.20, high=False, description="battery state of charge"),
        Limit("radiator_c", "°C", 60.0, 75.0, description="radiator temperature"),
    )
}


def hk_values(hk: Any) -> Iterator[tuple[str, float | None]]:
    """(channel, value) for every limited channel of one housekeeping packet; GPU arrays
    are spelled ``temp_c[3]``."""
    for i, t in enumerate(hk.temp_c):
        yield f"temp_c[{i}]", t
    yield "battery_soc", hk.battery_soc
    yield "radiator_c", hk.radiator_c


def limit_for(channel: str) -> Limit | None:
    return LIMITS.get(channel.split("[", 1)[0])


def violations(hk: Any) -> Iterator[tuple[str, Level, float]]:
    """Channels of ``hk`` outside their green band (none before the node's first sensor
    frame, when its GPU arrays are empty and its other values are placeholders)."""
    if not hk.temp_c:
        return
    for channel, value in hk_values(hk):
        lim = limit_for(channel)
        if lim is not None and value is not None:
            level = lim.level(value)
            if level > Level.OK:
                yield channel, level, value


def describe() -> list[dict[str, Any]]:
    return [
        {"channel": x.channel, "unit": x.unit, "yellow": x.yellow, "red": x.red, "high": x.high,
         "description": x.description}
        for x in LIMITS.values()
    ]
