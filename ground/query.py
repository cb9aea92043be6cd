"""Archive commands of ``umbra-ground``: serve, ingest, events, query (and export, in
ground/export.py).

umbra-ground serve  [--mqtt H:P] [--http H:P] [--archive URL] [--users FILE] [--key-file F]
                    [--username U --password-file F --tls-ca CA] [--demo-users] [--secure-cookies]
umbra-ground ingest [--mqtt H:P] [--archive URL] [--shared GROUP] [--workers N]
                    [--username U --password-file F --tls-ca CA]
umbra-ground events [--node ID] [--severity LEVEL] [--search TEXT] [--since T] [--until T]
umbra-ground query CHANNEL --node ID [--since T] [--until T]
umbra-ground export --format csv|parquet --out FILE [--node ID] [--since T] [--until T]

Times (``--since``/``--until``) are UTC seconds, ISO 8601 (``2025-01-31T12:00:00``, UTC
unless it says otherwise), ``now``, or relative to now: ``-10m``, ``-2h``, ``-30s``, ``-1d``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ground.archive import DEFAULT_SQLITE, Archive
from node.bus.payloads import Severity
from node.errors import ConfigError

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, *, now: float | None = None) -> float:
    now = time.time() if now is None else now
    t = text.strip()
    if t == "now":
        return now
    if t.startswith("-") and t[-1:] in UNITS:
        try:
            return now - float(t[1:-1]) * UNITS[t[-1]]
        except ValueError:
            pass
    try:
        return float(t)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use UTC seconds, ISO 8601, 'now' or -10m/-2h/-1d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _severity(text: str) -> int:
    try:
        return int(Severity[text.upper()]) if not text.isdigit() else int(Severity(int(text)))
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a severity: {', '.join(s.name.lower() for s in Severity)}") from None


def iso(t: float | None) -> str:
    if t is None:
        return "—"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, columns as wide as their widest cell."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _archive_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archive", metavar="URL", default=None,
                   help=f"SQLite file or postgresql://… (default ./{DEFAULT_SQLITE})")


def _window_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=parse_time, metavar="T", help="from this time (see --help)")
    p.add_argument("--until", type=parse_time, metavar="T", help="up to this time")


def mqtt_auth_args(p: argparse.ArgumentParser) -> None:
    """Broker credentials and TLS, as for every ground tool that connects (the production
    broker refuses anonymous clients: `umbra-ground broker-files`)."""
    p.add_argument("--username", metavar="USER", help="broker user name (e.g. ground)")
    p.add_argument("--password", metavar="PASSWORD",
                   help="broker password (visible to `ps`: prefer --password-file or "
                   "UMBRA_MQTT_PASSWORD)")
    p.add_argument("--password-file", metavar="FILE", help="read the broker password from FILE")
    p.add_argument("--tls-ca", metavar="CA.crt", help="connect with TLS, trusting this CA")


def mqtt_password(args: argparse.Namespace) -> str | None:
    if getattr(args, "password_file", None):
        try:
            return Path(args.password_file).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"umbra-ground: cannot read --password-file: {exc}") from None
    return getattr(args, "password", None) or os.environ.get("UMBRA_MQTT_PASSWORD") or None


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    ca = getattr(args, "tls_ca", None)
    return ssl.create_default_context(cafile=ca) if ca else None


def add_subcommands(sub: Any) -> None:
    """Register serve, ingest, events, query and export on ``umbra-ground``'s subparsers."""
    from ground.cli import DEFAULT_MQTT, _node_id, parse_endpoint
    from ground.export import cmd_export
    from ground.ingest import DEFAULT_GROUP

    s = sub.add_parser("serve", help="ingest telemetry and serve the operator web console",
                       description="Subscribe to every node, archive what arrives and serve the "
                       "console (docs/ground.md).  Default http://127.0.0.1:8080.")
    s.add_argument("--mqtt", type=parse_endpoint, default=DEFAULT_MQTT, metavar="HOST:PORT")
    s.add_argument("--http", type=parse_endpoint, default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="where the console listens (default 127.0.0.1:8080; port 0: any free)")
    _archive_arg(s)
    s.add_argument("--users", metavar="FILE", help="operators (TOML or JSON); default: demo users")
    s.add_argument("--key-file", metavar="FILE", help="telecommand keys (as for `send`); with them the "
                   "console also runs the file service (ICD §5.9)")
    s.add_argument("--files-dir", metavar="DIR", help="ground's file store (default: ground-files beside a "
                   "SQLite archive, else var/ground-files)")
    s.add_argument("--shared", metavar="GROUP", help="ingest on an MQTT v5 shared subscription")
    s.add_argument("--no-ingest", action="store_true",
                   help="only serve: separate `umbra-ground ingest` workers fill the archive")
    s.add_argument("--demo-users", action="store_true",
                   help="allow the demo users (demo/demo, viewer/viewer) on a non-loopback address")
    s.add_argument("--secure-cookies", action="store_true",
                   help="mark session cookies Secure (when a TLS proxy serves the console)")
    s.add_argument("--allowed-origin", action="append", default=[], metavar="URL",
                   help="another origin that may post, e.g. https://console.example (a TLS proxy)")
    mqtt_auth_args(s)
    s.set_defaults(func=cmd_serve)

    i = sub.add_parser("ingest", help="archive telemetry (one or more workers; for a fleet)",
                       description="Archive every node's telemetry.  With --shared the workers "
                       "share one MQTT v5 shared subscription (mosquitto ≥ 1.6).")
    i.add_argument("--mqtt", type=parse_endpoint, default=DEFAULT_MQTT, metavar="HOST:PORT")
    _archive_arg(i)
    i.add_argument("--shared", metavar="GROUP", nargs="?", const=DEFAULT_GROUP,
                   help=f"shared-subscription group (default when given: {DEFAULT_GROUP})")
    i.add_argument("--workers", type=int, default=1, metavar="N", help="workers in this process")
    mqtt_auth_args(i)
    i.set_defaults(func=cmd_ingest)

    e = sub.add_parser("events", help="print archived events, newest last")
    e.add_argument("--node", type=_node_id, metavar="ID")
    e.add_argument("--severity", type=_severity, default=0, metavar="LEVEL",
                   help="at least this severity (debug, info, warning, error, critical)")
    e.add_argument("--search", default="", metavar="TEXT", help="text or kind contains TEXT")
    e.add_argument("--limit", type=int, default=100, metavar="N")
    _window_args(e)
    _archive_arg(e)
    e.set_defaults(func=cmd_events)

    q = sub.add_parser("query", help="print one housekeeping channel as a table",
                       description="CHANNEL: t_board, solar_w, battery_soc, radiator_c, "
                       "board_flags, control_us, or temp_c[i], power_w[i], cap_w[i], progress[i].")
    q.add_argument("channel", metavar="CHANNEL")
    q.add_argument("--node", type=_node_id, required=True, metavar="ID")
    _window_args(q)
    _archive_arg(q)
    q.set_defaults(func=cmd_query)

    x = sub.add_parser("export", help="export archived housekeeping (and events) to CSV or Parquet")
    x.add_argument("--format", choices=("csv", "parquet"), default="csv")
    x.add_argument("--out", required=True, metavar="FILE",
                   help="output file; events go to FILE with '-events' before the suffix")
    x.add_argument("--node", type=_node_id, metavar="ID", help="only this node (default: all)")
    _window_args(x)
    _archive_arg(x)
    x.set_defaults(func=cmd_export)


def cmd_events(args: argparse.Namespace) -> int:
    with Archive(args.archive) as a:
        rows = a.events(args.node, min_severity=args.severity, search=args.search,
                        since=args.since, until=args.until, limit=args.limit)
    rows.reverse()
    print(table(["utc", "node", "seq", "severity", "kind", "text"],
                [(iso(r["utc"]), r["node"], r["seq"], Severity(r["severity"]).name, r["kind"],
                  r["text"]) for r in rows]))
    print(f"({len(rows)} events)", file=sys.stderr)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    with Archive(args.archive) as a:
        try:
            rows = a.query(args.channel, args.node, args.since, args.until)
        except ValueError as exc:
            print(f"umbra-ground query: {exc}", file=sys.stderr)
            return 2
    print(table(["utc", "seq", args.channel], [(iso(t), s, v) for t, s, v in rows]))
    print(f"({len(rows)} samples)", file=sys.stderr)
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from ground.web.app import ConsoleConfig, serve

    host, port = args.mqtt
    http_host, http_port = args.http
    config = ConsoleConfig(
        mqtt_host=host, mqtt_port=port, http_host=http_host, http_port=http_port,
        archive=args.archive, users_file=args.users, key_file=args.key_file,
        ingest=not args.no_ingest, shared=args.shared, demo_users=args.demo_users,
        secure_cookies=args.secure_cookies, allowed_origins=tuple(args.allowed_origin),
        mqtt_username=args.username, mqtt_password=mqtt_password(args), mqtt_tls_ca=args.tls_ca,
        files_dir=args.files_dir,
    )
    try:
        await serve(config, announce=lambda text: print(text, flush=True))
    except ConfigError as exc:
        print(f"umbra-ground serve: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))


async def _ingest(args: argparse.Namespace) -> int:
    from ground.ingest import Ingestor

    host, port = args.mqtt
    async with contextlib.AsyncExitStack() as stack:
        for n in range(args.workers):
            archive = stack.enter_context(Archive(args.archive, worker=f"w{n}"))
            ing = await stack.enter_async_context(
                Ingestor(archive=archive, host=host, port=port, shared=args.shared,
                         username=args.username, password=mqtt_password(args),
                         tls_context=tls_context(args)))
            print(f"umbra-ground ingest: worker {n} ({ing.client_id}) → {archive.url}"
                  + (f" on shared group {args.shared}" if args.shared else ""), flush=True)
        await asyncio.Event().wait()
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    return asyncio.run(_ingest(args))
