"""Jobs on simulated GPUs: when to checkpoint, and what a loss cost.

One job per GPU (``gpu-<i>``).  The board reports each GPU's progress and what its last
finished checkpoint kept (SENSOR ``progress``, ``saved``, ``ckpt``); a checkpoint is the
node's CHECKPOINT command, which pauses that GPU's work for the time the checkpoint takes
(modelled state size over storage bandwidth), and the node writes real bytes of the
configured size into its checkpoint store when the board reports it finished.

When to checkpoint is a :class:`CheckpointPolicy` object (node/policy.py picks one):

* :class:`DalyWithForesight` — Daly's interval from the measured cost and the observed
  fault rate, plus checkpoints ahead of foreseeable losses: a GPU heading for its thermal
  limit, an eclipse about to start, SAFE being entered, FDIR's battery warning, ground's
  request.
* :class:`FixedInterval` — a fixed interval (the baseline's 30 minutes) and no foresight.

Whether the board keeps checkpoints at all is what it declared in HELLO_ACK
(``BoardFeature.CHECKPOINTS``), not guessed from the SENSOR frames.

A loss shows as progress falling back to ``saved``; it counts as a fault for the
estimator and its size as lost work.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from node.errors import ConfigError, LinkError
from node.jobs.errors import CheckpointError
from node.jobs.policy import IntervalEstimator, PolicyConfig
from node.jobs.store import AsyncCheckpointStore
from node.link.messages import Sensor

log = logging.getLogger("umbra.node.jobs")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimJobConfig:
    #: Modelled job state per GPU: ~16 B/parameter for a 2.5 B-parameter model (PHYSICS.md).
    state_bytes: float = 40e9
    #: Storage bandwidth the checkpoint is written at (NVMe: 3–7 GB/s; flight storage less).
    bandwidth_bytes_per_s: float = 2e9
    #: Bytes actually written to the store per checkpoint (a scaled-down stand-in).
    store_bytes: int = 1 << 20
    #: The baseline's fixed interval.
    fixed_interval_s: float = 1800.0
    #: Checkpoint when a GPU's estimate is this far above the planning limit (control lost).
    thermal_lead_k: float = 0.5
    #: Checkpoint when an eclipse starts within this many board seconds.
    eclipse_lead_s: float = 90.0

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("state_bytes", 1.0, 1e15),
            ("bandwidth_bytes_per_s", 1e3, 1e13),
            ("store_bytes", 1, 1 << 34),
            ("fixed_interval_s", 1.0, 1e6),
            ("thermal_lead_k", 0.0, 50.0),
            ("eclipse_lead_s", 0.0, 3600.0),
        ):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ConfigError(f"sim_jobs.{name} = {value!r} outside [{lo}, {hi}]", key=f"sim_jobs.{name}")

    @property
    def pause_s(self) -> float:
        return self.state_bytes / self.bandwidth_bytes_per_s


class CheckpointPolicy(Protocol):
    @property
    def foresees(self) -> bool:
        """Takes requests and foresees losses (eclipse, thermal); without, only the interval counts."""
        ...

    def interval_s(self, estimator: IntervalEstimator, mtbf_scale: float = 1.0) -> float: ...


@dataclass(frozen=True, slots=True)
class DalyWithForesight:
    foresees: bool = True

    def interval_s(self, estimator: IntervalEstimator, mtbf_scale: float = 1.0) -> float:
        return estimator.interval_s(mtbf_scale)


@dataclass(frozen=True, slots=True)
class FixedInterval:
    every_s: float
    foresees: bool = False

    def interval_s(self, estimator: IntervalEstimator, mtbf_scale: float = 1.0) -> float:
        return self.every_s


@dataclass(frozen=True, slots=True)
class Foresight:
    """What the controller knows this frame that makes a loss foreseeable."""

    hot: np.ndarray  # per GPU: estimate within thermal_lead_k of the limit
    eclipse_in_s: float  # NaN when unknown


class SimJobManager:
    def __init__(
        self,
        *,
        checkpoints: CheckpointPolicy,
        config: SimJobConfig,
        estimator_config: PolicyConfig,
        store: AsyncCheckpointStore | None,
        send_checkpoint: Callable[[int, float], None],
        event: Callable[..., None],
        spawn: Callable[[Coroutine[Any, Any, Any]], Any],
    ) -> None:
        self.policy = checkpoints
        self.config = config
        self._store = store
        self._send_checkpoint = send_checkpoint
        self._event = event
        self._spawn = spawn
        self._t = 0.0
        # Exposure in GPU-seconds (each GPU's job sees only its own upsets): the estimate is
        # then a GPU's MTBF, the one its job's interval needs.
        self._gpu_s = 0.0
        self._t_prev = math.nan
        self.estimator = IntervalEstimator(estimator_config, clock=lambda: self._gpu_s)
        self.active = False
        self._n = 0

    def reset(self, gpu_count: int, *, board_keeps_checkpoints: bool) -> None:
        """A new session: per-GPU state for ``gpu_count`` GPUs of a board that does (not) keep checkpoints."""
        self.active = board_keeps_checkpoints
        n = self._n = gpu_count
        self._last_ckpt = np.full(n, math.nan)  # board time of the last finished checkpoint
        self._in_flight = np.full(n, math.nan)  # board time a requested checkpoint began
        self._want = np.zeros(n, dtype=bool)  # foreseen or requested, not yet started
        self._started = np.zeros(n, dtype=bool)  # the board has shown the checkpoint running
        self._reason = [""] * n
        self._certain = np.zeros(n, dtype=bool)  # the wanted checkpoint's loss is certain
        self._progress = np.full(n, math.nan)
        self._saved = np.full(n, math.nan)
        self.lost = np.zeros(n)  # work lost, as the node saw it
        self.checkpoints = np.zeros(n, dtype=np.int64)
        self.overhead_s = np.zeros(n)
        self._eclipse_armed = True

    # --- requests -------------------------------------------------------------------------

    def request(self, gpu: int | None, reason: str, *, certain: bool = False) -> None:
        """Checkpoint ``gpu`` (None: every GPU) at the next frame.

        ``certain``: the unsaved work will be lost (a shed rail, a paused job), so the
        checkpoint is worth it as soon as it keeps more than it costs; a foreseen risk (an
        eclipse, the thermal limit, a mode) waits for a tenth of an interval's work.
        """
        if not self.active:
            return
        for i in range(self._n) if gpu is None else (gpu,):
            if not self._want[i]:
                self._want[i] = True
                self._reason[i] = reason
            self._certain[i] = self._certain[i] or certain

    # --- per frame ------------------------------------------------------------------------

    def on_frame(self, sensor: Sensor, foresight: Foresight) -> None:
        if not self.active:
            return  # the board declared no checkpoints (first-order model, NVML)
        self._t = t = sensor.t_board
        if t > self._t_prev:  # (a reset board's clock starts again: nothing to add)
            self._gpu_s += _count_on(sensor, self._n) * (t - self._t_prev)
        self._t_prev = t
        progress = np.asarray(sensor.progress)
        saved = np.asarray(sensor.saved)
        if np.isnan(self._last_ckpt).all() and np.isnan(self._progress).all():
            self._last_ckpt[:] = t  # the job starts now: its first interval runs from here
        self._detect_losses(progress, saved, sensor.rails)
        self._detect_finished(sensor, saved, t)
        self._progress[:] = progress
        self._saved[:] = saved
        self._decide(sensor, foresight, t)

    def _detect_losses(self, progress: np.ndarray, saved: np.ndarray, rails: int) -> None:
        known = ~np.isnan(self._progress)
        dropped = known & (progress < self._progress - 1e-9)
        # A fault (upset, shutdown, reset) loses work with the rail on; with the rail off the
        # node switched it (a shed, FDIR's reset after an upset already counted): no fault.
        # Losses in one frame share a cause (a board reset hits every GPU): one fault.
        if any((rails >> int(gpu)) & 1 for gpu in np.flatnonzero(dropped)):
            self.estimator.observe_fault()
        for gpu in np.flatnonzero(dropped):
            lost = float(self._progress[gpu] - progress[gpu])
            self.lost[gpu] += lost
            self._event("work_lost", 2, f"GPU {gpu} lost {lost:.1f} work units since its last checkpoint",
                        gpu=int(gpu), lost=lost)

    def _detect_finished(self, sensor: Sensor, saved: np.ndarray, t: float) -> None:
        for gpu in np.flatnonzero(~np.isnan(self._in_flight)):
            began = float(self._in_flight[gpu])
            if (sensor.ckpt >> int(gpu)) & 1:
                self._started[gpu] = True
                continue  # still writing
            if not self._started[gpu] and t - began < self.config.pause_s + 5.0:
                continue  # frames sent before the board took the command: not started yet
            self._in_flight[gpu] = math.nan
            if saved[gpu] > self._saved[gpu] or (saved[gpu] == self._saved[gpu] and t - began >= self.config.pause_s):
                cost = t - began
                self._last_ckpt[gpu] = t
                self.checkpoints[gpu] += 1
                self.overhead_s[gpu] += cost
                self.estimator.observe_checkpoint(cost)
                self._commit(int(gpu), float(saved[gpu]), t)
            else:
                self._event("checkpoint_failed", 2, f"GPU {gpu} checkpoint failed: work was lost during it",
                            gpu=int(gpu))

    def _commit(self, gpu: int, progress: float, t: float) -> None:
        if self._store is None:
            return
        store = self._store
        payload = _state_bytes(gpu, progress, self.config.store_bytes)

        async def write() -> None:
            try:
                await store.write(f"gpu-{gpu}", payload, progress=progress, meta={"t_board": t, "gpu": gpu})
            except (CheckpointError, OSError) as exc:
                self._event("checkpoint_store_failed", 3, f"GPU {gpu}: storing its checkpoint failed: {exc}",
                            gpu=gpu)

        self._spawn(write())

    def _decide(self, sensor: Sensor, foresight: Foresight, t: float) -> None:
        cfg = self.config
        if self.policy.foresees:
            ecl = foresight.eclipse_in_s
            if ecl == ecl and 0.0 < ecl <= cfg.eclipse_lead_s + cfg.pause_s:
                if self._eclipse_armed:
                    self.request(None, "eclipse ahead")
                    self._eclipse_armed = False
            else:
                self._eclipse_armed = True
            for hot in np.flatnonzero(foresight.hot):
                self.request(int(hot), "heading for the thermal limit")
        else:
            self._want[:] = False  # no foresight, and no requests taken
            self._certain[:] = False
        interval = self.policy.interval_s(self.estimator)
        for gpu in range(self._n):
            if not math.isnan(float(self._in_flight[gpu])):
                continue
            on = (sensor.rails >> gpu) & 1 and (sensor.gpu_ok >> gpu) & 1
            if not on:
                continue
            since = t - self._last_ckpt[gpu]
            due = since >= interval
            # Foresight is worth a checkpoint only when there is work to keep: at least a
            # tenth of an interval's (a checkpoint costs a pause of its own).
            worth = 2.0 * cfg.pause_s if self._certain[gpu] else max(2.0 * cfg.pause_s, 0.1 * interval)
            foreseen = self._want[gpu] and since >= worth
            if due or foreseen:
                reason = "interval" if due else self._reason[gpu]
                self._start(gpu, t, reason)

    def _start(self, gpu: int, t: float, reason: str) -> None:
        try:
            self._send_checkpoint(gpu, self.config.pause_s)
        except LinkError:
            return
        self._in_flight[gpu] = t
        self._started[gpu] = False
        self._want[gpu] = False
        self._certain[gpu] = False
        log.info("checkpoint GPU %d (%s)", gpu, reason)

    def telemetry(self) -> dict[str, Any]:
        if not self.active:
            return {}
        est = self.estimator.estimate()
        return {
            "saved": [float(x) for x in np.nan_to_num(self._saved)],
            "lost": [float(x) for x in self.lost],
            "checkpoints": [int(x) for x in self.checkpoints],
            "overhead_s": [float(x) for x in self.overhead_s],
            "interval_s": self.policy.interval_s(self.estimator),
            "mtbf_s": est.mtbf_s,
            "cost_s": est.cost_s,
        }


def _count_on(sensor: Sensor, n: int) -> int:
    """GPUs with their rail on and on the bus: the ones a fault can hit."""
    both = sensor.rails & sensor.gpu_ok
    return sum((both >> g) & 1 for g in range(n))


def _state_bytes(gpu: int, progress: float, size: int) -> bytes:
    """Deterministic stand-in for a job's state: its identity and progress, padded."""
    head = f"umbra simulated job gpu-{gpu} progress {progress!r}\n".encode()
    return (head * (size // len(head) + 1))[:size]


#: The estimator's prior: the first measured cost replaces the prior cost.  A day between
#: faults per GPU is pessimistic for the ground (Llama 3: one interruption per ~5.8 GPU-years)
#: and a guess for orbit, so it counts for a tenth of a fault (8,640 GPU-seconds of exposure,
#: 18 minutes of an 8-GPU node): a few observed upsets decide the interval.
ESTIMATOR_PRIOR = PolicyConfig(prior_cost_s=20.0, prior_mtbf_s=24 * 3600.0, prior_weight=0.1,
                               min_interval_s=120.0)
