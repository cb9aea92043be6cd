"""Events to ground: numbered, logged, and rate-limited where the board can cause a flood.

Anything a misbehaving board repeats at its frame rate (rejected frames, implausible
values, refused commands, a flapping sensor) goes through :meth:`EventLog.limited`: the
first of its kind goes out at once, then at most one per ``every_s`` of wall time, and
that one says how many were held back.  Nothing is dropped silently: the counts travel in
``data.suppressed`` and in the link counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from node.bus.payloads import Event, Housekeeping, Severity, clip_text

log = logging.getLogger("umbra.node.control")

#: Wall seconds between two events of one rate-limited key.
EVENT_EVERY_S = 10.0


class Publisher(Protocol):
    def publish(self, payload: Housekeeping | Event) -> None: ...


@dataclass(slots=True)
class _Held:
    at: float  # wall time of the last event that went out
    held: int = 0  # events held back since


class EventLog:
    def __init__(
        self,
        *,
        node_id: str,
        publisher: Publisher,
        next_seq: Callable[[], int],
        utc: Callable[[], float],
        t_board: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
        every_s: float = EVENT_EVERY_S,
    ) -> None:
        self._node_id = node_id
        self._publisher = publisher
        self._next_seq = next_seq
        self._utc = utc
        self._t_board = t_board
        self._clock = clock
        self._every_s = every_s
        self._held: dict[str, _Held] = {}

    def emit(self, kind: str, severity: Severity, text: str, **data: Any) -> None:
        log.log(logging.WARNING if severity >= Severity.WARNING else logging.INFO, "%s: %s", kind, text)
        self._publisher.publish(
            Event(
                node_id=self._node_id,
                seq=self._next_seq(),
                utc=self._utc(),
                t_board=self._t_board(),
                kind=kind,
                severity=int(severity),
                text=clip_text(text),
                data=data,
            )
        )

    def limited(self, key: str, kind: str, severity: Severity, text: str, **data: Any) -> None:
        """``emit``, but at most once per ``every_s`` for ``key``; the next says how many were held."""
        now = self._clock()
        held = self._held.get(key)
        if held is not None and now - held.at < self._every_s:
            held.held += 1
            return
        if held is not None and held.held:
            text = f"{text} ({held.held} more like it in the last {now - held.at:.0f} s)"
            data = {**data, "suppressed": held.held}
        self._held[key] = _Held(at=now)
        self.emit(kind, severity, text, **data)
