"""The job model: a frozen value, its state table, and its configuration from TOML.

States: QUEUED → RUNNING ⇄ CHECKPOINTING; RUNNING/CHECKPOINTING → PAUSED (stopped with a
final checkpoint), FAILED (crashed, cancelled), FINISHED.  PAUSED and FAILED jobs start again
(from their last good checkpoint); FINISHED is final.  A transition to the current state is a
no-op; an event the table does not allow raises :class:`IllegalJobTransition`.

Configuration (every key but ``id`` optional)::

    [checkpoints]
    dir = ""                    # "" → <node.data_dir>/checkpoints
    staging_dir = ""            # "" → <node.data_dir>/staging (same filesystem as dir!)
    keep = 3                    # last K checkpoints kept per job
    max_concurrent = 2          # checkpoints written at once
    bandwidth_bytes_per_s = 3e9 # storage bandwidth a simulated GPU checkpoint is charged
    stop_timeout_s = 30.0       # SIGTERM → SIGKILL
    checkpoint_timeout_s = 120.0
    prior_cost_s = 30.0         # policy prior: checkpoint cost
    prior_mtbf_s = 21600.0      # policy prior: mean time between faults
    prior_weight = 1.0          # the prior counts as this many faults
    cost_alpha = 0.3            # EWMA weight of each measured cost
    min_interval_s = 60.0
    max_interval_s = 21600.0

    [[jobs]]
    id = "train-a"
    priority = 5                # higher gets power first
    gpus = [0, 1]
    work = 1e6                  # total progress units (0: unknown)
    checkpoint_bytes = 1073741824   # simulated GPU jobs: bytes written per checkpoint
    command = ["python", "-m", "node.jobs.example_job", "--steps", "1000"]  # process jobs
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from node.errors import ConfigError
from node.jobs.errors import IllegalJobTransition
from node.jobs.policy import PolicyConfig
from node.jobs.store import JOB_ID_RE


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CHECKPOINTING = "checkpointing"
    PAUSED = "paused"
    FAILED = "failed"
    FINISHED = "finished"


class JobEvent(enum.StrEnum):
    START = "start"  # started (or restarted from its last good checkpoint)
    CHECKPOINT = "checkpoint"  # a checkpoint was asked for
    CHECKPOINTED = "checkpointed"  # it was committed (or given up): back to work
    PAUSE = "pause"  # stopped on purpose, with a final checkpoint where possible
    FAIL = "fail"  # crashed, lost its GPU, or was cancelled
    FINISH = "finish"  # all work done
    REQUEUE = "requeue"  # waits for a GPU again (e.g. after a fault, before restart)


S, E = JobState, JobEvent

#: (state, event) → next state.  Everything absent is illegal.
TRANSITIONS: dict[tuple[JobState, JobEvent], JobState] = {
    (S.QUEUED, E.START): S.RUNNING,
    (S.QUEUED, E.PAUSE): S.PAUSED,
    (S.QUEUED, E.FAIL): S.FAILED,
    (S.QUEUED, E.REQUEUE): S.QUEUED,
    (S.RUNNING, E.START): S.RUNNING,
    (S.RUNNING, E.CHECKPOINT): S.CHECKPOINTING,
    (S.RUNNING, E.CHECKPOINTED): S.RUNNING,  # a checkpoint the job took by itself
    (S.RUNNING, E.PAUSE): S.PAUSED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.FINISH): S.FINISHED,
    (S.RUNNING, E.REQUEUE): S.QUEUED,
    (S.CHECKPOINTING, E.CHECKPOINT): S.CHECKPOINTING,
    (S.CHECKPOINTING, E.CHECKPOINTED): S.RUNNING,
    (S.CHECKPOINTING, E.PAUSE): S.PAUSED,
    (S.CHECKPOINTING, E.FAIL): S.FAILED,
    (S.CHECKPOINTING, E.FINISH): S.FINISHED,
    (S.CHECKPOINTING, E.REQUEUE): S.QUEUED,
    (S.PAUSED, E.START): S.RUNNING,
    (S.PAUSED, E.PAUSE): S.PAUSED,
    (S.PAUSED, E.FAIL): S.FAILED,
    (S.PAUSED, E.REQUEUE): S.QUEUED,
    (S.FAILED, E.START): S.RUNNING,
    (S.FAILED, E.FAIL): S.FAILED,
    (S.FAILED, E.REQUEUE): S.QUEUED,
    (S.FINISHED, E.FINISH): S.FINISHED,
}

#: States in which the job holds its GPUs.
ACTIVE = frozenset({S.RUNNING, S.CHECKPOINTING})


@dataclass(frozen=True, slots=True)
class CheckpointRef:
    """One entry of a job's checkpoint history (the store holds the bytes)."""

    seq: int
    progress: float
    created: float
    size: int
    #: Hex digest of the data (the store's algorithm, named in its manifest).
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A job: what it is (from config or ground) and where it stands (a frozen value)."""

    id: str
    priority: int = 0
    gpus: tuple[int, ...] = ()
    #: Total progress units of the work (0: unknown).
    work: float = 0.0
    #: Bytes of one checkpoint of a simulated-GPU job.
    checkpoint_bytes: int = 0
    #: argv of a process job (empty: the job runs on simulated GPUs).
    command: tuple[str, ...] = ()
    #: Extra environment of a process job (on top of the node's, before UMBRA_* and CUDA_*).
    env: tuple[tuple[str, str], ...] = ()
    #: Working directory of a process job ("": the node's).
    cwd: str = ""
    #: A process job that crashes this often within ``crash_window_s`` is failed for good.
    max_crashes: int = 3
    crash_window_s: float = 600.0
    #: A process job's checkpoint budget: the largest checkpoint it may commit (0: no limit).
    #: With the store's ``keep`` it bounds the disk the job can take.
    max_checkpoint_bytes: int = 0
    #: A process job starts with the node; False: it waits for ground's ``job_resume``.
    autostart: bool = True
    state: JobState = JobState.QUEUED
    progress: float = 0.0
    history: tuple[CheckpointRef, ...] = ()
    #: Why the job is in its state (last transition's reason).
    reason: str = ""
    #: History entries kept in the value (the store keeps its own last K).
    history_limit: int = field(default=16, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not JOB_ID_RE.fullmatch(self.id):
            raise ValueError(f"job id {self.id!r}: 1-64 letters, digits, '-', '_', '.'")
        if len(set(self.gpus)) != len(self.gpus) or any(g < 0 for g in self.gpus):
            raise ValueError(f"job {self.id}: gpus {self.gpus!r} must be distinct indices >= 0")
        if self.work < 0 or self.checkpoint_bytes < 0 or self.max_checkpoint_bytes < 0 or not (self.progress >= 0):
            raise ValueError(f"job {self.id}: work, checkpoint sizes and progress must be >= 0")

    @property
    def is_process(self) -> bool:
        return bool(self.command)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def last_checkpoint(self) -> CheckpointRef | None:
        return self.history[-1] if self.history else None

    def fire(self, event: JobEvent, reason: str = "") -> Self:
        """The job after ``event``; the same value when the state does not change."""
        try:
            target = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalJobTransition(self.id, self.state.value, event.value) from None
        if target is self.state:
            return self
        return dataclasses.replace(self, state=target, reason=reason or event.value)

    def with_progress(self, progress: float) -> Self:
        if not (progress >= 0) or math.isinf(progress):
            raise ValueError(f"job {self.id}: progress {progress!r} must be a finite number >= 0")
        return dataclasses.replace(self, progress=float(progress))

    def with_checkpoint(self, ref: CheckpointRef) -> Self:
        history = (*self.history, ref)[-self.history_limit :]
        return dataclasses.replace(self, history=history)

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "priority": self.priority,
            "gpus": list(self.gpus),
            "state": self.state.value,
            "progress": self.progress,
            "work": self.work,
            "reason": self.reason,
            "checkpoints": [dataclasses.asdict(c) for c in self.history],
        }


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointConfig:
    """The ``[checkpoints]`` section."""

    dir: Path | None = None
    staging_dir: Path | None = None
    keep: int = 3
    max_concurrent: int = 2
    bandwidth_bytes_per_s: float = 3e9
    stop_timeout_s: float = 30.0
    checkpoint_timeout_s: float = 120.0
    #: The clock process jobs' checkpoint intervals run on: ``wall`` (the node's monotonic
    #: clock), or ``board`` (the board's sensor time, which a HIL bench may run faster than
    #: wall time; on a real board the two are the same).
    clock: str = "wall"
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if self.clock not in ("wall", "board"):
            raise ConfigError(f"checkpoints.clock = {self.clock!r}: use wall or board", key="checkpoints.clock")
        for key, lo, hi in (
            ("keep", 1, 1000),
            ("max_concurrent", 1, 64),
            ("bandwidth_bytes_per_s", 1e3, 1e12),
            ("stop_timeout_s", 0.1, 3600.0),
            ("checkpoint_timeout_s", 0.1, 86400.0),
        ):
            value = getattr(self, key)
            if not (lo <= value <= hi):
                raise ConfigError(f"checkpoints.{key} = {value!r} is outside [{lo}, {hi}]", key=f"checkpoints.{key}")

    def store_dir(self, data_dir: Path) -> Path:
        return self.dir if self.dir is not None else data_dir / "checkpoints"

    def staging(self, data_dir: Path) -> Path:
        return self.staging_dir if self.staging_dir is not None else data_dir / "staging"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "<defaults>") -> Self:
        """Build from the ``[checkpoints]`` table; errors name the key and the source."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: checkpoints must be a table", key="checkpoints", source=source)
        policy_keys = {f.name: f for f in dataclasses.fields(PolicyConfig)}
        own = {
            "keep": int,
            "max_concurrent": int,
            "bandwidth_bytes_per_s": float,
            "stop_timeout_s": float,
            "checkpoint_timeout_s": float,
        }
        kwargs: dict[str, Any] = {}
        policy: dict[str, Any] = {}
        for key, value in values.items():
            where = f"checkpoints.{key}"
            if key in ("dir", "staging_dir"):
                text = _typed(value, str, where, source)
                kwargs[key] = Path(text) if text else None
            elif key == "clock":
                kwargs[key] = _typed(value, str, where, source)
            elif key in own:
                kwargs[key] = _typed(value, own[key], where, source)
            elif key in policy_keys:
                policy[key] = _typed(value, float, where, source)
            else:
                raise ConfigError(f"{source}: unknown key {where}", key=where, source=source)
        try:
            return cls(policy=PolicyConfig(**policy), **kwargs)
        except ConfigError as exc:
            exc.source = source
            exc.args = (f"{source}: {exc.args[0]}",)
            raise


_JOB_KEYS: dict[str, type] = {
    "id": str,
    "priority": int,
    "gpus": list,
    "work": float,
    "checkpoint_bytes": int,
    "command": list,
    "env": dict,
    "cwd": str,
    "max_crashes": int,
    "crash_window_s": float,
    "max_checkpoint_bytes": int,
    "autostart": bool,
}
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Set by the node for every process job; a job's ``env`` may not override them.
RESERVED_ENV_PREFIXES = ("UMBRA_", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


def resolve_command(program: str, cwd: str = "") -> str | None:
    """The executable a job's ``command[0]`` names (a path, or a name on PATH), or None."""
    if os.sep in program:
        path = Path(cwd or ".") / program if not os.path.isabs(program) else Path(program)
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(program)


def _typed(value: Any, kind: type, where: str, source: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise ConfigError(
            f"{source}: {where} must be {kind.__name__}, got {type(value).__name__}", key=where, source=source
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {where} must be finite", key=where, source=source)
    return value


def parse_jobs(raw: Any, *, source: str = "<config>") -> tuple[Job, ...]:
    """Jobs from the ``[[jobs]]`` array of tables; errors name the key (``jobs[1].gpus``)."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise ConfigError(f"{source}: jobs must be an array of tables ([[jobs]])", key="jobs", source=source)
    jobs: list[Job] = []
    seen: set[str] = set()
    for i, table in enumerate(raw):
        prefix = f"jobs[{i}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: {prefix} must be a table", key=prefix, source=source)
        for key in table:
            if key not in _JOB_KEYS:
                raise ConfigError(f"{source}: unknown key {prefix}.{key}", key=f"{prefix}.{key}", source=source)
        if "id" not in table:
            raise ConfigError(f"{source}: {prefix}.id is missing", key=f"{prefix}.id", source=source)
        values = {k: _typed(v, _JOB_KEYS[k], f"{prefix}.{k}", source) for k, v in table.items()}
        job_id = values["id"]
        if not JOB_ID_RE.fullmatch(job_id):
            raise ConfigError(
                f"{source}: {prefix}.id = {job_id!r}: use 1-64 letters, digits, '-', '_' or '.'",
                key=f"{prefix}.id", source=source,
            )
        if job_id in seen:
            raise ConfigError(f"{source}: {prefix}.id = {job_id!r} is used twice", key=f"{prefix}.id", source=source)
        seen.add(job_id)
        gpus = values.get("gpus", [])
        if not all(isinstance(g, int) and not isinstance(g, bool) and 0 <= g < 64 for g in gpus) or len(
            set(gpus)
        ) != len(gpus):
            raise ConfigError(
                f"{source}: {prefix}.gpus must be distinct GPU indices in [0, 63]", key=f"{prefix}.gpus", source=source
            )
        command = values.get("command", [])
        if not all(isinstance(c, str) for c in command):
            raise ConfigError(f"{source}: {prefix}.command must be a list of strings", key=f"{prefix}.command", source=source)
        cwd = values.get("cwd", "")
        if cwd and not Path(cwd).is_dir():
            raise ConfigError(f"{source}: {prefix}.cwd = {cwd!r} is not a directory", key=f"{prefix}.cwd", source=source)
        if command and resolve_command(command[0], cwd) is None:
            raise ConfigError(f"{source}: {prefix}.command: {command[0]!r} is not an executable "
                              "(a path, or a name on PATH)", key=f"{prefix}.command", source=source)
        env = values.get("env", {})
        for name, text in env.items():
            if not _ENV_NAME_RE.fullmatch(name) or not isinstance(text, str):
                raise ConfigError(f"{source}: {prefix}.env.{name} must be NAME = \"text\"",
                                  key=f"{prefix}.env.{name}", source=source)
            if name.startswith(RESERVED_ENV_PREFIXES):
                raise ConfigError(f"{source}: {prefix}.env.{name} is set by the node", key=f"{prefix}.env.{name}",
                                  source=source)
        if values.get("max_crashes", 3) < 1 or values.get("crash_window_s", 600.0) <= 0:
            raise ConfigError(f"{source}: {prefix}: max_crashes must be >= 1 and crash_window_s > 0",
                              key=f"{prefix}.max_crashes", source=source)
        claimed = [g for other in jobs if other.command for g in other.gpus if g in gpus]
        if command and claimed:
            raise ConfigError(f"{source}: {prefix}.gpus: GPU {claimed[0]} already belongs to another "
                              "process job", key=f"{prefix}.gpus", source=source)
        if values.get("priority", 0) > 100:
            raise ConfigError(f"{source}: {prefix}.priority must be 0 … 100", key=f"{prefix}.priority", source=source)
        for key in ("priority", "work", "checkpoint_bytes", "max_checkpoint_bytes"):
            if key in values and values[key] < 0:
                raise ConfigError(f"{source}: {prefix}.{key} must be >= 0", key=f"{prefix}.{key}", source=source)
        jobs.append(
            Job(
                id=job_id,
                priority=values.get("priority", 0),
                gpus=tuple(gpus),
                work=values.get("work", 0.0),
                checkpoint_bytes=values.get("checkpoint_bytes", 0),
                command=tuple(command),
                env=tuple(sorted(env.items())),
                cwd=cwd,
                max_crashes=values.get("max_crashes", 3),
                crash_window_s=values.get("crash_window_s", 600.0),
                max_checkpoint_bytes=values.get("max_checkpoint_bytes", 0),
                autostart=values.get("autostart", True),
            )
        )
    return tuple(jobs)
