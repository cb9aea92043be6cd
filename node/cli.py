"""``umbra-node``: run the onboard controller against a board and a broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from node import __version__
from node.bus import signing
from node.bus.client import BACKLOG_RATE, TelemetryBus
from node.bus.commands import dictionary_hash
from node.bus.outbox import Outbox
from node.bus.payloads import Event, Severity, clip_text
from node.bus.processor import CommandProcessor, ControllerTarget
from node.config import NodeConfig
from node.control import law
from node.controller import NodeController
from node.errors import ConfigError, LinkError
from node.files.bundle import BundleJob
from node.files.service import FileService
from node.gpu import make_board
from node.jobs.errors import CheckpointError
from node.jobs.model import Job
from node.jobs.policy import IntervalEstimator
from node.jobs.runner import ProcessJobRunner
from node.jobs.store import AsyncCheckpointStore, CheckpointStore
from node.link.serial_board import check_port_exists
from node.logs import configure_logging
from node.service import Notifier

EXIT_USAGE = 2


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="umbra-node",
        description="Umbra onboard controller: controls a board's GPUs over serial and reports "
        "to ground over MQTT.",
    )
    p.add_argument("--serial", metavar="PATH|URL", help="serial port path or pyserial URL (socket://…)")
    p.add_argument("--mqtt", metavar="HOST:PORT", type=parse_hostport, help="MQTT broker (default 127.0.0.1:1883)")
    p.add_argument("--node-id", metavar="ID", help="node id used in topics (default node-1)")
    p.add_argument("--data-dir", metavar="DIR", help="where the node keeps its state")
    p.add_argument("--config", metavar="FILE.toml", help="configuration file; flags override it")
    p.add_argument("--hk-rate", metavar="HZ", type=float, help="housekeeping rate in Hz of wall time")
    p.add_argument(
        "--policy",
        choices=["umbra", "baseline", "ipa", "step_wise"],
        help="umbra (default): the controller; baseline: every GPU at its maximum cap; ipa, step_wise: "
        "the Linux thermal governors with a battery rule (peers, for comparison)",
    )
    p.add_argument(
        "--tc-key-file",
        metavar="FILE",
        help="telecommand key file (JSON node id → hex key); default <data-dir>/tc-keys.json "
        "if it exists.  Without a key every telecommand fails with BAD_TAG.",
    )
    p.add_argument(
        "--backlog-rate",
        metavar="PKT/S",
        type=float,
        default=BACKLOG_RATE,
        help=f"packets per second sent from the stored backlog after an outage (default {BACKLOG_RATE:g})",
    )
    p.add_argument(
        "--gpus",
        choices=["serial", "nvml", "fake-nvml"],
        help="who reads and caps the GPUs: the serial board (default), NVML (real NVIDIA GPUs; "
        "platform values from the serial board, or a fixed profile without one), or a fake NVML",
    )
    p.add_argument(
        "--reset-tc-counter",
        action="store_true",
        help="recovery: set the last accepted telecommand counter to this node's UTC in µs and "
        "exit (a node that once accepted a counter far ahead refuses every later command as "
        "REPLAYED; docs/ground.md, security model)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    p.add_argument("--version", action="version", version=f"umbra-node {__version__}")
    return p


def load_config(args: argparse.Namespace) -> NodeConfig:
    overrides = {
        "node.node_id": args.node_id,
        "node.data_dir": args.data_dir,
        "link.serial": args.serial,
        "mqtt.host": args.mqtt[0] if args.mqtt else None,
        "mqtt.port": args.mqtt[1] if args.mqtt else None,
        "mqtt.hk_rate_hz": args.hk_rate,
        "node.policy": args.policy,
        "gpu.backend": args.gpus,
    }
    if args.config:
        return NodeConfig.from_toml(args.config, **overrides)
    return NodeConfig.from_mapping({}, source="command line", **overrides)


def warm_up_kernels() -> None:
    """Compile (or load from cache) every kernel before the first sensor frame needs it."""
    law.warm_up()


def legacy_first_seq(data_dir: Path) -> int:
    """Numbers reserved by the old block store (telemetry.seq) are never used again."""
    try:
        return max(1, int((data_dir / "telemetry.seq").read_text().strip()))
    except FileNotFoundError:
        return 1
    except ValueError:
        raise ConfigError(
            f"{data_dir / 'telemetry.seq'} is corrupt; refusing to reuse numbers", key="node.data_dir"
        ) from None


def load_node_key(config: NodeConfig, key_file: str | None) -> bytes | None:
    """This node's telecommand key: from --tc-key-file, else <data_dir>/tc-keys.json, else none."""
    path = Path(key_file) if key_file else Path(config.data_dir) / "tc-keys.json"
    if key_file is None and not path.exists():
        return None
    keys = signing.load_keys(path)
    if config.node_id not in keys:
        raise ConfigError(f"key file {path} has no key for {config.node_id}", key=config.node_id,
                          source=str(path))
    return keys[config.node_id]


async def run(
    config: NodeConfig,
    outbox: Outbox,
    store: CheckpointStore,
    *,
    key: bytes | None = None,
    backlog_rate: float = BACKLOG_RATE,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    boot_id = uuid.uuid4().hex[:12]
    target = ControllerTarget()  # bound to the controller once it runs
    bus = TelemetryBus(
        node_id=config.node_id, config=config.mqtt, boot_id=boot_id, version=__version__,
        outbox=outbox, dict_hash=dictionary_hash(), backlog_rate=backlog_rate,
        tls_context=ssl.create_default_context(cafile=config.mqtt.tls_ca) if config.mqtt.tls_ca else None,
    )
    files = FileService(node_id=config.node_id, data_dir=Path(config.data_dir), config=config.files, key=key,
                        store=store)
    files.on_event = lambda kind, severity, text, data: bus.publish(Event(
        node_id=config.node_id, seq=bus.next_seq(), utc=time.time(), t_board=0.0, kind=kind,
        severity=int(severity), text=clip_text(text), data=data))
    bus.files = files
    bus.processor = CommandProcessor(
        node_id=config.node_id, key=key, target=target, sink=bus,
        path=Path(config.data_dir) / "commands.sqlite", files=files,
    )
    board = make_board(gpu=config.gpu, link=config.link, node_id=config.node_id, platform=config.platform)
    async with (
        bus,
        board,
        NodeController(
            config=config,
            board=board,
            publisher=bus,
            next_seq=bus.next_seq,
            params_path=Path(config.data_dir) / "params.json",
            rails_path=Path(config.data_dir) / "rails.json",
            store=AsyncCheckpointStore(store, max_concurrent=2),
        ) as controller,
        Notifier.from_environ(
            health=controller,
            link_up=lambda: board.link_up,
            status=lambda: f"mode {controller.mode.value}, {controller.steps} control steps",
        ),
    ):
        target.bind(controller.commands)
        jobs = [j for j in config.jobs if j.is_process]
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(files.close)
            # A node that takes bundles runs a job runner even with no jobs of its own yet.
            if jobs or config.files.bundle_keys:
                # Entered after the controller and left before it: jobs stop (with a final
                # checkpoint) while the node can still report it.
                interval_clock = controller.board_clock if config.checkpoints.clock == "board" else time.monotonic
                controller.process_jobs = await stack.enter_async_context(ProcessJobRunner(
                    jobs, store=AsyncCheckpointStore(store, max_concurrent=config.checkpoints.max_concurrent),
                    staging_root=config.checkpoints.staging(Path(config.data_dir)),
                    run_dir=Path(config.data_dir) / "run",
                    estimator=IntervalEstimator(config.checkpoints.policy, clock=interval_clock),
                    policy=controller.policy.make_checkpoints(config.sim_jobs),
                    clock=interval_clock,
                    on_event=lambda kind, severity, text, data: controller.events.emit(
                        kind, Severity(severity), text, **data),
                    stop_timeout_s=config.checkpoints.stop_timeout_s,
                    checkpoint_timeout_s=config.checkpoints.checkpoint_timeout_s,
                    log_dir=Path(config.data_dir) / "job-logs",
                    results_root=config.files.results(Path(config.data_dir)),
                ))
                files.start_job = lambda spec, where: _start_bundle_job(controller, spec, where)
            await _announce_and_wait(config, boot_id, key, stop)


def _start_bundle_job(controller: NodeController, spec: BundleJob, where: Path) -> None:
    """Run the job an installed bundle names, in the bundle's directory."""
    runner = controller.process_jobs
    if runner is None:
        raise ValueError("this node runs no process jobs")
    runner.add(Job(id=spec.id, command=spec.command, gpus=spec.gpus, priority=spec.priority, cwd=str(where),
                   env=spec.env, max_checkpoint_bytes=spec.max_checkpoint_bytes))


async def _announce_and_wait(config: NodeConfig, boot_id: str, key: bytes | None, stop: asyncio.Event) -> None:
    where = config.link.serial or "a fixed platform profile"
    jobs = sum(1 for j in config.jobs if j.is_process)
    print(
        f"umbra-node: {config.node_id} on {where} (GPUs: {config.gpu.backend}), "
        f"mqtt {config.mqtt.host}:{config.mqtt.port}, boot {boot_id}, "
        f"commands {'enabled' if key else 'disabled (no key)'}, {jobs} process job(s)",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()


def reset_tc_counter(data_dir: Path, now: float | None = None) -> tuple[int, int]:
    """Set the persisted last counter to UTC in µs when it is above it; (before, after)."""
    import sqlite3
    import time

    path = data_dir / "commands.sqlite"
    if not path.exists():
        raise ConfigError(f"no command store at {path}", source=str(path))
    clock_us = int((time.time() if now is None else now) * 1_000_000)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'last_counter'").fetchone()
        before = int(row[0]) if row else 0
        after = min(before, clock_us)
        db.execute("UPDATE meta SET value = ? WHERE key = 'last_counter'", (after,))
    finally:
        db.close()
    return before, after


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(level=args.log_level, json_lines=args.log_json)
    if args.reset_tc_counter:
        try:
            before, after = reset_tc_counter(Path(load_config(args).data_dir))
        except ConfigError as exc:
            print(f"umbra-node: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"umbra-node: last telecommand counter {before} → {after}"
              + ("" if before != after else " (unchanged: not ahead of this node's clock)"))
        return 0
    try:
        config = load_config(args)
        if config.link.serial:
            check_port_exists(config.link.serial)
        elif config.gpu.backend == "serial":
            raise ConfigError("no serial port: give --serial or link.serial", key="link.serial")
        data_dir = Path(config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        key = load_node_key(config, args.tc_key_file)
        outbox = Outbox(
            data_dir / "outbox.sqlite",
            limit=config.mqtt.queue_limit,
            first_seq=legacy_first_seq(data_dir),
        )
        store = CheckpointStore(config.checkpoints.store_dir(data_dir), keep=config.checkpoints.keep)
    except (ConfigError, LinkError, CheckpointError) as exc:
        print(f"umbra-node: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"umbra-node: error: data directory {config.data_dir}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    warm_up_kernels()
    try:
        asyncio.run(run(config, outbox, store, key=key, backlog_rate=args.backlog_rate))
    finally:
        outbox.close()
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
