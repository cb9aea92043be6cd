"""The command facade: what ground may ask of the controller (``CommandTarget``).

Each call takes effect or raises :class:`~node.errors.CommandRejected` with a reason code,
and none blocks.  What ground asked for that outlives a link session — per-GPU cap
limits, named jobs and their priorities, paused jobs — is :class:`GroundIntent`; the
controller reads it every frame.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from node.board import BoardInfo
from node.bus.payloads import Severity
from node.control.law import PARAM_SPECS
from node.control.params import save_params
from node.controller.rails import RailReason
from node.errors import CommandRejected, ConfigError, LinkError, Reason
from node.jobs.errors import CheckpointError
from node.jobs.store import ground_catalogue
from node.modes import Trigger

if TYPE_CHECKING:
    from node.controller.core import NodeController
    from node.jobs.runner import ProcessJobRunner


@dataclass
class GroundIntent:
    """Ground's wishes that outlive a link session."""

    cap_limits: dict[int, float] = field(default_factory=dict)  # GPU → upper limit of its cap
    named_jobs: dict[str, tuple[int, int]] = field(default_factory=dict)  # job → (GPU mask, priority)
    paused: set[int] = field(default_factory=set)  # GPUs of paused jobs: held at the minimum cap

    def weights(self, gpu_count: int) -> np.ndarray:
        """Allocation weights: priority 0–100 → weight 1–11 (higher priority, more of the budget)."""
        weights = np.ones(gpu_count)
        for mask, priority in self.named_jobs.values():
            for gpu in range(gpu_count):
                if mask >> gpu & 1:
                    weights[gpu] = 1.0 + priority / 10.0
        return weights

    def limits_w(self, gpu_count: int, cap_min_w: float) -> np.ndarray:
        limits = np.full(gpu_count, np.inf)
        for gpu, limit in self.cap_limits.items():
            if gpu < gpu_count:
                limits[gpu] = limit
        for gpu in self.paused:
            if gpu < gpu_count:
                limits[gpu] = cap_min_w
        return limits


class NodeCommands:
    """Implements :class:`~node.bus.processor.CommandTarget` on a :class:`NodeController`."""

    def __init__(self, node: NodeController) -> None:
        self._node = node

    # --- modes --------------------------------------------------------------------------------

    def command_safe(self, reason: str = "commanded by ground") -> None:
        self._node.fire(Trigger.SAFE_COMMANDED, reason)

    def command_release_safe(self, reason: str = "released by ground") -> None:
        self._node.fire(Trigger.SAFE_RELEASED, reason)

    # --- the board ----------------------------------------------------------------------------

    def set_gpu_cap_limit(self, gpu: int, max_w: float | None) -> None:
        """Ground's upper limit on one GPU's cap (None lifts it); the controller stays below."""
        info = self._require_gpu(gpu)
        intent = self._node.intent
        if max_w is None:
            intent.cap_limits.pop(gpu, None)
        elif not info.cap_min_w <= max_w <= info.cap_max_w:
            raise CommandRejected(
                f"cap limit {max_w} W outside [{info.cap_min_w}, {info.cap_max_w}]", code=Reason.OUT_OF_RANGE
            )
        else:
            intent.cap_limits[gpu] = max_w
        self._node.intent_changed()

    def set_rail(self, gpu: int, on: bool) -> None:
        self._require_gpu(gpu)
        try:
            self._node.board.set_rail(gpu, on)
        except LinkError as exc:
            raise CommandRejected(str(exc), code=Reason.LINK_DOWN) from None
        if on:
            self._node.rails.switched_on(gpu)
        else:
            self._node.rails.switched_off(gpu, RailReason.GROUND)

    def reboot_board(self) -> None:
        self._require_board()
        try:
            self._node.board.reset_board()
        except LinkError as exc:
            raise CommandRejected(str(exc), code=Reason.LINK_DOWN) from None
        self._node.events.emit("board_reset", Severity.WARNING, "board reboot commanded")

    # --- jobs ---------------------------------------------------------------------------------

    def _job_gpus(self, job: str) -> list[int]:
        info = self._require_board()
        named = self._node.intent.named_jobs
        if job in named:
            mask = named[job][0]
            return [g for g in range(info.gpu_count) if mask >> g & 1]
        if job.startswith("gpu-") and job[4:].isdigit() and int(job[4:]) < info.gpu_count:
            return [int(job[4:])]  # every GPU runs a job of its own unless ground says otherwise
        raise CommandRejected(f"no job {job!r}", code=Reason.NOT_FOUND)

    def submit_job(self, job: str, gpus: int, priority: int | None) -> None:
        info = self._require_board()
        if gpus >> info.gpu_count:
            raise CommandRejected(f"GPU mask {gpus:#x} names GPUs the board lacks", code=Reason.OUT_OF_RANGE)
        self._node.intent.named_jobs[job] = (gpus, 1 if priority is None else priority)
        self._node.intent_changed()
        self._node.events.emit("job", Severity.INFO, f"job {job} submitted on GPUs {gpus:#x}", job=job, gpus=gpus)

    def _process(self, job: str) -> ProcessJobRunner | None:
        runner = self._node.process_jobs
        return runner if runner is not None and runner.has(job) else None

    def cancel_job(self, job: str) -> None:
        if (runner := self._process(job)) is not None:
            runner.cancel(job)
            self._node.events.emit("job", Severity.INFO, f"job {job} cancelled: stopping it with a final "
                                   "checkpoint", job=job)
            return
        self._job_gpus(job)
        if job not in self._node.intent.named_jobs:
            raise CommandRejected(f"job {job!r} is the GPU's own; it cannot be cancelled", code=Reason.NOT_ALLOWED)
        del self._node.intent.named_jobs[job]
        self._node.intent_changed()
        self._node.events.emit("job", Severity.INFO, f"job {job} cancelled", job=job)

    def pause_job(self, job: str) -> None:
        if (runner := self._process(job)) is not None:
            runner.pause(job)
            self._node.events.emit("job", Severity.INFO, f"job {job} pausing after a final checkpoint", job=job)
            return
        for gpu in self._job_gpus(job):
            self._node.jobs.request(gpu, f"job {job} paused", certain=True)
            self._node.intent.paused.add(gpu)
        self._node.intent_changed()
        self._node.events.emit("job", Severity.INFO, f"job {job} paused after a checkpoint", job=job)

    def resume_job(self, job: str) -> None:
        if (runner := self._process(job)) is not None:
            runner.resume(job)
            self._node.events.emit("job", Severity.INFO, f"job {job} resuming from its checkpoint", job=job)
            return
        for gpu in self._job_gpus(job):
            self._node.intent.paused.discard(gpu)
        self._node.intent_changed()
        self._node.events.emit("job", Severity.INFO, f"job {job} resumed", job=job)

    def checkpoint_job(self, job: str) -> None:
        if (runner := self._process(job)) is not None:
            runner.checkpoint(job)
            return
        gpus = self._job_gpus(job)
        if not self._node.jobs.active:
            raise CommandRejected("this board keeps no checkpoints", code=Reason.UNSUPPORTED)
        for gpu in gpus:
            self._node.jobs.request(gpu, "ground request", certain=True)

    def job_catalogue(self, job: str | None) -> list[dict[str, Any]]:
        store = self._node.store
        if store is None:
            raise CommandRejected("this node keeps no checkpoint store", code=Reason.UNSUPPORTED)
        try:
            # Reads a few small manifests: quick enough for the command path.
            return ground_catalogue(store.store, self._node.utc(), job)
        except CheckpointError as exc:
            raise CommandRejected(str(exc), code=Reason.NOT_FOUND) from None

    # --- telemetry and parameters ---------------------------------------------------------------

    def set_hk_rate(self, hz: float) -> None:
        node = self._node
        try:
            mqtt = dataclasses.replace(node.config.mqtt, hk_rate_hz=float(hz))
        except ConfigError as exc:
            raise CommandRejected(str(exc), code=Reason.OUT_OF_RANGE) from None
        node.config = dataclasses.replace(node.config, mqtt=mqtt)
        node.hk_wakeup.set()

    def param_names(self) -> list[str]:
        return [f"control.{name}" for name in PARAM_SPECS]

    def get_param(self, name: str) -> float:
        key = name.removeprefix("control.")
        if key not in PARAM_SPECS:
            raise CommandRejected(f"unknown parameter {name!r}", code=Reason.BAD_ARGUMENT)
        return float(getattr(self._node.config.control, key))

    def set_param(self, name: str, value: float) -> None:
        self.get_param(name)  # validates the name
        key = name.removeprefix("control.")
        node = self._node
        try:
            control = node.config.control.replace(**{key: float(value)})
        except (ConfigError, TypeError, ValueError) as exc:
            raise CommandRejected(str(exc), code=Reason.OUT_OF_RANGE) from None
        node.apply_params(control)
        if node.params_path is not None:
            save_params(node.params_path, control)
        node.events.emit("param", Severity.INFO, f"{name} = {value}", name=name, value=float(value))

    # --- guards ---------------------------------------------------------------------------------

    def _require_board(self) -> BoardInfo:
        info = self._node.board.info
        if info is None or not self._node.board.link_up:
            raise CommandRejected("the board link is down", code=Reason.LINK_DOWN)
        return info

    def _require_gpu(self, gpu: int) -> BoardInfo:
        info = self._require_board()
        if not 0 <= gpu < info.gpu_count:
            raise CommandRejected(f"no GPU {gpu} (board has {info.gpu_count})", code=Reason.OUT_OF_RANGE)
        return info
