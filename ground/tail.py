"""Follow node telemetry on the MQTT bus: a decoded stream and its one-line formatting.

``tail()`` is an async generator of decoded messages, malformed-message notices and link
status changes; it reconnects by itself with jittered exponential backoff, so a consumer
(the CLI today, the web console later) only decides how to show each item.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import random
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from ground.jsonsafe import jsonable
from node.bus.payloads import (
    Event,
    Housekeeping,
    Leaf,
    NodeState,
    Severity,
    decode_message,
    topic_filter,
)
from node.errors import RemoteProtocolError

log = logging.getLogger("umbra.ground.tail")

TAIL_LEAVES: tuple[Leaf, ...] = (Leaf.STATE, Leaf.HK, Leaf.EVENT)

Payload = NodeState | Housekeeping | Event


@dataclass(frozen=True, slots=True)
class Received:
    """One decoded message from a node."""

    topic: str
    node_id: str
    payload: Payload
    retained: bool = False


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message on an Umbra topic that did not decode; shown, then skipped."""

    topic: str
    reason: str
    size: int


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """The subscriber connected, or lost the broker and will retry in ``retry_in`` s."""

    connected: bool
    endpoint: str
    detail: str = ""
    retry_in: float | None = None


TailItem = Received | Malformed | LinkStatus


@dataclass(slots=True)
class Backoff:
    """Jittered exponential backoff: first, first*factor, ... up to ``maximum`` seconds."""

    first: float = 0.5
    factor: float = 2.0
    maximum: float = 10.0
    _next: float = dataclasses.field(default=0.0, init=False)

    def reset(self) -> None:
        self._next = 0.0

    def next_delay(self) -> float:
        self._next = min(self.maximum, self._next * self.factor if self._next else self.first)
        # Full-range jitter would allow near-zero waits; keep at least half the step.
        return self._next * random.uniform(0.5, 1.0)


def decode(topic_name: str, payload: Any, *, retained: bool = False) -> Received | Malformed:
    """Decode one MQTT message; never raises for bad input."""
    if isinstance(payload, bytearray | memoryview):
        payload = bytes(payload)
    if not isinstance(payload, bytes):
        return Malformed(topic_name, f"payload is {type(payload).__name__}, not bytes", 0)
    if not payload:
        # An empty publish clears a retained message; there is nothing to show.
        return Malformed(topic_name, "empty payload", 0)
    try:
        node_id, decoded = decode_message(topic_name, payload)
    except RemoteProtocolError as exc:
        return Malformed(topic_name, str(exc), len(payload))
    if not isinstance(decoded, NodeState | Housekeeping | Event):  # a leaf tail does not show
        return Malformed(topic_name, f"unexpected {type(decoded).__name__}", len(payload))
    return Received(topic_name, node_id, decoded, retained)


async def tail(
    host: str,
    port: int,
    *,
    node_id: str | None = None,
    leaves: Sequence[Leaf] = TAIL_LEAVES,
    qos: int = 1,
    backoff: Backoff | None = None,
    connect_timeout: float = 5.0,
    keepalive: int = 10,
) -> AsyncGenerator[TailItem, None]:
    """Subscribe to ``leaves`` of one node (or all) and yield what arrives, forever.

    ``keepalive`` also bounds the TCP connect (paho uses it as the socket timeout), so a
    silent network is noticed, and Ctrl-C answered, within seconds rather than a minute.
    Use it under ``contextlib.aclosing`` so that leaving early disconnects cleanly.
    """
    filters = [topic_filter(leaf, node_id) for leaf in leaves]
    endpoint = f"{host}:{port}"
    backoff = backoff or Backoff()
    closing = False
    while True:
        try:
            async with aiomqtt.Client(
                host, port, timeout=connect_timeout, keepalive=keepalive
            ) as client:
                for f in filters:
                    await client.subscribe(f, qos=qos)
                backoff.reset()
                log.debug("subscribed to %s on %s", filters, endpoint)
                try:
                    yield LinkStatus(True, endpoint, "subscribed to " + " ".join(filters))
                    async for message in client.messages:
                        yield decode(message.topic.value, message.payload, retained=message.retain)
                except GeneratorExit:
                    closing = True
                    raise
        except aiomqtt.MqttError as exc:
            if closing:  # the disconnect on close failed; nobody is listening any more
                return
            delay = backoff.next_delay()
            yield LinkStatus(False, endpoint, str(exc) or type(exc).__name__, round(delay, 1))
            await asyncio.sleep(delay)


# -- formatting -------------------------------------------------------------------------------


def _temp(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--.-C"
    return f"{value:.1f}C"


def format_item(item: Received) -> str:
    """One human line: node, kind, board time, and what matters for that kind."""
    p = item.payload
    if isinstance(p, Housekeeping):
        gpus = "  ".join(
            f"gpu{i} {_temp(t)} cap {c:.0f}W"
            for i, (t, c) in enumerate(zip(p.temp_c, p.cap_w, strict=True))
        )
        return (
            f"{item.node_id}  hk     t={p.t_board:.1f}s  {p.mode:<13} seq={p.seq}  {gpus}"
            f"  soc {p.battery_soc:.0%}"
            f"  solar {p.solar_w:.0f}W"
        ).rstrip()
    if isinstance(p, Event):
        try:
            sev = Severity(p.severity).name
        except ValueError:
            sev = str(p.severity)
        return f"{item.node_id}  event  t={p.t_board:.1f}s  {sev:<8} {p.kind}: {p.text}"
    state = "online" if p.online else "OFFLINE"
    extras = ", ".join(
        x for x in (p.boot_id and f"boot {p.boot_id}", p.version and f"v{p.version}") if x
    )
    retained = " (retained)" if item.retained else ""
    return f"{item.node_id}  state  {state}" + (f" ({extras})" if extras else "") + retained


def format_json(item: Received) -> str:
    """One JSON object per line: topic, node, leaf, retained, payload fields."""
    record = {
        "topic": item.topic,
        "node": item.node_id,
        "leaf": item.payload.LEAF.value,
        "retained": item.retained,
        "payload": jsonable(dataclasses.asdict(item.payload)),
    }
    return json.dumps(record, separators=(",", ":"), allow_nan=False)


def format_malformed(item: Malformed) -> str:
    return f"warning: skipped malformed message on {item.topic} ({item.size} bytes): {item.reason}"


def format_status(item: LinkStatus) -> str:
    if item.connected:
        return f"connected to {item.endpoint}; {item.detail}"
    return f"waiting for broker at {item.endpoint} ({item.detail}); retrying in {item.retry_in:g} s"
