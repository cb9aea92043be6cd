"""``umbra-hil``: the hardware-in-the-loop harness."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from firmware_sim.config import ORBITS
from node.cli import parse_hostport

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umbra-hil", description="Umbra hardware-in-the-loop harness.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run a whole bench (broker, simulated board, node) with a live status line",
        description="Start an embedded MQTT broker on 127.0.0.1 (unless --mqtt names one), a "
        "simulated board on a pty and the node, and print the node's status each second.",
    )
    demo.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: Ctrl-C)")
    demo.add_argument("--mqtt", type=parse_hostport, metavar="HOST:PORT", help="use this broker")
    demo.add_argument("--gpus", type=int, default=8, help="GPUs on the simulated board (default 8)")
    demo.add_argument("--speed", type=float, default=60.0,
                      help="board seconds per wall second (default 60: an orbit in about 95 s)")
    demo.add_argument("--node-id", default="node-1")
    demo.add_argument("--console", type=parse_hostport, default=("127.0.0.1", 8080), metavar="HOST:PORT",
                      help="serve the operator console here (default 127.0.0.1:8080; a free port if taken)")
    demo.add_argument("--no-console", action="store_true", help="status line only, no web console")
    demo.add_argument("--orbit", default="beta0", choices=tuple(ORBITS),
                      help="orbit of the simulated board (default beta0: 35.6-min eclipse every 95.5 min)")
    add_harness_commands(sub)
    return p


def add_harness_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``list``, ``run`` and ``conformance`` (issue #8)."""
    sub.add_parser("list", help="list the scenario library",
                   description="List the scenarios of the library with their measurements.")
    run = sub.add_parser(
        "run", help="run scenarios on a bench and judge them",
        description="Run scenarios (names from `umbra-hil list`, `all`, or .toml files) on a bench, "
        "judge every measurement and write a report (JSON, JUnit XML, PNG plots, summary).")
    run.add_argument("scenarios", nargs="+", metavar="SCENARIO")
    run.add_argument("--bench", metavar="FILE", help="bench file (default: simulated board, lockstep, mosquitto)")
    run.add_argument("--report", metavar="DIR", default="hil-report", help="report directory (default hil-report)")
    run.add_argument("--compare", metavar="POLICY[,POLICY…]",
                     help="also run these policies (baseline, ipa, step_wise, umbra) and compare; oracle: "
                     "the offline optimum's bound and achievable plan (hil/oracle.py); work_vs_baseline is "
                     "judged against baseline, work_vs_peer against ipa, work_vs_oracle against oracle's plan")
    run.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="runs in parallel (default 1)")
    run.add_argument("--quick", action="store_true", help="shortened durations (as make test runs them)")
    run.add_argument("--policy", choices=["umbra", "baseline", "ipa", "step_wise"], default="umbra",
                     help="policy under test")
    conf = sub.add_parser(
        "conformance", help="check a board against the ICD",
        description="Exercise every message of docs/ICD.md against a board's main port (and its HIL "
        "port) and report what the board got wrong.  No node may be using the port.")
    conf.add_argument("port", metavar="PORT", nargs="?",
                      help="the board's main serial port (path or pyserial URL); or give --bench")
    conf.add_argument("--hil", metavar="PORT", help="the board's HIL port")
    conf.add_argument("--bench", metavar="FILE",
                      help="the board of this bench file instead of PORT: started (sim, firmware), attached "
                      "(port) or acquired from a labgrid place (labgrid) for the check, then stopped or released")
    conf.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    conf.add_argument("--only", metavar="GROUPS",
                      help="comma-separated check groups to run (versions, numbering, sessions, sensor_stream, "
                      "idle_heartbeat, commands, reliability, jobs, watchdog, lockstep, reset, hil_port); "
                      "the handshake and the restore always run")


def main(argv: Sequence[str] | None = None) -> int:
    from node.extras import require

    require("hil", "umbra-hil")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # amqtt warns about undelivered messages on every shutdown; they are expected here.
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    if args.command == "demo":
        from hil.demo import run_demo

        if not 1 <= args.gpus <= 64:
            print("umbra-hil: error: --gpus must be 1..64", file=sys.stderr)
            return EXIT_USAGE
        if args.speed <= 0:
            print("umbra-hil: error: --speed must be positive", file=sys.stderr)
            return EXIT_USAGE
        return asyncio.run(
            run_demo(duration=args.duration, mqtt=args.mqtt, gpus=args.gpus, speed=args.speed,
                     node_id=args.node_id, console=None if args.no_console else args.console,
                     orbit=args.orbit)
        )
    if args.command in ("list", "run", "conformance"):
        from hil.harness_cli import run_command

        return run_command(args)
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
