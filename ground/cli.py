"""``umbra-ground``: the ground segment's command line.

umbra-ground tail [--node ID] [--mqtt HOST:PORT] [--json] [--count N] [--timeout S]
umbra-ground send NODE COMMAND [key=value ...] [--wait] [--mqtt HOST:PORT] [--key-file F]
umbra-ground broker-files DIR --node ID [--node ID ...]
umbra-ground serve | ingest | events | query | export   (ground/query.py, docs/ground.md)
umbra-ground files list | get | put | keygen | serve      (ground/files_cli.py, ICD §5.9)
umbra-ground dictionary --format xtce|json [--gpus N] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiomqtt

from ground.query import mqtt_auth_args, mqtt_password
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

    s = sub.add_parser(
        "send",
        help="sign and send one telecommand; print its verification reports",
        description=(
            "Sign COMMAND with the node's key and the next counter, send it, and print each "
            "verification report (accepted, started, completed or failed) as it arrives.  "
            "Exit 0 only when the command completed (or, without --wait, a time-tagged "
            "command was accepted into the schedule); 1 when it failed; 3 on timeout."
        ),
    )
    s.add_argument("node", type=_node_id, metavar="NODE")
    s.add_argument("name", metavar="COMMAND", help="command name (python -m node.bus.commands --markdown)")
    s.add_argument("assignments", nargs="*", metavar="key=value")
    s.add_argument("--wait", action="store_true",
                   help="for a time-tagged command, also wait until it has executed")
    s.add_argument("--mqtt", type=parse_endpoint, default=DEFAULT_MQTT, metavar="HOST:PORT")
    s.add_argument("--key-file", metavar="FILE", help="telecommand keys (default $UMBRA_TC_KEYS "
                   "or ~/.config/umbra/tc-keys.json); counters are kept in FILE.counters")
    s.add_argument("--at", metavar="UTC|+S", help="execute at this UTC (seconds) or S seconds from now")
    s.add_argument("--expires", type=_positive_float, default=60.0, metavar="S",
                   help="the node refuses the command after S seconds (default 60)")
    s.add_argument("--timeout", type=_positive_float, default=30.0, metavar="S")
    s.add_argument("--id", metavar="ID", help="command id (default: random); resend an id to ask again")
    mqtt_auth_args(s)
    s.set_defaults(func=_cmd_send)

    b = sub.add_parser(
        "broker-files",
        help="make mosquitto's password file, ACL, TLS certificates and telecommand keys",
        description="See deploy/mosquitto/README.md.",
    )
    b.add_argument("out", metavar="DIR")
    b.add_argument("--node", action="append", required=True, type=_node_id, metavar="ID")
    b.add_argument("--host", default="127.0.0.1", help="broker host name or IP for the certificate")
    b.add_argument("--port", type=int, default=1883, help="nodes, plain MQTT (default 1883)")
    b.add_argument("--tls-port", type=int, default=8883, help="nodes, TLS (default 8883)")
    b.add_argument("--ground-port", type=int, default=1884, help="ground, plain MQTT (default 1884)")
    b.add_argument("--ground-tls-port", type=int, default=8884, help="ground, TLS (default 8884)")
    b.set_defaults(func=_cmd_broker_files)

    d = sub.add_parser(
        "dictionary",
        help="the telemetry and command dictionary as XTCE 1.2 or JSON, for other tools",
        description="Write the one dictionary (housekeeping channels with units, ranges, limits and "
        "enumerations; commands with typed, ranged arguments; the dictionary hash) as XTCE 1.2 "
        "(Yamcs, OpenC3/COSMOS, …) or as JSON (docs/ground.md).",
    )
    d.add_argument("--format", choices=("xtce", "json"), default="xtce")
    d.add_argument("--gpus", type=_positive_int, default=8, metavar="N",
                   help="XTCE: per-GPU channels for N GPUs (default 8)")
    d.add_argument("--out", metavar="FILE", help="write here instead of to stdout")
    d.set_defaults(func=_cmd_dictionary)

    from ground.files_cli import add_subcommands as add_files
    from ground.query import add_subcommands  # serve, ingest, events, query, export

    add_subcommands(sub)
    add_files(sub)
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


EXIT_FAILED = 1
EXIT_TIMEOUT = 3


def _exec_at(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return time.time() + float(text[1:]) if text.startswith("+") else float(text)
    except ValueError:
        raise SystemExit(f"{PROG} send: --at {text!r} is not UTC seconds or +seconds") from None


async def _send(args: argparse.Namespace) -> int:
    from ground.keys import DEFAULT_KEY_FILE, CounterStore, counter_path
    from ground.send import build_telecommand, format_report, send_command
    from node.bus.commands import parse_assignments
    from node.bus.payloads import Stage
    from node.bus.signing import load_keys
    from node.errors import ConfigError

    try:
        cmd_args = parse_assignments(args.name, args.assignments)
    except ValueError as exc:
        print(f"{PROG} send: {exc}", file=sys.stderr)
        return 2
    key_file = Path(args.key_file) if args.key_file else DEFAULT_KEY_FILE
    try:
        key = load_keys(key_file).get(args.node)
    except ConfigError as exc:
        print(f"{PROG} send: {exc}", file=sys.stderr)
        return 2
    if key is None:
        print(f"{PROG} send: {key_file} has no key for {args.node}", file=sys.stderr)
        return 2
    counter = CounterStore(counter_path(key_file)).next(args.node)
    try:
        tc = build_telecommand(
            node_id=args.node, name=args.name, args=cmd_args, key=key, counter=counter,
            expires_in=args.expires, exec_at=_exec_at(args.at), command_id=args.id,
        )
    except (ValueError, LocalProtocolError) as exc:
        print(f"{PROG} send: {exc}", file=sys.stderr)
        return 2
    tls = None
    if args.tls_ca:
        import ssl

        tls = ssl.create_default_context(cafile=args.tls_ca)
    host, port = args.mqtt
    print(f"sent      {tc.name} id={tc.id} counter={tc.counter} to {args.node}", flush=True)
    last = None
    try:
        async with asyncio.timeout(args.timeout):
            async for report in send_command(
                host, port, tc, follow_schedule=args.wait, username=args.username,
                password=mqtt_password(args), tls_context=tls,
            ):
                print(format_report(report), flush=True)
                last = report
    except TimeoutError:
        print(f"{PROG} send: no final report within {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    except aiomqtt.MqttError as exc:
        print(f"{PROG} send: broker {host}:{port}: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    if last is None:
        return EXIT_TIMEOUT
    if last.stage == Stage.COMPLETED:
        return 0
    if last.stage == Stage.ACCEPTED and not args.wait:
        return 0  # time-tagged and scheduled
    return EXIT_FAILED


def _cmd_send(args: argparse.Namespace) -> int:
    return asyncio.run(_send(args))


def _cmd_dictionary(args: argparse.Namespace) -> int:
    from ground.dictionary import dumps

    text = dumps(args.format, gpus=args.gpus)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_broker_files(args: argparse.Namespace) -> int:
    from ground.brokerfiles import make_broker_files

    out = Path(args.out)
    try:
        make_broker_files(out, args.node, host=args.host, port=args.port, tls_port=args.tls_port,
                          ground_port=args.ground_port, ground_tls_port=args.ground_tls_port)
    except ValueError as exc:
        print(f"{PROG} broker-files: {exc}", file=sys.stderr)
        return 2
    print(f"wrote passwd, passwd-ground, acl, credentials.json, tc-keys.json, TLS files and "
          f"mosquitto.conf to {out}")
    conf = (out / "mosquitto.conf").read_text()
    if "\nuser root\n" in conf:
        print(f"{PROG} broker-files: warning: mosquitto will run as root (its user 'mosquitto' "
              f"is missing or cannot reach {out.resolve()}); generate into a directory it can "
              "reach, e.g. /etc/mosquitto/umbra, to let it drop root", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from node.extras import require

    require("ground", "umbra-ground")
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
