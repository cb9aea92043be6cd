"""``umbra-board``: run a simulated dev board on a pseudo-terminal or a real serial device.

``--link PATH`` publishes a pty there (the node opens it as a serial port on this machine);
``--link-dev DEVICE`` opens a serial device that exists instead, so a bench PC plays the
board for a node on another computer over a USB-serial cable (docs/real-boards.md §8).

Exit status: 0 after SIGTERM or Ctrl-C (the symlinks are removed), 2 for bad arguments, a
link path that cannot be published or a device that cannot be opened.  One line goes to stderr when the board is ready::

    umbra-board: board sim-1 on /tmp/umbra/link (8 GPUs, 10 Hz, speed 1x), HIL on /tmp/umbra/hil, seed 42

(the HIL part only with ``--hil``).  Harnesses can wait for the ``umbra-board: board ``
prefix, or for the symlink, which appears atomically.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from firmware_sim.config import MAX_BOARD_GPUS, ORBITS, BoardConfig, __version__
from node.errors import ConfigError, LinkError

PROG = "umbra-board"
#: BoardConfig key → the flag that sets it, so errors name what the user typed.
_FLAGS = {
    "link": "--link",
    "hil": "--hil",
    "baud": "--baud",
    "gpus": "--gpus",
    "rate_hz": "--rate",
    "speed": "--speed",
    "seed": "--seed",
    "board_id": "--board-id",
    "watchdog_s": "--watchdog",
    "demand_w": "--demand",
    "orbit": "--orbit",
    "model": "--model",
    "lockstep_timeout_s": "--lockstep-timeout",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Simulated Umbra dev board: the firmware's side of the serial link and "
        "the GPUs it drives, on a pseudo-terminal published at --link or on a serial device (--link-dev).",
    )
    link = p.add_mutually_exclusive_group(required=True)
    link.add_argument("--link", metavar="PATH", help="symlink to create for the node's serial port (a pty)")
    link.add_argument(
        "--link-dev", metavar="DEVICE",
        help="play the board on this serial device instead of a pty (e.g. /dev/ttyUSB0, "
        "/dev/serial/by-id/…): a node on another computer at the cable's far end",
    )
    hil = p.add_mutually_exclusive_group()
    hil.add_argument("--hil", metavar="PATH", help="symlink to create for the HIL port (optional)")
    hil.add_argument("--hil-dev", metavar="DEVICE", help="the HIL port on this serial device")
    p.add_argument(
        "--baud", type=int, default=None, metavar="N",
        help="line rate of --link-dev/--hil-dev (default 115200; 8N1, no flow control)",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="N",
        help=f"GPU count, 1-{MAX_BOARD_GPUS} (default 8)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="HZ",
        help="sensor frames per second of board time (default 10)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=None,
        metavar="X",
        help="board seconds per wall second (default 1)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed for sensor noise (default: random, printed)",
    )
    p.add_argument(
        "--board-id",
        default=None,
        metavar="ID",
        help="board id reported in HELLO_ACK (default sim-1)",
    )
    p.add_argument(
        "--watchdog",
        type=float,
        default=None,
        metavar="S",
        help="wall seconds without a frame of a session from the node before the safe state (default 1)",
    )
    p.add_argument(
        "--demand",
        type=float,
        default=None,
        metavar="W",
        help="power each GPU's job would draw uncapped (default 500)",
    )
    p.add_argument(
        "--orbit",
        default=None,
        choices=tuple(ORBITS),
        help="orbit preset (default beta0: 550 km, beta 0, 35.6 min eclipse every 95.5 min)",
    )
    p.add_argument(
        "--model",
        default=None,
        choices=("space", "first-order"),
        help="plant model (default space; first-order is the foundation's stand-in)",
    )
    p.add_argument(
        "--config",
        metavar="FILE.toml",
        help="TOML file: [board] options, [plant] physics parameters, [[event]] fault timeline",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one physics parameter (docs/board-physics.md), e.g. --set sink_c=-60; repeatable",
    )
    p.add_argument(
        "--lockstep",
        action="store_true",
        help="advance to the next sensor frame only after the node's STEP_DONE (or a timeout)",
    )
    p.add_argument(
        "--lockstep-timeout",
        type=float,
        default=None,
        metavar="S",
        help="wall seconds to wait for STEP_DONE in lockstep (default 1)",
    )
    p.add_argument(
        "--link-tcp",
        default=None,
        metavar="[HOST:]PORT",
        help="also serve the link on TCP, as a terminal server would (socket://HOST:PORT; "
        "0: a free port, printed; HOST defaults to 127.0.0.1)",
    )
    p.add_argument(
        "--hil-tcp",
        default=None,
        metavar="[HOST:]PORT",
        help="also serve the HIL port on TCP (needs --hil)",
    )
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p  # fmt: skip


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


def load_toml(path: Path) -> dict[str, Any]:
    """The [board], [plant] and [[event]] tables of a board configuration file."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config {path}: {exc}", key="config") from None
    unknown = set(data) - {"board", "plant", "event"}
    if unknown:
        raise ConfigError(f"--config {path}: unknown tables {sorted(unknown)}", key="config")
    return data


def config_from_args(args: argparse.Namespace) -> BoardConfig:
    data = load_toml(Path(args.config)) if args.config else {}
    board: dict[str, Any] = dict(data.get("board", {}))
    overrides: dict[str, float | int] = dict(data.get("plant", {}))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE", key="set")
        try:
            overrides[key.strip()] = _number(value.strip())
        except ValueError:
            raise ConfigError(f"--set {item!r}: {value!r} is not a number", key="set") from None
    timeline = []
    for event in data.get("event", []):
        try:
            value = event["value"]
            timeline.append((float(event["at_s"]), str(event["name"]),
                             tuple(float(v) for v in value) if isinstance(value, list) else float(value)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"--config: bad [[event]] {event!r}: {exc}", key="event") from None
    # Command-line flags win over the file; the file wins over BoardConfig's defaults.
    flags = {
        "gpus": args.gpus, "rate_hz": args.rate, "speed": args.speed, "seed": args.seed,
        "board_id": args.board_id, "watchdog_s": args.watchdog, "demand_w": args.demand,
        "orbit": args.orbit, "model": args.model, "lockstep_timeout_s": args.lockstep_timeout,
    }
    board.update({key: value for key, value in flags.items() if value is not None})
    if args.lockstep:
        board["lockstep"] = True
    if args.baud is not None:
        if not (args.link_dev or args.hil_dev):
            raise ConfigError("applies to --link-dev/--hil-dev only (a pty has no line rate)", key="baud")
        board["baud"] = args.baud
    hil = args.hil_dev or args.hil
    try:
        return BoardConfig(
            link=Path(args.link_dev or args.link),
            hil=Path(hil) if hil else None,
            link_device=bool(args.link_dev),
            hil_device=bool(args.hil_dev),
            plant_overrides=tuple(overrides.items()),
            timeline=tuple(timeline),
            **board,
        )
    except TypeError as exc:
        raise ConfigError(f"[board]: {exc}", key="config") from None


def ready_line(config: BoardConfig, seed: int) -> str:
    model = f"orbit {config.orbit}" if config.model == "space" else "first-order plant"
    baud = f" at {config.baud} baud" if config.link_device else ""
    line = (
        f"{PROG}: board {config.board_id} on {config.link}{baud} "
        f"({config.gpus} GPUs, {config.rate_hz:g} Hz, speed {config.speed:g}x), {model}"
    )
    if config.hil is not None:
        line += f", HIL on {config.hil}" + (f" at {config.baud} baud" if config.hil_device else "")
    return f"{line}, seed {seed}"


def parse_endpoint(text: str, flag: str) -> tuple[str, int]:
    """``[HOST:]PORT`` → (host, port); the host defaults to loopback."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number < 65536:
        raise ConfigError(f"{text!r} is not [HOST:]PORT", key=flag)
    return host or "127.0.0.1", number


async def serve(config: BoardConfig, *, link_tcp: tuple[str, int] | None = None,
                hil_tcp: tuple[str, int] | None = None) -> int:
    """Run the board until SIGTERM or SIGINT."""
    from firmware_sim.board import Board  # numba loads here, after the arguments are good
    from firmware_sim.tcprelay import TcpRelay

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            board = await stack.enter_async_context(Board(config=config))
            line = ready_line(config, board.seed)
            for name, endpoint, device in (("link", link_tcp, config.link), ("HIL", hil_tcp, config.hil)):
                if endpoint is not None and device is not None:
                    relay = await stack.enter_async_context(
                        TcpRelay(device=device, host=endpoint[0], port=endpoint[1],
                                 logger=logging.getLogger(f"umbra.board.tcp.{name.lower()}")))
                    line += f", {name} also at {relay.url}"
            print(line, file=sys.stderr, flush=True)
            await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        detail = str(exc).split(": ", 1)[-1]
        parser.error(f"argument {_FLAGS.get(exc.key or '', exc.key)}: {detail}")
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format=f"{PROG}: %(levelname)s %(name)s: %(message)s",
    )
    try:
        link_tcp = parse_endpoint(args.link_tcp, "link_tcp") if args.link_tcp is not None else None
        hil_tcp = parse_endpoint(args.hil_tcp, "hil_tcp") if args.hil_tcp is not None else None
        if hil_tcp is not None and config.hil is None:
            raise ConfigError("serves the HIL port, so --hil is needed too", key="hil_tcp")
        if link_tcp is not None and config.link_device:
            raise ConfigError("serves a pty on TCP; with --link-dev the device is the line", key="link_tcp")
        if hil_tcp is not None and config.hil_device:
            raise ConfigError("serves a pty on TCP; with --hil-dev the device is the line", key="hil_tcp")
    except ConfigError as exc:
        parser.error(f"argument --{(exc.key or '').replace('_', '-')}: {str(exc).split(': ', 1)[-1]}")
    try:
        return asyncio.run(serve(config, link_tcp=link_tcp, hil_tcp=hil_tcp))
    except LinkError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 0


if __name__ == "__main__":
    sys.exit(main())
