"""``umbra-board``: run a simulated dev board on a pseudo-terminal.

Exit status: 0 after SIGTERM or Ctrl-C (the symlinks are removed), 2 for bad arguments or
a link path that cannot be published.  One line goes to stderr when the board is ready::

    umbra-board: board sim-1 on /tmp/umbra/link (8 GPUs, 10 Hz, speed 1x), HIL on /tmp/umbra/hil, seed 42

(the HIL part only with ``--hil``).  Harnesses can wait for the ``umbra-board: board ``
prefix, or for the symlink, which appears atomically.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from firmware_sim.config import MAX_BOARD_GPUS, BoardConfig, __version__
from node.errors import ConfigError, LinkError

PROG = "umbra-board"
#: BoardConfig key → the flag that sets it, so errors name what the user typed.
_FLAGS = {
    "link": "--link",
    "hil": "--hil",
    "gpus": "--gpus",
    "rate_hz": "--rate",
    "speed": "--speed",
    "seed": "--seed",
    "board_id": "--board-id",
    "watchdog_s": "--watchdog",
    "demand_w": "--demand",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Simulated Umbra dev board: the firmware's side of the serial link and "
        "the GPUs it drives, on a pseudo-terminal published at --link.",
    )
    p.add_argument(
        "--link", required=True, metavar="PATH", help="symlink to create for the node's serial port"
    )
    p.add_argument("--hil", metavar="PATH", help="symlink to create for the HIL port (optional)")
    p.add_argument(
        "--gpus",
        type=int,
        default=8,
        metavar="N",
        help=f"GPU count, 1-{MAX_BOARD_GPUS} (default 8)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=10.0,
        metavar="HZ",
        help="sensor frames per second of board time (default 10)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
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
        default="sim-1",
        metavar="ID",
        help="board id reported in HELLO_ACK (default sim-1)",
    )
    p.add_argument(
        "--watchdog",
        type=float,
        default=3.0,
        metavar="S",
        help="wall seconds of node silence before the safe state (default 3)",
    )
    p.add_argument(
        "--demand",
        type=float,
        default=500.0,
        metavar="W",
        help="power each GPU's job would draw uncapped (default 500)",
    )
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p  # fmt: skip


def config_from_args(args: argparse.Namespace) -> BoardConfig:
    return BoardConfig(
        link=Path(args.link),
        hil=Path(args.hil) if args.hil else None,
        gpus=args.gpus,
        rate_hz=args.rate,
        speed=args.speed,
        seed=args.seed,
        board_id=args.board_id,
        watchdog_s=args.watchdog,
        demand_w=args.demand,
    )


def ready_line(config: BoardConfig, seed: int) -> str:
    line = (
        f"{PROG}: board {config.board_id} on {config.link} "
        f"({config.gpus} GPUs, {config.rate_hz:g} Hz, speed {config.speed:g}x)"
    )
    if config.hil is not None:
        line += f", HIL on {config.hil}"
    return f"{line}, seed {seed}"


async def serve(config: BoardConfig) -> int:
    """Run the board until SIGTERM or SIGINT."""
    from firmware_sim.board import Board  # numba loads here, after the arguments are good

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Board(config=config) as board:
            print(ready_line(config, board.seed), file=sys.stderr, flush=True)
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
        return asyncio.run(serve(config))
    except LinkError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 0


if __name__ == "__main__":
    sys.exit(main())
