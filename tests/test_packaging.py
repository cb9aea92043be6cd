"""``pip install umbra`` is the flight computer's install: the node and nothing of ground or HIL.

A fresh virtual environment gets the base install only (non-editable, from this tree); its
``umbra-node`` controls its ``umbra-board`` for a few seconds; ``umbra-ground`` and
``umbra-hil`` say which extra to install instead of failing on an import.  This takes a
minute (numba and llvmlite are most of the install).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hil.procs import ManagedProcess

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parent.parent
#: What the ground and harness stacks bring, none of which a flight computer needs.
NOT_ON_THE_NODE = ("aiohttp", "psycopg", "pyarrow", "matplotlib", "amqtt", "pytest", "playwright")


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("base") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], env=env,
                            capture_output=True, text=True, timeout=800)
    assert result.returncode == 0, result.stderr[-3000:]
    return venv


def test_the_base_install_has_the_node_and_nothing_of_ground_or_hil(base_venv: Path) -> None:
    python = str(base_venv / "bin" / "python")
    for module in NOT_ON_THE_NODE:
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60)
        assert probe.returncode != 0, f"{module} is installed with the base install"
    probe = subprocess.run([python, "-c", "import node.cli, node.controller, firmware_sim.cli, pynvml"],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr


def test_the_extras_say_what_to_install(base_venv: Path) -> None:
    for command, extra in (("umbra-ground", "ground"), ("umbra-hil", "hil")):
        result = subprocess.run([str(base_venv / "bin" / command), "--help"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2, (command, result.stderr)
        assert f"pip install 'umbra[{extra}]'" in result.stderr


def test_the_base_install_controls_a_board(base_venv: Path, tmp_path: Path) -> None:
    bin_dir = base_venv / "bin"
    with socket.socket() as s:  # a port nobody listens on: the node controls without a broker
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    board = ManagedProcess([str(bin_dir / "umbra-board"), "--link", str(tmp_path / "link"), "--gpus", "4",
                            "--speed", "10", "--seed", "5"], name="board", log_dir=tmp_path)
    node = ManagedProcess([str(bin_dir / "umbra-node"), "--serial", str(tmp_path / "link"), "--mqtt",
                           f"127.0.0.1:{closed}", "--node-id", "base-1", "--data-dir", str(tmp_path / "var")],
                          name="node", log_dir=tmp_path)
    board.start()
    try:
        board.wait_for_line(r"umbra-board: board ", 120)
        node.start()
        try:
            node.wait_for_line(r"link up: board sim-1", 120)
            node.wait_for_line(r"mode BOOT -> NOMINAL", 30)
        finally:
            node.stop()
    finally:
        board.stop()
