"""Send one signed telecommand and follow its verification reports (docs/ICD.md §5.6).

``send_command`` subscribes to the node's ``tc/report`` first, publishes the telecommand
at QoS 1, and yields each report about it as it arrives until the final one
(``completed`` or ``failed``) — or, for a time-tagged command when ``follow_schedule`` is
false, until it was accepted into the schedule.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt

from node.bus import signing
from node.bus.payloads import Leaf, Stage, TcReport, Telecommand, counter_limit, topic
from node.errors import RemoteProtocolError

DEFAULT_EXPIRES_S = 60.0


def new_command_id() -> str:
    return uuid.uuid4().hex[:16]


def build_telecommand(
    *,
    node_id: str,
    name: str,
    args: dict[str, Any],
    key: bytes,
    counter: int,
    expires_in: float = DEFAULT_EXPIRES_S,
    exec_at: float | None = None,
    command_id: str | None = None,
    now: float | None = None,
) -> Telecommand:
    now = time.time() if now is None else now
    if counter > counter_limit(now):
        raise ValueError(f"counter {counter} is beyond UTC in µs plus a day: nodes refuse it "
                         "(COUNTER_AHEAD), and accepting it would lock out every later command")
    expires = now + expires_in
    tc = Telecommand(
        node_id=node_id,
        id=command_id or new_command_id(),
        counter=counter,
        name=name,
        args=args,
        expires=expires,
        exec_at=exec_at,
    )
    return signing.sign(key, tc)


async def send_command(
    host: str,
    port: int,
    tc: Telecommand,
    *,
    follow_schedule: bool = False,
    username: str | None = None,
    password: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    wire: bytes | None = None,
) -> AsyncIterator[TcReport]:
    """Publish ``tc`` (or the raw ``wire`` bytes, for tests) and yield its reports."""
    async with aiomqtt.Client(
        host, port, identifier=f"umbra-ground-send-{uuid.uuid4().hex[:8]}",
        username=username, password=password, tls_context=tls_context, timeout=10.0,
    ) as client:
        await client.subscribe(topic(tc.node_id, Leaf.TC_REPORT), qos=1)
        await client.publish(topic(tc.node_id, Leaf.TC), wire if wire is not None else tc.to_wire(), qos=1)
        async for message in client.messages:
            payload: Any = message.payload
            try:
                report = TcReport.from_wire(bytes(payload))
            except (RemoteProtocolError, TypeError):
                continue
            if report.id != tc.id:
                continue
            yield report
            if report.final:
                return
            scheduled = report.stage == Stage.ACCEPTED and "exec_at" in report.data
            if scheduled and not follow_schedule:
                return


def format_report(r: TcReport) -> str:
    text = f"{r.stage:<9} {r.name} id={r.id} counter={r.counter}"
    if r.stage == Stage.FAILED:
        text += f" at={r.at} code={r.code} {r.reason}"
    if r.duplicate:
        text += " (duplicate: answered, not executed)"
    if r.data:
        text += f" {r.data}"
    if r.text:
        text += f" — {r.text}"
    return text
