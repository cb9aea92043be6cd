"""The event-loop side of an :class:`~node.files.endpoint.Endpoint`, shared by the node's
file service (node/files/service.py) and ground's (ground/files.py).

A :class:`Pump` takes the PDUs that came in (:meth:`Pump.handle`), makes receivers' bytes
durable and hashes whole files in a worker thread (:meth:`Pump.settle_forever`), and sends
what the endpoint has to send (:meth:`Pump.run`) with at most ``max_inflight``
unacknowledged publishes and data at no more than ``rate_bytes_s``, so other traffic on the
same connection (the node's housekeeping) is never stuck behind a file.  How a PDU is put on
the wire (plain on ``file/tm``, sealed for one node on ``file/tc``) is the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from node.files.endpoint import Endpoint
from node.files.pdu import AnyPdu, Data

#: A PDU's bytes on the wire, or None where it cannot be sent (ground: no key for its node).
Encode = Callable[[AnyPdu], bytes | None]
#: Publish those bytes (QoS 1); raising ends :meth:`Pump.run` with that exception.
Publish = Callable[[AnyPdu, bytes], Awaitable[None]]
#: The longest the sender sleeps with nothing to send before it looks at the timers again.
IDLE_S = 0.25


class Pump:
    def __init__(self, endpoint: Endpoint, *, max_inflight: int, rate_bytes_s: float = 0.0) -> None:
        self.endpoint = endpoint
        self.max_inflight = max_inflight
        self.rate_bytes_s = rate_bytes_s
        self._idle_s = min(IDLE_S, endpoint.probe_s / 2)
        self._wake = asyncio.Event()
        self._settle = asyncio.Event()  # a receiver's bytes to make durable, a file to hash

    def wake(self) -> None:
        """There may be something to send now (a new transfer, a cancel)."""
        self._wake.set()

    def handle(self, pdu: AnyPdu) -> None:
        """A PDU from the peer (already checked to be for this side)."""
        self.endpoint.handle(pdu)
        if self.endpoint.unsettled:
            self._settle.set()
        self._wake.set()

    async def settle_forever(self) -> None:
        """Receivers' fsyncs and hashes, in a thread, one after another, so the loop keeps
        taking chunks."""
        while True:
            await self._settle.wait()
            self._settle.clear()
            await self.endpoint.settle()
            self._wake.set()

    async def run(self, encode: Encode, publish: Publish) -> None:
        """Send until cancelled, or until a publish fails (its exception: the connection is
        going, and the caller reconnects and runs this again)."""
        slots = asyncio.Semaphore(self.max_inflight)
        inflight: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []
        rate = self.rate_bytes_s
        tokens, refilled = 0.0, time.monotonic()

        async def put(pdu: AnyPdu, body: bytes) -> None:
            try:
                await publish(pdu, body)
            except BaseException as exc:
                failure.append(exc)
            finally:
                slots.release()
                self._wake.set()

        try:
            while True:
                if failure:
                    raise failure[0]
                self.endpoint.tick()
                if self.endpoint.unsettled:
                    self._settle.set()
                pdu = self.endpoint.next_out()
                if pdu is None:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._idle_s)
                    continue
                body = encode(pdu)
                if body is None:
                    continue
                if rate > 0 and isinstance(pdu, Data):
                    now = time.monotonic()
                    tokens = min(rate / 4, tokens + (now - refilled) * rate)  # bursts of 250 ms at most
                    refilled = now
                    tokens -= len(body)
                    if tokens < 0:
                        await asyncio.sleep(-tokens / rate)
                await slots.acquire()
                task = asyncio.create_task(put(pdu, body))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
        finally:
            for task in list(inflight):
                task.cancel()
