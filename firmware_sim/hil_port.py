"""The board's HIL port, sans-I/O: the harness reads and injects simulation parameters.

Same framing and reliable channel as the node link, on a second pseudo-terminal:

- HIL_SET name/value (reliable) → ACK OK, or BAD_ARGUMENT for an unknown or read-only name
  or a bad value (the parameter keeps its old value);
- HIL_GET name → HIL_VALUE(name, value, ref=the request's sequence number); an unknown
  name answers NaN;
- HELLO → HELLO_ACK, as on the link, and a new session on this port.

HIL traffic is not node traffic: it never feeds the link watchdog.

Parameter names: docs/ICD.md §4.12 (the board's clock, link faults and reset are served
by :class:`~firmware_sim.board.Board`, the rest by the firmware and the plant).
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

from firmware_sim.plant import ParamValue
from node.errors import CommandRejected, LocalProtocolError
from node.link.channel import Delivered, ReliableChannel
from node.link.codec import Frame, FrameDecoder
from node.link.messages import AckStatus, Hello, HelloAck, HilGet, HilSet, HilValue, Message


class ParamTarget(Protocol):
    """What the HIL port talks to (the :class:`~firmware_sim.firmware.Firmware`)."""

    def get_param(self, name: str) -> ParamValue: ...

    def set_param(self, name: str, value: ParamValue) -> None: ...

    def hello_ack(self, hello: Hello) -> HelloAck: ...


class HilPort:
    """Serve HIL_SET / HIL_GET against ``target``."""

    def __init__(
        self,
        *,
        target: ParamTarget,
        retry_timeout_s: float = 0.25,
        max_tries: int = 5,
        logger: logging.Logger | None = None,
    ) -> None:
        self.target = target
        self.log = logger or logging.getLogger("umbra.board.hil")
        self.channel = ReliableChannel(retry_timeout=retry_timeout_s, max_tries=max_tries)
        self.decoder = FrameDecoder()

    def receive(self, data: bytes, *, wall: float) -> bytes:
        self.decoder.feed(data)
        out = []
        while (frame := self.decoder.next_frame()) is not None:
            out.append(self.handle_frame(frame, wall=wall))
        return b"".join(out)

    def handle_frame(self, frame: Frame, *, wall: float) -> bytes:
        events, out = self.channel.receive(frame)
        parts = [*out]
        for event in events:
            if isinstance(event, Delivered):
                parts.append(self._deliver(event.seq, event.message, wall))
        return b"".join(parts)

    def poll(self, *, wall: float) -> bytes:
        _events, frames = self.channel.poll(wall)  # nothing reliable goes out on this port yet
        return b"".join(frames)

    def _deliver(self, seq: int, message: Message, wall: float) -> bytes:
        if isinstance(message, Hello):
            self.channel.reset()
            return self.channel.session_frame(self.target.hello_ack(message))
        if isinstance(message, HilGet):
            return self.channel.send(self._value(message.name, seq), wall)
        if not message.RELIABLE or seq == 0:
            return b""  # nothing to do, and a session-frame command cannot be acknowledged
        status: int = AckStatus.OK
        try:
            if not isinstance(message, HilSet):
                raise CommandRejected(
                    f"{type(message).__name__} is not served on the HIL port",
                    code=AckStatus.UNSUPPORTED,
                )
            self.target.set_param(message.name, message.value)
        except CommandRejected as exc:
            status = exc.code
            self.log.info("refused %s (seq %d): %s", type(message).__name__, seq, exc)
        else:
            self.log.info("HIL set %s = %r", message.name, message.value)
        return self.channel.ack(seq, status)

    def _value(self, name: str, ref: int) -> HilValue:
        try:
            return HilValue(name=name, value=self.target.get_param(name), ref=ref)
        except CommandRejected:
            pass  # unknown name
        except LocalProtocolError as exc:  # a value the protocol cannot carry
            self.log.warning("HIL value %s not representable: %s", name, exc)
        return HilValue(name=name, value=math.nan, ref=ref)
