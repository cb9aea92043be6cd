"""``umbra-board --link-dev``: the simulated board on serial devices that already exist.

A bench PC plays the board for a node on another computer over a USB-serial cable
(docs/real-boards.md §8).  Here the cable is a null modem of two ptys (tests/nullmodem.py):
the board opens one end as a device, the conformance check and a node open the other.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from nullmodem import NullModem

from firmware_sim.config import BoardConfig
from firmware_sim.ptyport import DevicePort
from hil.conformance import Port, format_results, run_conformance
from hil.procs import ManagedProcess
from node.errors import ConfigError, LinkError
from node.link.messages import HelloAck

pytestmark = [pytest.mark.hil, pytest.mark.timeout(240)]


def _board(tmp_path: Path, link: Path, *extra: str) -> ManagedProcess:
    return ManagedProcess([sys.executable, "-m", "firmware_sim.cli", "--link-dev", str(link), *extra],
                          name=f"board-{len(list(tmp_path.glob('board*.stderr.log')))}", log_dir=tmp_path)


async def test_conformance_passes_across_a_cable(tmp_path: Path) -> None:
    with NullModem(tmp_path / "board-link", tmp_path / "node-link") as link, \
            NullModem(tmp_path / "board-hil", tmp_path / "node-hil") as hil:
        board = _board(tmp_path, link.paths[0], "--hil-dev", str(hil.paths[0]), "--baud", "921600",
                       "--rate", "10", "--seed", "3")
        board.start()
        try:
            line = board.wait_for_line(r"umbra-board: board .*", 60).group(0)
            assert f"on {link.paths[0]} at 921600 baud" in line and f"HIL on {hil.paths[0]} at 921600 baud" in line
            results = await run_conformance(str(link.paths[1]), hil=str(hil.paths[1]))
        finally:
            board.stop()
        assert link.carried[0] > 0 and link.carried[1] > 0  # it really went through the cable
    assert all(r.ok for r in results), format_results(results)
    assert not any(r.skipped for r in results)


async def _hello(path: Path, timeout: float = 5.0) -> HelloAck | None:
    port = Port(str(path))
    await port.open()
    try:
        return await port.hello(timeout=timeout)
    finally:
        port.close()


async def test_an_unplugged_cable_is_survived_and_the_board_is_back_when_replugged(tmp_path: Path) -> None:
    with NullModem(tmp_path / "board-link", tmp_path / "node-link") as link:
        board = _board(tmp_path, link.paths[0], "--rate", "5")
        board.start()
        try:
            board.wait_for_line(r"umbra-board: board ", 60)
            assert await _hello(link.paths[1]) is not None
            link.unplug(0)  # the adapter on the board's side is pulled out
            board.wait_for_line(r"device gone", 10)
            await asyncio.sleep(1.5)
            assert board.running  # a lost device is not a crash
            link.plug(0)  # and plugged in again: the same by-id path, a new tty behind it
            board.wait_for_line(r"serial device .* is back", 10)
            ack = await _hello(link.paths[1])
            assert ack is not None and ack.gpu_count == 8
        finally:
            board.stop()
        assert board.returncode == 0


@pytest.mark.parametrize(("make", "args", "text"), [
    (None, [], "cannot open serial device"),
    ("file", [], "is not a serial device"),
    ("tty", ["--baud", "12345"], "12345 baud is not a rate this platform supports"),
])  # fmt: skip
def test_a_device_that_cannot_be_used_is_refused_with_why(tmp_path: Path, make: str | None, args: list[str],
                                                          text: str) -> None:
    path = tmp_path / "dev"
    with NullModem(tmp_path / "tty", tmp_path / "far") as cable:
        if make == "file":
            path.write_bytes(b"")
        elif make == "tty":
            path = cable.paths[0]
        board = _board(tmp_path, path, *args)
        board.start()
        assert board.wait(60) == 2
        assert text in board.tail(40), board.tail(40)


def test_a_device_in_use_is_not_shared(tmp_path: Path) -> None:
    with NullModem(tmp_path / "a", tmp_path / "b") as cable:
        first = DevicePort(path=cable.paths[0])
        first.open()
        try:
            second = DevicePort(path=cable.paths[0])
            with pytest.raises(LinkError, match="in use by another program"):
                second.open()
        finally:
            first.close()
        again = DevicePort(path=cable.paths[0])  # free once the first lets go
        again.open()
        again.close()


@pytest.mark.parametrize(("args", "text"), [
    (["--link", "x", "--baud", "9600"], "--baud: applies to --link-dev/--hil-dev only"),
    (["--link-dev", "/dev/null", "--link-tcp", "0"], "with --link-dev the device is the line"),
    (["--link", "x", "--link-dev", "/dev/null"], "not allowed with argument"),
])  # fmt: skip
def test_device_flags_that_do_not_fit_are_refused_by_name(capsys: pytest.CaptureFixture[str], args: list[str],
                                                          text: str) -> None:
    from firmware_sim.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert text in capsys.readouterr().err


def test_config_names_the_hil_device_without_a_hil_port() -> None:
    with pytest.raises(ConfigError, match="hil_device"):
        BoardConfig(link=Path("/dev/ttyUSB0"), link_device=True, hil_device=True)
