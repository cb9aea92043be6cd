"""The C reference firmware (firmware/, docs/real-boards.md) as a board the harness starts.

Two ways to run the same board code without hardware:

- ``host``: ``umbra-fw-host``, the firmware built for this machine, on two pseudo-terminals
  it publishes at the paths given (like ``umbra-board``);
- ``qemu``: the ``mps2-an385`` image in ``qemu-system-arm`` (Cortex-M3; UART0 is the main
  port, UART1 the HIL port), each UART on a pty QEMU allocates and names on stderr; the
  harness links the given paths to them.

``FirmwareBoard`` is a context manager that starts one, waits until its ports are there,
and stops it by its pid (its process group) on exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from types import TracebackType
from typing import Self

from hil.procs import ManagedProcess
from node.errors import ConfigError

#: Where ``make firmware`` leaves the builds; UMBRA_FIRMWARE_BUILD overrides it.
DEFAULT_BUILD = Path(__file__).resolve().parent.parent / "firmware" / "build"
TARGETS = ("qemu", "host")
QEMU_IMAGE = "mps2-an385.elf"
HOST_BINARY = "umbra-fw-host"
_QEMU_PTY = re.compile(r"char device redirected to (/dev/pts/\d+) \(label (serial\d)\)")
_HOST_READY = r"umbra-fw-host: board "


def build_dir() -> Path:
    return Path(os.environ.get("UMBRA_FIRMWARE_BUILD", DEFAULT_BUILD))


def firmware_file(name: str) -> Path:
    """A firmware build product; ConfigError (saying how to build it) when it is missing."""
    path = build_dir() / name
    if not path.exists():
        raise ConfigError(f"{path} is missing: run `make firmware` first", key="board.target")
    return path


def qemu_binary() -> str:
    found = shutil.which("qemu-system-arm")
    if found is None:
        raise ConfigError("qemu-system-arm is not installed: run `make firmware-deps`", key="board.target")
    return found


def board_argv(target: str, link: Path, hil: Path, *, gpus: int = 8, rate_hz: float = 10.0) -> list[str]:
    if target == "host":
        return [str(firmware_file(HOST_BINARY)), "--link", str(link), "--hil", str(hil),
                "--gpus", str(gpus), "--rate", f"{rate_hz:g}"]
    if target == "qemu":
        # -nodefaults: no monitor or parallel port takes a serial slot; the two UARTs in order.
        return [qemu_binary(), "-M", "mps2-an385", "-nodefaults", "-display", "none", "-monitor", "none",
                "-serial", "pty", "-serial", "pty", "-kernel", str(firmware_file(QEMU_IMAGE))]
    raise ConfigError(f"board.target {target!r}: use one of {', '.join(TARGETS)}", key="board.target")


class FirmwareBoard:
    """The C firmware on ``link`` (main port) and ``hil`` (HIL port), host-built or in QEMU.

    On QEMU the board's configuration (GPU count, sensor rate, caps) is set over the HIL
    port after start (``board.*`` names), as on a real board; the host build takes
    ``gpus`` and ``rate_hz`` as arguments too."""

    def __init__(self, target: str, link: Path, hil: Path, *, log_dir: Path, gpus: int = 8,
                 rate_hz: float = 10.0) -> None:
        self.target = target
        self.link = Path(link)
        self.hil = Path(hil)
        self.proc = ManagedProcess(board_argv(target, self.link, self.hil, gpus=gpus, rate_hz=rate_hz),
                                   name=f"firmware-{target}", log_dir=log_dir)

    def start(self, timeout: float = 30.0) -> None:
        self.proc.start()
        try:
            if self.target == "host":
                self.proc.wait_for_line(_HOST_READY, timeout)
                return
            self.proc.wait_for_line(r"label serial1\)", timeout)
            ptys = {m.group(2): m.group(1) for line in self.proc.lines()
                    if (m := _QEMU_PTY.search(line)) is not None}
            for path, label in ((self.link, "serial0"), (self.hil, "serial1")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                path.symlink_to(ptys[label])
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.stop(timeout=2.0)
        if self.target == "qemu":  # the host build removes its own links
            for path in (self.link, self.hil):
                with contextlib.suppress(FileNotFoundError):
                    if path.is_symlink():
                        path.unlink()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["TARGETS", "FirmwareBoard", "board_argv", "build_dir", "firmware_file"]
