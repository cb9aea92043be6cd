"""MQTT brokers for a bench: mosquitto as a child process, or amqtt inside this process.

Both listen on loopback only, allow anonymous clients and keep nothing on disk, so every
bench starts from an empty broker.  Mosquitto is the broker Umbra flies against; the
embedded amqtt broker needs no binary and suits quick in-process tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from hil.procs import ManagedProcess
from node.errors import LinkError

log = logging.getLogger("umbra.hil.broker")

LOOPBACK = "127.0.0.1"
_MOSQUITTO_FALLBACK = "/usr/sbin/mosquitto"  # Debian installs it outside a user's PATH


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Does something accept TCP connections on host:port right now?"""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- embedded amqtt ---------------------------------------------------------------------------


def _quiet(*names: str) -> None:
    # amqtt logs every connection and state change at INFO; keep explicit user settings.
    for name in names:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


class EmbeddedBroker:
    """An amqtt broker in this event loop, on loopback, anonymous clients allowed.

    ``async with EmbeddedBroker() as broker:`` then connect to ``broker.host:broker.port``.
    """

    def __init__(self, *, host: str = LOOPBACK, port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._broker: Any = None  # amqtt.broker.Broker; amqtt ships no type information

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        _quiet("amqtt", "transitions", "passlib")
        from amqtt.broker import Broker  # import late: it pulls in websockets and friends

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # Only what a test broker needs: no $SYS publisher, no per-packet loggers.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except Exception as exc:
            self._broker = None
            raise LinkError(
                f"embedded broker failed to start on {self.url}: {exc}", endpoint=self.url
            ) from exc
        log.debug("embedded broker listening on %s", self.url)

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


# -- mosquitto --------------------------------------------------------------------------------


def find_mosquitto() -> str:
    """Path of the mosquitto binary; LinkError saying what to install when there is none."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access(_MOSQUITTO_FALLBACK, os.X_OK):
        return _MOSQUITTO_FALLBACK
    raise LinkError(
        "mosquitto broker not found on PATH or at /usr/sbin/mosquitto; "
        "install it with `sudo apt-get install mosquitto` (or `make mosquitto`)"
    )


class Mosquitto:
    """A private mosquitto on loopback, run as our child and stopped by its pid.

    Usable as ``with``/``async with``, or by hand: ``start()``, ``stop()``, and ``start()``
    again on the same port (tests take the broker away for a while).  Its config and log
    live in ``workdir`` (a temp dir removed by ``close()`` unless you passed one in).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        binary: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        ready_timeout: float = 10.0,
        password_file: str | os.PathLike[str] | None = None,
        acl_file: str | os.PathLike[str] | None = None,
        tls_files: tuple[str | os.PathLike[str], str | os.PathLike[str], str | os.PathLike[str]] | None = None,
        tls_port: int | None = None,
        persistence: bool = False,
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """Secured mode: ``password_file`` (anonymous clients refused), ``acl_file``, and
        ``tls_files`` = (cafile, certfile, keyfile) for a TLS listener on ``tls_port``
        (still loopback).  ``persistence`` keeps sessions and queued QoS 1 messages in
        ``workdir`` across a stop/start.  ``config_file``: run that configuration as it is
        (``umbra-ground broker-files``' own), listening on ``port`` (and ``tls_port``)."""
        self.binary = binary or find_mosquitto()
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls_files = tls_files
        self.tls_port = (tls_port or free_port(host)) if tls_files else None
        self.persistence = persistence
        self.host = host
        self.port = port or free_port(host)
        self.ready_timeout = ready_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="umbra-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = Path(config_file) if config_file is not None else None
        if self.config_file is not None and port is None:
            raise ValueError("a config_file broker needs the port its config listens on")
        if self.config_file is not None:
            self.tls_port = tls_port
        self.conf_path = self.config_file or self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def _write_config(self) -> None:
        lines = [
            "# written by hil.broker.Mosquitto",
            "per_listener_settings false",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
            f"persistence {'true' if self.persistence else 'false'}",
            # as in production (ground/brokerfiles.py): no Nagle delay on small messages, and a
            # lagging subscriber's QoS 1 queue held (mosquitto's default drops beyond 1,000)
            "set_tcp_nodelay true",
            "max_queued_messages 1000000",
            f"log_dest file {self.log_path}",
            "log_dest stderr",  # also on stderr, where we watch for the ready line
        ]
        if self.persistence:
            lines.append(f"persistence_location {self.workdir}/")
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        lines.append(f"listener {self.port} {self.host}")
        if self.tls_files:
            ca, cert, key = self.tls_files
            lines += [f"listener {self.tls_port} {self.host}", f"cafile {ca}", f"certfile {cert}",
                      f"keyfile {key}"]
        if os.geteuid() == 0:
            # As root mosquitto drops to user 'mosquitto', who cannot write our temp dir.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        self.conf_path.write_text("\n".join(lines) + "\n")

    def log_tail(self, n: int = 20) -> str:
        # stderr has the log and also config errors from before the log file opens.
        if self._proc is not None and (lines := self._proc.lines("stderr")):
            return "\n".join(lines[-n:])
        if self.log_path.exists():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def start(self) -> Self:
        """Start mosquitto and return once it accepts connections on our port."""
        if self.running:
            return self
        if self.config_file is None:
            self._write_config()
        if self._proc is None:
            self._proc = ManagedProcess(
                [self.binary, "-c", str(self.conf_path)], name="mosquitto", log_dir=self.workdir
            )
        mark = self._proc.mark()
        self._proc.start()
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if not self._proc.running:
                code = self._proc.returncode
                self._proc.stop()  # reap it and any leftovers
                raise LinkError(
                    f"mosquitto exited with {code} while starting on {self.host}:{self.port}"
                    f"\n--- {self.log_path} ---\n{self.log_tail()}",
                    endpoint=self.url,
                )
            is_open = port_open(self.host, self.port)
            # The ready line proves the listener is ours, not a stranger's on the same port.
            ours = any(" running" in ln for ln in self._proc.lines("stderr", since=mark))
            if is_open and ours:
                break
            if time.monotonic() >= deadline:
                if is_open:  # an unfamiliar log format; the port answers, so carry on
                    break
                self._proc.stop()
                raise LinkError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} within "
                    f"{self.ready_timeout:g} s\n--- {self.log_path} ---\n{self.log_tail()}",
                    endpoint=self.url,
                )
            time.sleep(0.02)
        log.debug("mosquitto pid %s listening on %s", self._proc.pid, self.url)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """SIGTERM our mosquitto, SIGKILL after ``timeout``; the port is free afterwards."""
        if self._proc is not None:
            self._proc.stop(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL our mosquitto at once: a broker crash."""
        if self._proc is not None:
            self._proc.kill()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the work dir if we made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def start_async(self) -> Self:
        return await asyncio.to_thread(self.start)

    # The timeout is the SIGTERM grace period, not a deadline for the caller.
    async def stop_async(self, timeout: float = 2.0) -> None:
        await asyncio.shield(asyncio.to_thread(self.stop, timeout))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(asyncio.to_thread(self.close))

    def __repr__(self) -> str:
        return f"<Mosquitto {self.url} pid={self.pid}>"
