"""The node's side of the MQTT bus: birth, Last Will, store-and-forward telemetry, commands.

``TelemetryBus`` is an async context manager owning a TaskGroup.  The controller hands it
payloads with :meth:`TelemetryBus.publish`, which never blocks and never raises: the
packet goes into the :class:`~node.bus.outbox.Outbox` (SQLite, on disk) and a sender
publishes it at QoS 1, deleting it when the broker acknowledges.  While the broker is
away packets wait on disk and the bus reconnects with jittered exponential backoff.

On each connection the packets already stored are the *backlog*: they are sent in
sequence order flagged ``historical`` at no more than ``backlog_rate`` packets per
second, while packets made since the connection came up (*live*) go out at once.  Up to
``window`` publishes are in flight at a time.

With a :class:`~node.bus.processor.CommandProcessor` the bus also subscribes to the
node's ``tc`` topic, hands each message to it and runs its schedule.  With a
:class:`~node.files.service.FileService` it subscribes to ``file/tc`` too and runs the
file service's sender on the same connection (one connection per node, ICD §5.8).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import socket
import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiomqtt
import msgpack

from node.bus.outbox import Outbox, Row
from node.bus.payloads import Event, Housekeeping, Leaf, NodeState, Severity, TcReport, topic
from node.bus.processor import CommandProcessor
from node.config import MqttConfig
from node.files.service import FileService

log = logging.getLogger("umbra.node.bus")

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0
#: QoS per leaf (docs/ICD.md §5.2): everything the node sends must arrive.
QOS = {Leaf.STATE: 1, Leaf.HK: 1, Leaf.EVENT: 1, Leaf.TC_REPORT: 1}
#: Backlog packets per second after an outage (live packets are not limited).
BACKLOG_RATE = 200.0
#: Publishes awaiting their PUBACK at once.
WINDOW = 64
#: At most one telemetry_dropped event per this many seconds.
DROP_REPORT_S = 10.0

Payload = Housekeeping | Event | TcReport


def backoff_delays(
    lo: float = BACKOFF_MIN_S, hi: float = BACKOFF_MAX_S, rng: random.Random | None = None
) -> collections.abc.Iterator[float]:
    """Full-jitter exponential backoff: uniform(0, min(hi, lo·2ⁿ)), at least lo/2."""
    rng = rng or random.Random()
    ceiling = lo
    while True:
        yield max(lo / 2, rng.uniform(0, ceiling))
        ceiling = min(hi, ceiling * 2)


def mark_historical(body: bytes) -> bytes:
    """The same packet with ``historical: true`` (docs/ICD.md §5.5)."""
    mapping = msgpack.unpackb(body, raw=False)
    mapping["historical"] = True
    data: bytes = msgpack.packb(mapping, use_bin_type=True)
    return data


class _Lost(Exception):
    pass


def no_delay(client: aiomqtt.Client) -> None:
    """Send small packets at once (TCP_NODELAY): paho leaves Nagle's algorithm on, and a small
    publish behind an unacknowledged one waits for the broker's delayed ACK, 40 ms on Linux
    (a file service answer, a PUBACK, a housekeeping packet during a transfer)."""
    with contextlib.suppress(AttributeError, OSError):
        sock: Any = client._client.socket()
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TelemetryBus:
    def __init__(
        self,
        *,
        node_id: str,
        config: MqttConfig,
        boot_id: str,
        version: str,
        outbox: Outbox | None = None,
        processor: CommandProcessor | None = None,
        files: FileService | None = None,
        dict_hash: str = "",
        backlog_rate: float = BACKLOG_RATE,
        window: int = WINDOW,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node_id = node_id
        self._config = config
        self._boot_id = boot_id
        self._version = version
        self._dict_hash = dict_hash
        self._clock = clock
        self.outbox = outbox if outbox is not None else Outbox(":memory:", limit=config.queue_limit)
        self.processor = processor
        self.files = files
        self._backlog_rate = backlog_rate
        self._window = window
        self._tls = tls_context
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lost: BaseException | None = None
        self._connected = False
        self._task_group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._drops_reported = self.outbox.dropped_total
        self._drop_report_at = 0.0
        self.counters = {
            "published": 0, "historical": 0, "store_failures": 0, "connects": 0,
            "connect_failures": 0, "commands": 0,
        }

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def backlog(self) -> int:
        return len(self.outbox)

    async def __aenter__(self) -> Self:
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        if self.processor is not None:
            self.processor.recover()
            self._scheduler = self._task_group.create_task(
                self.processor.run_schedule(), name="umbra.node.tc.schedule"
            )
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
        if self._scheduler is not None:  # the schedule runs forever
            self._scheduler.cancel()
        await self._task_group.__aexit__(exc_type, exc, tb)

    # -- the controller's side ----------------------------------------------------------

    def next_seq(self) -> int:
        return self.outbox.next_seq()

    def publish(self, payload: Payload) -> None:
        """Store a packet for sending; never blocks, never raises."""
        try:
            self.outbox.put(payload)
        except Exception:
            self.counters["store_failures"] += 1
            log.exception("outbox could not store packet seq %s", payload.seq)
            return
        self._ready.set()
        self._report_drops()

    def _report_drops(self) -> None:
        total = self.outbox.dropped_total
        now = time.monotonic()
        if total == self._drops_reported or now - self._drop_report_at < DROP_REPORT_S:
            return
        new = total - self._drops_reported
        self._drops_reported = total
        self._drop_report_at = now
        self.publish(Event(
            node_id=self._node_id, seq=self.outbox.next_seq(), utc=self._clock(), t_board=0.0,
            kind="telemetry_dropped", severity=int(Severity.WARNING),
            text=f"outbox full ({self.outbox.limit} packets): {new} packets dropped",
            data={"new": new, **{f"total_{k}": v for k, v in self.outbox.dropped.items()}},
        ))

    # -- the connection -----------------------------------------------------------------

    def _state(self, online: bool) -> NodeState:
        return NodeState(
            node_id=self._node_id,
            online=online,
            boot_id=self._boot_id,
            version=self._version,
            utc=self._clock(),
            dict_hash=self._dict_hash,
        )

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(
            topic(self._node_id, Leaf.STATE), self._state(False).to_wire(), qos=1, retain=True
        )
        client = aiomqtt.Client(
            self._config.host,
            self._config.port,
            identifier=f"umbra-node-{self._node_id}",
            will=will,
            keepalive=self._config.keepalive_s,
            username=self._config.username or None,
            password=self._config.password or None,
            timeout=10.0,
            max_inflight_messages=self._window,
            tls_context=self._tls,
        )
        client.pending_calls_threshold = self._window + 16  # a full window is normal, not news
        return client

    async def _run(self) -> None:
        delays = backoff_delays()
        failures = 0
        while not self._stopping.is_set():
            self._lost = None
            try:
                async with self._client() as client:
                    no_delay(client)
                    self._connected = True
                    self.counters["connects"] += 1
                    delays = backoff_delays()
                    failures = 0
                    log.info("connected to mqtt://%s:%d (%d packets stored)",
                             self._config.host, self._config.port, len(self.outbox))
                    await client.publish(
                        topic(self._node_id, Leaf.STATE), self._state(True).to_wire(), qos=1, retain=True
                    )
                    helpers: list[asyncio.Task[None]] = []
                    if self.processor is not None:
                        await client.subscribe(topic(self._node_id, Leaf.TC), qos=1)
                    if self.files is not None:
                        await client.subscribe(topic(self._node_id, Leaf.FILE_TC), qos=1)
                        helpers.append(asyncio.create_task(self._files(client), name="umbra.node.files"))
                    if self.processor is not None or self.files is not None:
                        helpers.append(asyncio.create_task(self._receive(client), name="umbra.node.tc"))
                    try:
                        await self._send(client, live_from=self.outbox.peek_seq())
                    finally:
                        for helper in helpers:
                            helper.cancel()
                            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                                await helper
                    # Stopping: say goodbye ourselves (the broker sends the Will only on a crash).
                    await client.publish(
                        topic(self._node_id, Leaf.STATE), self._state(False).to_wire(), qos=1, retain=True
                    )
            except (aiomqtt.MqttError, _Lost) as exc:
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

    async def _receive(self, client: aiomqtt.Client) -> None:
        file_tc = topic(self._node_id, Leaf.FILE_TC)
        try:
            async for message in client.messages:
                payload: Any = message.payload
                data = payload if isinstance(payload, bytes) else str(payload or "").encode()
                if message.topic.value == file_tc:
                    if self.files is not None:
                        self.files.handle(data)
                    continue
                self.counters["commands"] += 1
                if self.processor is not None:
                    self.processor.handle(data)
        except aiomqtt.MqttError as exc:
            self._lost = exc
            self._ready.set()

    async def _files(self, client: aiomqtt.Client) -> None:
        """The file service's sender on this connection (ICD §5.9)."""
        assert self.files is not None
        file_tm = topic(self._node_id, Leaf.FILE_TM)

        async def publish(body: bytes) -> None:
            await client.publish(file_tm, body, qos=1)

        try:
            await self.files.run(publish)
        except aiomqtt.MqttError as exc:
            self._lost = exc
            self._ready.set()

    async def _send(self, client: aiomqtt.Client, *, live_from: int) -> None:
        """Publish stored packets until stopping (returns) or the connection fails (raises)."""
        slots = asyncio.Semaphore(self._window)
        acked: list[int] = []
        inflight: set[asyncio.Task[None]] = set()
        last_live = live_from - 1
        last_back = 0
        tokens = 1.0
        refilled = time.monotonic()

        async def put(row: Row, historical: bool) -> None:
            try:
                body = mark_historical(row.body) if historical else row.body
                await client.publish(topic(self._node_id, row.leaf), body, qos=QOS[row.leaf])
            except aiomqtt.MqttError as exc:
                self._lost = exc
            else:
                acked.append(row.seq)
                self.counters["published"] += 1
                self.counters["historical"] += historical
            finally:
                slots.release()
                self._ready.set()

        async def start(rows: list[Row], historical: bool) -> None:
            for row in rows:
                await slots.acquire()
                task = asyncio.create_task(put(row, historical))
                inflight.add(task)
                task.add_done_callback(inflight.discard)

        try:
            while True:
                if self._lost is not None:
                    raise _Lost(str(self._lost))
                if acked:
                    self.outbox.ack(acked)
                    acked.clear()
                rows = self.outbox.pending(after=last_live, limit=self._window)
                if rows:
                    last_live = rows[-1].seq
                    await start(rows, historical=False)
                    continue
                wait: float | None = None
                if last_back < live_from - 1 and not self._stopping.is_set():
                    now = time.monotonic()
                    rate = self._backlog_rate
                    tokens = math.inf if math.isinf(rate) else min(
                        max(1.0, rate / 4), tokens + (now - refilled) * rate)
                    refilled = now
                    if tokens >= 1:
                        n = self._window if math.isinf(tokens) else min(int(tokens), self._window)
                        back = self.outbox.pending(after=last_back, before=live_from, limit=n)
                        if not back:
                            last_back = live_from - 1
                        else:
                            last_back = back[-1].seq
                            tokens -= len(back)
                            await start(back, historical=True)
                        continue
                    wait = (1 - tokens) / rate
                if self._stopping.is_set():
                    if inflight:
                        await asyncio.wait(set(inflight), timeout=1.0)
                    if acked:
                        self.outbox.ack(acked)
                        acked.clear()
                    return
                self._ready.clear()
                if wait is None:
                    await self._ready.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._ready.wait(), wait)
        finally:
            for task in list(inflight):
                task.cancel()
            if acked:  # the broker has these even though the connection is going
                self.outbox.ack(acked)
