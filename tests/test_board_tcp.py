"""A board reached as ``socket://host:port``, the way labs reach dev boards through a
terminal server: the relay itself, the conformance check, and a scenario on a bench that
attaches to such a board instead of starting one."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tty
from pathlib import Path

import pytest

from firmware_sim.tcprelay import TcpRelay
from hil.benchfile import parse_bench
from hil.conformance import format_results, run_conformance
from hil.procs import ManagedProcess
from hil.runner import run_scenario
from hil.scenario import library

pytestmark = [pytest.mark.hil, pytest.mark.timeout(180)]


async def test_relay_carries_bytes_both_ways_and_takes_one_client_at_a_time(tmp_path):
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    try:
        async with TcpRelay(device=Path(os.ttyname(slave))) as relay:
            assert relay.url.startswith("socket://127.0.0.1:") and relay.port > 0
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"to the board\x00")
            await writer.drain()
            got = b""
            for _ in range(100):
                try:
                    got += os.read(master, 100)
                except BlockingIOError:
                    pass
                if got.endswith(b"\x00"):
                    break
                await asyncio.sleep(0.01)
            assert got == b"to the board\x00"
            os.write(master, b"to the node\x00")
            assert await asyncio.wait_for(reader.readuntil(b"\x00"), 2.0) == b"to the node\x00"
            # A second client on the same UART would corrupt both sessions: refused.
            r2, w2 = await asyncio.open_connection("127.0.0.1", relay.port)
            assert await asyncio.wait_for(r2.read(), 2.0) == b""
            assert relay.refused == 1
            w2.close()
            writer.close()
            await writer.wait_closed()
            # Once the first client hangs up, the port is free again.
            for _ in range(50):
                if not relay._busy:
                    break
                await asyncio.sleep(0.02)
            r3, w3 = await asyncio.open_connection("127.0.0.1", relay.port)
            os.write(master, b"again\x00")
            assert await asyncio.wait_for(r3.readuntil(b"\x00"), 2.0) == b"again\x00"
            w3.close()
    finally:
        os.close(master)
        os.close(slave)


def _tcp_board(tmp_path: Path, *extra: str) -> tuple[ManagedProcess, str, str]:
    board = ManagedProcess([sys.executable, "-m", "firmware_sim.cli", "--link", str(tmp_path / "b.tty"),
                            "--hil", str(tmp_path / "h.tty"), "--link-tcp", "0", "--hil-tcp", "0", *extra],
                           name="board", log_dir=tmp_path)
    board.start()
    line = board.wait_for_line(r"umbra-board: board .*", 60).group(0)
    link = re.search(r"link also at (socket://\S+?)(,|$)", line)
    hil = re.search(r"HIL also at (socket://\S+?)(,|$)", line)
    assert link and hil, line
    return board, link.group(1), hil.group(1)


async def test_conformance_passes_over_tcp(tmp_path):
    board, link, hil = _tcp_board(tmp_path, "--rate", "10", "--seed", "3", "--watchdog", "1.5")
    try:
        results = await run_conformance(link, hil=hil)
    finally:
        board.stop()
    assert all(r.ok for r in results), format_results(results)
    assert not any(r.skipped for r in results)


async def test_a_bench_attaches_to_a_board_served_over_tcp(tmp_path):
    # The harness starts only the node and the broker; the board is "already there".
    board, link, hil = _tcp_board(tmp_path, "--rate", "1", "--seed", "1", "--orbit", "sso-dawn-dusk")
    try:
        bench = parse_bench({"board": {"kind": "port", "port": link, "hil": hil}}, "tcp-bench")
        result = await run_scenario(library()["nominal-sso"], bench, run_dir=tmp_path / "run", quick=True)
        assert board.running  # attached to, never stopped by the harness
    finally:
        board.stop()
    assert not result.error, result.error
    assert result.verdict == "pass", [(o.metric, o.value) for o in result.failed()]
    assert result.metrics["board_time_s"] >= 0.95 * result.duration_s
    assert result.metrics["telemetry_packets"] > 0


@pytest.mark.parametrize(("args", "text"), [
    (["--link-tcp", "host:port"], "--link-tcp: 'host:port' is not [HOST:]PORT"),
    (["--link-tcp", "70000"], "--link-tcp: '70000' is not [HOST:]PORT"),
    (["--hil-tcp", "0"], "--hil-tcp: serves the HIL port, so --hil is needed too"),
])  # fmt: skip
def test_bad_tcp_endpoints_are_refused_by_name(tmp_path, capsys, args, text):
    from firmware_sim.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--link", str(tmp_path / "b.tty"), *args])
    assert exc.value.code == 2
    assert text in capsys.readouterr().err
