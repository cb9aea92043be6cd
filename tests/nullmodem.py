"""A null-modem cable between two serial devices, for tests: two ptys joined by a thread.

Each end is the slave side of its own pseudo-terminal, published at a symlink (as udev
publishes ``/dev/serial/by-id/…``), so both programs open a real tty device that exists
before they start — the way ``umbra-board --link-dev`` and a node on another computer see
the two ends of a USB-serial cable.  The thread copies bytes between the two masters.

``unplug(end)`` closes that end's pty (its user now reads EIO, as from an adapter pulled
out); ``plug(end)`` makes a new pty and points the same symlink at it.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty
from pathlib import Path
from types import TracebackType
from typing import Self


class NullModem:
    def __init__(self, a: Path, b: Path) -> None:
        self.paths = (Path(a), Path(b))
        self._masters: list[int] = [-1, -1]
        self._slaves: list[int] = [-1, -1]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._pump, name="nullmodem", daemon=True)
        self.carried = [0, 0]  # bytes carried a→b, b→a

    def __enter__(self) -> Self:
        for end in (0, 1):
            self.plug(end)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for end in (0, 1):
            self.unplug(end)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def plug(self, end: int) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        path = self.paths[end]
        tmp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, path)
        # Ours stays open, so the master never reads EIO while the user reopens its end.
        with self._lock:
            self._masters[end], self._slaves[end] = master, slave
        os.write(self._wake_w, b"x")

    def unplug(self, end: int) -> None:
        with self._lock:
            for fds in (self._masters, self._slaves):
                if fds[end] >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fds[end])
                    fds[end] = -1
        with contextlib.suppress(FileNotFoundError):
            self.paths[end].unlink()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _pump(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                masters = list(self._masters)
            readable = [fd for fd in masters if fd >= 0]
            try:
                ready, _, _ = select.select([*readable, self._wake_r], [], [], 0.5)
            except (OSError, ValueError):  # an end was unplugged since we looked
                continue
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            for end in (0, 1):
                src, dst = masters[end], masters[1 - end]
                if src < 0 or src not in ready:
                    continue
                try:
                    data = os.read(src, 65536)
                except OSError:  # nobody has that end open yet
                    continue
                if dst < 0:
                    continue  # the far end is unplugged: the bytes fall on the floor
                view = memoryview(data)
                while view:
                    try:
                        n = os.write(dst, view)
                    except BlockingIOError:
                        select.select([], [dst], [], 0.1)
                        continue
                    except OSError:
                        break
                    view = view[n:]
                    self.carried[end] += n
