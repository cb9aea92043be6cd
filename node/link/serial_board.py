"""The board over a serial port (a USB serial board, a pty from firmware_sim, or a URL).

``SerialBoard`` is an async context manager owning one TaskGroup: the I/O around the
sans-I/O :class:`~node.link.session.NodeSession`, which does the handshake, numbering,
retransmissions, heartbeats, liveness and the safing rules of ICD §4.3.  When the port
vanishes the session ends (``LinkDown``) and the port is reopened, so a board that comes
back is picked up without a restart.
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

from node.board import BoardEvent, BoardInfo, LinkDown, LinkHealth, LinkUp, SensorReading
from node.config import LinkConfig
from node.errors import LinkError
from node.link.messages import Checkpoint, Message, ResetBoard, SetCaps, SetRail
from node.link.session import NodeSession

log = logging.getLogger("umbra.node.link")

#: Sensor frames a controller may fall behind by before the oldest are dropped.
EVENT_QUEUE_LIMIT = 1000
#: The longest the session's timers wait between two looks (wall seconds).
TICK_S = 0.05


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


class SessionBoard:
    """The Board interface over a :class:`NodeSession`: its events queued, its bytes written.

    Subclasses move the bytes: :class:`SerialBoard` over a port; tests over an in-memory
    pipe (``tests/doubleboard.py``).  They call :meth:`_received` with what arrived,
    :meth:`_tick` for the timers, and implement :meth:`_write`.
    """

    def __init__(self, *, node_id: str, config: LinkConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self.session = NodeSession(node_id=node_id, times=config.session_times(), started=clock())
        self._events: asyncio.Queue[BoardEvent] = asyncio.Queue()
        self._sensor_dropped = 0

    @property
    def info(self) -> BoardInfo | None:
        return self.session.info

    @property
    def link_up(self) -> bool:
        return self.session.link_up

    @property
    def link_state(self) -> str:
        return self.session.state.value

    async def next_event(self) -> BoardEvent:
        return await self._events.get()

    def set_caps(self, cap_w: Sequence[float]) -> None:
        self._send(SetCaps(cap_w=tuple(float(c) for c in cap_w)))

    def set_rail(self, gpu: int, on: bool) -> None:
        self._send(SetRail(gpu=gpu, on=on))

    def step_done(self, t_board: float) -> None:
        self.session.step_done(t_board, self._clock())
        self._flush()

    def reset_board(self) -> None:
        self._send(ResetBoard())

    def checkpoint(self, gpu: int, pause_s: float) -> None:
        self._send(Checkpoint(gpu=gpu, pause_s=pause_s))

    def stats(self) -> dict[str, int]:
        return {**self.session.stats(), "sensor_dropped": self._sensor_dropped}

    def _write(self, data: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _endpoint(self) -> str:
        return "board"

    def _send(self, message: Message) -> None:
        try:
            self.session.send(message, self._clock())
        except LinkError as exc:
            raise LinkError(f"{self._endpoint()}: {exc}", endpoint=self._endpoint()) from None
        self._flush()

    def _received(self, data: bytes) -> None:
        self.session.receive(data, self._clock())
        self._flush()

    def _tick(self) -> None:
        self.session.poll(self._clock())
        self._flush()

    def _flush(self) -> None:
        data = self.session.take_output()
        if data:
            self._write(data)
        for event in self.session.take_events():
            if isinstance(event, SensorReading) and self._events.qsize() >= EVENT_QUEUE_LIMIT:
                self._sensor_dropped += 1  # the controller fell behind: drop the newest news
                continue
            if isinstance(event, LinkDown | LinkHealth):
                log.warning("link %s: %s", getattr(event, "state", "down"), event.reason)
            elif isinstance(event, LinkUp):
                info = event.info
                log.info("link up: board %s fw %s, %d GPUs", info.board_id, info.fw_version, info.gpu_count)
            self._events.put_nowait(event)


class SerialBoard(SessionBoard):
    """The board over a serial port: opens and reopens it, feeds the session, runs its timers."""

    def __init__(
        self,
        *,
        port: str,
        node_id: str,
        config: LinkConfig,
        baudrate: int = 115_200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(node_id=node_id, config=config, clock=clock)
        self._port = port
        self._baudrate = baudrate
        self._transport: asyncio.Transport | None = None
        self._task_group: asyncio.TaskGroup | None = None
        self._connector: asyncio.Task[None]

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

    def _endpoint(self) -> str:
        return self._port

    def _send(self, message: Message) -> None:
        if self._transport is None:
            raise LinkError(f"link to {self._port} is down", endpoint=self._port)
        super()._send(message)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def _open(self) -> tuple[asyncio.Transport, SerialProtocol]:
        transport, protocol = await open_serial(self._port, self._received, baudrate=self._baudrate)
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
            log.info("opened %s", self._port)
            self.session.opened(self._clock())
            self._flush()
            reason = "port closed"
            try:
                reason = await self._service(protocol)
            finally:
                self.session.port_lost(reason, self._clock())
                self._flush()
                self._close_transport()
            await asyncio.sleep(self._config.reconnect_s)

    async def _service(self, protocol: SerialProtocol) -> str:
        """Run the session's timers until the port goes away; return why it did."""
        while not protocol.lost.is_set():
            self._tick()
            wait = min(max(self.session.next_deadline() - self._clock(), 0.001), TICK_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(protocol.lost.wait(), wait)
        return protocol.lost_reason

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
