"""Jobs as real processes: the node's side of the checkpoint protocol (docs/jobs.md).

The node starts the job's command with, in its environment:

``UMBRA_JOB_ID``          the job's id;
``UMBRA_CHECKPOINT_DIR``  a staging directory, empty at start, on the store's filesystem;
``UMBRA_RESTORE_FROM``    path of the verified checkpoint to resume from ("" for a fresh start);
``UMBRA_RESTORE_PROGRESS`` that checkpoint's progress ("" for a fresh start);
``UMBRA_CONTROL_FD``      a pipe's write end; the job writes one ASCII line per message;
``UMBRA_PROTOCOL``        ``1``;
``UMBRA_RESULTS_DIR``     where its result files go (ground downlinks them, ICD §5.9), when the
                          node has a results directory.

Job → node lines: ``READY`` (signal handlers installed, restore read), ``PROGRESS <p>``,
``CHECKPOINT <name> <p>`` (a file in the staging directory, complete and fsynced; the node
takes it), ``DONE <p>`` (all work done; exit 0 follows).  Node → job: SIGUSR1 (write a
checkpoint soon), SIGTERM (write a final checkpoint and exit 0), SIGKILL after
``stop_timeout_s``.

:class:`ProcessJob` supervises one such process; it keeps the job's model value
(:class:`node.jobs.model.Job`) in step and reports through ``on_event``.

Each job runs in a session (and process group) of its own, and on Linux is told to die
with the node (``PR_SET_PDEATHSIG`` SIGKILL): a node killed outright leaves no job running
uncontrolled; what the job committed stays in the store.  When the job exits, whatever
it left in its process group is killed too (children that would outlive it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

from node.jobs.errors import CheckpointError, JobProtocolError
from node.jobs.model import CheckpointRef as _Ref
from node.jobs.model import Job, JobEvent, JobState
from node.jobs.store import AsyncCheckpointStore, CheckpointInfo

PROTOCOL_VERSION = 1
ENV_JOB_ID = "UMBRA_JOB_ID"
ENV_CHECKPOINT_DIR = "UMBRA_CHECKPOINT_DIR"
ENV_RESTORE_FROM = "UMBRA_RESTORE_FROM"
ENV_RESTORE_PROGRESS = "UMBRA_RESTORE_PROGRESS"
ENV_CONTROL_FD = "UMBRA_CONTROL_FD"
ENV_PROTOCOL = "UMBRA_PROTOCOL"
_MAX_LINE = 4096
#: More control lines than this in one second is a job out of control: it is killed (a
#: crash for the runner), so a flood cannot take the node's event loop from the control law.
MAX_LINES_PER_S = 1000

log = logging.getLogger("umbra.node.jobs.process")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the node dies (Linux; a no-op elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def kill_group(pgid: int, signum: int = signal.SIGKILL) -> bool:
    """Signal a job's whole process group; False when nothing is left in it."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # not ours (a reused id): leave it
        return False
    return True


class ProcessEventKind(enum.StrEnum):
    STARTED = "started"
    READY = "ready"
    PROGRESS = "progress"
    CHECKPOINTED = "checkpointed"
    CHECKPOINT_FAILED = "checkpoint_failed"
    PROTOCOL_ERROR = "protocol_error"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    kind: ProcessEventKind
    job: Job  # the job's value after the event
    checkpoint: CheckpointInfo | None = None
    #: CHECKPOINTED: seconds from the request (signal) to the commit, if the node asked.
    cost_s: float | None = None
    returncode: int | None = None
    detail: str = ""


class ProcessJob:
    """Supervises one job process: start (restoring), checkpoint, stop, restart.

    ``async with ProcessJob(job, store=..., staging_root=...) as pj: await pj.start()`` —
    leaving the block stops the process (SIGTERM with a final checkpoint, SIGKILL after
    ``stop_timeout_s``).
    """

    def __init__(
        self,
        job: Job,
        *,
        store: AsyncCheckpointStore,
        staging_root: Path,
        stop_timeout_s: float = 30.0,
        checkpoint_timeout_s: float = 120.0,
        ready_timeout_s: float = 30.0,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        on_event: Callable[[ProcessEvent], None] | None = None,
        timer: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        if not job.command:
            raise JobProtocolError(f"job {job.id} has no command", job_id=job.id)
        self._job = job
        self._store = store
        self.staging = Path(staging_root) / job.id
        self.stop_timeout_s = stop_timeout_s
        self.checkpoint_timeout_s = checkpoint_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._stdout = stdout
        self._stderr = stderr
        self._on_event = on_event
        self._timer = timer
        self._log = logger or log
        self._proc: asyncio.subprocess.Process | None = None
        self._monitor: asyncio.Task[int] | None = None
        self._ready = asyncio.Event()
        self._waiters: list[asyncio.Future[CheckpointInfo]] = []
        self._asked_at: float | None = None
        self._stopping = False
        self._done = False

    # -- properties ----------------------------------------------------------------------

    @property
    def job(self) -> Job:
        return self._job

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._monitor is not None and not self._monitor.done()

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.running:
            await self.stop()

    def _emit(self, kind: ProcessEventKind, **kwargs: Any) -> None:
        if self._on_event is not None:
            self._on_event(ProcessEvent(kind, self._job, **kwargs))

    def _fire(self, event: JobEvent, reason: str = "") -> None:
        self._job = self._job.fire(event, reason)

    async def start(self, *, restore: bool = True) -> CheckpointInfo | None:
        """Start the process, resuming from the newest verified checkpoint when ``restore``.

        Returns the checkpoint it resumes from, or None for a fresh start.
        """
        if self.running:
            raise JobProtocolError(f"job {self._job.id} is already running", job_id=self._job.id)
        self._job.fire(JobEvent.START)  # raises IllegalJobTransition (e.g. FINISHED) before any spawn
        info = await self._store.restore(self._job.id) if restore else None
        shutil.rmtree(self.staging, ignore_errors=True)  # leftovers of a previous run
        self.staging.mkdir(parents=True)
        env = dict(os.environ if self._env is None else self._env)
        read_fd, write_fd = os.pipe()
        env.update({
            ENV_JOB_ID: self._job.id,
            ENV_CHECKPOINT_DIR: str(self.staging),
            ENV_RESTORE_FROM: str(info.data_path) if info else "",
            ENV_RESTORE_PROGRESS: repr(info.progress) if info else "",
            ENV_CONTROL_FD: str(write_fd),
            ENV_PROTOCOL: str(PROTOCOL_VERSION),
        })
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._job.command,
                env=env,
                cwd=self._cwd,
                pass_fds=(write_fd,),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._stdout,
                stderr=self._stderr,
                start_new_session=True,  # its own process group: the node can end all of it
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            os.close(read_fd)
            raise JobProtocolError(f"job {self._job.id}: cannot start {self._job.command[0]}: {exc}",
                                   job_id=self._job.id) from exc
        finally:
            os.close(write_fd)
        self._ready = asyncio.Event()
        self._stopping = False
        self._done = False
        self._asked_at = None
        progress = info.progress if info else 0.0
        self._job = self._job.with_progress(max(progress, 0.0)).fire(
            JobEvent.START, f"restored from checkpoint {info.seq}" if info else "fresh start"
        )
        self._monitor = asyncio.create_task(self._supervise(self._proc, read_fd), name=f"job-{self._job.id}")
        self._emit(ProcessEventKind.STARTED, checkpoint=info, detail=f"pid {self._proc.pid}")
        return info

    async def _supervise(self, proc: asyncio.subprocess.Process, read_fd: int) -> int:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_MAX_LINE)
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            lines = asyncio.create_task(self._read_lines(reader))
            returncode = await proc.wait()
            # Children it left behind would run uncontrolled (and hold the pipe open).
            if kill_group(proc.pid):
                self._log.warning("job %s: killed what its process left running", self._job.id)
            try:  # the pipe ends when the job (and anything that inherited it) is gone
                await asyncio.wait_for(asyncio.shield(lines), timeout=5.0)
            except TimeoutError:
                lines.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lines
        finally:
            transport.close()
        self._exited(returncode)
        return returncode

    async def _read_lines(self, reader: asyncio.StreamReader) -> None:
        window_at, lines = self._timer(), 0
        while True:
            try:
                raw = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                self._emit(ProcessEventKind.PROTOCOL_ERROR, detail="line too long")
                continue
            if not raw:
                return
            now = self._timer()
            if now - window_at >= 1.0:
                window_at, lines = now, 0
            lines += 1
            if lines > MAX_LINES_PER_S:
                self._log.warning("job %s: more than %d control lines in a second; killing it",
                                  self._job.id, MAX_LINES_PER_S)
                self._emit(ProcessEventKind.PROTOCOL_ERROR,
                           detail=f"flooding the control pipe (> {MAX_LINES_PER_S} lines/s): killed")
                self._signal(signal.SIGKILL)
                return
            await self._handle(raw.decode(errors="replace").strip())

    async def _handle(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        try:
            if word == "READY":
                self._ready.set()
                self._emit(ProcessEventKind.READY)
            elif word == "PROGRESS":
                self._job = self._job.with_progress(float(rest))
                self._emit(ProcessEventKind.PROGRESS)
            elif word == "CHECKPOINT":
                name, _, progress = rest.rpartition(" ")
                await self._commit(name, float(progress))
            elif word == "SAVE_FAILED":  # the job could not write its checkpoint (a full disk)
                self._checkpoint_failed(f"the job could not save: {rest[:200] or 'no reason given'}")
            elif word == "DONE":
                self._done = True
                if rest:
                    self._job = self._job.with_progress(float(rest))
            elif line:
                raise ValueError(f"unknown message {word!r}")
        except ValueError as exc:
            self._log.warning("job %s: bad control line %r: %s", self._job.id, line[:80], exc)
            self._emit(ProcessEventKind.PROTOCOL_ERROR, detail=f"{line[:80]!r}: {exc}")

    def _staged_path(self, name: str) -> Path:
        path = (self.staging / name).resolve()
        if path.parent != self.staging.resolve() or not name:
            raise ValueError(f"checkpoint {name!r} is not a file in {self.staging}")
        return path

    async def _commit(self, name: str, progress: float) -> None:
        try:
            path = self._staged_path(name)
            if path.is_file() and path.stat().st_size == 0:
                raise CheckpointError(f"job {self._job.id}: staged checkpoint {name!r} is empty",
                                      job_id=self._job.id)
            budget = self._job.max_checkpoint_bytes
            if budget and path.is_file() and (size := path.stat().st_size) > budget:
                path.unlink(missing_ok=True)  # over budget: it takes no room past this point
                raise CheckpointError(f"job {self._job.id}: checkpoint {name!r} is {size} bytes, over its "
                                      f"budget of {budget} (max_checkpoint_bytes)", job_id=self._job.id)
            info = await self._store.adopt(self._job.id, path, progress=progress)
        except (ValueError, CheckpointError, OSError) as exc:
            self._log.warning("job %s: checkpoint %r not committed: %s", self._job.id, name, exc)
            self._checkpoint_failed(str(exc))
            return
        cost = self._timer() - self._asked_at if self._asked_at is not None else None
        self._asked_at = None
        ref = _Ref(info.seq, info.progress, info.created, info.size, info.digest)
        self._job = self._job.with_progress(max(self._job.progress, progress)).with_checkpoint(ref)
        if self._job.state is JobState.CHECKPOINTING and not self._stopping:
            self._fire(JobEvent.CHECKPOINTED)
        self._emit(ProcessEventKind.CHECKPOINTED, checkpoint=info, cost_s=cost)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(info)

    def _checkpoint_failed(self, detail: str) -> None:
        """The checkpoint asked for will not come: the job runs on, the earlier ones stand."""
        self._asked_at = None
        if self._job.state is JobState.CHECKPOINTING and not self._stopping:
            self._fire(JobEvent.CHECKPOINTED, "checkpoint failed")
        self._emit(ProcessEventKind.CHECKPOINT_FAILED, detail=detail)
        self._fail_waiters(JobProtocolError(f"job {self._job.id}: checkpoint failed: {detail}", job_id=self._job.id))

    def _fail_waiters(self, exc: BaseException) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)

    def _exited(self, returncode: int) -> None:
        if self._done and returncode in (0, -signal.SIGUSR1):
            # DONE said: a checkpoint request that crossed it may have found the job exiting
            # (the default action of SIGUSR1 is to terminate): finished all the same.
            self._fire(JobEvent.FINISH, "done")
        elif self._stopping:
            self._fire(JobEvent.PAUSE, "stopped" if returncode == 0 else f"stopped (exit {returncode})")
        elif self._job.state is not JobState.FINISHED:
            self._fire(JobEvent.FAIL, f"exited with {returncode}" if returncode >= 0 else f"killed by signal {-returncode}")
        self._fail_waiters(JobProtocolError(f"job {self._job.id} exited ({returncode}) before checkpointing",
                                            job_id=self._job.id))
        self._emit(ProcessEventKind.EXITED, returncode=returncode)

    # -- commands ------------------------------------------------------------------------

    async def _wait_ready(self) -> None:
        assert self._monitor is not None
        ready = asyncio.create_task(self._ready.wait())
        try:
            await asyncio.wait(
                {ready, self._monitor}, timeout=self.ready_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
        if not self._ready.is_set():
            why = "exited" if self._monitor.done() else f"sent no READY in {self.ready_timeout_s} s"
            raise JobProtocolError(f"job {self._job.id} {why}", job_id=self._job.id)

    def _signal(self, signum: int) -> None:
        if self._proc is not None and self._proc.returncode is None:
            if signum == signal.SIGKILL:  # the whole group: nothing of the job survives it
                kill_group(self._proc.pid)
                return
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signum)

    @property
    def said_done(self) -> bool:
        """The job said DONE: it is on its way out, nothing more to checkpoint."""
        return self._done

    async def checkpoint(self, *, timeout: float | None = None) -> CheckpointInfo:
        """Ask for a checkpoint (SIGUSR1) and wait until it is committed in the store."""
        if not self.running:
            raise JobProtocolError(f"job {self._job.id} is not running", job_id=self._job.id)
        if self._done:
            raise JobProtocolError(f"job {self._job.id} has finished", job_id=self._job.id)
        await self._wait_ready()
        fut: asyncio.Future[CheckpointInfo] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if self._asked_at is None:
            self._asked_at = self._timer()
        self._fire(JobEvent.CHECKPOINT)
        self._signal(signal.SIGUSR1)
        try:
            return await asyncio.wait_for(fut, timeout if timeout is not None else self.checkpoint_timeout_s)
        except TimeoutError:
            if self._job.state is JobState.CHECKPOINTING:
                self._fire(JobEvent.CHECKPOINTED, "checkpoint timed out")
            raise JobProtocolError(f"job {self._job.id}: no checkpoint within the timeout", job_id=self._job.id) from None

    async def stop(self, *, timeout: float | None = None) -> int:
        """SIGTERM (the job writes a final checkpoint and exits), SIGKILL after the timeout.

        Returns the exit code (negative: killed by that signal).  The job ends PAUSED
        (FINISHED if it completed meanwhile).
        """
        if self._monitor is None:
            raise JobProtocolError(f"job {self._job.id} was never started", job_id=self._job.id)
        if not self._monitor.done():
            self._stopping = True
            if self._job.state is JobState.RUNNING:
                self._fire(JobEvent.CHECKPOINT, "final checkpoint")
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._monitor), timeout or self.stop_timeout_s)
            except TimeoutError:
                self._log.warning("job %s: no exit %.1f s after SIGTERM; killing", self._job.id,
                                  timeout or self.stop_timeout_s)
                self._signal(signal.SIGKILL)
        return await self._monitor

    async def kill(self) -> int:
        """SIGKILL now (a crash, as far as the job is concerned): the job ends FAILED."""
        if self._monitor is None:
            raise JobProtocolError(f"job {self._job.id} was never started", job_id=self._job.id)
        self._signal(signal.SIGKILL)
        return await self._monitor

    async def wait(self) -> int:
        """Wait for the process to exit on its own; its exit code."""
        if self._monitor is None:
            raise JobProtocolError(f"job {self._job.id} was never started", job_id=self._job.id)
        return await asyncio.shield(self._monitor)

    async def restart(self) -> CheckpointInfo | None:
        """Stop (if running) and start again from the newest verified checkpoint."""
        if self.running:
            await self.stop()
        return await self.start(restore=True)
