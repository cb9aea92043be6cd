"""A private PostgreSQL cluster for tests and benchmarks: made with ``initdb`` in a temp dir,
run as a child on a free loopback port, stopped by its pid, removed.

Debian's PostgreSQL (``make test`` installs it).  PostgreSQL refuses to run as root: as root
the cluster is made and run as user ``postgres`` (``runuser``).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from hil.broker import free_port, port_open
from hil.procs import ManagedProcess
from node.errors import ConfigError


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if not found:
        raise ConfigError(f"PostgreSQL's {name} not found: `make test` installs Debian's postgresql")
    return found


class PrivatePostgres:
    """``with PrivatePostgres() as pg:`` → ``pg.url`` (``postgresql://postgres@127.0.0.1:PORT/postgres``).

    ``settings`` are extra ``-c name=value`` server settings (``fsync=off`` by default: a test's
    cluster is thrown away; a benchmark that measures durability passes ``fsync=on``)."""

    def __init__(self, *, settings: dict[str, str] | None = None, base: Path | None = None) -> None:
        self.settings = {"fsync": "off", **(settings or {})}
        self.base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix="umbra-pg-"))
        self.port = 0
        self.proc: ManagedProcess | None = None
        self.url = ""

    def start(self) -> Self:
        as_root = os.geteuid() == 0
        prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        data, sock = self.base / "data", self.base / "sock"
        sock.mkdir(parents=True, exist_ok=True)
        if as_root:
            shutil.chown(self.base, "postgres")
            shutil.chown(sock, "postgres")
        self.port = free_port()
        subprocess.run([*prefix, pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
                        "-E", "UTF8"], check=True, capture_output=True)
        settings = [arg for k, v in self.settings.items() for arg in ("-c", f"{k}={v}")]
        self.proc = ManagedProcess(
            [*prefix, pg_bin("postgres"), "-D", str(data), "-p", str(self.port), "-k", str(sock),
             "-c", "listen_addresses=127.0.0.1", *settings], name="postgres", log_dir=self.base)
        self.proc.start()
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", self.port):
            if not self.proc.running or time.monotonic() > deadline:
                tail = self.proc.tail()
                self.stop()
                raise RuntimeError("postgres did not start\n" + tail)
            time.sleep(0.1)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        import psycopg

        for _ in range(100):  # accepting TCP is not yet accepting logins
            try:
                psycopg.connect(self.url).close()
                break
            except psycopg.OperationalError:
                time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
            self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["PrivatePostgres", "pg_bin"]
