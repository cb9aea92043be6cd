"""FDIR bound to the controller: this frame's channels in, the monitors' actions carried out.

The monitors (node/fdir.py) keep their levels across link sessions: a red battery limit
is a fact about the node, not about the link.  What each level asks for:

- ``throttle``: the GPU (or every GPU) held at its minimum cap — :attr:`limits_w`;
- ``safe``: a SAFE cause that holds exactly while a monitor is red — :attr:`critical`,
  derived every frame, so SAFE ends as soon as the limit is green (a link flap in between
  changes nothing);
- ``rail_cycle``: the GPU's rail off, and on again ``RAIL_CYCLE_S`` board seconds later;
- ``checkpoint``: every job checkpointed now.
"""

from __future__ import annotations

import contextlib

import numpy as np

from node.board import Board, BoardInfo
from node.bus.payloads import Severity
from node.controller.events import EventLog
from node.controller.rails import RAIL_CYCLE_S, RailBook, RailReason
from node.errors import LinkError
from node.fdir import Action, Change, Fdir, Level
from node.jobs.manager import SimJobManager
from node.link.messages import Sensor

_SEVERITY = {Level.GREEN: Severity.INFO, Level.YELLOW: Severity.WARNING, Level.RED: Severity.ERROR}


class FdirBinding:
    def __init__(self, *, fdir: Fdir, events: EventLog, rails: RailBook, board: Board, jobs: SimJobManager) -> None:
        self._fdir = fdir
        self._events = events
        self._rails = rails
        self._board = board
        self._jobs = jobs
        self.limits_w = np.zeros(0)
        self._xid_seen = np.zeros(0)
        self.critical: list[str] = []  # monitors at a red level whose action is SAFE

    def new_session(self, gpu_count: int) -> None:
        self.limits_w = np.full(gpu_count, np.inf)
        self._xid_seen = np.full(gpu_count, np.nan)  # Xid counters run from board boot: the first frame is no news
        self._throttles_changed = True

    def on_frame(self, sensor: Sensor, info: BoardInfo, temp_est: np.ndarray, sensor_faults: np.ndarray) -> None:
        xid = np.asarray(sensor.xid or np.zeros(info.gpu_count), dtype=float)  # (): not reported
        new_xid = np.nan_to_num(xid - self._xid_seen, nan=0.0)
        self._xid_seen = xid
        changes = self._fdir.evaluate(
            {
                "gpu.temp_c": temp_est,
                "gpu.xid": new_xid,
                "gpu.sensor_fault": sensor_faults.astype(float),
                "battery.soc": np.array([sensor.battery_soc]),
                "radiator.temp_c": np.array([sensor.radiator_c]),
            }
        )
        for change in changes:
            self._act(change, sensor)
        if changes or self._throttles_changed:
            # Throttles hold while any throttle level holds; recomputed from the monitors.
            self._throttles_changed = False
            self.limits_w[:] = np.inf
            for _spec, index in self._fdir.red(Action.THROTTLE):
                if index < 0:
                    self.limits_w[:] = info.cap_min_w
                elif index < len(self.limits_w):
                    self.limits_w[index] = info.cap_min_w
            self.critical = [spec.name for spec, _ in self._fdir.red(Action.SAFE)]
        for gpu in self._rails.cycles_due(sensor.t_board):
            with contextlib.suppress(LinkError):
                self._board.set_rail(gpu, True)
                self._rails.switched_on(gpu)
                self._events.emit("rail_on", Severity.INFO, f"GPU {gpu} rail back on after reset", gpu=gpu)

    def _act(self, change: Change, sensor: Sensor) -> None:
        spec = change.monitor
        where = f"GPU {change.index} " if change.index >= 0 else ""
        # Not rate-limited: ground must see every level a monitor settles at, and persistence
        # already keeps a monitor from changing level faster than every few frames.
        self._events.emit(
            "limit",
            _SEVERITY[change.after],
            f"{where}{spec.name} {change.before.name} -> {change.after.name} ({spec.channel} = {change.value:.3g})"
            + (f": {change.action.value}" if change.action is not Action.NONE else ""),
            monitor=spec.name,
            index=change.index,
            level=change.after.name,
            value=change.value,
            action=change.action.value,
        )
        if change.action is Action.RAIL_CYCLE and change.index >= 0:
            with contextlib.suppress(LinkError):
                self._board.set_rail(change.index, False)
                self._rails.switched_off(change.index, RailReason.CYCLE, back_at=sensor.t_board + RAIL_CYCLE_S)
        elif change.action is Action.CHECKPOINT:
            self._events.emit("checkpoint_request", Severity.INFO, f"{spec.name}: checkpoint requested",
                              monitor=spec.name)
            self._jobs.request(None, spec.name)
