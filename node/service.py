"""Running under systemd: the notify protocol (READY, WATCHDOG, STATUS, STOPPING), spoken directly.

systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) and, with
``WatchdogSec=``, ``$WATCHDOG_USEC``.  :class:`Notifier` is an async context manager owning
one task that watches a :class:`Health` (the controller: its ``steps`` counter advances once
per control step) and:

- sends ``READY=1`` after the first control step, i.e. once the node controls the board;
- sends ``WATCHDOG=1`` every ``WATCHDOG_USEC/2`` while steps advanced within the last
  ``WATCHDOG_USEC/2``, so a stuck control loop (or a stuck event loop) stops the pets and
  systemd restarts the service; while ``link_up`` says the board link is down the loop is
  waiting, not stuck, and pets continue (reconnecting is the board's job, not systemd's);
- keeps ``STATUS=`` current, and sends ``STOPPING=1`` on exit.

With no ``$NOTIFY_SOCKET`` (not under systemd) it does nothing, cheaply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Protocol, Self

log = logging.getLogger("umbra.node.service")

#: How often the task looks at the health counter when no watchdog sets a faster pace.
POLL_S = 0.1


class Health(Protocol):
    @property
    def steps(self) -> int:
        """Control steps done since start (0 until the node controls the board)."""
        ...


def notify_address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as a socket address: ``@name`` is ``\\0name`` (abstract namespace)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    """The watchdog period from ``$WATCHDOG_USEC``, if it is meant for this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6


class Notifier:
    def __init__(
        self,
        *,
        health: Health,
        notify_socket: str | None,
        watchdog_s: float | None = None,
        link_up: Callable[[], bool] | None = None,
        status: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._health = health
        self._address = notify_address(notify_socket) if notify_socket else None
        self._watchdog_s = watchdog_s
        self._link_up = link_up
        self._status = status
        self._clock = clock
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._send_failed = False
        self.ready = False
        self.pets = 0
        self.stalled = False

    @classmethod
    def from_environ(
        cls,
        *,
        health: Health,
        environ: Mapping[str, str] | None = None,
        link_up: Callable[[], bool] | None = None,
        status: Callable[[], str] | None = None,
    ) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(
            health=health,
            notify_socket=env.get("NOTIFY_SOCKET") or None,
            watchdog_s=watchdog_seconds(env),
            link_up=link_up,
            status=status,
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    async def __aenter__(self) -> Self:
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
            self._task = asyncio.create_task(self._run(), name="umbra.node.service.notify")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        why = "after an error" if exc_type not in (None, asyncio.CancelledError, KeyboardInterrupt) else ""
        self.send(f"STOPPING=1\nSTATUS=stopping {why}".rstrip())
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, state: str) -> bool:
        """Send one notification (``KEY=VALUE`` lines); False if it could not be sent."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto(state.encode(), self._address)
        except OSError as exc:
            if not self._send_failed:  # say it once, not at every pet
                log.warning("cannot notify systemd at %r: %s", self._address, exc)
                self._send_failed = True
            return False
        self._send_failed = False
        return True

    def _status_text(self) -> str:
        return self._status() if self._status is not None else f"controlling: {self._health.steps} steps"

    async def _run(self) -> None:
        last_steps = self._health.steps
        last_progress = self._clock()
        half = self._watchdog_s / 2 if self._watchdog_s else None
        poll = min(POLL_S, half / 4) if half else POLL_S
        next_pet = self._clock()
        self.send("STATUS=starting: waiting for the first control step")
        while True:
            now = self._clock()
            steps = self._health.steps
            if steps != last_steps:
                last_steps, last_progress = steps, now
            if not self.ready and steps > 0:
                self.ready = True
                log.info("controlling the board; telling systemd READY")
                self.send(f"READY=1\nSTATUS={self._status_text()}")
                next_pet = now
            if self.ready and half is not None and now >= next_pet:
                waiting = self._link_up is not None and not self._link_up()
                if waiting:
                    last_progress = now  # a link that comes back gets a full period to step
                if waiting or now - last_progress < half:
                    if self.stalled:
                        log.info("control loop running again")
                        self.stalled = False
                    status = "waiting for the board link" if waiting else self._status_text()
                    if self.send(f"WATCHDOG=1\nSTATUS={status}"):
                        self.pets += 1
                elif not self.stalled:
                    self.stalled = True
                    log.error(
                        "control loop stalled: no step for %.1f s; no more watchdog pets", now - last_progress
                    )
                    self.send(f"STATUS=control loop stalled since step {steps}")
                next_pet = now + half
            await asyncio.sleep(poll)
