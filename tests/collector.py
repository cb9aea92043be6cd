"""Ground's side of a node's telemetry for the bus tests: every packet, by sequence number.

A persistent QoS 1 session (``clean_session=False``) on the node's housekeeping, events and
command reports, reconnecting while the broker is away, so a test can say what arrived,
what twice, and what never.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from typing import Any

import aiomqtt

from hil.broker import Mosquitto
from node.bus.payloads import Event, Housekeeping, Leaf, TcReport, decode_message, topic
from node.errors import RemoteProtocolError


class Collector:
    def __init__(self, mq: Mosquitto, node_id: str) -> None:
        self.mq, self.node_id = mq, node_id
        #: Every copy that arrived of each seq (more than one: published twice).
        self.seen: dict[int, list[Any]] = defaultdict(list)
        self.reports: list[TcReport] = []
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.mq.host, self.mq.port, identifier=f"collect-{self.node_id}",
                                          clean_session=False) as client:
                    for leaf in (Leaf.HK, Leaf.EVENT, Leaf.TC_REPORT):
                        await client.subscribe(topic(self.node_id, leaf), qos=1)
                    self.subscribed.set()
                    async for m in client.messages:
                        try:
                            _, p = decode_message(str(m.topic), bytes(m.payload))  # type: ignore[arg-type]
                        except RemoteProtocolError:
                            continue
                        if isinstance(p, TcReport):
                            self.reports.append(p)
                        if isinstance(p, Housekeeping | Event | TcReport):
                            self.seen[p.seq].append(p)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def packets(self) -> list[Any]:
        """One copy of each packet, in the order their seqs first arrived."""
        return [copies[0] for copies in self.seen.values()]

    def events(self, kind: str) -> list[Event]:
        return [p for p in self.packets() if isinstance(p, Event) and p.kind == kind]

    def missing(self) -> list[int]:
        """Seqs below the highest seen that never arrived."""
        return [s for s in range(1, max(self.seen, default=0) + 1) if s not in self.seen]

    async def wait_until(self, pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; max seq {max(self.seen, default=0)}, "
                                     f"missing {self.missing()[:20]}")
            await asyncio.sleep(0.2)
