"""``umbra-hil``: the hardware-in-the-loop harness."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

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
    demo.add_argument("--speed", type=float, default=1.0, help="board time per wall second (default 1)")
    demo.add_argument("--node-id", default="node-1")
    demo.add_argument("--console", type=parse_hostport, default=("127.0.0.1", 8080), metavar="HOST:PORT",
                      help="serve the operator console here (default 127.0.0.1:8080; a free port if taken)")
    demo.add_argument("--no-console", action="store_true", help="status line only, no web console")
    return p


def main(argv: Sequence[str] | None = None) -> int:
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
                     node_id=args.node_id, console=None if args.no_console else args.console)
        )
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
