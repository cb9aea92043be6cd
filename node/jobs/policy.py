"""When to checkpoint: Young's and Daly's intervals, and an estimator that feeds them.

``δ`` is the cost of one checkpoint (seconds of work not done while it is written), ``M`` the
mean time between failures (../shared/PHYSICS.md §Checkpointing):

- Young (1974): τ = √(2δM);
- Daly (2006): τ = √(2δM)·[1 + ⅓·√(δ/2M) + ⅑·(δ/2M)] − δ for δ < 2M, else τ = M.

:class:`IntervalEstimator` keeps the measured checkpoint cost (an exponentially weighted
moving average) and the observed fault rate — faults over exposure time, starting from a
configured prior counted as pseudo-observations — and answers with the current interval.
It holds no I/O; time comes from an injected clock (board time in the node), so tests and
faster-than-real-time simulations drive it exactly.

Foreseeable losses (eclipse power-down, thermal limit, SAFE, a ground command) are not this
module's business: the controller checkpoints ahead of them regardless of the interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from node.errors import ConfigError


def _check_positive(name: str, value: float) -> None:
    if not (value > 0.0) or math.isinf(value):
        raise ValueError(f"{name} = {value!r} must be a finite number > 0")


def young_interval(delta: float, mtbf: float) -> float:
    """Young's first-order optimum τ = √(2δM) (any consistent time unit)."""
    _check_positive("delta", delta)
    _check_positive("mtbf", mtbf)
    return math.sqrt(2.0 * delta * mtbf)


def daly_interval(delta: float, mtbf: float) -> float:
    """Daly's higher-order optimum (compute time between checkpoints; any consistent unit)."""
    _check_positive("delta", delta)
    _check_positive("mtbf", mtbf)
    if delta >= 2.0 * mtbf:
        return mtbf
    x = delta / (2.0 * mtbf)
    return math.sqrt(2.0 * delta * mtbf) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - delta


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    """The ``[checkpoints]`` policy keys (see :class:`node.jobs.model.CheckpointConfig`)."""

    #: Checkpoint cost assumed before any has been measured (seconds).
    prior_cost_s: float = 30.0
    #: Mean time between faults assumed before any exposure (seconds).
    prior_mtbf_s: float = 6 * 3600.0
    #: How many faults the prior counts for (pseudo-observations; more = slower to move).
    prior_weight: float = 1.0
    #: EWMA weight of each new checkpoint cost measurement, in (0, 1].
    cost_alpha: float = 0.3
    min_interval_s: float = 60.0
    max_interval_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        for key in ("prior_cost_s", "prior_mtbf_s", "prior_weight", "min_interval_s", "max_interval_s"):
            value = getattr(self, key)
            if not (value > 0.0) or math.isinf(value):
                raise ConfigError(f"checkpoints.{key} = {value!r} must be > 0", key=f"checkpoints.{key}")
        if not (0.0 < self.cost_alpha <= 1.0):
            raise ConfigError(
                f"checkpoints.cost_alpha = {self.cost_alpha!r} must be in (0, 1]", key="checkpoints.cost_alpha"
            )
        if self.min_interval_s > self.max_interval_s:
            raise ConfigError(
                "checkpoints.min_interval_s must not exceed checkpoints.max_interval_s",
                key="checkpoints.min_interval_s",
            )


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the estimator believes now."""

    cost_s: float
    mtbf_s: float
    faults: int
    exposure_s: float
    interval_s: float


class IntervalEstimator:
    """Measured checkpoint cost + observed fault rate → Daly's interval, clamped.

    Exposure is the time during which faults were possible (the job, GPU or node running):
    it accrues on the injected ``clock`` between :meth:`resume` and :meth:`pause` (running
    from construction unless ``running=False``), or explicitly through :meth:`add_exposure`.
    The MTBF estimate is (w·M₀ + exposure) / (w + faults): the prior M₀ counts as ``w``
    faults seen over w·M₀ seconds.
    """

    def __init__(
        self, config: PolicyConfig | None = None, *, clock: Callable[[], float], running: bool = True
    ) -> None:
        self.config = config or PolicyConfig()
        self._clock = clock
        self._cost_s = self.config.prior_cost_s
        self._measured = 0
        self._faults = 0
        self._exposure_s = 0.0
        self._since: float | None = clock() if running else None

    # -- observations ----------------------------------------------------------------------

    def observe_checkpoint(self, cost_s: float) -> None:
        """One checkpoint took ``cost_s`` seconds of lost work (request → commit)."""
        if not (cost_s >= 0.0) or math.isinf(cost_s):
            raise ValueError(f"cost_s = {cost_s!r} must be a finite number >= 0")
        cost_s = max(cost_s, 1e-3)
        if self._measured == 0:
            self._cost_s = cost_s  # the first measurement replaces the prior
        else:
            a = self.config.cost_alpha
            self._cost_s = a * cost_s + (1.0 - a) * self._cost_s
        self._measured += 1

    def observe_fault(self, count: int = 1) -> None:
        """``count`` faults that lost work (job crash, upset, thermal drop-out, reset)."""
        if count < 0:
            raise ValueError("count must be >= 0")
        self._faults += count

    def add_exposure(self, seconds: float) -> None:
        if not (seconds >= 0.0) or math.isinf(seconds):
            raise ValueError(f"seconds = {seconds!r} must be a finite number >= 0")
        self._exposure_s += seconds

    def resume(self) -> None:
        """Exposure starts accruing on the clock (no-op when already running)."""
        if self._since is None:
            self._since = self._clock()

    def pause(self) -> None:
        """Exposure stops accruing (no-op when already paused)."""
        if self._since is not None:
            self._exposure_s += max(0.0, self._clock() - self._since)
            self._since = None

    # -- answers ---------------------------------------------------------------------------

    @property
    def exposure_s(self) -> float:
        running = max(0.0, self._clock() - self._since) if self._since is not None else 0.0
        return self._exposure_s + running

    @property
    def cost_s(self) -> float:
        return self._cost_s

    @property
    def mtbf_s(self) -> float:
        w = self.config.prior_weight
        return (w * self.config.prior_mtbf_s + self.exposure_s) / (w + self._faults)

    @property
    def measured(self) -> int:
        """How many checkpoint costs have been measured (0: the cost is still the prior)."""
        return self._measured

    def interval_s(self, mtbf_scale: float = 1.0) -> float:
        """Daly's interval for the current estimates, within [min_interval_s, max_interval_s].

        ``mtbf_scale`` turns the estimated MTBF into that of a part of what was observed: a
        job on k of a node's n GPUs, faults observed on all n, sees n/k times the node's MTBF."""
        tau = daly_interval(self._cost_s, self.mtbf_s * mtbf_scale)
        return min(self.config.max_interval_s, max(self.config.min_interval_s, tau))

    def due(self, last_checkpoint_at: float) -> bool:
        """Whether a checkpoint is due, the last one having been taken at clock time given."""
        return self._clock() - last_checkpoint_at >= self.interval_s()

    def estimate(self) -> Estimate:
        return Estimate(self._cost_s, self.mtbf_s, self._faults, self.exposure_s, self.interval_s())
