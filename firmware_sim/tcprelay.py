"""ser2net in miniature: a serial device served to one TCP client at a time.

Lab benches reach their dev boards' UARTs through a terminal server (ser2net, a Moxa box,
labgrid's ``RawSerialPort``) as ``socket://host:port``.  ``umbra-board --link-tcp`` /
``--hil-tcp`` put the simulated board's ptys behind such a relay, so node, harness and
conformance check run against a board over TCP exactly as they would against a remote one.

Like a serial line, the relay carries bytes and nothing else: one client at a time (a
second is refused: two nodes on one UART would corrupt each other's frames), and what
the board writes while no client is attached is lost, as on an unplugged cable.  Binds
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tty
from pathlib import Path
from types import TracebackType
from typing import Self

from node.errors import LinkError

READ_CHUNK = 65536


class TcpRelay:
    """Serve ``device`` (a serial device or pty path) on ``host:port`` (0: a free port)."""

    def __init__(self, *, device: Path, host: str = "127.0.0.1", port: int = 0,
                 logger: logging.Logger | None = None) -> None:
        self.device = device
        self.host = host
        self.port = port
        self.log = logger or logging.getLogger("umbra.board.tcp")
        self.clients = 0  # served so far
        self.refused = 0  # turned away while another was attached
        self._server: asyncio.Server | None = None
        self._busy = False

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise LinkError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                            endpoint=f"{self.host}:{self.port}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._busy:
            self.refused += 1
            self.log.warning("%s: refused %s: another client is attached", self.url, peer)
            writer.close()
            return
        self._busy = True
        self.clients += 1
        loop = asyncio.get_running_loop()
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            self._busy = False
            self.log.error("%s: cannot open %s: %s", self.url, self.device, exc.strerror or exc)
            writer.close()
            return
        self.log.info("%s: client %s attached to %s", self.url, peer, self.device)
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                tty.setraw(fd)
        done = asyncio.Event()

        def from_device() -> None:
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.EIO:
                    self.log.warning("%s: reading %s: %s", self.url, self.device, exc)
                done.set()
                return
            if not data:
                done.set()
                return
            if writer.transport.get_write_buffer_size() < 1 << 20:
                writer.write(data)  # else the client is not reading: drop, as a UART would

        loop.add_reader(fd, from_device)
        try:
            while not done.is_set():
                read = asyncio.ensure_future(reader.read(READ_CHUNK))
                stop = asyncio.ensure_future(done.wait())
                await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if not read.done():
                    read.cancel()
                    break
                data = read.result()
                if not data:
                    break  # the client hung up
                await _write_all(fd, data)
        except (ConnectionError, OSError) as exc:
            self.log.info("%s: client %s: %s", self.url, peer, exc)
        finally:
            loop.remove_reader(fd)
            os.close(fd)
            self._busy = False
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self.log.info("%s: client %s detached", self.url, peer)


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await asyncio.sleep(0.001)  # the pty is full: the board drains it within a tick
            continue
        view = view[n:]
