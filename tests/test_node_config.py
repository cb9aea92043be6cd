"""Node configuration: TOML parsing, key-naming errors, and the CLI's exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.config import NodeConfig
from node.control.law import ControlParams
from node.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, '[node]\nnode_id = "n7"\n[mqtt]\nport = 1999\nhk_rate_hz = 2\n')
    config = NodeConfig.from_toml(path, **{"mqtt.port": 2000, "link.serial": None})
    assert config.node_id == "n7"
    assert config.mqtt.port == 2000  # the flag wins over the file
    assert config.mqtt.hk_rate_hz == 2.0  # an integer is fine where a float is wanted
    assert config.control.target_c == ControlParams().target_c  # not set in the file


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[mqtt]\nport = 'x'\n", "mqtt.port"),
        ("[mqtt]\nprot = 1\n", "mqtt.prot"),
        ("[bogus]\n", "bogus"),
        ("[control]\ntarget_c = 500.0\n", "control.target_c"),
        ("[link]\ntimeout_s = 0\n", "link.timeout_s"),
        ('[node]\nnode_id = "has space"\n', "node.node_id"),
    ],
)
def test_bad_values_name_their_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_toml(write(tmp_path, text))
    assert info.value.key == key
    assert key in str(info.value)
    assert str(tmp_path / "node.toml") in str(info.value)


def test_not_toml(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        NodeConfig.from_toml(write(tmp_path, "[mqtt\n"))


def run_node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_missing_serial_path_exits_2_naming_it(tmp_path):
    missing = tmp_path / "no-such-board"
    result = run_node("--serial", str(missing), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert str(missing) in result.stderr


def test_cli_bad_config_exits_2_naming_the_key(tmp_path):
    path = write(tmp_path, "[mqtt]\nport = 70000\n")
    result = run_node("--config", str(path), "--serial", "/dev/null")
    assert result.returncode == 2
    assert "mqtt.port" in result.stderr


def test_cli_help():
    result = run_node("--help")
    assert result.returncode == 0
    assert "--serial" in result.stdout and "--mqtt" in result.stdout


def test_corrupt_legacy_sequence_file_is_refused(tmp_path):
    """Numbers reserved by the old block store stay reserved; a garbled file is an error."""
    from node.cli import legacy_first_seq

    (tmp_path / "telemetry.seq").write_text("garbage")
    with pytest.raises(ConfigError, match="corrupt"):
        legacy_first_seq(tmp_path)
    (tmp_path / "telemetry.seq").write_text("20001\n")
    assert legacy_first_seq(tmp_path) == 20001
