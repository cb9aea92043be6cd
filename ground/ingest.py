"""Ingest: subscribe to every node's telemetry and store it in the archive.

``async with Ingestor(archive=..., host=..., port=...) as ing:`` runs two named tasks: a
subscriber (reconnecting with jittered backoff) that decodes messages onto a queue, and a
writer that stores them in batches (one transaction each) through a worker thread.

For a fleet, run several workers with ``shared="umbra-ingest"``: they subscribe to
``$share/umbra-ingest/umbra/v1/+/tm/hk`` (and ``tm/event``, ``tc/report``) with MQTT v5,
and the broker hands each message to one of them.  The archive's (node, seq) key keeps a
packet stored once even when two workers do see it (a redelivery after a reconnect).
``state`` is subscribed without sharing by every worker: retained messages are never sent
to a shared subscription, and storing a state twice is harmless.

Without ``shared`` the subscriptions are plain MQTT 3.1.1, which any broker (amqtt
included) understands; that is what the console uses by default.

What is refused never blocks what follows: a payload that does not decode, claims another
node's id than its topic's, or is stamped more than FUTURE_SLACK_S ahead of ground's clock
goes to the archive's ``dead_letters`` with the reason (and is counted in
``stats.refused``).  A batch the database refuses is split in halves until the packet
it cannot take is found; that one becomes a dead letter and the rest is stored.  Only
when the database takes no write at all (``Archive.ping`` fails) is the batch retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ground.archive import Archive, Storable, StoreResult
from ground.tail import Backoff
from node.bus.payloads import Leaf, decode_message, topic_filter
from node.errors import RemoteProtocolError

log = logging.getLogger("umbra.ground.ingest")

SHARED_LEAVES: tuple[Leaf, ...] = (Leaf.HK, Leaf.EVENT, Leaf.TC_REPORT)
DEFAULT_GROUP = "umbra-ingest"
#: A packet stamped this far ahead of ground's clock is refused (a node's clock may be off
#: a little; a claimed far future would pin ground's view of it).
FUTURE_SLACK_S = 300.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    node: str
    topic: str
    reason: str
    detail: str
    payload: str


def filters(shared: str | None) -> list[str]:
    """The subscription filters of one worker; ``state`` is never shared."""
    prefix = f"$share/{shared}/" if shared else ""
    return [prefix + topic_filter(leaf) for leaf in SHARED_LEAVES] + [topic_filter(Leaf.STATE)]


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    states: int = 0
    malformed: int = 0
    #: Refused packets by reason (malformed ones included): node_mismatch, future, invalid_value, …
    refused: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    batches: int = 0
    connected: bool = False
    last_error: str = ""


def _persistent_session(protocol: aiomqtt.ProtocolVersion) -> dict[str, Any]:
    """Keep the session (and the QoS 1 messages queued for it) for an hour of absence."""
    if protocol is aiomqtt.ProtocolVersion.V5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        return {"clean_start": False, "properties": props}
    return {"clean_session": False}


class Ingestor:
    def __init__(
        self,
        *,
        archive: Archive,
        host: str,
        port: int,
        shared: str | None = None,
        client_id: str | None = None,
        batch_max: int = 500,
        batch_wait: float = 0.05,
        backoff: Backoff | None = None,
        qos: int = 1,
        queue_max: int = 50_000,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.archive = archive
        self.host, self.port = host, port
        self.shared = shared
        # A stable id per archive (and worker) lets the broker keep the session while ground
        # is down: with QoS 1 it queues what arrives meanwhile, so a restart loses nothing.
        # Salted with a random secret kept in the archive: a client that could guess it
        # could connect under it and kick the ingest off the broker.
        self.client_id = client_id or "umbra-ingest-" + hashlib.sha256(
            f"{archive.secret('ingest_client_salt')}|{archive.url}|{shared}|"
            f"{getattr(archive, 'worker', '')}".encode()
        ).hexdigest()[:20]
        self.username, self.password, self.tls_context = username, password, tls_context
        self.batch_max, self.batch_wait = batch_max, batch_wait
        self.backoff = backoff or Backoff()
        self.qos = qos
        self.stats = IngestStats()
        self.subscribed = asyncio.Event()
        self._queue: asyncio.Queue[Storable | DeadLetter] = asyncio.Queue(maxsize=queue_max)
        self._idle = asyncio.Event()
        self._idle.set()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._tasks = [
            self._tg.create_task(self._subscribe(), name=f"{self.client_id}.subscribe"),
            self._tg.create_task(self._write(), name=f"{self.client_id}.write"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        assert self._tg is not None
        await self._tg.__aexit__(exc_type, exc, tb)
        log.info("%s stopped: %s", self.client_id, self.stats)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until everything received so far is stored."""
        async with asyncio.timeout(timeout):
            # Polled: "queue empty and writer idle" is two conditions, not one event.
            while not (self._queue.empty() and self._idle.is_set()):  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    async def _subscribe(self) -> None:
        subs = filters(self.shared)
        protocol = aiomqtt.ProtocolVersion.V5 if self.shared else aiomqtt.ProtocolVersion.V311
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=self.client_id, protocol=protocol,
                    keepalive=10, timeout=5.0, username=self.username, password=self.password,
                    tls_context=self.tls_context, **_persistent_session(protocol),
                ) as client:
                    for f in subs:
                        await client.subscribe(f, qos=self.qos)
                    self.backoff.reset()
                    self.stats.connected = True
                    self.subscribed.set()
                    log.info("%s subscribed to %s on %s:%s", self.client_id, subs, self.host, self.port)
                    async for message in client.messages:
                        await self._accept(message.topic.value, message.payload)
            except aiomqtt.MqttError as exc:
                self.stats.connected = False
                self.stats.last_error = str(exc) or type(exc).__name__
                delay = self.backoff.next_delay()
                log.warning("%s: broker %s:%s: %s; retrying in %.1f s", self.client_id, self.host,
                            self.port, self.stats.last_error, delay)
                await asyncio.sleep(delay)

    async def _accept(self, topic_name: str, payload: Any) -> None:
        if isinstance(payload, bytearray | memoryview):
            payload = bytes(payload)
        if not isinstance(payload, bytes) or not payload:
            return  # an empty retained message clears a state: nothing to store
        try:
            _, decoded = decode_message(topic_name, payload)
        except RemoteProtocolError as exc:
            self.stats.malformed += 1
            await self._refuse(topic_name, exc.reason, str(exc), payload)
            return
        utc = getattr(decoded, "utc", 0.0)
        if utc > time.time() + FUTURE_SLACK_S:
            await self._refuse(topic_name, "future", f"stamped {utc - time.time():.0f} s ahead of "
                               "ground's clock", payload)
            return
        self.stats.received += 1
        # Back-pressure, not QueueFull: while the archive is down the writer retries and
        # this waits; meanwhile messages wait in aiomqtt's incoming queue, none is dropped.
        await self._queue.put(decoded)  # type: ignore[arg-type]

    async def _refuse(self, topic_name: str, reason: str, detail: str, payload: bytes) -> None:
        count = self.stats.refused.get(reason, 0) + 1
        self.stats.refused[reason] = count
        if count <= 10 or count % 1000 == 0:  # a flood of them must not flood the log
            log.warning("refused a message on %s (%s, %d so far): %s", topic_name, reason, count,
                        detail[:200])
        node = topic_name.split("/")[2] if topic_name.count("/") >= 3 else ""
        await self._queue.put(DeadLetter(node=node, topic=topic_name, reason=reason,
                                         detail=detail, payload=payload[:2000].hex()))

    async def _write(self) -> None:
        while True:
            first = await self._queue.get()
            self._idle.clear()
            batch: list[Storable | DeadLetter] = [first]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
            await self._store(batch)
            if self._queue.empty():
                self._idle.set()

    async def _store(self, items: list[Storable | DeadLetter]) -> None:
        letters = [i for i in items if isinstance(i, DeadLetter)]
        batch = [i for i in items if not isinstance(i, DeadLetter)]
        if letters:
            await self._dead_letter(*letters)
        if batch:
            result = await self._store_or_split(batch)
            self._count(result)

    async def _dead_letter(self, *letters: DeadLetter) -> None:
        rows = [(d.node, d.topic, d.reason, d.detail, d.payload) for d in letters]
        while True:
            try:
                await asyncio.to_thread(self.archive.dead_letters_store, rows)
                self.stats.dead_letters += len(rows)
                return
            except Exception as exc:  # the database is down: wait for it, as for packets
                await self._archive_down(exc)

    async def _archive_down(self, exc: Exception) -> None:
        log.error("archive write failed (%s); retrying in 1 s", exc)
        self.stats.last_error = f"archive: {exc}"
        await asyncio.sleep(1.0)

    async def _store_or_split(self, batch: list[Storable]) -> StoreResult:
        """Store ``batch``; a packet the database refuses becomes a dead letter, the rest is kept."""
        while True:
            try:
                result: StoreResult = await asyncio.to_thread(self.archive.store, batch)
                return result
            except Exception as exc:
                error = exc
                try:
                    await asyncio.to_thread(self.archive.ping)
                except Exception:  # no write succeeds: a database hiccup, keep the batch
                    await self._archive_down(exc)
                    continue
            # The database works, so something in this batch cannot succeed: find it.
            if len(batch) == 1:
                bad = batch[0]
                log.error("archive refused a %s from %s: %s; moved to dead letters",
                          type(bad).__name__, bad.node_id, error)
                self.stats.refused["archive"] = self.stats.refused.get("archive", 0) + 1
                await self._dead_letter(DeadLetter(
                    node=bad.node_id, topic=bad.LEAF.value, reason="archive",
                    detail=f"{type(error).__name__}: {error}", payload=repr(bad)))
                return StoreResult()
            half = len(batch) // 2
            first = await self._store_or_split(batch[:half])
            second = await self._store_or_split(batch[half:])
            return StoreResult(
                stored=first.stored + second.stored, duplicates=first.duplicates + second.duplicates,
                states=first.states + second.states, gaps_opened=first.gaps_opened + second.gaps_opened,
                gap_nodes=first.gap_nodes | second.gap_nodes)

    def _count(self, result: StoreResult) -> None:
        self.stats.batches += 1
        self.stats.stored += result.stored
        self.stats.duplicates += result.duplicates
        self.stats.states += result.states
        if result.gaps_opened:
            log.info("gap(s) opened in %s", sorted(result.gap_nodes))
