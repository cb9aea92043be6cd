"""Run Umbra's benchmarks, print a table and write bench/results.json.

Usage::

    python -m bench.run                 # everything, full repeats
    python -m bench.run --quick         # smoke run: few repeats, short batches
    python -m bench.run --only codec    # names containing "codec"
    python bench/run.py --list

Every figure is the median of several timed repeats (``time.perf_counter``, garbage
collector held off) and comes with a baseline measured in the same run; ``ratio`` is
value / baseline.  Benchmarks live in ``bench/bench_*.py`` modules, which the runner imports
in name order; each registers functions with ``@benchmark("name")`` (bench/registry.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.registry import REGISTRY, Context, Result

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results.json"
_PACKAGES = ("msgpack", "cobs", "numpy", "numba")


def discover() -> list[str]:
    """Import every bench/bench_*.py module (which registers its benchmarks)."""
    names = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    for name in names:
        importlib.import_module(f"bench.{name}")
    return names


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    versions: dict[str, str | None] = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
    }


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e4 or (x and abs(x) < 1e-2):
        return f"{x:.3e}"
    return f"{x:.3f}"


def table(results: list[Result]) -> str:
    header = ("name", "value", "unit", "baseline", "ratio", "notes")
    rows = [
        (r.name, _fmt(r.value), r.unit, _fmt(r.baseline), f"{r.ratio:.3f}", r.notes)
        for r in results
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    widths[-1] = len(header[-1])  # notes run on freely
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    numeric = {1, 3, 4}
    for row in rows:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run(names: list[str], ctx: Context, *, echo: bool = True) -> list[Result]:
    results = []
    for name in names:
        if echo:
            print(f"running {name} …", file=sys.stderr, flush=True)
        result = REGISTRY[name](ctx)
        results.append(dataclasses.replace(result, name=name))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", metavar="SUBSTRING", help="run benchmarks whose name contains this"
    )
    parser.add_argument("--quick", action="store_true", help="few repeats, short batches")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"results file (default {DEFAULT_OUTPUT.relative_to(BENCH_DIR.parent)})",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    discover()
    names = [n for n in REGISTRY if args.only is None or args.only in n]
    if args.list:
        print("\n".join(names))
        return 0
    if not names:
        print(f"no benchmark name contains {args.only!r}", file=sys.stderr)
        return 2

    ctx = Context.make(quick=args.quick)
    started = dt.datetime.now(dt.UTC)
    results = run(names, ctx)
    print(table(results))

    if not args.no_write:
        document = {
            "timestamp": started.isoformat(timespec="seconds"),
            "quick": args.quick,
            "only": args.only,
            "repeats": ctx.repeats,
            "min_batch_s": ctx.min_batch_s,
            "machine": machine_info(),
            "results": [r.as_dict() for r in results],
        }
        args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
