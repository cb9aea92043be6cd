"""FDIR monitors as data: levels with persistence, config overrides, and controller actions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from node.config import NodeConfig
from node.errors import ConfigError
from node.fdir import DEFAULT_MONITORS, Action, Fdir, Level, MonitorSpec, monitors_from_mapping


def test_levels_need_persistence_both_ways():
    spec = MonitorSpec(name="t", channel="gpu.temp_c", yellow_hi=80.0, red_hi=90.0, persistence=3)
    fdir = Fdir((spec,))
    hot = np.array([95.0, 50.0])
    assert fdir.evaluate({"gpu.temp_c": hot}) == []
    assert fdir.evaluate({"gpu.temp_c": hot}) == []
    (change,) = fdir.evaluate({"gpu.temp_c": hot})
    assert (change.index, change.before, change.after) == (0, Level.GREEN, Level.RED)
    # One cool frame does not clear it; a flicker back to hot resets the count.
    cool = np.array([50.0, 50.0])
    assert fdir.evaluate({"gpu.temp_c": cool}) == []
    assert fdir.evaluate({"gpu.temp_c": hot}) == []
    for _ in range(2):
        assert fdir.evaluate({"gpu.temp_c": cool}) == []
    (change,) = fdir.evaluate({"gpu.temp_c": cool})
    assert change.after is Level.GREEN


def test_nan_is_not_a_limit_violation():
    spec = MonitorSpec(name="t", channel="battery.soc", yellow_lo=0.4, red_lo=0.3, persistence=1)
    assert spec.level_of(math.nan) is Level.GREEN
    assert spec.level_of(0.2) is Level.RED and spec.level_of(0.35) is Level.YELLOW


def test_config_overrides_by_name_and_adds_monitors():
    specs = monitors_from_mapping(
        {"gpu_temp": {"red_hi": 88.0, "red_action": "safe"}, "hot_rad": {"channel": "radiator.temp_c", "red_hi": 70.0}}
    )
    by_name = {s.name: s for s in specs}
    assert by_name["gpu_temp"].red_hi == 88.0 and by_name["gpu_temp"].red_action is Action.SAFE
    assert by_name["hot_rad"].channel == "radiator.temp_c"
    assert len(specs) == len(DEFAULT_MONITORS) + 1


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"gpu_temp": {"red_hi": "hot"}}, "fdir.gpu_temp.red_hi"),
        ({"gpu_temp": {"bogus": 1}}, "fdir.gpu_temp.bogus"),
        ({"gpu_temp": {"red_action": "explode"}}, "fdir.gpu_temp.red_action"),
        ({"gpu_temp": {"red_hi": 10.0}}, "fdir.gpu_temp"),  # red below yellow
        ({"new": {"channel": "gpu.nonsense"}}, "fdir.new.channel"),
    ],
)
def test_bad_monitor_config_names_the_key(table, key):
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_mapping({"fdir": table})
    assert info.value.key == key
