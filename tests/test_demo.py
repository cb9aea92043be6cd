"""``umbra-hil demo``: live status within a minute, and a clean stop on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes once it is not running.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_demo_shows_status_and_stops_cleanly_on_ctrl_c():
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.cli", "demo", "--speed", "10", "--gpus", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if m := re.search(r"board pid (\d+), node pid (\d+)", line):
                pids = [int(m[1]), int(m[2])]
            if re.search(r"board t=\s*[\d.]+ s\s+\w+\s+link up\s+GPU °C \[(\s*\d+){4}\]", line):
                break
        else:
            pytest.fail("no live status line within 60 s:\n" + "\n".join(lines))
        assert pids, "\n".join(lines)
        assert any("link up" in ln for ln in lines), "\n".join(lines)
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        # Every process the demo started is gone within two seconds of Ctrl-C.
        while any(alive(p) for p in pids) and time.monotonic() - interrupted < 2.0:
            time.sleep(0.05)
        assert not any(alive(p) for p in pids)
        rest, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, rest
        assert "umbra-hil demo: stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
