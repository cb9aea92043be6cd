"""``umbra-ground files``: transfers to and from nodes (docs/ground.md §Files, ICD §5.9).

umbra-ground files list  [--files-dir DIR] [--node ID] [--json]
umbra-ground files get   NODE --job J [--seq N | --path P] [--priority P] [--no-wait]
umbra-ground files put   NODE BUNDLE --sign-key FILE [--name NAME] [--run] [--no-wait]
umbra-ground files keygen FILE
umbra-ground files serve [--files-dir DIR]

``get`` and ``put`` need the file service on ``--files-dir``: when ``umbra-ground serve`` (or
``files serve``) runs it, they hand it the work and follow its progress; when nobody does,
they run it themselves until their transfer ends (Ctrl-C leaves the transfer where it is;
the next ``get``/``put``/``serve`` on the same directory resumes it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ground.files import (
    DEFAULT_FILES_DIR,
    FileGround,
    FilesBusy,
    prepare_bundle,
    queue_request,
    read_private_key,
    service_running,
)
from ground.query import mqtt_auth_args, mqtt_password, table, tls_context
from node.errors import ConfigError
from node.files import bundle as bundles
from node.files.store import reading as transfers_db

PROG = "umbra-ground files"
EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 1, 2, 3


def add_subcommands(sub: Any) -> None:
    from ground.cli import DEFAULT_MQTT, _node_id, parse_endpoint

    f = sub.add_parser("files", help="files to and from nodes: list, get, put, keygen, serve",
                       description="Transfers to and from nodes over the bus (docs/ground.md, ICD §5.9).")
    fs = f.add_subparsers(dest="files_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser, mqtt: bool = True) -> None:
        p.add_argument("--files-dir", type=Path, default=DEFAULT_FILES_DIR, metavar="DIR",
                       help=f"ground's file store (default {DEFAULT_FILES_DIR}; $UMBRA_FILES_DIR)")
        if mqtt:
            p.add_argument("--mqtt", type=parse_endpoint, default=DEFAULT_MQTT, metavar="HOST:PORT")
            p.add_argument("--key-file", metavar="FILE", help="telecommand keys (as for `send`)")
            mqtt_auth_args(p)

    ls = fs.add_parser("list", help="transfers, newest first, with their progress")
    common(ls, mqtt=False)
    ls.add_argument("--node", type=_node_id, metavar="ID")
    ls.add_argument("--json", action="store_true", help="one JSON object per transfer")
    ls.add_argument("--limit", type=int, default=50, metavar="N")
    ls.set_defaults(func=cmd_list)

    g = fs.add_parser("get", help="ask a node for a checkpoint or a result file and receive it",
                      description="Send file_downlink to NODE and receive the file into --files-dir "
                      "(NODE/checkpoint/… or NODE/result/…, with a .manifest.json).")
    g.add_argument("node", type=_node_id, metavar="NODE")
    g.add_argument("--job", required=True, metavar="JOB")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--seq", type=int, default=0, metavar="N", help="checkpoint seq (default: the newest)")
    which.add_argument("--path", metavar="P", help="a result file, relative to the job's results directory")
    g.add_argument("--priority", type=int, default=5, choices=range(10), metavar="0-9")
    g.add_argument("--no-wait", action="store_true", help="return once the node has queued it")
    g.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="give up waiting after S s")
    common(g)
    g.set_defaults(func=cmd_get)

    p = fs.add_parser("put", help="sign a job bundle and uplink it to a node",
                      description="Sign BUNDLE (a tar, optionally compressed) with the Ed25519 key in "
                      "--sign-key and send it to NODE, which checks the signature before it stores a "
                      "byte and installs the bundle as <bundles_dir>/<name without .tar…>.")
    p.add_argument("node", type=_node_id, metavar="NODE")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--sign-key", type=Path, required=True, metavar="FILE", help="from `files keygen`")
    p.add_argument("--name", metavar="NAME", help="file name on the node (default: BUNDLE's)")
    p.add_argument("--priority", type=int, default=5, choices=range(10), metavar="0-9")
    p.add_argument("--run", action="store_true", help="then start the job its umbra-job.toml names")
    p.add_argument("--no-wait", action="store_true", help="return once the uplink is queued")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S")
    common(p)
    p.set_defaults(func=cmd_put)

    k = fs.add_parser("keygen", help="make an Ed25519 key pair for signing bundles",
                      description="Write the private key (64 hex digits, mode 0600) to FILE and print "
                      "the public key for the nodes' [files] bundle_keys.")
    k.add_argument("out", type=Path, metavar="FILE")
    k.set_defaults(func=cmd_keygen)

    s = fs.add_parser("serve", help="run the file service alone (umbra-ground serve runs it too)")
    common(s)
    s.set_defaults(func=cmd_serve)


def _keys(args: argparse.Namespace, node: str | None = None) -> dict[str, bytes]:
    """The telecommand keys; ConfigError when they cannot be read, or hold none for ``node``."""
    from ground.keys import DEFAULT_KEY_FILE
    from node.bus.signing import load_keys

    keys = load_keys(Path(args.key_file) if args.key_file else DEFAULT_KEY_FILE)
    if node is not None and node not in keys:
        raise ConfigError(f"no telecommand key for {node}")
    return keys


def _service(args: argparse.Namespace, keys: dict[str, bytes]) -> FileGround:
    host, port = args.mqtt
    return FileGround(args.files_dir, host=host, port=port, keys=keys, username=args.username,
                      password=mqtt_password(args), tls_context=tls_context(args))


def _progress(row: dict[str, Any] | None, started: float) -> str:
    if row is None:
        return "waiting for the node…"
    done, size = row["done_bytes"], row["size"]
    rate = done / max(1e-3, time.time() - started)
    pct = 100.0 * done / size if size else 100.0
    extra = f", {row['bytes_resent']} sent again" if row.get("bytes_resent") else ""
    return f"{row['state']:<9} {pct:5.1f} %  {_mb(done)} of {_mb(size)}  {_mb(rate)}/s{extra}"


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n:.0f} B"


def _row(files_dir: Path, xfer: str) -> dict[str, Any] | None:
    with transfers_db(files_dir / "transfers.sqlite") as db:
        row = None if db is None else db.get(xfer)
    return row.to_dict() if row is not None else None


async def _follow(files_dir: Path, xfer: str, timeout: float) -> dict[str, Any] | None:
    """Print progress once a second until the transfer ends; its last row."""
    started = time.time()
    tty = sys.stdout.isatty()
    last = None
    async with asyncio.timeout(timeout):
        while True:
            last = await asyncio.to_thread(_row, files_dir, xfer)
            line = _progress(last, started)
            print(("\r" + line + "   ") if tty else line, end="" if tty else "\n", flush=True)
            if last is not None and last["state"] != "active":
                if tty:
                    print()
                return last
            await asyncio.sleep(1.0 if not tty else 0.5)


async def _with_service(args: argparse.Namespace, keys: dict[str, bytes], work: Any) -> int:
    """Run ``work(files)`` with the file service: ours, or None when another process runs it."""
    if service_running(args.files_dir):
        return int(await work(None))
    try:
        async with _service(args, keys) as files:
            try:
                await asyncio.wait_for(files.connected.wait(), 30)
            except TimeoutError:
                host, port = args.mqtt
                print(f"{PROG}: broker {host}:{port} did not answer in 30 s", file=sys.stderr)
                return EXIT_TIMEOUT
            return int(await work(files))
    except FilesBusy:  # started meanwhile: hand over
        return int(await work(None))


async def _wait_end(args: argparse.Namespace, xfer: str) -> int:
    """Follow a transfer to its end: the command's exit code."""
    try:
        return _ended(await _follow(args.files_dir, xfer, args.timeout))
    except TimeoutError:
        print(f"\n{PROG}: still running after {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT


def _ended(row: dict[str, Any] | None) -> int:
    if row is None:
        return EXIT_TIMEOUT
    if row["state"] == "done":
        where = row.get("final_path") or ""
        print(f"{row['state']}: {row['name']} ({row['size']} bytes, {row['hash']} {row['digest'][:16]}…)"
              + (f" → {where}" if where else ""))
        return 0
    print(f"{row['state']}: {row['reason']} {row['text']}".rstrip(), file=sys.stderr)
    return EXIT_FAILED


async def _command(args: argparse.Namespace, keys: dict[str, bytes], name: str, cmd_args: dict[str, Any]) -> Any:
    from ground.keys import DEFAULT_KEY_FILE, CounterStore, counter_path
    from ground.send import build_telecommand, format_report, send_command

    key_file = Path(args.key_file) if args.key_file else DEFAULT_KEY_FILE
    counter = CounterStore(counter_path(key_file)).next(args.node)
    tc = build_telecommand(node_id=args.node, name=name, args=cmd_args, key=keys[args.node], counter=counter)
    host, port = args.mqtt
    last = None
    async with asyncio.timeout(60):
        async for report in send_command(host, port, tc, username=args.username, password=mqtt_password(args),
                                         tls_context=tls_context(args)):
            print(format_report(report), flush=True)
            last = report
    return last


def cmd_get(args: argparse.Namespace) -> int:
    try:
        keys = _keys(args, args.node)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    cmd_args: dict[str, Any] = {"job": args.job, "priority": args.priority}
    if args.path:
        cmd_args["path"] = args.path
    elif args.seq:
        cmd_args["seq"] = args.seq

    async def work(files: FileGround | None) -> int:
        try:
            report = await _command(args, keys, "file_downlink", cmd_args)
        except TimeoutError:
            print(f"{PROG}: the node did not answer file_downlink in 60 s", file=sys.stderr)
            return EXIT_TIMEOUT
        if report is None or report.stage != "completed":
            return EXIT_FAILED
        if args.no_wait and files is None:
            return 0
        return await _wait_end(args, report.data["xfer"])

    return asyncio.run(_with_service(args, keys, work))


def cmd_put(args: argparse.Namespace) -> int:
    try:
        keys = _keys(args, args.node)
        private = read_private_key(args.sign_key)
        if not args.bundle.is_file():
            raise ConfigError(f"{args.bundle} is not a file")
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        bundles.check(args.bundle, max_unpacked=1 << 42)  # the node checks too; refuse early here
    except bundles.BundleRefused as exc:
        print(f"{PROG}: {args.bundle} would be refused: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def work(files: FileGround | None) -> int:
        args.files_dir.mkdir(parents=True, exist_ok=True)
        meta, copy = prepare_bundle(args.files_dir, node_id=args.node, source=args.bundle, private_key=private,
                                    priority=args.priority, name=args.name)
        if files is not None:
            files.uplink(meta, copy)
        else:
            queue_request(args.files_dir, meta, copy)
        print(f"uplink {meta.xfer}: {meta.name} ({meta.size} bytes) to {args.node}, key {meta.key_id}", flush=True)
        if args.no_wait and files is None:
            return 0
        code = await _wait_end(args, meta.xfer)
        if code == 0 and args.run:
            report = await _command(args, keys, "bundle_run", {"bundle": bundles.stem(meta.name)})
            return 0 if report is not None and report.stage == "completed" else EXIT_FAILED
        return code

    return asyncio.run(_with_service(args, keys, work))


def cmd_list(args: argparse.Namespace) -> int:
    with transfers_db(args.files_dir / "transfers.sqlite") as db:
        if db is None:
            print(f"{PROG}: no transfers yet in {args.files_dir}", file=sys.stderr)
            return 0
        rows = [r.to_dict() for r in db.recent(args.limit, args.node)]
    if args.json:
        for r in rows:
            print(json.dumps(r, default=str))
        return 0
    print(table(["xfer", "node", "dir", "kind", "name", "size", "done", "state", "reason"],
                [(r["xfer"], r["node_id"], r["direction"], r["kind"], r["name"], r["size"],
                  f"{100 * r['fraction']:.0f} %", r["state"], r["reason"]) for r in rows]))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists():
        print(f"{PROG}: {out} exists; not overwriting a signing key", file=sys.stderr)
        return EXIT_USAGE
    private = bundles.new_private_key()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private.hex() + "\n")
    public = bundles.public_key(private)
    print(f"private key: {out} (keep it on ground; mode 0600)")
    print(f"public key:  {public.hex()}")
    print(f"key id:      {bundles.key_id(public)}")
    print(f'node config: [files]\n             bundle_keys = ["{public.hex()}"]')
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        keys = _keys(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def run() -> int:
        try:
            async with _service(args, keys):
                print(f"{PROG}: serving {args.files_dir} for {len(keys)} node(s)", flush=True)
                await asyncio.Event().wait()
        except FilesBusy as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return 0

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run())
    return 0
