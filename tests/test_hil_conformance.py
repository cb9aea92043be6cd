"""`umbra-hil conformance` passes against firmware_sim, and notices a board that breaks the ICD."""

from __future__ import annotations

import pytest

from hil.conformance import format_results, run_conformance
from hil.procs import ManagedProcess

pytestmark = [pytest.mark.hil, pytest.mark.timeout(120)]


def start_board(tmp_path, *extra: str) -> ManagedProcess:
    import sys

    board = ManagedProcess([sys.executable, "-m", "firmware_sim.cli", "--link", str(tmp_path / "b.tty"),
                            "--hil", str(tmp_path / "h.tty"), "--rate", "10", "--seed", "3", *extra],
                           name="board", log_dir=tmp_path)
    board.start()
    board.wait_for_line(r"umbra-board: board ", 60)
    return board


async def test_conformance_passes_against_firmware_sim(tmp_path):
    board = start_board(tmp_path, "--watchdog", "1.5")
    try:
        results = await run_conformance(str(tmp_path / "b.tty"), hil=str(tmp_path / "h.tty"))
    finally:
        board.stop()
    text = format_results(results)
    assert all(r.ok for r in results), text
    names = " ".join(r.name for r in results)
    for needed in ("handshake", "version", "SET_CAPS", "SET_RAIL", "duplicate", "retransmission",
                   "CHECKPOINT → ACK OK", "RESTORE → ACK OK", "watchdog", "lockstep", "not yet reached",
                   "RESET_BOARD", "HIL port"):
        assert needed in names
    assert not any(r.skipped for r in results)


async def test_a_board_without_checkpoints_passes_by_refusing_them(tmp_path):
    board = start_board(tmp_path, "--model", "first-order")
    try:
        results = await run_conformance(str(tmp_path / "b.tty"))
    finally:
        board.stop()
    assert all(r.ok for r in results), format_results(results)
    names = [r.name for r in results]
    assert any("without checkpoints → UNSUPPORTED" in name for name in names)
    assert not any("RESTORE" in name for name in names)


async def test_conformance_reports_what_a_board_gets_wrong(tmp_path):
    """A board whose watchdog is longer than it announces... here: no HIL port given, and a
    main port that is not a board at all (nothing answers HELLO)."""
    import os
    import pty

    master, slave = pty.openpty()
    try:
        results = await run_conformance(os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)
    assert results and not results[0].ok
    assert "no HELLO_ACK" in results[0].detail
