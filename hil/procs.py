"""Child processes of a HIL bench: started, watched and stopped by the pid we started.

Each child gets its own session (and so its own process group), so stopping it also stops
whatever it started.  Signals go to that process group only — never to a process found
by name, which on a shared machine could be someone else's broker or board.

Output is read by one thread per stream, so the same object serves sync code (pytest
fixtures) and async code (``async with``) alike.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

from node.errors import UmbraError

Stream = Literal["stdout", "stderr", "any"]

_POLL_S = 0.02


class ProcessError(UmbraError):
    """A managed child process exited, or never said it was ready, when the harness needed it.

    ``tail`` is the last output lines, so the failure explains itself.
    """

    def __init__(
        self, message: str, *, name: str, returncode: int | None = None, tail: str = ""
    ) -> None:
        super().__init__(f"{message}\n--- last output of {name} ---\n{tail}" if tail else message)
        self.name = name
        self.returncode = returncode
        self.tail = tail


class ProcessTimeout(ProcessError, TimeoutError):
    """The awaited line did not appear in time (also a ``TimeoutError``)."""


class ManagedProcess:
    """One child process with captured output and a stop that always reaps.

    ``env`` is added to the inherited environment (``inherit_env=False`` replaces it).
    With ``log_dir`` set, stdout and stderr also go to ``<name>.stdout.log`` and
    ``<name>.stderr.log`` there.  With ``capture=False`` nothing is piped: output goes to
    the log files when ``log_dir`` is set, else to our own stdout/stderr.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        capture: bool = True,
        keep_lines: int = 10_000,
    ) -> None:
        if not argv:
            raise ValueError("ManagedProcess needs a non-empty argv")
        self.argv = [os.fspath(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.cwd = cwd
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.capture = capture
        self._popen: subprocess.Popen[bytes] | None = None
        self._pumps: list[threading.Thread] = []
        self._cond = threading.Condition()
        # (absolute index, stream, text); absolute so marks survive the deque dropping lines.
        self._lines: collections.deque[tuple[int, str, str]] = collections.deque(maxlen=keep_lines)
        self._count = 0

    # -- properties -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def log_path(self, stream: Literal["stdout", "stderr"]) -> Path | None:
        return self.log_dir / f"{self.name}.{stream}.log" if self.log_dir else None

    # -- start ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the child (again, after a stop).  Output lines accumulate across restarts."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._join_pumps(timeout=1.0)
        env = {**os.environ, **self.env} if self.inherit_env else dict(self.env)
        files: list[IO[bytes]] = []
        out: int | IO[bytes] | None
        err: int | IO[bytes] | None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.capture:
            out = err = subprocess.PIPE
        elif self.log_dir is not None:
            out = self._open_log("stdout")
            err = self._open_log("stderr")
            files = [out, err]
        else:
            out = err = None
        try:
            self._popen = subprocess.Popen(
                self.argv,
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # own process group: grandchildren stop with it
            )
        finally:
            for f in files:  # the child holds its own copies
                f.close()
        if self.capture:
            assert self._popen.stdout is not None and self._popen.stderr is not None
            self._pumps = [
                self._spawn_pump(self._popen.stdout, "stdout"),
                self._spawn_pump(self._popen.stderr, "stderr"),
            ]
        return self

    def _open_log(self, stream: Literal["stdout", "stderr"]) -> IO[bytes]:
        path = self.log_path(stream)
        assert path is not None
        return path.open("ab")

    def _spawn_pump(self, pipe: IO[bytes], stream: Literal["stdout", "stderr"]) -> threading.Thread:
        log = self._open_log(stream) if self.log_dir is not None else None
        thread = threading.Thread(
            target=self._pump, args=(pipe, stream, log), name=f"{self.name}-{stream}", daemon=True
        )
        thread.start()
        return thread

    def _pump(self, pipe: IO[bytes], stream: str, log: IO[bytes] | None) -> None:
        with pipe, log or contextlib.nullcontext():
            for raw in iter(pipe.readline, b""):
                if log is not None:
                    log.write(raw)
                    log.flush()  # a crash report should include the last line
                text = raw.decode(errors="replace").rstrip("\r\n")
                with self._cond:
                    self._lines.append((self._count, stream, text))
                    self._count += 1
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    # -- output -----------------------------------------------------------------------------

    def mark(self) -> int:
        """A position in the output; pass it as ``since`` to wait only for later lines."""
        with self._cond:
            return self._count

    def lines(self, stream: Stream = "any", *, since: int = 0) -> list[str]:
        with self._cond:
            return [t for i, s, t in self._lines if i >= since and stream in ("any", s)]

    def tail(self, n: int = 20, stream: Stream = "any") -> str:
        lines = self.lines(stream)[-n:]
        if not lines:
            for which in ("stderr", "stdout"):  # capture=False: the log files are the output
                path = self.log_path(which)
                if path is not None and path.exists() and stream in ("any", which):
                    lines += path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)

    def _find(
        self, rx: re.Pattern[str], stream: Stream, since: int
    ) -> tuple[re.Match[str] | None, int]:
        """First match at or after ``since``, and where the next search should start."""
        first = self._lines[0][0] if self._lines else self._count
        for i, s, text in itertools.islice(self._lines, max(0, since - first), None):
            if stream in ("any", s) and (m := rx.search(text)):
                return m, i + 1
        return None, self._count

    def _check_waitable(self) -> None:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        if not self.capture:
            raise RuntimeError(f"{self.name} was started with capture=False; no lines to wait for")

    def _exited_error(self, rx: re.Pattern[str]) -> ProcessError:
        return ProcessError(
            f"{self.name} exited with {self.returncode} before printing /{rx.pattern}/",
            name=self.name,
            returncode=self.returncode,
            tail=self.tail(),
        )

    def _timeout_error(self, rx: re.Pattern[str], timeout: float) -> ProcessTimeout:
        return ProcessTimeout(
            f"{self.name} printed no line matching /{rx.pattern}/ within {timeout:g} s",
            name=self.name,
            returncode=self.returncode,
            tail=self.tail(),
        )

    def wait_for_line(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 10.0,
        *,
        stream: Stream = "any",
        since: int = 0,
    ) -> re.Match[str]:
        """Block until a line matches ``pattern`` (``re.search``); lines already read count.

        Raises ProcessTimeout, or ProcessError when the child exits without printing it.
        """
        self._check_waitable()
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m, since = self._find(rx, stream, since)  # scan each line once
                if m:
                    return m
                if not self.running:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout_error(rx, timeout)
                # Woken by each new line; the short cap notices an exit without output.
                self._cond.wait(min(remaining, 0.1))
        # Exited: its last lines may still be in the pipe.
        self._join_pumps(timeout=0.5)
        with self._cond:
            m, _ = self._find(rx, stream, since)
        if m:
            return m
        raise self._exited_error(rx)

    async def wait_for_line_async(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 10.0,
        *,
        stream: Stream = "any",
        since: int = 0,
    ) -> re.Match[str]:
        """``wait_for_line`` for async callers: polls, so cancelling it is immediate."""
        self._check_waitable()
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                m, since = self._find(rx, stream, since)
            if m:
                return m
            if not self.running:
                break
            if time.monotonic() >= deadline:
                raise self._timeout_error(rx, timeout)
            await asyncio.sleep(_POLL_S)
        await asyncio.to_thread(self._join_pumps, 0.5)
        with self._cond:
            m, _ = self._find(rx, stream, since)
        if m:
            return m
        raise self._exited_error(rx)

    # -- exit -------------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit by itself; ProcessTimeout if it is still running."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        try:
            code = self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ProcessTimeout(
                f"{self.name} still running after {timeout:g} s",
                name=self.name,
                tail=self.tail(),
            ) from None
        self._join_pumps(timeout=1.0)
        return code

    async def wait_async(self, timeout: float | None = None) -> int:
        """``wait`` for async callers (polls; cancelling it leaves the child running)."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._popen.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise ProcessTimeout(
                    f"{self.name} still running after {timeout:g} s",
                    name=self.name,
                    tail=self.tail(),
                )
            await asyncio.sleep(_POLL_S)
        await asyncio.to_thread(self._join_pumps, 1.0)
        return self._popen.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the child itself (not its group), e.g. SIGINT for a Ctrl-C test."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(sig)

    # -- stop -------------------------------------------------------------------------------

    def stop(self, timeout: float = 2.0) -> int | None:
        """SIGTERM the child's process group; SIGKILL whatever is left after ``timeout``.

        Always reaps the child.  Returns its exit code (negative: killed by that signal),
        or None if it was never started.
        """
        p = self._popen
        if p is None:
            return None
        deadline = time.monotonic() + timeout
        if self._group_alive():
            self._signal_group(signal.SIGTERM)
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
        # Grandchildren got the SIGTERM too; give them the rest of the time, then kill.
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        if self._group_alive():
            self._signal_group(signal.SIGKILL)
        p.wait()
        self._await_group_exit()
        self._join_pumps(timeout=1.0)
        return p.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group at once (a crash, for tests) and reap the child."""
        p = self._popen
        if p is None:
            return None
        self._signal_group(signal.SIGKILL)
        p.wait()
        self._await_group_exit()
        self._join_pumps(timeout=1.0)
        return p.returncode

    def _await_group_exit(self, timeout: float = 1.0) -> None:
        # SIGKILL is delivered asynchronously: a grandchild can look alive for a moment
        # after the signal, and callers assume "stopped" means gone.
        end = time.monotonic() + timeout
        while self._group_alive() and time.monotonic() < end:
            time.sleep(0.005)

    # The timeout is the SIGTERM grace period, not a deadline for the caller.
    async def stop_async(self, timeout: float = 2.0) -> int | None:
        """``stop`` without blocking the event loop; runs to the end even if cancelled."""
        return await asyncio.shield(asyncio.to_thread(self.stop, timeout))

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        pgid = self._popen.pid  # start_new_session: the child leads its own group
        with contextlib.suppress(ProcessLookupError):
            if self._popen.poll() is None or self._group_alive():
                os.killpg(pgid, sig)

    def _group_alive(self) -> bool:
        """Does any live (non-zombie) process remain in the child's process group?"""
        assert self._popen is not None
        pgid = self._popen.pid
        if self._popen.poll() is None:
            return True
        try:
            members = list(_group_members(pgid))
        except OSError:  # no /proc: ask the kernel, which also counts zombies
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return False
            return True
        return bool(members)

    def _join_pumps(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for t in self._pumps:
            t.join(max(0.0, end - time.monotonic()))
        self._pumps = [t for t in self._pumps if t.is_alive()]

    # -- context managers -------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_async()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exit {self.returncode}"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"


def _group_members(pgid: int) -> Iterator[int]:
    """Pids of live (non-zombie) processes in process group ``pgid``, read from /proc."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited while we looked
            continue
        # Fields after the command name, which is in parentheses and may contain spaces.
        fields = stat[stat.rfind(b")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in (b"Z", b"X"):
            yield int(entry.name)
