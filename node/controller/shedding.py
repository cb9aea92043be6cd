"""Load shedding: GPUs off when even their minimum caps overdraw the budget, back on after.

The lowest-priority GPU goes first, after a checkpoint (its rail goes off once the
checkpoint had time to finish), so shedding costs no work.  Persistence on both sides
keeps a budget hovering at the edge from switching rails back and forth.  Which rails are
off lives in the :class:`~node.controller.rails.RailBook`, so a link flap or a node
restart does not forget a shed GPU; rails found off for no recorded reason are restored
the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from node.board import Board, BoardInfo
from node.bus.payloads import Severity
from node.controller.events import EventLog
from node.controller.rails import RailBook, RailReason
from node.errors import LinkError
from node.jobs.manager import SimJobManager
from node.link.messages import Sensor

#: Frames in a row the budget must be short before a GPU is shed.
SHORT_FRAMES = 3
#: Frames in a row of surplus before one shed GPU comes back.
SURPLUS_FRAMES = 10
#: Surplus (W) above the minimum caps of the GPUs on and the one to restore.
SURPLUS_W = 100.0


class LoadShedder:
    def __init__(
        self,
        *,
        rails: RailBook,
        board: Board,
        jobs: SimJobManager,
        events: EventLog,
        grace_s: Callable[[], float],
        on_power: Callable[[int, bool], None] | None = None,
    ) -> None:
        #: Told (gpu, False) when a GPU is chosen to be shed, (gpu, True) when it is back on:
        #: the node's process jobs stop with a final checkpoint and resume.
        self._on_power = on_power
        self._rails = rails
        self._board = board
        self._jobs = jobs
        self._events = events
        self._grace_s = grace_s  # board seconds a checkpoint needs before the rail goes off
        self.new_session()

    def new_session(self) -> None:
        self._pending: dict[int, float] = {}  # GPU → board time its rail goes off (after its checkpoint)
        self._short = 0
        self._surplus = 0

    def on_frame(self, sensor: Sensor, info: BoardInfo, budget_w: float, weights: np.ndarray) -> None:
        if budget_w == float("inf"):
            return
        t = sensor.t_board
        off = self._rails.off
        on = [g for g in range(info.gpu_count) if sensor.rails >> g & 1 and g not in self._pending and g not in off]
        floor_w = info.cap_min_w * len(on)
        self._short = self._short + 1 if budget_w < floor_w - 1.0 else 0
        if self._short >= SHORT_FRAMES and on:
            victim = min(on, key=lambda g: (weights[g], -g))
            self._jobs.request(victim, "load shed ahead", certain=True)
            if self._on_power is not None:
                self._on_power(victim, False)
            self._pending[victim] = t + (self._grace_s() if self._jobs.active else 0.0)
            self._short = 0
            self._events.emit("load_shed", Severity.WARNING,
                              f"budget {budget_w:.0f} W below the minimum of {len(on)} GPUs: shedding GPU {victim}",
                              gpu=victim, budget_w=budget_w)
        for gpu, at in list(self._pending.items()):
            if t >= at:
                with contextlib.suppress(LinkError):
                    self._board.set_rail(gpu, False)
                    del self._pending[gpu]
                    self._rails.switched_off(gpu, RailReason.SHED)
        restorable = self._rails.restorable()
        spare = budget_w - floor_w - info.cap_min_w
        self._surplus = self._surplus + 1 if restorable and spare > SURPLUS_W else 0
        if self._surplus >= SURPLUS_FRAMES:
            gpu = max(restorable, key=lambda g: (weights[g], -g))
            with contextlib.suppress(LinkError):
                self._board.set_rail(gpu, True)
                self._rails.switched_on(gpu)
                if self._on_power is not None:
                    self._on_power(gpu, True)
                self._events.emit("load_restored", Severity.INFO, f"budget {budget_w:.0f} W: GPU {gpu} back on",
                                  gpu=gpu, budget_w=budget_w)
            self._surplus = 0
