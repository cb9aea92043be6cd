"""Watch a node's telemetry and wait for conditions that explain themselves when they fail.

``TelemetryWatcher`` subscribes to one node's topics and keeps every decoded packet with
its arrival time.  ``await watcher.wait_for(pred, timeout)`` returns the first packet
(new or already received, after ``since``) that satisfies ``pred``; on timeout the
AssertionError names the predicate and shows the last packets seen, as fprime-gds does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiomqtt

from node.bus.payloads import Event, Housekeeping, Leaf, NodeState, decode_message, topic
from node.errors import RemoteProtocolError

Payload = Housekeeping | Event | NodeState


@dataclass(frozen=True)
class Seen:
    index: int
    arrived: float  # time.time() at arrival
    payload: Payload


@dataclass(frozen=True)
class Predicate:
    """A named test on a packet; the name is what a failure message shows."""

    name: str
    test: Callable[[Payload], bool]

    def __call__(self, payload: Payload) -> bool:
        try:
            return bool(self.test(payload))
        except (AttributeError, TypeError, ValueError, IndexError):
            return False


def hk(name: str, test: Callable[[Housekeeping], bool]) -> Predicate:
    return Predicate(f"housekeeping where {name}", lambda p: isinstance(p, Housekeeping) and test(p))


def event(kind: str, name: str = "", test: Callable[[Event], bool] = lambda e: True) -> Predicate:
    label = f"event {kind!r}" + (f" where {name}" if name else "")
    return Predicate(label, lambda p: isinstance(p, Event) and p.kind == kind and test(p))


def mode_event(after: str) -> Predicate:
    return event("mode", f"mode becomes {after}", lambda e: e.data.get("after") == after)


def state(online: bool) -> Predicate:
    return Predicate(f"state online={online}", lambda p: isinstance(p, NodeState) and p.online is online)


class TelemetryWatcher:
    def __init__(self, *, host: str, port: int, node_id: str) -> None:
        self._host, self._port, self._node_id = host, port, node_id
        self.seen: list[Seen] = []
        self.malformed = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._listen(), name="umbra.hil.watch")
        await asyncio.wait_for(self._subscribed.wait(), 10.0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self._host, self._port, identifier=f"umbra-watch-{time.monotonic_ns()}"
                ) as client:
                    for leaf in (Leaf.STATE, Leaf.HK, Leaf.EVENT):
                        await client.subscribe(topic(self._node_id, leaf), qos=1)
                    self._subscribed.set()
                    async for message in client.messages:
                        await self._take(str(message.topic), message.payload)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    async def _take(self, topic_name: str, data: Any) -> None:
        try:
            _, payload = decode_message(topic_name, bytes(data))
        except RemoteProtocolError:
            self.malformed += 1
            return
        async with self._changed:
            self.seen.append(Seen(len(self.seen), time.time(), payload))  # type: ignore[arg-type]
            self._changed.notify_all()

    def mark(self) -> int:
        """An index to pass as ``since`` so only packets after now count."""
        return len(self.seen)

    def matching(self, pred: Predicate, since: int = 0) -> list[Seen]:
        return [s for s in self.seen[since:] if pred(s.payload)]

    async def wait_for(self, pred: Predicate, timeout: float = 10.0, *, since: int = 0) -> Seen:
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                found = self.matching(pred, since)
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(self._explain(pred, timeout, since))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def _explain(self, pred: Predicate, timeout: float, since: int) -> str:
        recent = self.seen[since:][-8:]
        lines = [f"no {pred.name} within {timeout:.1f} s ({len(self.seen) - since} packets seen):"]
        lines += [f"  {type(s.payload).__name__}: {_brief(s.payload)}" for s in recent]
        return "\n".join(lines)


def _brief(p: Payload) -> str:
    if isinstance(p, Housekeeping):
        return f"seq={p.seq} mode={p.mode} link_up={p.link_up} temp={p.temp_c} cap={p.cap_w}"
    if isinstance(p, Event):
        return f"seq={p.seq} {p.kind}: {p.text}"
    return f"online={p.online}"
