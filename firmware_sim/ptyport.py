"""The board's end of a serial line: a pseudo-terminal published at a symlink, or a real device.

The peer opens ``path`` like any serial device (it points at the pty's slave side); the
board reads and writes the master.  Design points:

- the symlink appears atomically (made under a temporary name, then ``os.replace``), so a
  peer polling for it never sees a half-made link; a stale symlink from a killed board is
  replaced, anything else at ``path`` is refused;
- the board keeps its own slave descriptor open, so reads on the master never fail with
  EIO when the peer closes its side (and simply wait for the next peer);
- writes never block: telemetry is best-effort, so when nobody drains the pty the frame is
  dropped whole.  A frame the kernel took only part of is finished later (:meth:`flush`)
  before anything newer, so the peer never sees a torn frame.

:class:`DevicePort` is the same interface on a serial device that already exists (a
USB-serial adapter, ``/dev/serial/by-id/…``): ``umbra-board --link-dev`` plays the board for
a node on another computer over a real cable.  It takes the device exclusively (``flock``,
as pyserial's ``exclusive=True``), sets it raw at the given baud rate, and reports a device
that goes away (an unplugged adapter: EIO/ENXIO/ENODEV) as :class:`~node.errors.LinkError`
so the board can close it and open it again when it comes back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import termios
import tty
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from node.errors import LinkError

READ_CHUNK = 65536


@dataclass(slots=True)
class PortStats:
    bytes_read: int = 0
    bytes_written: int = 0
    writes_dropped: int = 0


class PtyPort:
    """One pseudo-terminal, its slave published at ``path``."""

    #: Errors of read/write that mean the far end is gone for good (a device unplugged).
    GONE_ERRNOS: frozenset[int] = frozenset()

    def __init__(self, *, path: Path, max_pending: int = 8192) -> None:
        self.path = path
        # Room for the unwritten tail of a frame or two; more would only queue stale data.
        self.max_pending = max_pending
        self.stats = PortStats()
        self._master = -1
        self._slave = -1
        self._slave_name = ""
        self._pending = bytearray()

    # --- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Create the pty and publish it; raises :class:`LinkError` naming the path."""
        if self._master >= 0:
            return
        parent = self.path.parent
        if not parent.is_dir():
            raise LinkError(
                f"cannot publish {self.path}: directory {parent} does not exist",
                endpoint=str(self.path),
            )
        if self.path.exists() and not self.path.is_symlink():
            # A stale symlink is ours to replace; a file or a directory is not.
            raise LinkError(
                f"cannot publish {self.path}: it exists and is not a symlink",
                endpoint=str(self.path),
            )
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no line editing, no CR/LF translation
            os.set_blocking(master, False)
            name = os.ttyname(slave)
            tmp = parent / f".{self.path.name}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(name, tmp)
            try:
                os.replace(tmp, self.path)
            except OSError:
                tmp.unlink()
                raise
        except OSError as exc:
            os.close(master)
            os.close(slave)
            raise LinkError(
                f"cannot publish {self.path}: {exc.strerror or exc}", endpoint=str(self.path)
            ) from exc
        self._master, self._slave, self._slave_name = master, slave, name

    def close(self) -> None:
        """Remove the symlink (if it is still ours) and close the pty."""
        if self._master < 0:
            return
        with contextlib.suppress(OSError):
            # Another board may have taken the path over since; leave its link alone.
            if os.readlink(self.path) == self._slave_name:
                self.path.unlink()
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = -1
        self._pending.clear()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- I/O ------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._master >= 0

    @property
    def slave_name(self) -> str:
        return self._slave_name

    def fileno(self) -> int:
        return self._master

    @property
    def pending(self) -> int:
        """Bytes of a partly written frame still waiting for room."""
        return len(self._pending)

    def read(self) -> bytes:
        """Whatever the peer wrote (b"" when nothing is there)."""
        try:
            data = os.read(self._master, READ_CHUNK)
        except BlockingIOError:
            return b""
        except OSError as exc:
            self._check_gone(exc)
            if exc.errno == errno.EIO:  # cannot happen while we hold the slave; be safe
                return b""
            raise
        if not data:  # end of file: a non-blocking tty with nothing to read raises EAGAIN
            self._hangup()
        self.stats.bytes_read += len(data)
        return data

    def write(self, data: bytes) -> bool:
        """Queue ``data`` (whole frames) without blocking; False when it was dropped."""
        if not data:
            return True
        self.flush()
        if self._pending and len(self._pending) + len(data) > self.max_pending:
            self.stats.writes_dropped += 1
            return False
        if not self._pending:
            written = self._write_some(data)
            if written < 0:
                self.stats.writes_dropped += 1  # not a byte fit: drop the frame whole
                return False
            data = data[written:]
        self._pending += data
        return True

    def flush(self) -> bool:
        """Write what is pending; True when nothing is left."""
        if self._pending:
            written = self._write_some(self._pending)
            if written > 0:
                del self._pending[:written]
        return not self._pending

    def _write_some(self, data: bytes | bytearray) -> int:
        """Bytes written, or -1 when the pty had no room at all."""
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            return -1
        except OSError as exc:
            self._check_gone(exc)
            raise
        self.stats.bytes_written += written
        return written

    def _hangup(self) -> None:
        """End of file on the port (never on a pty master while we hold the slave)."""

    def _check_gone(self, exc: OSError) -> None:
        if exc.errno in self.GONE_ERRNOS:
            raise LinkError(f"{self.path}: device gone ({exc.strerror})", endpoint=str(self.path)) from exc


#: termios speed constants by baud rate (the ones this platform has).
BAUD_RATES: dict[int, int] = {
    int(name[1:]): getattr(termios, name) for name in dir(termios)
    if name[0] == "B" and name[1:].isdigit() and int(name[1:]) > 0
}


class DevicePort(PtyPort):
    """A serial device that exists already (``umbra-board --link-dev``): the same interface
    as :class:`PtyPort`; ``path`` is opened, not published."""

    GONE_ERRNOS = frozenset({errno.EIO, errno.ENXIO, errno.ENODEV})

    def __init__(self, *, path: Path, baud: int = 115_200, max_pending: int = 8192) -> None:
        if baud not in BAUD_RATES:
            raise LinkError(f"{path}: {baud} baud is not a rate this platform supports "
                            f"(e.g. {', '.join(str(b) for b in (9600, 115200, 921600) if b in BAUD_RATES)})",
                            endpoint=str(path))
        super().__init__(path=path, max_pending=max_pending)
        self.baud = baud

    def open(self) -> None:
        """Open the device raw and exclusively; :class:`LinkError` saying why it cannot."""
        if self._master >= 0:
            return
        where = str(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            hint = ""
            if exc.errno in (errno.EACCES, errno.EPERM):
                hint = " (add this user to the device's group, e.g. dialout)"
            raise LinkError(f"cannot open serial device {where}: {exc.strerror}{hint}", endpoint=where) from exc
        try:
            if not os.isatty(fd):
                raise LinkError(f"{where} is not a serial device (not a tty)", endpoint=where)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LinkError(f"serial device {where} is in use by another program", endpoint=where) from None
            self._configure(fd)
        except BaseException:
            os.close(fd)
            raise
        # One descriptor for both directions: the base class reads and writes "the master".
        self._master = fd
        self._slave_name = os.path.realpath(self.path)

    def _configure(self, fd: int) -> None:
        """Raw 8N1 at ``baud``, no flow control, modem lines ignored, stale input dropped."""
        try:
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            attrs[2] = (attrs[2] | termios.CLOCAL | termios.CREAD) & ~termios.HUPCL
            if hasattr(termios, "CRTSCTS"):
                attrs[2] &= ~termios.CRTSCTS
            attrs[0] &= ~(termios.IXON | termios.IXOFF | termios.IXANY)
            attrs[4] = attrs[5] = BAUD_RATES[self.baud]
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            termios.tcflush(fd, termios.TCIOFLUSH)
        except termios.error as exc:
            raise LinkError(f"cannot configure serial device {self.path}: {exc}", endpoint=str(self.path)) from None

    def _hangup(self) -> None:
        raise LinkError(f"{self.path}: device gone (hangup)", endpoint=str(self.path))

    def close(self) -> None:
        if self._master < 0:
            return
        with contextlib.suppress(OSError):
            os.close(self._master)  # also drops the flock
        self._master = -1
        self._pending.clear()
