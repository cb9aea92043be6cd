"""A pseudo-terminal published at a symlink: the board's end of a "serial port".

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
"""

from __future__ import annotations

import contextlib
import errno
import os
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
            if exc.errno == errno.EIO:  # cannot happen while we hold the slave; be safe
                return b""
            raise
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
        self.stats.bytes_written += written
        return written
