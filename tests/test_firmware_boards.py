"""The C firmware as a board: `umbra-hil conformance` passes every check against it, built
for the host on ptys and as the mps2-an385 image in QEMU; the footprint fits its goal."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hil.cboard import FirmwareBoard, build_dir
from hil.conformance import format_results, run_conformance

pytestmark = [pytest.mark.hil, pytest.mark.timeout(240)]

#: Every check group conformance has; none may be skipped against a board with checkpoints.
NEEDED = ("handshake", "version", "SET_CAPS", "SET_RAIL", "duplicate", "retransmission",
          "CHECKPOINT → ACK OK", "RESTORE → ACK OK", "watchdog", "lockstep", "not yet reached",
          "RESET_BOARD", "HIL port")


@pytest.mark.parametrize("target", ["host", "qemu"])
async def test_conformance_passes_every_check_against_the_c_firmware(tmp_path: Path, target: str) -> None:
    with FirmwareBoard(target, tmp_path / "b.tty", tmp_path / "h.tty", log_dir=tmp_path) as board:
        results = await run_conformance(str(tmp_path / "b.tty"), hil=str(tmp_path / "h.tty"))
        assert board.proc.running, board.proc.tail()
    text = format_results(results)
    assert results and all(r.ok for r in results), text
    assert not any(r.skipped for r in results), text
    names = " ".join(r.name for r in results)
    for needed in NEEDED:
        assert needed in names, needed


def test_both_targets_fit_a_64k_flash_16k_ram_part() -> None:
    """arm-none-eabi-size: text + data in 64 KiB of flash, data + bss (the stack included) in 16 KiB."""
    images = [build_dir() / "mps2-an385.elf", build_dir() / "nucleo-f401re.elf"]
    out = subprocess.run(["arm-none-eabi-size", *map(str, images)], capture_output=True, text=True,
                         check=True).stdout
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    assert len(rows) == 2, out
    for text, data, bss, *_ in rows:
        assert int(text) + int(data) <= 64 * 1024, out
        assert int(data) + int(bss) <= 16 * 1024, out
    # the linker scripts hold the images to the same limits, so an overflow fails the build
    for board in ("mps2-an385", "nucleo-f401re"):
        script = (Path(__file__).resolve().parent.parent / "firmware" / "ports" / board / "link.ld").read_text()
        assert re.search(r"FLASH.*LENGTH\s*=\s*64K", script) and re.search(r"RAM.*LENGTH\s*=\s*16K", script)
