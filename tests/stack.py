"""The whole node stack without I/O: NodeController ⇄ NodeSession ⇄ an in-memory cable ⇄ DoubleBoard.

Time is a manual clock both sides read (the node's wall clock, the board's watchdog and
frame schedule), so a test or a Hypothesis state machine runs seconds of link behaviour in
milliseconds, deterministically.  The node's side is the real ``SessionBoard`` glue
(node/link/serial_board.py), so nothing here stands in for the session.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from doubleboard import DoubleBoard

from node.board import LinkHealth
from node.bus.payloads import Event, Housekeeping
from node.config import LinkConfig, NodeConfig
from node.controller import NodeController
from node.link.serial_board import SessionBoard

TICK_S = 0.05


@dataclass
class ManualClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


class ListPublisher:
    def __init__(self) -> None:
        self.items: list[Housekeeping | Event] = []

    def publish(self, payload: Housekeeping | Event) -> None:
        self.items.append(payload)

    def events(self, kind: str | None = None) -> list[Event]:
        return [e for e in self.items if isinstance(e, Event) and (kind is None or e.kind == kind)]


class LoopbackBoard(SessionBoard):
    """The node's Board over an in-memory cable to a :class:`DoubleBoard`."""

    def __init__(self, double: DoubleBoard, clock: ManualClock, config: LinkConfig | None = None) -> None:
        super().__init__(node_id="node-t", config=config or LinkConfig(), clock=clock)
        self.double = double
        self._plugged = True
        self._to_board = bytearray()
        self._next_frame = 0.0
        self.health: list[str] = []  # every LinkHealth state the session reported, in order

    @property
    def plugged(self) -> bool:
        return self._plugged

    @plugged.setter
    def plugged(self, plugged: bool) -> None:
        if not plugged:
            self._to_board.clear()  # what was on the way is lost with the cable
        self._plugged = plugged

    async def __aenter__(self) -> LoopbackBoard:
        self.session.opened(self._clock())
        self._flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _write(self, data: bytes) -> None:
        if self.plugged:
            self._to_board += data

    def _flush(self) -> None:
        for event in self.session._events:
            if isinstance(event, LinkHealth):
                self.health.append(event.state)
        super()._flush()

    def advance(self, now: float) -> None:
        """Everything due up to ``now``: bytes both ways, the board's frames and both sides' timers."""
        d = self.double
        out = b""
        if self.plugged and self._to_board:
            out += d.receive(bytes(self._to_board), now)
            self._to_board.clear()
        out += d.poll(now)
        period = 1.0 / d.rate_hz
        while self._next_frame <= now + 1e-9:
            out += d.frame(now)
            self._next_frame += period
        if self.plugged and out:
            self._received(out)
        self._tick()


class Stack:
    """Node and double board on one manual clock; ``await stack.run(seconds)`` lets time pass."""

    def __init__(self, double: DoubleBoard | None = None, **config: Any) -> None:
        self.clock = ManualClock()
        self.double = double or DoubleBoard()
        self.board = LoopbackBoard(self.double, self.clock)
        self.pub = ListPublisher()
        raw = {"mqtt": {"hk_rate_hz": 0.01}, **config}
        self.node = NodeController(config=NodeConfig.from_mapping(raw), board=self.board, publisher=self.pub,
                                   clock=self.clock)

    async def __aenter__(self) -> Stack:
        await self.board.__aenter__()
        await self.node.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.node.__aexit__(None, None, None)

    async def settle(self) -> None:
        """Let the controller take every queued event (and the commands it sends go out)."""
        for _ in range(50):
            await asyncio.sleep(0)
            if self.board._events.empty():
                with contextlib.suppress(Exception):
                    await asyncio.sleep(0)
                if self.board._events.empty():
                    return

    async def run(self, seconds: float, *, until: Any = None) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end - 1e-9:
            self.clock.now = min(end, self.clock.now + TICK_S)
            self.board.advance(self.clock.now)
            await self.settle()
            if until is not None and until():
                return
