"""``umbra-hil list | run | conformance``: the harness commands (parsers in hil/cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from node.errors import ConfigError, LinkError

if TYPE_CHECKING:
    from hil.conformance import Check

EXIT_FAIL = 1
EXIT_USAGE = 2


def cmd_list() -> int:
    from hil.scenario import library

    for name, s in library().items():
        dur = f"{s.orbits:g} orbits" if s.orbits is not None else f"{s.seconds:g} s"
        quick = (f"{s.quick_orbits:g} orbits" if s.quick_orbits is not None
                 else f"{s.quick_seconds:g} s" if s.quick_seconds is not None else dur)
        print(f"{name:<22} {s.title}  [{s.orbit}, {dur}; quick {quick}]")
        for m in s.measures:
            lim = m.limits()
            print(f"    {m.metric:<24} {lim:<14} {m.unit:<6} {'(with --compare) ' if m.compare else ''}{m.why}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from hil import report
    from hil.benchfile import load_bench
    from hil.runner import run_many
    from hil.scenario import resolve

    try:
        scenarios = resolve(args.scenarios)
        bench = load_bench(args.bench)
    except ConfigError as exc:
        print(f"umbra-hil: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.jobs < 1:
        print("umbra-hil: error: -j must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    from hil.runner import OFFLINE_POLICIES
    from node.policy import POLICIES

    compare = [p.strip() for p in args.compare.split(",") if p.strip()] if args.compare else []
    known = (*POLICIES, *OFFLINE_POLICIES)
    unknown = [p for p in compare if p not in known]
    if unknown:
        print(f"umbra-hil: error: --compare: unknown policy {unknown[0]!r} (known: {', '.join(known)})",
              file=sys.stderr)
        return EXIT_USAGE
    if args.policy in compare or len(set(compare)) != len(compare):
        print("umbra-hil: error: --compare must name other policies than --policy, each once", file=sys.stderr)
        return EXIT_USAGE
    report_dir = Path(args.report)
    pairs = asyncio.run(run_many(scenarios, bench, report_dir=report_dir,
                                 compare=compare[0] if len(compare) == 1 else compare or None,
                                 jobs=args.jobs, quick=args.quick, policy=args.policy))
    table = report.write_report(pairs, report_dir)
    print(table)
    print(f"\numbra-hil: report in {report_dir}/ (summary.md, junit.xml, <scenario>/<policy>/record.json, run.png)")
    return 0 if all(m.verdict == "pass" for m, _ in pairs) else EXIT_FAIL


def cmd_conformance(args: argparse.Namespace) -> int:
    from hil.conformance import Conformance, format_results, run_conformance

    only = tuple(g.strip() for g in args.only.split(",") if g.strip()) if args.only else None
    unknown = sorted(set(only or ()) - set(Conformance.GROUPS))
    if unknown:
        print(f"umbra-hil: error: unknown check groups {', '.join(unknown)}: choose from "
              f"{', '.join(Conformance.GROUPS)}", file=sys.stderr)
        return EXIT_USAGE
    if (args.port is None) == (args.bench is None):
        print("umbra-hil: error: conformance needs PORT or --bench FILE (not both)", file=sys.stderr)
        return EXIT_USAGE
    try:
        results = asyncio.run(_conformance_on_bench(args.bench, only) if args.bench
                              else run_conformance(args.port, hil=args.hil, only=only))
    except (ConfigError, LinkError) as exc:
        print(f"umbra-hil: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAIL
    print(format_results(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in results], indent=2))
    return 0 if all(r.ok for r in results) else EXIT_FAIL


async def _conformance_on_bench(path: str, only: tuple[str, ...] | None) -> list[Check]:
    import tempfile

    from hil.benchfile import BenchRun, RunParams, load_bench
    from hil.conformance import run_conformance

    spec = load_bench(Path(path))
    with tempfile.TemporaryDirectory(prefix="umbra-conformance-") as tmp:
        async with BenchRun(spec, RunParams(rate_hz=10.0), Path(tmp)).board_only() as (link, hil):
            return await run_conformance(link, hil=hil, only=only)


def run_command(args: argparse.Namespace) -> int:
    if args.command == "list":
        return cmd_list()
    if args.command == "run":
        return cmd_run(args)
    return cmd_conformance(args)
