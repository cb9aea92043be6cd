"""The benchmark registry: ``@benchmark("name")`` functions, their context and results.

A benchmark is a function of one :class:`Context` that returns a :class:`Result`: one
figure (``value``) and the same figure for a baseline measured in the same run, so the
ratio stays meaningful across machines.  Put new benchmarks in ``bench/bench_<topic>.py``;
the runner imports every such module, which registers its functions::

    from bench.registry import Context, Result, benchmark

    @benchmark("control.allocate")
    def allocate(ctx: Context) -> Result:
        ours = ctx.rate(lambda n: run_kernel(n))          # items per second
        ref = ctx.rate(lambda n: run_numpy_reference(n))
        return Result(value=ours, unit="ticks/s", baseline=ref,
                      notes="numba kernel vs its pure-NumPy reference")
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

BenchmarkFn = Callable[["Context"], "Result"]

#: name → function, in registration order.
REGISTRY: dict[str, BenchmarkFn] = {}


@dataclass(frozen=True, slots=True)
class Result:
    """One benchmark figure against its baseline."""

    value: float
    unit: str
    baseline: float
    notes: str = ""
    name: str = ""  # filled in by the runner from the registry
    higher_is_better: bool = True  # rates: True; durations: False

    @property
    def ratio(self) -> float:
        """value / baseline (for rates, > 1 means faster than the baseline)."""
        return self.value / self.baseline if self.baseline else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "notes": self.notes,
            "higher_is_better": self.higher_is_better,
        }


def benchmark(name: str) -> Callable[[BenchmarkFn], BenchmarkFn]:
    """Register ``fn`` under ``name`` (dotted, e.g. ``codec.encode``)."""

    def register(fn: BenchmarkFn) -> BenchmarkFn:
        if name in REGISTRY and REGISTRY[name] is not fn:
            raise ValueError(f"benchmark {name!r} registered twice")
        REGISTRY[name] = fn
        return fn

    return register


@dataclass(frozen=True, slots=True)
class Context:
    """How hard to measure.  ``quick`` runs are for smoke tests, not for numbers."""

    quick: bool = False
    repeats: int = 7
    min_batch_s: float = 0.2
    clock: Callable[[], float] = time.perf_counter

    @classmethod
    def make(cls, *, quick: bool) -> Context:
        return cls(quick=True, repeats=3, min_batch_s=0.02) if quick else cls()

    def seconds(self, run: Callable[[int], object], n: int) -> float:
        """Wall seconds of one ``run(n)``, with the garbage collector held off."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            start = self.clock()
            run(n)
            return self.clock() - start
        finally:
            if enabled:
                gc.enable()

    def calibrate(self, run: Callable[[int], object], start: int = 16) -> int:
        """Smallest power-of-two multiple of ``start`` items that takes ``min_batch_s``."""
        n = start
        while self.seconds(run, n) < self.min_batch_s and n < 1 << 40:
            n *= 2
        return n

    def rate(self, run: Callable[[int], object], n: int | None = None) -> float:
        """Items per second of ``run(n)`` (which processes n items): median over repeats."""
        n = n if n is not None else self.calibrate(run)
        return statistics.median(n / self.seconds(run, n) for _ in range(self.repeats))

    def paired_rates(
        self, run: Callable[[int], object], baseline: Callable[[int], object]
    ) -> tuple[float, float]:
        """Items per second of ``run`` and of ``baseline``, their repeats interleaved.

        On a shared machine the speed drifts within seconds; alternating the two keeps
        both under the same conditions, so their ratio is steadier than two separate
        medians.  The baseline's figure is its median; ``run``'s is that times the median
        of the per-pair ratios.
        """
        n_run, n_base = self.calibrate(run), self.calibrate(baseline)
        pairs = []
        for _ in range(max(self.repeats, 9) if not self.quick else self.repeats):
            ours = n_run / self.seconds(run, n_run)
            base = n_base / self.seconds(baseline, n_base)
            pairs.append((ours, base))
        base_rate = statistics.median(b for _, b in pairs)
        return base_rate * statistics.median(o / b for o, b in pairs), base_rate

    def duration(self, run: Callable[[int], object], n: int | None = None) -> float:
        """Seconds per item of ``run(n)``: median over repeats."""
        return 1.0 / self.rate(run, n)
