"""The node's side of the MQTT bus: birth, Last Will, housekeeping and events.

``TelemetryBus`` is an async context manager owning a TaskGroup.  The controller hands it
payloads with :meth:`TelemetryBus.publish`, which never blocks and never raises: while the
broker is away, packets wait in a bounded queue (the oldest housekeeping goes first when it
is full) and the bus reconnects with jittered exponential backoff.  Durable
store-and-forward (an on-disk outbox) comes with the bus issue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import aiomqtt

from node.bus.payloads import Event, Housekeeping, Leaf, NodeState, topic
from node.config import MqttConfig

log = logging.getLogger("umbra.node.bus")

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0
#: QoS per leaf (docs/ICD.md §5): state and events must arrive; housekeeping is periodic.
QOS = {Leaf.STATE: 1, Leaf.HK: 0, Leaf.EVENT: 1}


def backoff_delays(
    lo: float = BACKOFF_MIN_S, hi: float = BACKOFF_MAX_S, rng: random.Random | None = None
) -> collections.abc.Iterator[float]:
    """Full-jitter exponential backoff: uniform(0, min(hi, lo·2ⁿ)), at least lo/2."""
    rng = rng or random.Random()
    ceiling = lo
    while True:
        yield max(lo / 2, rng.uniform(0, ceiling))
        ceiling = min(hi, ceiling * 2)


class TelemetryBus:
    def __init__(
        self,
        *,
        node_id: str,
        config: MqttConfig,
        boot_id: str,
        version: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node_id = node_id
        self._config = config
        self._boot_id = boot_id
        self._version = version
        self._clock = clock
        self._queue: collections.deque[Housekeeping | Event] = collections.deque()
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._connected = False
        self._task_group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self.counters = {"published": 0, "dropped": 0, "connects": 0, "connect_failures": 0}

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def backlog(self) -> int:
        return len(self._queue)

    async def __aenter__(self) -> Self:
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._runner = self._task_group.create_task(self._run(), name="umbra.node.bus")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task_group is not None and self._runner is not None
        self._stopping.set()
        self._ready.set()
        try:
            # Give the runner a moment to flush and say goodbye; then stop it regardless.
            await asyncio.wait_for(asyncio.shield(self._runner), timeout=2.0)
        except (TimeoutError, asyncio.CancelledError):
            self._runner.cancel()
        await self._task_group.__aexit__(exc_type, exc, tb)

    def publish(self, payload: Housekeeping | Event) -> None:
        """Queue a packet; never blocks.  Beyond the queue limit the oldest hk is dropped."""
        if len(self._queue) >= self._config.queue_limit:
            self._drop_one()
        self._queue.append(payload)
        self._ready.set()

    def _drop_one(self) -> None:
        for i, item in enumerate(self._queue):
            if isinstance(item, Housekeeping):
                del self._queue[i]
                break
        else:
            self._queue.popleft()
        self.counters["dropped"] += 1

    def _state(self, online: bool) -> NodeState:
        return NodeState(
            node_id=self._node_id,
            online=online,
            boot_id=self._boot_id,
            version=self._version,
            utc=self._clock(),
        )

    async def _run(self) -> None:
        delays = backoff_delays()
        failures = 0
        will = aiomqtt.Will(
            topic(self._node_id, Leaf.STATE), self._state(False).to_wire(), qos=1, retain=True
        )
        while not self._stopping.is_set():
            client = aiomqtt.Client(
                self._config.host,
                self._config.port,
                identifier=f"umbra-node-{self._node_id}",
                will=will,
                keepalive=self._config.keepalive_s,
                username=self._config.username or None,
                password=self._config.password or None,
                timeout=5.0,
            )
            try:
                async with client:
                    self._connected = True
                    self.counters["connects"] += 1
                    delays = backoff_delays()
                    failures = 0
                    log.info("connected to mqtt://%s:%d", self._config.host, self._config.port)
                    await client.publish(
                        topic(self._node_id, Leaf.STATE), self._state(True).to_wire(), qos=1, retain=True
                    )
                    await self._drain(client)
                    # Stopping: say goodbye ourselves (the broker sends the Will only on a crash).
                    await client.publish(
                        topic(self._node_id, Leaf.STATE), self._state(False).to_wire(), qos=1, retain=True
                    )
            except aiomqtt.MqttError as exc:
                self.counters["connect_failures"] += 1
                failures += 1
                delay = next(delays)
                if self._connected:
                    log.warning("lost the broker (%s); reconnecting", exc)
                    failures = 0
                elif failures & (failures - 1) == 0:  # 1st, 2nd, 4th, 8th… failure: not a flood
                    log.warning("broker mqtt://%s:%d unavailable (%s); retrying in %.1f s",
                                self._config.host, self._config.port, exc, delay)
                self._connected = False
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    pass
            finally:
                self._connected = False

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            while self._queue:
                item = self._queue[0]
                await client.publish(topic(self._node_id, item.LEAF), item.to_wire(), qos=QOS[item.LEAF])
                # Only after the broker took it (QoS 1) or the socket did (QoS 0).
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
                self.counters["published"] += 1
            if self._stopping.is_set():
                return
            self._ready.clear()
            await self._ready.wait()
