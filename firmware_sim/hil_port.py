"""The board's HIL port, sans-I/O: the harness reads and injects simulation parameters.

Same framing and reliable channel as the node link, on a second pseudo-terminal:

- HIL_SET name/value (reliable) → ACK OK, or BAD_ARGUMENT for an unknown or read-only name
  or a bad value (the parameter keeps its old value);
- HIL_GET name → HIL_VALUE(name, value, ref=the request's sequence number); an unknown
  name answers NaN;
- HELLO → HELLO_ACK, as on the link, and a new session on this port; numbered frames
  before it are ignored, as on the main port (the harness HELLOs first, ICD §4.2 S7).

HIL traffic is not node traffic: it never feeds the link watchdog, and this port sends
no HEARTBEAT.

Parameter names: docs/ICD.md §4.12 (the board's clock, link faults and reset are served
by :class:`~firmware_sim.board.Board`, the rest by the firmware and the plant).
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

from firmware_sim.plant import ParamValue
from node.errors import CommandRejected, LocalProtocolError
from node.link.channel import ReliableChannel
from node.link.messages import AckStatus, Hello, HelloAck, HilGet, HilSet, HilValue, Message
from node.link.session import BoardSession


class ParamTarget(Protocol):
    """What the HIL port talks to (the :class:`~firmware_sim.firmware.Firmware`)."""

    def get_param(self, name: str) -> ParamValue: ...

    def set_param(self, name: str, value: ParamValue) -> None: ...

    def hello_ack(self, hello: Hello) -> HelloAck: ...


class HilPort:
    """Serve HIL_SET / HIL_GET against ``target``."""

    #: The session of the HIL port (a test may run a deliberately deviant one).
    session_cls: type[BoardSession] = BoardSession

    def __init__(
        self,
        *,
        target: ParamTarget,
        retry_timeout_s: float = 0.25,
        max_tries: int = 5,
        logger: logging.Logger | None = None,
        wall: float = 0.0,
    ) -> None:
        self.target = target
        self.log = logger or logging.getLogger("umbra.board.hil")
        # No watchdog and no heartbeat on this port (ICD §2.1, §4.3); a session as on the main one.
        self.link = self.session_cls(hello_ack=target.hello_ack, wall=wall, retry_timeout_s=retry_timeout_s,
                                 max_tries=max_tries)

    @property
    def channel(self) -> ReliableChannel:
        return self.link.channel

    def receive(self, data: bytes, *, wall: float) -> bytes:
        for seq, message in self.link.receive(data, wall):
            self._deliver(seq, message, wall)
        return self.link.take_output()

    def poll(self, *, wall: float) -> bytes:
        self.link.poll(wall)  # retransmissions only: nothing reliable goes out on this port yet
        return self.link.take_output()

    def _deliver(self, seq: int, message: Message, wall: float) -> None:
        if isinstance(message, HilGet):
            self.link.send(self._value(message.name, seq), wall)
            return
        if not message.RELIABLE:
            return  # nothing to do
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
        self.link.ack(seq, status, wall)

    def _value(self, name: str, ref: int) -> HilValue:
        try:
            return HilValue(name=name, value=self.target.get_param(name), ref=ref)
        except CommandRejected:
            pass  # unknown name
        except LocalProtocolError as exc:  # a value the protocol cannot carry
            self.log.warning("HIL value %s not representable: %s", name, exc)
        return HilValue(name=name, value=math.nan, ref=ref)
