"""A local bench: a simulated board and the node, as child processes, on a pty.

``LocalBench`` starts what a run needs and stops what it started (by pid).  The demo uses
it, and so do the end-to-end tests, which also stop, kill and restart its parts.  Bench
files (TOML) describing real boards come with the harness issue.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from hil.procs import ManagedProcess

BOARD_READY = r"umbra-board: .* on "
NODE_READY = r"umbra-node: .* on "


def board_command(python: str, link: str, hil: str, *, gpus: int, rate_hz: float, speed: float,
                  extra: Sequence[str] = ()) -> list[str]:
    """``umbra-board`` argv for a simulated board on ``link`` with its HIL port on ``hil``."""
    return [python, "-m", "firmware_sim.cli", "--link", link, "--hil", hil, "--gpus", str(gpus),
            "--rate", str(rate_hz), "--speed", str(speed), *extra]


def node_command(python: str, link: str, mqtt: str, node_id: str, data_dir: Path, hk_rate_hz: float,
                 extra: Sequence[str] = ()) -> list[str]:
    """``umbra-node`` argv for a node on serial ``link`` talking to the broker at ``mqtt``."""
    return [python, "-m", "node.cli", "--serial", link, "--mqtt", mqtt, "--node-id", node_id,
            "--data-dir", str(data_dir), "--hk-rate", str(hk_rate_hz), *extra]


@dataclass
class LocalBench:
    workdir: Path
    mqtt_host: str
    mqtt_port: int
    node_id: str = "node-1"
    gpus: int = 8
    rate_hz: float = 10.0
    speed: float = 1.0
    hk_rate_hz: float = 1.0
    demand_w: float | None = None
    board_args: tuple[str, ...] = ()
    node_args: tuple[str, ...] = ()
    python: str = sys.executable
    board: ManagedProcess | None = field(default=None, init=False)
    node: ManagedProcess | None = field(default=None, init=False)

    @property
    def link_path(self) -> Path:
        return self.workdir / "board.tty"

    @property
    def hil_path(self) -> Path:
        return self.workdir / "board-hil.tty"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def board_argv(self) -> list[str]:
        demand = ["--demand", str(self.demand_w)] if self.demand_w is not None else []
        return board_command(self.python, str(self.link_path), str(self.hil_path), gpus=self.gpus,
                             rate_hz=self.rate_hz, speed=self.speed, extra=[*demand, *self.board_args])

    def node_argv(self) -> list[str]:
        return node_command(self.python, str(self.link_path), f"{self.mqtt_host}:{self.mqtt_port}", self.node_id,
                            self.workdir / "node-data", self.hk_rate_hz, self.node_args)

    def start_board(self, timeout: float = 30.0) -> ManagedProcess:
        if self.board is None:
            self.board = ManagedProcess(self.board_argv(), name="board", log_dir=self.log_dir)
        since = self.board.mark()
        self.board.start()
        self.board.wait_for_line(BOARD_READY, timeout, since=since)
        return self.board

    def start_node(self, timeout: float = 60.0) -> ManagedProcess:
        if self.node is None:
            self.node = ManagedProcess(self.node_argv(), name="node", log_dir=self.log_dir)
        since = self.node.mark()
        self.node.start()
        self.node.wait_for_line(NODE_READY, timeout, since=since)
        return self.node

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start_board()
        self.start_node()
        return self

    def stop(self) -> None:
        # The node first, so it says goodbye on the bus rather than seeing its board vanish.
        for proc in (self.node, self.board):
            if proc is not None:
                proc.stop(timeout=1.0)  # both within the 2 s a Ctrl-C promises

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
