"""Jobs and checkpoints: the store, the interval policy, the job model, process jobs.

See docs/jobs.md for the job model, the process-job checkpoint protocol, the store layout
and the policy.
"""

from node.jobs.errors import (
    CheckpointCorrupt,
    CheckpointError,
    IllegalJobTransition,
    JobProtocolError,
    StoreLocked,
)
from node.jobs.model import (
    TRANSITIONS,
    CheckpointConfig,
    CheckpointRef,
    Job,
    JobEvent,
    JobState,
    parse_jobs,
)
from node.jobs.policy import (
    Estimate,
    IntervalEstimator,
    PolicyConfig,
    daly_interval,
    young_interval,
)
from node.jobs.process import ProcessEvent, ProcessEventKind, ProcessJob
from node.jobs.store import (
    AsyncCheckpointStore,
    CheckpointInfo,
    CheckpointStore,
    CorruptCheckpoint,
    JobCheckpoints,
    RecoveryReport,
)

__all__ = [
    "TRANSITIONS",
    "AsyncCheckpointStore",
    "CheckpointConfig",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointRef",
    "CheckpointStore",
    "CorruptCheckpoint",
    "Estimate",
    "IllegalJobTransition",
    "IntervalEstimator",
    "Job",
    "JobCheckpoints",
    "JobEvent",
    "JobProtocolError",
    "JobState",
    "PolicyConfig",
    "ProcessEvent",
    "ProcessEventKind",
    "ProcessJob",
    "RecoveryReport",
    "StoreLocked",
    "daly_interval",
    "parse_jobs",
    "young_interval",
]
