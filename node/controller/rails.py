"""Which GPU rails are off and why: board state that outlives a link session.

The node switches rails off for three reasons of its own and one of ground's; each says
when the rail comes back:

========= ==========================================================================
shed      load shedding: back on when the budget allows (the shedder decides)
rail_cycle FDIR reset after an Xid: back on ``RAIL_CYCLE_S`` board seconds later
ground    commanded off by ground: stays off until ground switches it on
found_off off on the board for no reason the node recorded (its link safing, a node
          restart, the board itself): treated like a shed rail
========= ==========================================================================

The book is reconciled with what the board reports (``Sensor.rails``) on every usable
frame, so a link flap or a node restart does not forget a rail the board still holds off.
It is kept in ``<data_dir>/rails.json`` when a path is given.
"""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from node.jobs.store import write_atomic

log = logging.getLogger("umbra.node.control")

#: How long a GPU's rail stays off when FDIR resets it (board seconds).
RAIL_CYCLE_S = 2.0
#: Frames a rail the book has off must read on before the book believes the board.
ON_FRAMES_TO_FORGET = 3


class RailReason(enum.StrEnum):
    SHED = "shed"
    CYCLE = "rail_cycle"
    GROUND = "ground"
    FOUND = "found_off"


#: Rails the node itself may switch back on when the budget allows.
RESTORABLE = (RailReason.SHED, RailReason.FOUND)


@dataclass
class RailBook:
    path: Path | None = None
    off: dict[int, RailReason] = field(default_factory=dict)
    _back_at: dict[int, float] = field(default_factory=dict)  # rail_cycle: board time to switch back
    _on_frames: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.path is not None:
            self._load(self.path)

    def switched_off(self, gpu: int, reason: RailReason, *, back_at: float | None = None) -> None:
        self.off[gpu] = reason
        self._on_frames.pop(gpu, None)
        if back_at is not None:
            self._back_at[gpu] = back_at
        self._save()

    def switched_on(self, gpu: int) -> None:
        if self.off.pop(gpu, None) is not None:
            self._back_at.pop(gpu, None)
            self._on_frames.pop(gpu, None)
            self._save()

    def new_session(self) -> None:
        """Board time starts afresh (or the board rebooted, rails on): rail cycles are due now."""
        for gpu in self._back_at:
            self._back_at[gpu] = 0.0

    def reconcile(self, rails: int, gpu_count: int) -> tuple[list[int], list[int]]:
        """Take in what the board reports: (rails newly found off, ground's rails to switch off again).

        A rail the book has off but the board reports on (a reboot switches every rail on,
        or the board refused) is believed after a few frames — except ground's: those are
        ground's to switch on, so they are asked off again.
        """
        found: list[int] = []
        reassert: list[int] = []
        every = (1 << gpu_count) - 1
        if not self.off and rails & every == every:
            return found, reassert  # the usual frame: every rail on, none booked off
        changed = False
        for gpu in list(self.off):
            if gpu >= gpu_count:
                del self.off[gpu]
                changed = True
        for gpu in range(gpu_count):
            on = bool(rails >> gpu & 1)
            if not on and gpu not in self.off:
                self.off[gpu] = RailReason.FOUND
                found.append(gpu)
                changed = True
            elif on and gpu in self.off and self.off[gpu] is not RailReason.CYCLE:
                # Our command may still be in flight; believe the board after a few frames.
                self._on_frames[gpu] = self._on_frames.get(gpu, 0) + 1
                if self._on_frames[gpu] >= ON_FRAMES_TO_FORGET:
                    del self._on_frames[gpu]
                    if self.off[gpu] is RailReason.GROUND:
                        reassert.append(gpu)
                    else:
                        del self.off[gpu]
                        changed = True
            else:
                self._on_frames.pop(gpu, None)
        if changed:
            self._save()
        return found, reassert

    def restorable(self) -> list[int]:
        return [gpu for gpu, reason in self.off.items() if reason in RESTORABLE]

    def cycles_due(self, t_board: float) -> list[int]:
        return [gpu for gpu, at in self._back_at.items() if t_board >= at and self.off.get(gpu) is RailReason.CYCLE]

    def _load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_text())
            self.off = {int(gpu): RailReason(reason) for gpu, reason in raw.items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("ignoring unreadable rail file %s: %s", path, exc)
            self.off = {}
        self._back_at = {gpu: 0.0 for gpu, reason in self.off.items() if reason is RailReason.CYCLE}

    def _save(self) -> None:
        if self.path is not None:
            body = json.dumps({str(g): r.value for g, r in sorted(self.off.items())}, indent=1).encode()
            write_atomic(self.path.parent, self.path.name, body)
