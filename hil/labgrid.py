"""Boards another machine exports through labgrid: a bench names a labgrid place.

labgrid (https://labgrid.readthedocs.io) shares lab hardware: an *exporter* on the machine
a board is wired to publishes its serial ports to a *coordinator*; a user *acquires* a
*place* (a named set of resources) so nobody else drives the board meanwhile.  An
exported serial port is a ``NetworkSerialPort`` (host, TCP port, speed, protocol): ser2net
on the exporter, speaking RFC 2217 (telnet with serial-port control) unless the exporter
says ``raw``.

A bench with ``[board] kind = "labgrid"`` (hil/benchfile.py) does what a lab user does by
hand, through the ``labgrid-client`` command line (so the harness needs no labgrid in its
own environment: labgrid pins a fork of pyserial that Umbra's own pyserial must not meet):

1. ``labgrid-client -x COORDINATOR -p PLACE acquire`` — refused with the client's reason when
   someone else holds the place;
2. ``labgrid-client … show`` — the acquired resources; the place's ``NetworkSerialPort``
   named ``main`` (the node link) and ``hil`` (the HIL port) are used, by the name a named
   match gives them or by their exporter's resource name;
3. each of the two becomes a local pseudo-terminal (:class:`RemoteSerialPty`, a relay on the
   event loop with a small telnet codec of its own), so node, harness and conformance
   check open a path as they would a USB-serial board;
4. ``release`` when the run ends, whatever happened.

Step 2 reads the text ``show`` prints (a header line per acquired resource, then the
resource as a Python literal); :func:`parse_show` is tested against labgrid 26's output.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import tty
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from node.errors import ConfigError, LinkError

log = logging.getLogger("umbra.hil.labgrid")

#: Where ``make labgrid`` installs labgrid, beside the project's own environment.
DEFAULT_VENV = Path(__file__).resolve().parent.parent / ".venv-labgrid"
DEFAULT_COORDINATOR = "127.0.0.1:20408"
CLIENT_TIMEOUT_S = 30.0

_HEADER = re.compile(r"^Acquired resource '(?P<name>[^']+)' \((?P<path>[^)]+)\):\s*$")


@dataclass(frozen=True, slots=True)
class NetworkSerialPort:
    """One exported serial port, as the coordinator describes it."""

    name: str  # the name in the place (a named match's, else the exporter's resource name)
    path: str  # exporter/group/class/resource
    host: str
    port: int
    speed: int = 115_200
    protocol: str = "rfc2217"

    @property
    def url(self) -> str:
        """The pyserial URL of the port (for a user's own tools: the harness relays the port
        itself).  ser2net does not answer SET_CONTROL (DTR/RTS) requests, which pyserial's
        RFC 2217 client waits for unless told not to."""
        if self.protocol == "raw":
            return f"socket://{self.host}:{self.port}"
        return f"rfc2217://{self.host}:{self.port}?ign_set_control"


def find_client(explicit: str = "") -> str:
    """The ``labgrid-client`` to run: ``explicit``, ``$UMBRA_LABGRID_CLIENT``, the PATH's,
    or the one ``make labgrid`` installed."""
    for candidate in (explicit, os.environ.get("UMBRA_LABGRID_CLIENT", "")):
        if candidate:
            if shutil.which(candidate) is None:
                raise ConfigError(f"labgrid client {candidate!r} is not an executable", key="board.labgrid_client")
            return candidate
    found = shutil.which("labgrid-client")
    if found is not None:
        return found
    local = DEFAULT_VENV / "bin" / "labgrid-client"
    if local.exists():
        return str(local)
    raise ConfigError("labgrid-client not found: run `make labgrid` (or pip install labgrid) or set "
                      "board.labgrid_client", key="board.labgrid_client")


def parse_show(text: str) -> list[NetworkSerialPort]:
    """The ``NetworkSerialPort`` resources in ``labgrid-client show`` output (others skipped)."""
    found: list[NetworkSerialPort] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _HEADER.match(lines[i])
        i += 1
        if m is None:
            continue
        body = []
        while i < len(lines) and lines[i].startswith("  "):
            body.append(lines[i].strip())
            i += 1
        try:
            resource: Any = ast.literal_eval(" ".join(body))
        except (ValueError, SyntaxError):
            raise LinkError(f"labgrid-client show: cannot read resource {m['path']}", endpoint=m["path"]) from None
        if not isinstance(resource, dict) or resource.get("cls") != "NetworkSerialPort":
            continue
        params = resource.get("params", {})
        try:
            found.append(NetworkSerialPort(
                name=m["name"], path=m["path"], host=str(params["host"]), port=int(params["port"]),
                speed=int(params.get("speed") or 115_200), protocol=str(params.get("protocol") or "rfc2217")))
        except (KeyError, TypeError, ValueError):
            raise LinkError(f"labgrid-client show: {m['path']} has no host and port (is it available?)",
                            endpoint=m["path"]) from None
    return found


def pick(ports: list[NetworkSerialPort], name: str) -> NetworkSerialPort:
    """The port named ``name`` in the place, or the one whose exporter group is ``name``."""
    by_name = [p for p in ports if p.name == name]
    by_group = [p for p in ports if p.path.split("/")[1:2] == [name]]
    for hits in (by_name, by_group):
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ConfigError(f"labgrid place has {len(hits)} serial ports named {name!r}: "
                              f"{', '.join(p.path for p in hits)}", key="board.main")
    have = ", ".join(f"{p.name} ({p.path})" for p in ports) or "none"
    raise ConfigError(f"labgrid place has no serial port named {name!r} (it has: {have})", key="board.main")


# Telnet (RFC 854) as RFC 2217 servers speak it: commands, option negotiation, subnegotiation.
IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
BINARY, SGA, COM_PORT = 0, 3, 44
#: Options we agree to: 8-bit data both ways (without BINARY a telnet peer may mangle CR and
#: NUL, and a frame ends in NUL), no go-aheads, and the COM port option the server offers.
_AGREE = frozenset({BINARY, SGA, COM_PORT})


class TelnetCodec:
    """Sans-I/O telnet for a serial port behind an RFC 2217 server: data bytes out of the
    stream, commands answered, subnegotiations (the server's port settings) dropped.

    ``feed(bytes)`` → (data, replies to send back); ``encode(data)`` → bytes for the wire.
    An option is answered only when its state changes (RFC 1143), so two peers never loop."""

    def __init__(self) -> None:
        self._state = "data"
        self._verb = 0
        self.local: set[int] = set()   # options we WILL
        self.remote: set[int] = set()  # options the server WILL

    @staticmethod
    def hello() -> bytes:
        """What a client says first: binary both ways."""
        return bytes((IAC, WILL, BINARY, IAC, DO, BINARY))

    @staticmethod
    def encode(data: bytes) -> bytes:
        return data.replace(b"\xff", b"\xff\xff")

    def feed(self, chunk: bytes) -> tuple[bytes, bytes]:
        data = bytearray()
        replies = bytearray()
        for byte in chunk:
            state = self._state
            if state == "data":
                if byte == IAC:
                    self._state = "iac"
                else:
                    data.append(byte)
            elif state == "iac":
                if byte == IAC:
                    data.append(IAC)
                    self._state = "data"
                elif byte in (WILL, WONT, DO, DONT):
                    self._verb, self._state = byte, "option"
                elif byte == SB:
                    self._state = "sb"
                else:  # NOP, GA, AYT, …: nothing to do for a serial port
                    self._state = "data"
            elif state == "option":
                replies += self._negotiate(self._verb, byte)
                self._state = "data"
            elif state == "sb":
                if byte == IAC:
                    self._state = "sb_iac"
            elif state == "sb_iac":
                self._state = "data" if byte == SE else "sb"
        return bytes(data), bytes(replies)

    def _negotiate(self, verb: int, option: int) -> bytes:
        if verb == WILL:
            if option in self.remote:
                return b""
            if option in _AGREE:
                self.remote.add(option)
                return bytes((IAC, DO, option))
            return bytes((IAC, DONT, option))
        if verb == WONT:
            if option not in self.remote:
                return b""
            self.remote.discard(option)
            return bytes((IAC, DONT, option))
        if verb == DO:
            if option in self.local:
                return b""
            if option in _AGREE:
                self.local.add(option)
                return bytes((IAC, WILL, option))
            return bytes((IAC, WONT, option))
        if option not in self.local:  # DONT
            return b""
        self.local.discard(option)
        return bytes((IAC, WONT, option))


class _Remote(asyncio.Protocol):
    def __init__(self, relay: RemoteSerialPty) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.relay.from_remote(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.remote_lost(exc)


class RemoteSerialPty:
    """An exported serial port behind a local pseudo-terminal published at ``path``.

    Bytes are copied on the event loop between the pty and a TCP connection to the
    exporter's ser2net (RFC 2217: telnet; or raw TCP).  Every segment is acknowledged at
    once (TCP_QUICKACK): ser2net sends without TCP_NODELAY, so a delayed ACK would hold
    each answer of the board for 40 ms behind the one before it.  Like a cable, the relay
    carries bytes only; what arrives while nobody has the pty open is dropped by the pty."""

    def __init__(self, port: NetworkSerialPort, path: Path) -> None:
        self.port = port
        self.path = Path(path)
        self.telnet = TelnetCodec() if port.protocol != "raw" else None
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._master = self._slave = -1
        self._to_pty = bytearray()
        self.error: str = ""
        self.bytes_in = self.bytes_out = 0

    async def open(self) -> Self:
        self._loop = loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Remote(self), self.port.host, self.port.port), CLIENT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise LinkError(f"cannot reach {self.port.path} at {self.port.host}:{self.port.port}: {exc}",
                            endpoint=self.port.url) from None
        self._transport = transport
        if self.telnet is not None:
            transport.write(self.telnet.hello())
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)
        loop.add_reader(master, self._from_pty)
        return self

    def _quickack(self) -> None:
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        if sock is not None and hasattr(socket, "TCP_QUICKACK"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def from_remote(self, chunk: bytes) -> None:
        self._quickack()
        if self.telnet is not None:
            data, replies = self.telnet.feed(chunk)
            if replies and self._transport is not None:
                self._transport.write(replies)
        else:
            data = chunk
        if data and self._master >= 0:
            self.bytes_in += len(data)
            self._to_pty += data
            self._flush_pty()

    def _flush_pty(self) -> None:
        try:
            written = os.write(self._master, self._to_pty)
        except BlockingIOError:
            written = 0
        del self._to_pty[:written]
        if self._loop is not None:
            if self._to_pty:
                self._loop.add_writer(self._master, self._flush_pty)
            else:
                self._loop.remove_writer(self._master)

    def _from_pty(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, OSError):
            return
        if data and self._transport is not None and not self._transport.is_closing():
            self.bytes_out += len(data)
            self._transport.write(self.telnet.encode(data) if self.telnet is not None else data)

    def remote_lost(self, exc: Exception | None) -> None:
        if self._master >= 0:  # not our own close: the exporter went away
            self.error = f"connection to {self.port.path} lost: {exc or 'closed by the exporter'}"
            log.error("labgrid %s", self.error)

    async def close(self) -> None:
        master, self._master = self._master, -1
        if master >= 0 and self._loop is not None:
            self._loop.remove_reader(master)
            self._loop.remove_writer(master)
        if self._transport is not None:
            self._transport.close()
        with contextlib.suppress(OSError):
            if self._slave >= 0 and os.readlink(self.path) == os.ttyname(self._slave):
                self.path.unlink()
        for fd in (master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._slave = -1


class LabgridPlace:
    """Acquire a labgrid place and put its ``main`` and ``hil`` serial ports on local ptys.

    ``async with LabgridPlace("lab-board-1", link=…, hil=…) as place:`` — then open
    ``link`` and ``hil`` like any board's ports.  The place is released on exit."""

    def __init__(self, place: str, *, link: Path, hil: Path, coordinator: str = "", client: str = "",
                 main_name: str = "main", hil_name: str = "hil", log_dir: Path | None = None) -> None:
        self.place = place
        self.link = Path(link)
        self.hil = Path(hil)
        self.coordinator = coordinator or os.environ.get("LG_COORDINATOR", DEFAULT_COORDINATOR)
        self.client = find_client(client)
        self.main_name = main_name
        self.hil_name = hil_name
        self.log_dir = log_dir
        self.ports: dict[str, NetworkSerialPort] = {}
        self.relays: list[RemoteSerialPty] = []
        self._acquired = False

    async def run_client(self, *args: str) -> str:
        """One ``labgrid-client`` command against our coordinator and place; its stdout."""
        argv = [self.client, "-x", self.coordinator, "-p", self.place, *args]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise LinkError(f"labgrid-client {' '.join(args)}: no answer from coordinator {self.coordinator} "
                            f"in {CLIENT_TIMEOUT_S:g} s", endpoint=self.coordinator) from None
        if proc.returncode != 0:
            why = (err.decode(errors="replace").strip() or out.decode(errors="replace").strip()).splitlines()
            raise LinkError(f"labgrid-client -p {self.place} {' '.join(args)} failed: "
                            f"{why[-1] if why else f'exit status {proc.returncode}'}", endpoint=self.coordinator)
        return out.decode(errors="replace")

    async def __aenter__(self) -> Self:
        await self.run_client("acquire")
        self._acquired = True
        try:
            shown = await self.run_client("show")
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                (self.log_dir / "labgrid-place.txt").write_text(shown)
            found = parse_show(shown)
            self.ports = {"main": pick(found, self.main_name), "hil": pick(found, self.hil_name)}
            for role, path in (("main", self.link), ("hil", self.hil)):
                relay = RemoteSerialPty(self.ports[role], path)
                await relay.open()
                self.relays.append(relay)
            log.info("labgrid place %s: main %s, hil %s", self.place, self.ports["main"].url, self.ports["hil"].url)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        for relay in self.relays:
            await relay.close()
        self.relays = []
        if self._acquired:
            self._acquired = False
            try:
                await self.run_client("release")
            except LinkError as exc:
                log.warning("%s", exc)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


__all__ = ["LabgridPlace", "NetworkSerialPort", "RemoteSerialPty", "TelnetCodec", "find_client", "parse_show", "pick"]
