"""ManagedProcess: ready lines, and a stop that always leaves nothing behind."""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hil.procs import ManagedProcess, ProcessError, ProcessTimeout


def py(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", textwrap.dedent(code)]


def alive(pid: int) -> bool:
    """Is pid a live process (zombies, which nobody may reap in a container, count as dead)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


IGNORE_TERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"

# A child that starts a grandchild, reports its pid, and waits.
PARENT_OF = """
import subprocess, sys, time
{prelude}
g = subprocess.Popen([sys.executable, "-c", {grandchild!r}])
print("grandchild", g.pid, flush=True)
time.sleep(60)
"""


def test_wait_for_line_on_stderr_and_log_files(tmp_path: Path) -> None:
    code = """
        import sys, time
        print("booting")
        time.sleep(0.2)
        print("board ready on /dev/pts/7", file=sys.stderr)
        time.sleep(60)
    """
    with ManagedProcess(py(code), name="board", log_dir=tmp_path) as proc:
        m = proc.wait_for_line(r"ready on (\S+)", timeout=10, stream="stderr")
        assert m.group(1) == "/dev/pts/7"
        assert proc.lines("stdout") == ["booting"]
        with pytest.raises(ProcessTimeout):
            proc.wait_for_line("ready", timeout=0.1, stream="stdout")
    assert (tmp_path / "board.stdout.log").read_text() == "booting\n"
    assert "ready on" in (tmp_path / "board.stderr.log").read_text()


def test_wait_for_line_timeout_is_timeout_error_with_tail() -> None:
    with ManagedProcess(py("print('still warming up'); import time; time.sleep(60)")) as proc:
        with pytest.raises(TimeoutError, match="still warming up"):
            proc.wait_for_line("ready", timeout=0.3)


def test_wait_for_line_when_child_exits_first() -> None:
    with ManagedProcess(py("import sys; print('bad config', file=sys.stderr); sys.exit(3)")) as p:
        with pytest.raises(ProcessError, match="bad config") as info:
            p.wait_for_line("ready", timeout=10)
    assert info.value.returncode == 3
    assert not isinstance(info.value, TimeoutError)


def test_line_printed_just_before_exit_is_found() -> None:
    with ManagedProcess(py("print('done and ready')")) as proc:
        assert proc.wait_for_line("ready", timeout=10)
        assert proc.wait(timeout=10) == 0


def test_stop_sigkills_a_child_that_ignores_sigterm() -> None:
    proc = ManagedProcess(py(IGNORE_TERM + "print('up'); import time; time.sleep(60)")).start()
    proc.wait_for_line("up", timeout=10)
    started = time.monotonic()
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 2.0
    assert not proc.running


def test_stop_is_prompt_for_a_polite_child() -> None:
    proc = ManagedProcess(py("print('up'); import time; time.sleep(60)")).start()
    proc.wait_for_line("up", timeout=10)
    started = time.monotonic()
    assert proc.stop() == -signal.SIGTERM
    assert time.monotonic() - started < 1.0
    assert proc.stop() == -signal.SIGTERM  # again: nothing left to do


@pytest.mark.parametrize("stubborn", ["none", "grandchild", "both"])
def test_grandchildren_die_with_the_child(stubborn: str) -> None:
    grandchild = (IGNORE_TERM if stubborn != "none" else "") + "import time; time.sleep(60)"
    prelude = IGNORE_TERM if stubborn == "both" else ""
    proc = ManagedProcess(py(PARENT_OF.format(prelude=prelude, grandchild=grandchild))).start()
    gpid = int(proc.wait_for_line(r"grandchild (\d+)", timeout=10).group(1))
    assert alive(gpid)
    started = time.monotonic()
    proc.stop(timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert not alive(gpid)


def test_stop_cleans_up_after_a_child_that_already_exited() -> None:
    # The leader is gone, but the grandchild it left behind still belongs to us.
    code = PARENT_OF.replace("time.sleep(60)\n", "").format(
        prelude="", grandchild="import time; time.sleep(60)"
    )
    proc = ManagedProcess(py(code)).start()
    gpid = int(proc.wait_for_line(r"grandchild (\d+)", timeout=10).group(1))
    assert proc.wait(timeout=10) == 0
    assert alive(gpid)
    proc.stop(timeout=0.5)
    assert not alive(gpid)


def test_kill_is_a_crash() -> None:
    proc = ManagedProcess(py("print('up'); import time; time.sleep(60)")).start()
    proc.wait_for_line("up", timeout=10)
    assert proc.kill() == -signal.SIGKILL
    assert proc.returncode == -signal.SIGKILL


def test_restart_and_mark(tmp_path: Path) -> None:
    proc = ManagedProcess(py("print('hello'); import time; time.sleep(60)"), log_dir=tmp_path)
    with proc:
        proc.wait_for_line("hello", timeout=10)
        mark = proc.mark()
        first_pid = proc.pid
    proc.start()
    try:
        proc.wait_for_line("hello", timeout=10, since=mark)
        assert proc.pid != first_pid
        assert proc.lines() == ["hello", "hello"]
    finally:
        proc.stop()
    assert (tmp_path / "python.stdout.log").read_text() == "hello\nhello\n"


def test_env_and_cwd(tmp_path: Path) -> None:
    code = "import os; print(os.environ['UMBRA_TEST'], os.getcwd(), 'PATH' in os.environ)"
    with ManagedProcess(py(code), env={"UMBRA_TEST": "42"}, cwd=tmp_path) as proc:
        assert proc.wait(timeout=10) == 0
    assert proc.lines() == [f"42 {tmp_path} True"]
    bare = ManagedProcess(py(code), env={"UMBRA_TEST": "7"}, inherit_env=False, cwd=tmp_path)
    with bare:
        bare.wait(timeout=10)
    assert bare.lines() == [f"7 {tmp_path} False"]


def test_uncaptured_output_goes_to_log_files(tmp_path: Path) -> None:
    with ManagedProcess(py("print('to file')"), log_dir=tmp_path, capture=False) as proc:
        assert proc.wait(timeout=10) == 0
        with pytest.raises(RuntimeError, match="capture=False"):
            proc.wait_for_line("x")
    assert (tmp_path / "python.stdout.log").read_text() == "to file\n"


def test_send_signal_reaches_only_the_child() -> None:
    code = """
        import time
        try:
            print("up")
            time.sleep(60)
        except KeyboardInterrupt:
            print("bye")
    """
    with ManagedProcess(py(code)) as proc:
        proc.wait_for_line("up", timeout=10)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.lines()[-1] == "bye"


def test_wait_times_out() -> None:
    with ManagedProcess(py("import time; time.sleep(60)")) as proc:
        with pytest.raises(ProcessTimeout):
            proc.wait(timeout=0.1)


async def test_async_context_manager_and_waits() -> None:
    code = """
        import sys, time
        time.sleep(0.1)
        print("listening", file=sys.stderr)
        time.sleep(60)
    """
    async with ManagedProcess(py(code)) as proc:
        await proc.wait_for_line_async("listening", timeout=10)
        pid = proc.pid
        assert pid is not None and alive(pid)
        with pytest.raises(ProcessTimeout):
            await proc.wait_async(timeout=0.1)
    assert not proc.running and not alive(pid)


async def test_async_wait_for_line_reports_exit() -> None:
    async with ManagedProcess(py("raise SystemExit(5)")) as proc:
        with pytest.raises(ProcessError) as info:
            await proc.wait_for_line_async("never", timeout=10)
        assert info.value.returncode == 5
        assert await proc.wait_async(timeout=10) == 5


def test_empty_argv_is_refused() -> None:
    with pytest.raises(ValueError):
        ManagedProcess([])
