"""Errors of the job and checkpoint machinery, as branches of :class:`node.errors.UmbraError`."""

from __future__ import annotations

from node.errors import UmbraError


class CheckpointError(UmbraError):
    """A checkpoint could not be written, adopted or read."""

    def __init__(self, message: str, *, job_id: str | None = None, seq: int | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.seq = seq


class CheckpointCorrupt(CheckpointError):
    """A stored checkpoint does not match its manifest (hash, size, or a damaged manifest)."""

    def __init__(
        self, message: str, *, job_id: str | None = None, seq: int | None = None, reason: str = "hash"
    ) -> None:
        super().__init__(message, job_id=job_id, seq=seq)
        self.reason = reason


class StoreLocked(CheckpointError):
    """Another process already owns this checkpoint store."""


class IllegalJobTransition(UmbraError):
    """A job event the state table does not allow in the job's current state."""

    def __init__(self, job_id: str, state: str, event: str) -> None:
        super().__init__(f"job {job_id}: event {event} is not allowed in state {state}")
        self.job_id = job_id
        self.state = state
        self.event = event


class JobProtocolError(UmbraError):
    """A job process broke the checkpoint protocol (docs/jobs.md), or did not answer in time."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
