"""``umbra-ground``: the ground segment's command line.

umbra-ground tail [--node ID] [--mqtt HOST:PORT] [--json] [--count N] [--timeout S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from ground.tail import (
    LinkStatus,
    Malformed,
    Received,
    format_item,
    format_json,
    format_malformed,
    format_status,
    tail,
)
from node.bus.payloads import check_node_id
from node.errors import LocalProtocolError

PROG = "umbra-ground"
DEFAULT_MQTT = "127.0.0.1:1883"


def parse_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) → (host, port); argparse-friendly errors."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: write IPv6 addresses as [ADDR]:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be 1-65535")
    return host, port


def _node_id(text: str) -> str:
    try:
        return check_node_id(text)
    except LocalProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Umbra ground segment: follow and command nodes over MQTT."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "tail",
        help="print node state, housekeeping and events as they arrive",
        description=(
            "Subscribe to state, tm/hk and tm/event of one node (or all) and print one line "
            "per message.  Malformed messages are reported on stderr and skipped; an "
            "unreachable broker is retried with backoff."
        ),
    )
    t.add_argument("--node", type=_node_id, metavar="ID", help="only this node (default: all)")
    t.add_argument(
        "--mqtt",
        type=parse_endpoint,
        default=DEFAULT_MQTT,
        metavar="HOST:PORT",
        help=f"broker to subscribe on (default {DEFAULT_MQTT})",
    )
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument(
        "--count",
        type=_positive_int,
        metavar="N",
        help="exit after N decoded messages (exit 1 if --timeout comes first)",
    )
    t.add_argument("--timeout", type=_positive_float, metavar="S", help="stop after S seconds")
    t.set_defaults(func=_cmd_tail)
    return parser


async def _tail(args: argparse.Namespace) -> int:
    host, port = args.mqtt
    shown = 0

    async def follow() -> None:
        nonlocal shown
        async with contextlib.aclosing(tail(host, port, node_id=args.node)) as items:
            async for item in items:
                if isinstance(item, Received):
                    print(format_json(item) if args.json else format_item(item), flush=True)
                    shown += 1
                    if args.count is not None and shown >= args.count:
                        return
                elif isinstance(item, Malformed):
                    print(format_malformed(item), file=sys.stderr, flush=True)
                elif isinstance(item, LinkStatus):
                    print(f"{PROG} tail: {format_status(item)}", file=sys.stderr, flush=True)

    try:
        async with asyncio.timeout(args.timeout):
            await follow()
    except TimeoutError:
        if args.count is not None:
            print(
                f"{PROG} tail: timed out after {args.timeout:g} s "
                f"with {shown} of {args.count} messages",
                file=sys.stderr,
            )
            return 1
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    return asyncio.run(_tail(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format=f"{PROG}: %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how an operator stops a tail
    except BrokenPipeError:
        # Reader went away (`| head`); point stdout at nothing so exit does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
