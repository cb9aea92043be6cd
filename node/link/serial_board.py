"""The board over a serial port (a USB serial board, a pty from firmware_sim, or a URL).

``SerialBoard`` is an async context manager owning one TaskGroup.  It opens the port,
handshakes (HELLO until HELLO_ACK), turns incoming frames into :mod:`node.board` events,
retransmits commands until acknowledged, sends heartbeats, and watches liveness on the
wall clock.  When the port vanishes or goes quiet it reports ``LinkDown`` and keeps trying
to reopen it, so a board that comes back is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import serial
import serial_asyncio_fast

from node.board import BoardEvent, BoardInfo, CommandResult, LinkDown, LinkUp, SensorReading
from node.config import LinkConfig
from node.errors import LinkError
from node.link.channel import Acknowledged, Delivered, GaveUp, ReliableChannel
from node.link.codec import FrameDecoder
from node.link.messages import (
    SUPPORTED_VERSIONS,
    AckStatus,
    Checkpoint,
    Heartbeat,
    Hello,
    HelloAck,
    Message,
    ResetBoard,
    Sensor,
    SetCaps,
    SetRail,
    StepDone,
)

log = logging.getLogger("umbra.node.link")

#: Sensor frames a controller may fall behind by before the oldest are dropped.
EVENT_QUEUE_LIMIT = 1000
#: The link is declared dead after this many missed sensor periods, whatever the config says.
MISSED_FRAMES_FOR_TIMEOUT = 2.5


def is_url(port: str) -> bool:
    return "://" in port


def check_port_exists(port: str) -> None:
    """Fail early, naming the path, when a device path does not exist (URLs are not checked)."""
    if not is_url(port) and not Path(port).exists():
        raise LinkError(f"serial port {port} does not exist", endpoint=port)


class SerialProtocol(asyncio.Protocol):
    """Bytes to a callback; ``lost`` is set when the port goes away."""

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.lost: asyncio.Event = asyncio.Event()
        self.lost_reason = "port closed"

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_reason = f"port lost: {exc}" if exc else "port closed"
        self.lost.set()


async def open_serial(
    port: str, on_data: Callable[[bytes], None], *, baudrate: int = 115_200, what: str = "port"
) -> tuple[asyncio.Transport, SerialProtocol]:
    """Open a serial device or pyserial URL (socket://…); LinkError naming it when it cannot."""
    protocol = SerialProtocol(on_data)
    try:
        transport, _ = await serial_asyncio_fast.create_serial_connection(
            asyncio.get_running_loop(), lambda: protocol, port, baudrate=baudrate
        )
    except (serial.SerialException, OSError, ValueError) as exc:
        raise LinkError(f"cannot open {what} {port}: {exc}", endpoint=port) from None
    return transport, protocol


class SerialBoard:
    def __init__(
        self,
        *,
        port: str,
        node_id: str,
        config: LinkConfig,
        baudrate: int = 115_200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._port = port
        self._node_id = node_id
        self._config = config
        self._baudrate = baudrate
        self._clock = clock
        self._channel = ReliableChannel(retry_timeout=config.retry_timeout_s, max_tries=config.max_tries)
        self._decoder = FrameDecoder()
        self._events: asyncio.Queue[BoardEvent] = asyncio.Queue()
        self._transport: asyncio.Transport | None = None
        self._info: BoardInfo | None = None
        self._handshake: asyncio.Event = asyncio.Event()
        self._last_rx = 0.0
        self._started = clock()
        self._task_group: asyncio.TaskGroup | None = None
        self._connector: asyncio.Task[None]
        self._counters = {"sensor_dropped": 0, "link_downs": 0, "version_mismatch": 0, "board_reboots": 0}
        self._last_t_board = -1.0
        self._rebooted = False

    # --- Board interface ------------------------------------------------------------------

    @property
    def info(self) -> BoardInfo | None:
        return self._info

    @property
    def link_up(self) -> bool:
        return self._info is not None

    async def __aenter__(self) -> Self:
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._connector = self._task_group.create_task(
            self._connection_loop(), name="umbra.node.link.connect"
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task_group is not None
        self._connector.cancel()
        await self._task_group.__aexit__(exc_type, exc, tb)
        self._close_transport()

    async def next_event(self) -> BoardEvent:
        return await self._events.get()

    def set_caps(self, cap_w: Sequence[float]) -> None:
        self._send(SetCaps(cap_w=tuple(float(c) for c in cap_w)))

    def set_rail(self, gpu: int, on: bool) -> None:
        self._send(SetRail(gpu=gpu, on=on))

    def step_done(self, t_board: float) -> None:
        if self._transport is not None and self._info is not None:
            self._write(self._channel.send(StepDone(t_board=t_board), self._clock()))

    def reset_board(self) -> None:
        self._send(ResetBoard())

    def checkpoint(self, gpu: int, pause_s: float) -> None:
        self._send(Checkpoint(gpu=gpu, pause_s=pause_s))

    def stats(self) -> dict[str, int]:
        return {
            **self._decoder.stats.as_dict(),
            **self._channel.stats.as_dict(),
            **self._counters,
        }

    # --- internals ------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        if self._transport is None or self._info is None:
            raise LinkError(f"link to {self._port} is down", endpoint=self._port)
        self._transport.write(self._channel.send(message, self._clock()))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _emit(self, event: BoardEvent) -> None:
        if isinstance(event, SensorReading) and self._events.qsize() >= EVENT_QUEUE_LIMIT:
            self._counters["sensor_dropped"] += 1
            return
        self._events.put_nowait(event)

    async def _open(self) -> tuple[asyncio.Transport, SerialProtocol]:
        transport, protocol = await open_serial(self._port, self._on_bytes, baudrate=self._baudrate)
        # Whatever the board wrote while nobody listened is stale; start from a clean line.
        port = getattr(transport, "serial", None)
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.reset_input_buffer()
        return transport, protocol

    async def _connection_loop(self) -> None:
        announced_missing = False
        while True:
            try:
                transport, protocol = await self._open()
            except LinkError as exc:
                if not announced_missing:
                    log.warning("%s; retrying every %.1f s", exc, self._config.reconnect_s)
                    announced_missing = True
                await asyncio.sleep(self._config.reconnect_s)
                continue
            announced_missing = False
            self._transport = transport
            self._decoder = FrameDecoder(stats=self._decoder.stats)
            log.info("opened %s", self._port)
            try:
                reason = await self._session(protocol)
            finally:
                self._close_transport()
            self._link_down(reason)
            await asyncio.sleep(self._config.reconnect_s)

    async def _session(self, protocol: SerialProtocol) -> str:
        """Handshake, then keep the link serviced until it fails; return why it failed."""
        self._handshake.clear()
        self._rebooted = False
        self._channel.reset()
        hello = ReliableChannel.session_frame(Hello(node_id=self._node_id))
        while not self._handshake.is_set():
            if protocol.lost.is_set():
                return protocol.lost_reason
            self._write(hello)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._handshake.wait(), self._config.hello_interval_s)
        info = self._info
        assert info is not None
        timeout = max(self._config.timeout_s, MISSED_FRAMES_FOR_TIMEOUT / info.sensor_rate_hz)
        tick = min(0.05, self._config.retry_timeout_s / 2)
        last_heartbeat = -1e9
        while True:
            if protocol.lost.is_set():
                return "the board rebooted (its clock went back)" if self._rebooted else protocol.lost_reason
            now = self._clock()
            if now - self._last_rx > timeout:
                return f"no frame from the board for {now - self._last_rx:.2f} s"
            events, out = self._channel.poll(now)
            for data in out:
                self._write(data)
            for event in events:
                if isinstance(event, GaveUp):
                    log.warning("board never acknowledged %s", type(event.message).__name__)
                    self._emit(CommandResult(event.message, None))
            if now - last_heartbeat >= self._config.heartbeat_s:
                self._write(self._channel.send(Heartbeat(uptime_s=now - self._started), now))
                last_heartbeat = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(protocol.lost.wait(), tick)

    def _on_bytes(self, data: bytes) -> None:
        self._decoder.feed(data)
        while (frame := self._decoder.next_frame()) is not None:
            self._last_rx = self._clock()
            events, out = self._channel.receive(frame)
            for reply in out:
                self._write(reply)
            for event in events:
                if isinstance(event, Delivered):
                    self._on_message(event.message, event.seq)
                elif isinstance(event, Acknowledged):
                    self._emit(CommandResult(event.message, event.status))

    def _on_message(self, message: Message, seq: int) -> None:
        if isinstance(message, HelloAck):
            if message.version == 0 or not SUPPORTED_VERSIONS[0] <= message.version <= SUPPORTED_VERSIONS[1]:
                self._counters["version_mismatch"] += 1
                log.error(
                    "board speaks protocol %d..%d, we speak %d..%d",
                    message.min_version, message.max_version, *SUPPORTED_VERSIONS,
                )
                return
            # The board numbers afresh after every HELLO it answers (ICD rule S3), including
            # a late answer to a repeated HELLO: what we saw numbered before is stale.
            self._channel.reset_receive()
            if self._handshake.is_set():
                return
            self._last_t_board = -1.0
            self._info = BoardInfo.from_hello_ack(message)
            self._handshake.set()
            log.info("link up: board %s fw %s, %d GPUs", message.board_id, message.fw_version, message.gpu_count)
            self._emit(LinkUp(self._info))
        elif isinstance(message, Sensor):
            if self._info is None:
                return
            if message.t_board < self._last_t_board - 1.0:
                # Board time went back: the board rebooted under us.  Start a new session so
                # everything that counted on its clock (estimates, timers, jobs) starts over.
                self._rebooted = True
                self._counters["board_reboots"] += 1
                if self._transport is not None:
                    self._transport.close()
                return
            self._last_t_board = message.t_board
            self._emit(SensorReading(message, self._last_rx))
        elif message.RELIABLE:
            # The board sends us nothing reliable in v1; refuse politely so it stops retrying.
            self._write(self._channel.ack(seq, AckStatus.UNSUPPORTED))

    def _link_down(self, reason: str) -> None:
        if self._info is not None:
            self._info = None
            self._counters["link_downs"] += 1
            log.warning("link down: %s", reason)
            self._emit(LinkDown(reason))

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
