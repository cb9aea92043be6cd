"""Client for a board's HIL port (docs/ICD.md §4.9): set and read simulation parameters.

The HIL port speaks the same framing as the node link.  ``HilClient`` opens it (a pty path
or any pyserial URL), sends HIL_SET reliably and answers HIL_GET with the board's
HIL_VALUE.  It is the harness's hand on the plant: raise a GPU's demand, read ground truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from node.errors import LinkError
from node.link.channel import Acknowledged, Delivered, GaveUp, ReliableChannel
from node.link.codec import FrameDecoder
from node.link.messages import AckStatus, Hello, HelloAck, HilGet, HilSet, HilValue
from node.link.serial_board import open_serial

HilScalarOrArray = float | tuple[float, ...]


class HilClient:
    def __init__(self, *, port: str, timeout: float = 2.0,
                 on_notice: Callable[[HilScalarOrArray], None] | None = None) -> None:
        self._port = port
        # A HIL_VALUE with ref 0 answers no HIL_GET: a board's own notice (`plant.due`,
        # docs/real-boards.md §6).
        self._on_notice = on_notice
        self._timeout = timeout
        self._channel = ReliableChannel(retry_timeout=0.2, max_tries=10)
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._values: dict[int, asyncio.Future[HilScalarOrArray]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._hello_ack: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Self:
        self._transport, _ = await open_serial(self._port, self._on_bytes, what="HIL port")
        self._poller = asyncio.create_task(self._poll(), name="umbra.hil.port")
        await self._handshake()
        return self

    async def _handshake(self) -> None:
        """HELLO first (ICD rule S7): the board restarts its numbering for us, so a harness
        re-attaching to a running board is not mistaken for a duplicate of the last one."""
        self._hello_ack = asyncio.get_running_loop().create_future()
        self._channel.reset()  # our numbering starts at 1 after HELLO (ICD §4.2 S1)
        hello = ReliableChannel.session_frame(Hello(node_id="umbra-hil"))
        deadline = time.monotonic() + self._timeout * 5
        while not self._hello_ack.done():
            self._write(hello)
            try:
                await asyncio.wait_for(asyncio.shield(self._hello_ack), 0.25)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    await self.__aexit__(None, None, None)
                    raise LinkError(f"no HELLO_ACK on HIL port {self._port}", endpoint=self._port) from None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._transport is not None:
            self._transport.close()

    async def _poll(self) -> None:
        while True:
            events, out = self._channel.poll(time.monotonic())
            for data in out:
                self._write(data)
            for event in events:
                if isinstance(event, GaveUp) and (fut := self._acks.pop(event.seq, None)):
                    if not fut.done():
                        fut.set_exception(LinkError(f"board never acknowledged {event.message}"))
            await asyncio.sleep(0.05)

    def _write(self, data: bytes) -> None:
        if self._transport is None:
            raise LinkError("HIL port is not open", endpoint=self._port)
        self._transport.write(data)

    def _on_bytes(self, data: bytes) -> None:
        self._decoder.feed(data)
        while (frame := self._decoder.next_frame()) is not None:
            events, out = self._channel.receive(frame)
            for reply in out:
                self._write(reply)
            for event in events:
                if isinstance(event, Acknowledged) and (fut := self._acks.pop(event.seq, None)):
                    if not fut.done():
                        fut.set_result(int(event.status))
                elif isinstance(event, Delivered) and isinstance(event.message, HelloAck):
                    # The board numbers afresh after every HELLO it answers, a late answer to a
                    # repeated one included (S3); our own numbering must not restart (S1).
                    self._channel.reset_receive()
                    if self._hello_ack is not None and not self._hello_ack.done():
                        self._hello_ack.set_result(None)
                elif isinstance(event, Delivered) and isinstance(event.message, HilValue):
                    if event.message.ref == 0 and self._on_notice is not None:
                        self._on_notice(event.message.value)
                        continue
                    vfut = self._values.pop(event.message.ref, None)
                    if vfut is not None and not vfut.done():
                        vfut.set_result(event.message.value)

    async def set(self, name: str, value: float | list[float] | tuple[float, ...]) -> None:
        """Set a parameter; LinkError when unanswered, ValueError when the board refuses it."""
        wire_value: Any = tuple(float(v) for v in value) if isinstance(value, list | tuple) else float(value)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._write(self._channel.send(HilSet(name=name, value=wire_value), time.monotonic()))
        self._acks[self._channel.last_seq] = fut
        status = await asyncio.wait_for(fut, self._timeout * 5)
        if status != AckStatus.OK:
            raise ValueError(f"board refused {name} = {value!r} (status {status})")

    async def get(self, name: str) -> HilScalarOrArray:
        """Read a parameter or a ground-truth value; retried until answered or timed out."""
        deadline = time.monotonic() + self._timeout * 5
        while True:
            fut: asyncio.Future[HilScalarOrArray] = asyncio.get_running_loop().create_future()
            self._write(self._channel.send(HilGet(name=name), time.monotonic()))
            self._values[self._channel.last_seq] = fut
            try:
                return await asyncio.wait_for(fut, min(self._timeout, max(0.05, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise LinkError(f"no answer for {name} from {self._port}", endpoint=self._port) from None
