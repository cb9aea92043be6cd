"""The node's process jobs: started, checkpointed, restarted and stopped (docs/jobs.md).

``async with ProcessJobRunner(jobs, store=..., staging_root=..., run_dir=...) as runner:``
owns one supervising task per configured process job (``[[jobs]]`` with a ``command``):

- **start** with ``CUDA_VISIBLE_DEVICES`` and ``NVIDIA_VISIBLE_DEVICES`` set to the job's
  GPUs, resuming from its newest verified checkpoint (``ProcessJob``);
- **checkpoint** when Daly's interval is due (one ``IntervalEstimator`` for the node: faults
  are node-wide), when ground asks, and before the node takes power away (``checkpoint_all``);
- **restart** a job that crashed, or whose GPU reported a fault (``gpu_fault``), from its
  newest checkpoint after a backoff (1 s doubling to 60 s); after ``max_crashes`` crashes
  within ``crash_window_s`` the job is failed and left stopped (an event says so);
- **pause / resume / cancel** by ground command; pause and cancel stop the job with a final
  checkpoint (SIGTERM, SIGKILL after the stop timeout);
- on leaving the block, every job is stopped the same way.

Intervals run on the injected ``clock``: the node's monotonic clock, or its board clock
(``checkpoints.clock = "board"``) on a HIL bench that runs the board faster than wall time,
so Daly's interval, the measured checkpoint cost and the fault rate share one time base; the
controller calls :meth:`tick` every frame so an interval due on that clock is kept.  The
``policy`` decides the interval and whether foresight counts (``baseline``: a fixed interval,
no checkpoints for eclipses, SAFE or heat).  Timeouts, backoff and crash windows stay wall time.

Each job runs in its own process group and dies with the node (``ProcessJob``). Its group
id is kept in ``<run_dir>/<job>.pgid`` while it runs; at the next start, a group left from
a node that was killed (a child that escaped ``PR_SET_PDEATHSIG``) is ended before anything
starts again, so two copies of a job never run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from node.jobs.errors import JobProtocolError
from node.jobs.manager import CheckpointPolicy, DalyWithForesight
from node.jobs.model import Job, JobState
from node.jobs.policy import IntervalEstimator
from node.jobs.process import ProcessEvent, ProcessEventKind, ProcessJob, kill_group
from node.jobs.store import AsyncCheckpointStore

log = logging.getLogger("umbra.node.jobs.runner")

BACKOFF_S = 1.0
BACKOFF_MAX_S = 60.0

#: (kind, severity 0-4, text, data) → the node's event log.
EventSink = Callable[[str, int, str, dict[str, Any]], None]


@dataclass
class _Slot:
    job: ProcessJob
    #: What ground (or the node) wants: run, pause, cancel, power (stopped while its GPU is off),
    #: held (``autostart = false``: not started until ground's job_resume).
    wanted: str = "run"
    crashes: deque[float] = field(default_factory=deque)
    restarts: int = 0
    failed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    checkpoint_now: bool = False
    last_checkpoint_at: float = 0.0
    #: The next exit is a GPU fault the node caused on purpose (already counted).
    fault: bool = False
    #: Runner-clock time of the checkpoint request in flight (None: none asked).
    requested_at: float | None = None
    #: Runner-clock time of the state the newest committed checkpoint holds (its request, or
    #: the start that resumed from it): a fault now loses the work since.
    saved_at: float = 0.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _group_has_job(pgid: int, job_id: str) -> bool:
    """Is some process of group ``pgid`` running job ``job_id`` (its UMBRA_JOB_ID)?"""
    needle = f"UMBRA_JOB_ID={job_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pgrp = int(stat.rsplit(")", 1)[1].split()[2])
            if pgrp == pgid and needle in (entry / "environ").read_bytes().split(b"\0"):
                return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def end_leftovers(run_dir: Path, job_ids: Iterable[str]) -> list[str]:
    """Kill the process groups a killed node left running; returns the jobs that had one."""
    ended = []
    boot = _boot_id()
    for job_id in job_ids:
        path = run_dir / f"{job_id}.pgid"
        try:
            pgid_text, _, recorded_boot = path.read_text().partition(" ")
            pgid = int(pgid_text)
        except (OSError, ValueError):
            continue
        if recorded_boot.strip() == boot and _group_has_job(pgid, job_id):
            log.warning("job %s: process group %d outlived the node; ending it", job_id, pgid)
            kill_group(pgid, signal.SIGKILL)
            ended.append(job_id)
        path.unlink(missing_ok=True)
    return ended


class ProcessJobRunner:
    def __init__(
        self,
        jobs: Iterable[Job],
        *,
        store: AsyncCheckpointStore,
        staging_root: Path,
        run_dir: Path,
        estimator: IntervalEstimator | None = None,
        policy: CheckpointPolicy | None = None,
        on_event: EventSink | None = None,
        stop_timeout_s: float = 30.0,
        checkpoint_timeout_s: float = 120.0,
        ready_timeout_s: float = 30.0,
        backoff_s: float = BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
        log_dir: Path | None = None,
        results_root: Path | None = None,
    ) -> None:
        self._jobs = [j for j in jobs if j.is_process]
        #: Each job's results go in ``<results_root>/<job>`` (``$UMBRA_RESULTS_DIR``), whence
        #: ground can ask for them (``file_downlink`` with a path, ICD §5.9).
        self._results_root = results_root
        self._store = store
        self._staging_root = Path(staging_root)
        self.run_dir = Path(run_dir)
        self.estimator = estimator or IntervalEstimator(clock=clock)
        #: Daly's interval with foresight (``umbra``), or a fixed one without (``baseline``).
        self.policy: CheckpointPolicy = policy or DalyWithForesight()
        #: GPUs on the node (the controller sets it from the board): faults are observed on all
        #: of them, so a job on k GPUs sees gpu_count/k times the node's MTBF (0: unknown, 1×).
        self.gpu_count = 0
        self._last_tick: float | None = None
        self._on_event = on_event
        self._stop_timeout_s = stop_timeout_s
        self._checkpoint_timeout_s = checkpoint_timeout_s
        self._ready_timeout_s = ready_timeout_s
        self._backoff_s = backoff_s
        self._clock = clock
        self._log_dir = log_dir
        self._slots: dict[str, _Slot] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._logs: list[Any] = []
        self._kills: set[asyncio.Task[int]] = set()
        self._off: set[int] = set()  # GPUs load shedding switched off

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for job_id in end_leftovers(self.run_dir, [j.id for j in self._jobs]):
            self._event("job_leftover_ended", 3, f"job {job_id}: processes left by a killed node ended",
                        job=job_id)
        for job in self._jobs:
            self._slots[job.id] = _Slot(self._process_job(job), wanted="run" if job.autostart else "held")
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._tasks = [self._tg.create_task(self._supervise(job_id), name=f"umbra.job.{job_id}")
                       for job_id in self._slots]
        if self._slots:
            self.estimator.resume()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._closing = True
        for slot in self._slots.values():
            slot.wake.set()
        assert self._tg is not None
        try:
            await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            for f in self._logs:
                f.close()

    def _process_job(self, job: Job) -> ProcessJob:
        devices = ",".join(str(g) for g in job.gpus)
        env = {**os.environ, **dict(job.env), "CUDA_VISIBLE_DEVICES": devices,
               "NVIDIA_VISIBLE_DEVICES": devices or "void"}
        if self._results_root is not None:
            results = self._results_root / job.id
            results.mkdir(parents=True, exist_ok=True)
            env["UMBRA_RESULTS_DIR"] = str(results)
        out: Any = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self._log_dir / f"{job.id}.log", "ab")  # closed at exit
            self._logs.append(out)
        return ProcessJob(
            job, store=self._store, staging_root=self._staging_root, env=env,
            cwd=Path(job.cwd) if job.cwd else None, stop_timeout_s=self._stop_timeout_s,
            checkpoint_timeout_s=self._checkpoint_timeout_s, ready_timeout_s=self._ready_timeout_s,
            stdout=out, stderr=out, on_event=lambda e: self._on_process_event(e),
        )

    # -- what ground and the controller ask ----------------------------------------------

    def add(self, job: Job) -> None:
        """Run one more job (from an uplinked bundle); ValueError when its id is taken."""
        if not job.is_process:
            raise ValueError(f"job {job.id} has no command")
        if job.id in self._slots:
            raise ValueError(f"job {job.id} exists already")
        if self._tg is None or self._closing:
            raise ValueError("the job runner is not running")
        self._jobs.append(job)
        self._slots[job.id] = _Slot(self._process_job(job), wanted="run" if job.autostart else "held")
        self._tasks.append(self._tg.create_task(self._supervise(job.id), name=f"umbra.job.{job.id}"))
        self.estimator.resume()

    def has(self, job_id: str) -> bool:
        return job_id in self._slots

    def jobs_on(self, gpu: int) -> list[str]:
        return [i for i, s in self._slots.items() if gpu in s.job.job.gpus]

    def _slot(self, job_id: str) -> _Slot:
        try:
            return self._slots[job_id]
        except KeyError:
            raise KeyError(f"no process job {job_id!r}") from None

    def pause(self, job_id: str) -> None:
        slot = self._slot(job_id)
        slot.wanted = "pause"
        slot.wake.set()

    def cancel(self, job_id: str) -> None:
        slot = self._slot(job_id)
        slot.wanted = "cancel"
        slot.wake.set()

    def resume(self, job_id: str) -> None:
        """Run again (also a job failed for crashing too often: ground decided)."""
        slot = self._slot(job_id)
        slot.wanted, slot.failed = "run", False
        slot.crashes.clear()
        slot.wake.set()

    def checkpoint(self, job_id: str) -> None:
        slot = self._slot(job_id)
        slot.checkpoint_now = True
        slot.wake.set()

    def interval_s(self, job_id: str | None = None) -> float:
        """The checkpoint interval in force for ``job_id`` (None: a one-GPU job), on the
        runner's clock: the node's fault rate scaled to the job's share of the GPUs."""
        gpus = len(self._slots[job_id].job.job.gpus) if job_id in self._slots else 1
        scale = self.gpu_count / gpus if self.gpu_count > 0 and gpus > 0 else 1.0
        return self.policy.interval_s(self.estimator, scale)

    def _due_after(self, job_id: str) -> float:
        """Seconds after its last checkpoint that ``job_id`` checkpoints: the interval, but no
        later than ``min_interval_s`` while no checkpoint cost has been measured (the interval
        rests on that cost; the prior is only a guess).  A fixed policy keeps to its interval."""
        interval = self.interval_s(job_id)
        if self.policy.foresees and self.estimator.measured == 0:
            return min(interval, self.estimator.config.min_interval_s)
        return interval

    def tick(self) -> None:
        """Wake the jobs whose interval has run out (the controller calls this every frame, so
        an interval on the board clock is kept however fast the board runs)."""
        now = self._clock()
        # Due before the next tick: start now, not up to a frame late (earlier loses nothing).
        lead = max(0.0, now - self._last_tick) if self._last_tick is not None else 0.0
        self._last_tick = now
        for job_id, slot in self._slots.items():
            if (slot.job.running and slot.requested_at is None
                    and now + lead - slot.last_checkpoint_at >= self._due_after(job_id)):
                slot.checkpoint_now = True
                slot.wake.set()

    def checkpoint_all(self, reason: str) -> None:
        """Power is about to go (SAFE, shedding, an eclipse): checkpoint every running job.
        Foresight: a policy without it (``baseline``) keeps to its interval."""
        if not self.policy.foresees:
            return
        for job_id, slot in self._slots.items():
            if slot.job.running:
                log.info("job %s: checkpoint (%s)", job_id, reason)
                slot.checkpoint_now = True
                slot.wake.set()

    def checkpoint_gpu(self, gpu: int, reason: str) -> None:
        """Work on ``gpu`` is at risk (heading for the thermal limit): checkpoint its jobs, unless
        one was taken within a tenth of an interval (a checkpoint costs time of its own)."""
        if not self.policy.foresees:
            return
        for job_id in self.jobs_on(gpu):
            gap = max(1.0, 0.1 * self.interval_s(job_id))
            slot = self._slots[job_id]
            if slot.job.running and self._clock() - slot.last_checkpoint_at >= gap:
                log.info("job %s: checkpoint (%s)", job_id, reason)
                slot.checkpoint_now = True
                slot.wake.set()

    def power_off(self, gpu: int, reason: str) -> None:
        """``gpu`` is about to lose power (load shedding): stop its jobs with a final checkpoint;
        :meth:`power_on` resumes them (a job ground paused stays paused)."""
        self._off.add(gpu)
        for job_id in self.jobs_on(gpu):
            slot = self._slots[job_id]
            if slot.wanted == "run":
                self._event("job_power_off", 1, f"job {job_id}: GPU {gpu} {reason}; stopping it with a "
                            "final checkpoint", job=job_id, gpu=gpu)
                slot.wanted = "power"
                slot.wake.set()

    def power_on(self, gpu: int) -> None:
        self._off.discard(gpu)
        for job_id in self.jobs_on(gpu):
            slot = self._slots[job_id]
            if slot.wanted == "power" and not self._off.intersection(slot.job.job.gpus):
                self._event("job_power_on", 1, f"job {job_id}: its GPUs are powered again; resuming",
                            job=job_id)
                slot.wanted = "run"
                slot.wake.set()

    def gpu_fault(self, gpu: int, why: str) -> None:
        """A GPU reported an Xid, an ECC error or an upset: its jobs restart from a checkpoint.
        Every GPU's fault counts towards the node's fault rate, whether a job runs there or not
        (after the events: what was in force when it struck is what it is judged against)."""
        for job_id in self.jobs_on(gpu):
            slot = self._slots[job_id]
            if slot.job.running:
                job = slot.job.job
                kept = job.last_checkpoint.progress if job.last_checkpoint is not None else 0.0
                # What this fault costs, against what the policy promised: the work since the
                # newest committed checkpoint's state, and the interval and checkpoint cost in force.
                self._event("job_gpu_fault", 2, f"job {job_id}: GPU {gpu} {why}; restarting from its checkpoint",
                            job=job_id, gpu=gpu, lost_s=round(max(0.0, self._clock() - slot.saved_at), 3),
                            lost_progress=max(0.0, job.progress - kept),
                            interval_s=round(self._due_after(job_id), 3), cost_s=round(self.estimator.cost_s, 3))
                slot.fault = True
                task = asyncio.get_running_loop().create_task(slot.job.kill())
                self._kills.add(task)
                task.add_done_callback(self._kills.discard)
        self.estimator.observe_fault()

    def telemetry(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for job_id, slot in self._slots.items():
            job = slot.job.job
            last = job.last_checkpoint
            out[job_id] = {
                "state": "failed" if slot.failed else "held" if slot.wanted == "held" else job.state.value, "progress": job.progress,
                "gpus": list(job.gpus), "restarts": slot.restarts, "pid": slot.job.pid or 0,
                "checkpoint_seq": last.seq if last else 0, "reason": job.reason[:120],
                "interval_s": round(self._due_after(job_id), 3), "cost_s": round(self.estimator.cost_s, 3),
            }
        return out

    # -- supervision ---------------------------------------------------------------------

    def _event(self, kind: str, severity: int, text: str, **data: Any) -> None:
        if self._on_event is not None:
            self._on_event(kind, severity, text, data)  # the node's event log logs it too
        else:
            (log.warning if severity >= 2 else log.info)("%s", text)

    def _on_process_event(self, event: ProcessEvent) -> None:
        slot = self._slots.get(event.job.id)
        if event.kind is ProcessEventKind.CHECKPOINTED and slot is not None:
            now = self._clock()
            if slot.requested_at is not None:  # cost on the runner's clock: request → commit
                self.estimator.observe_checkpoint(max(0.0, now - slot.requested_at))
                slot.saved_at = slot.requested_at
            else:  # the final checkpoint of a stop
                slot.saved_at = now
            slot.requested_at = None
            slot.last_checkpoint_at = now
        if event.kind in (ProcessEventKind.PROTOCOL_ERROR, ProcessEventKind.CHECKPOINT_FAILED):
            self._event("job_protocol", 2, f"job {event.job.id}: {event.kind.value}: {event.detail}",
                        job=event.job.id)

    def _pgid_file(self, job_id: str) -> Path:
        return self.run_dir / f"{job_id}.pgid"

    async def _supervise(self, job_id: str) -> None:
        slot = self._slots[job_id]
        while not self._closing:
            if slot.wanted != "run" or slot.failed:
                await slot.wake.wait()
                slot.wake.clear()
                continue
            try:
                info = await slot.job.start()
            except JobProtocolError as exc:
                self._crashed(slot, f"could not start: {exc}")
                await self._backoff(slot)
                continue
            self._pgid_file(job_id).write_text(f"{slot.job.pid} {_boot_id()}")
            slot.last_checkpoint_at = slot.saved_at = self._clock()
            slot.requested_at = None
            self._event("job_started", 1, f"job {job_id} started on GPUs {list(slot.job.job.gpus)}"
                        + (f", resuming from checkpoint {info.seq}" if info else ""), job=job_id,
                        pid=slot.job.pid, resumed_from=info.seq if info else 0)
            returncode = await self._run_until_exit(slot)
            self._pgid_file(job_id).unlink(missing_ok=True)
            state = slot.job.job.state
            if state is JobState.FINISHED:
                self._event("job_finished", 1, f"job {job_id} finished", job=job_id,
                            progress=slot.job.job.progress)
                slot.wanted = "done"
            elif slot.wanted in ("pause", "cancel", "power") or self._closing:
                self._event(f"job_{'cancelled' if slot.wanted == 'cancel' else 'stopped'}", 1,
                            f"job {job_id} stopped with a final checkpoint (exit {returncode})", job=job_id)
            elif slot.fault:  # killed for its GPU's fault: straight back from the checkpoint
                slot.fault = False
                slot.restarts += 1
            else:
                self.estimator.observe_fault()
                self._crashed(slot, f"exited with {returncode}")
                await self._backoff(slot)

    async def _run_until_exit(self, slot: _Slot) -> int:
        exited = asyncio.ensure_future(slot.job.wait())
        try:
            while True:
                left = self._due_after(slot.job.job.id) - (self._clock() - slot.last_checkpoint_at)
                slot.wake.clear()
                woke = asyncio.ensure_future(slot.wake.wait())
                # A job that said DONE is only waited for: nothing more to checkpoint.
                await asyncio.wait({exited, woke}, timeout=None if slot.job.said_done else max(left, 0.0),
                                   return_when=asyncio.FIRST_COMPLETED)
                woke.cancel()
                if exited.done():
                    return exited.result()
                if self._closing or slot.wanted in ("pause", "cancel", "power"):
                    return await slot.job.stop()
                due = self._clock() - slot.last_checkpoint_at >= self._due_after(slot.job.job.id)
                if (slot.checkpoint_now or due) and not slot.job.said_done:
                    slot.checkpoint_now = False
                    slot.last_checkpoint_at = slot.requested_at = self._clock()  # a failed one is not retried at once
                    try:
                        await slot.job.checkpoint()
                    except JobProtocolError as exc:  # no READY, a bad file, a timeout: it runs on
                        slot.requested_at = None
                        self._event("job_checkpoint_failed", 2, str(exc), job=slot.job.job.id)
        finally:
            if not exited.done():
                exited.cancel()

    def _crashed(self, slot: _Slot, why: str) -> None:
        job = slot.job.job
        now = time.monotonic()  # a crash window is wall time, whatever clock the intervals use
        slot.crashes.append(now)
        while slot.crashes and now - slot.crashes[0] > job.crash_window_s:
            slot.crashes.popleft()
        if len(slot.crashes) >= job.max_crashes:
            slot.failed = True
            self._event("job_failed", 3, f"job {job.id} {why}: {len(slot.crashes)} crashes in "
                        f"{job.crash_window_s:.0f} s, left stopped (job_resume to try again)", job=job.id)
        else:
            self._event("job_crashed", 2, f"job {job.id} {why}; restarting from its newest checkpoint",
                        job=job.id, crashes=len(slot.crashes))

    async def _backoff(self, slot: _Slot) -> None:
        if slot.failed:
            return
        delay = min(BACKOFF_MAX_S, self._backoff_s * 2 ** max(0, len(slot.crashes) - 1))
        slot.restarts += 1
        slot.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(slot.wake.wait(), delay)
