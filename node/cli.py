"""``umbra-node``: run the onboard controller against a board and a broker."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from node import __version__
from node.bus.client import TelemetryBus
from node.config import NodeConfig
from node.control import kernels
from node.controller import NodeController
from node.errors import ConfigError, LinkError
from node.link.serial_board import SerialBoard, check_port_exists
from node.seqstore import SequenceStore

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
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
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
    }
    if args.config:
        return NodeConfig.from_toml(args.config, **overrides)
    return NodeConfig.from_mapping({}, source="command line", **overrides)


def warm_up_kernels() -> None:
    """Compile (or load from cache) every kernel before the first sensor frame needs it."""
    temps, caps = np.zeros(1), np.zeros(1)
    kernels.throttle_caps(temps, 200.0, 700.0, 80.0, 40.0, caps)
    kernels.caps_changed(caps, caps, 1.0)


async def run(config: NodeConfig, seqs: SequenceStore) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    boot_id = uuid.uuid4().hex[:12]
    async with (
        TelemetryBus(node_id=config.node_id, config=config.mqtt, boot_id=boot_id, version=__version__) as bus,
        SerialBoard(port=config.link.serial, node_id=config.node_id, config=config.link) as board,
        NodeController(config=config, board=board, publisher=bus, next_seq=seqs.next),
    ):
        print(
            f"umbra-node: {config.node_id} on {config.link.serial}, "
            f"mqtt {config.mqtt.host}:{config.mqtt.port}, boot {boot_id}",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args)
        if not config.link.serial:
            raise ConfigError("no serial port: give --serial or link.serial", key="link.serial")
        check_port_exists(config.link.serial)
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        seqs = SequenceStore(Path(config.data_dir) / "telemetry.seq")
    except (ConfigError, LinkError) as exc:
        print(f"umbra-node: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"umbra-node: error: data directory {config.data_dir}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    warm_up_kernels()
    asyncio.run(run(config, seqs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
