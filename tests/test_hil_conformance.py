"""`umbra-hil conformance` passes against firmware_sim, and notices a board that breaks the ICD."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

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


# --- deliberately deviant boards: each breaks one rule, the check for it must notice ----------

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from firmware_sim.board import Board  # noqa: E402
from firmware_sim.config import BoardConfig  # noqa: E402
from firmware_sim.firmware import Firmware  # noqa: E402
from firmware_sim.hil_port import HilPort  # noqa: E402
from node.errors import CommandRejected  # noqa: E402
from node.link.channel import ReliableChannel  # noqa: E402
from node.link.codec import Frame  # noqa: E402
from node.link.messages import Ack, AckStatus, Hello, HilGet, Message, SetCaps  # noqa: E402
from node.link.session import BoardSession  # noqa: E402


class NoRenumberOnHello(BoardSession):
    """Answers HELLO but keeps its numbering (both ways) going: §4.2 S2 broken."""

    def _hello(self, hello: Hello) -> None:
        self.stats.hellos += 1
        ack = self.hello_ack(hello)
        self.established = ack.version != 0
        self._out += self.channel.session_frame(ack)


class ExecutesSeqZero(BoardSession):
    """Delivers a reliable frame numbered 0 (§3.1 says drop it)."""

    def _frame(self, frame: Frame, wall: float) -> list[tuple[int, Message]]:
        if frame.seq == 0 and frame.message.RELIABLE:
            return [(0, frame.message)]
        return super()._frame(frame, wall)


class NumberedHelloAck(BoardSession):
    """Sends HELLO_ACK as a numbered frame (§3.1: session frames carry seq 0)."""

    def _hello(self, hello: Hello) -> None:
        self.stats.hellos += 1
        self.channel.reset()
        ack = self.hello_ack(hello)
        self.established = ack.version != 0
        self._out += self.channel.send(ack, 0.0)


class HelloFeedsWatchdog(BoardSession):
    """Takes HELLO as a sign of life (§4.3 says only frames of a session are)."""

    def _frame(self, frame: Frame, wall: float) -> list[tuple[int, Message]]:
        if isinstance(frame.message, Hello):
            self.fed_at = wall
        return super()._frame(frame, wall)


class AlwaysInSession(BoardSession):
    """Executes numbered frames outside a session (before HELLO, after a version-0 one)."""

    def _frame(self, frame: Frame, wall: float) -> list[tuple[int, Message]]:
        out = super()._frame(frame, wall)
        self.established = True
        return out

    def reboot(self, wall: float) -> None:
        super().reboot(wall)
        self.established = True


class ReAcksOk(BoardSession):
    """Re-acknowledges every duplicate OK, whatever the first ACK said (§3.3)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.channel = _ReAckOkChannel(retry_timeout=self.retry_timeout_s, max_tries=self.max_tries)

    def reboot(self, wall: float) -> None:
        super().reboot(wall)
        self.channel = _ReAckOkChannel(retry_timeout=self.retry_timeout_s, max_tries=self.max_tries)

    def _hello(self, hello: Hello) -> None:
        super()._hello(hello)


class _ReAckOkChannel(ReliableChannel):
    def receive(self, frame: Frame) -> tuple[list[Any], list[bytes]]:
        events, out = super().receive(frame)
        return events, [self.send(Ack(ack_seq=frame.seq, status=AckStatus.OK), 0.0) for _ in out]


class NoIdleHeartbeat(BoardSession):
    """Never sends HEARTBEAT: silent whenever no SENSOR is due (§4.3)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.heartbeat_s = None


class AppliesGoodCaps(Firmware):
    """A SET_CAPS with one cap out of range: applies the good ones, then refuses (§4.5)."""

    def _deliver(self, seq: int, message: Message, wall: float) -> None:
        if isinstance(message, SetCaps) and seq:
            lo, hi = self.plant.cap_range_w
            if len(message.cap_w) == self.plant.gpu_count and not all(lo <= c <= hi for c in message.cap_w):
                good = [c if lo <= c <= hi else float(self.plant.cap_w[i]) for i, c in enumerate(message.cap_w)]
                self.plant.set_caps(good)
                self.link.ack(seq, AckStatus.BAD_ARGUMENT, wall)
                return
        super()._deliver(seq, message, wall)


def firmware_with(session: type[BoardSession]) -> type[Firmware]:
    class Deviant(Firmware):
        session_cls = session

        def _deliver(self, seq: int, message: Message, wall: float) -> None:
            if seq == 0:  # what an ExecutesSeqZero board does with it: executes, cannot ACK
                with contextlib.suppress(CommandRejected):
                    if isinstance(message, SetCaps):
                        self.plant.set_caps(message.cap_w)
                return
            super()._deliver(seq, message, wall)

    return Deviant


class AnswersDuplicateHilGet(BoardSession):
    """The HIL port answers a duplicate HIL_GET again (§4.10: once)."""

    def _frame(self, frame: Frame, wall: float) -> list[tuple[int, Message]]:
        if isinstance(frame.message, HilGet) and frame.seq and self.established:
            super()._frame(frame, wall)
            return [(frame.seq, frame.message)]
        return super()._frame(frame, wall)


class HilFeedsMainWatchdog(HilPort):
    """HIL-port frames count as the node's sign of life (§2.1: they must not)."""

    def receive(self, data: bytes, *, wall: float) -> bytes:
        out = super().receive(data, wall=wall)
        self.target.firmware.link.fed_at = wall  # type: ignore[attr-defined]
        return out


def hil_with(session: type[BoardSession]) -> type[HilPort]:
    return type("DeviantHil", (HilPort,), {"session_cls": session})


@dataclass(frozen=True)
class Deviant:
    name: str
    group: str
    check: str  # a word of the check that must fail
    firmware: type[Firmware] = Firmware
    hil: type[HilPort] = HilPort


DEVIANTS = [
    Deviant("numbering not restarted on HELLO", "numbering", "takes our numbering from 1 again",
            firmware_with(NoRenumberOnHello)),
    Deviant("reliable frames numbered 0 executed", "sessions", "numbered 0 is not executed",
            firmware_with(ExecutesSeqZero)),
    Deviant("SET_CAPS with one bad cap applies the good ones", "commands", "applies none of them", AppliesGoodCaps),
    Deviant("re-ACK with a status different from the first", "reliability", "same refusal", firmware_with(ReAcksOk)),
    Deviant("no HEARTBEAT when no SENSOR is due", "idle_heartbeat", "HEARTBEAT when no SENSOR", firmware_with(NoIdleHeartbeat)),
    Deviant("a duplicate HIL_GET answered twice", "hil_port", "answered once", hil=hil_with(AnswersDuplicateHilGet)),
    Deviant("HIL-port frames feed the main-port watchdog", "watchdog", "HIL port do not feed", hil=HilFeedsMainWatchdog),
    Deviant("HELLO_ACK with seq ≠ 0", "numbering", "HELLO_ACK carries seq 0", firmware_with(NumberedHelloAck)),
    Deviant("HELLO feeds the watchdog", "watchdog", "HELLO does not feed", firmware_with(HelloFeedsWatchdog)),
    Deviant("numbered frames outside a session executed", "reset", "before a HELLO are not executed",
            firmware_with(AlwaysInSession)),
]


@pytest.mark.parametrize("deviant", DEVIANTS, ids=[d.name for d in DEVIANTS])
async def test_conformance_catches_a_deviant_board(tmp_path: Path, deviant: Deviant) -> None:
    config = BoardConfig(link=tmp_path / "b.tty", hil=tmp_path / "h.tty", seed=3, watchdog_s=1.0,
                         model="first-order")
    async with Board(config=config, firmware=deviant.firmware, hil_port=deviant.hil):
        results = await run_conformance(str(tmp_path / "b.tty"), hil=str(tmp_path / "h.tty"), only=(deviant.group,))
    failed = [r for r in results if not r.ok]
    assert any(deviant.check in r.name for r in failed), format_results(results)


async def test_conformance_puts_back_what_it_changed(tmp_path: Path) -> None:
    config = BoardConfig(link=tmp_path / "b.tty", hil=tmp_path / "h.tty", seed=3, watchdog_s=1.0,
                         model="first-order", demand_w=450.0)
    async with Board(config=config) as board:
        board.set_param("sink_c", 12.5)
        board.firmware.plant.set_caps((600.0,) * board.plant.gpu_count)
        before = {n: board.get_param(n) for n in ("sink_c", "demand_w", "time.lockstep", "time.lockstep_timeout_s",
                                                  "time.pause")}
        results = await run_conformance(str(tmp_path / "b.tty"), hil=str(tmp_path / "h.tty"),
                                        only=("idle_heartbeat", "lockstep", "hil_port", "commands"))
        assert all(r.ok for r in results), format_results(results)
        after = {n: board.get_param(n) for n in before}
        assert after == before
        assert board.plant.cap_w.tolist() == [600.0] * board.plant.gpu_count
        assert board.firmware.link.established  # a fresh session left behind



def test_only_refuses_an_unknown_group_before_touching_the_port(tmp_path: Path, capsys) -> None:
    from hil.cli import main

    assert main(["conformance", str(tmp_path / "no-such.tty"), "--only", "watchdog,bogus"]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "watchdog" in err  # names the wrong one and lists the right ones


async def test_only_runs_the_named_groups_and_the_handshake(tmp_path: Path) -> None:
    config = BoardConfig(link=tmp_path / "b.tty", hil=tmp_path / "h.tty", seed=3, watchdog_s=1.0,
                         model="first-order")
    async with Board(config=config):
        from hil.harness_cli import cmd_conformance

        args = argparse.Namespace(port=str(tmp_path / "b.tty"), hil=str(tmp_path / "h.tty"), bench=None,
                                  json=str(tmp_path / "r.json"), only="versions, watchdog")
        code = await asyncio.to_thread(cmd_conformance, args)
    results = json.loads((tmp_path / "r.json").read_text())
    names = " ".join(r["name"] for r in results)
    assert code == 0, names
    assert "handshake" in names and "watchdog" in names and "version" in names
    assert "SET_RAIL" not in names and "lockstep" not in names and "RESET_BOARD" not in names
