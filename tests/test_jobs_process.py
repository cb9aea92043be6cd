"""Process jobs: the example job under ProcessJob — checkpoint, kill -9, resume, stop."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.jobs import (
    AsyncCheckpointStore,
    CheckpointStore,
    Job,
    JobProtocolError,
    JobState,
    ProcessEvent,
    ProcessEventKind,
    ProcessJob,
    example_job,
)

STEPS, WORK, SEED = 3000, 1000, "orbit"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncCheckpointStore]:
    with CheckpointStore(tmp_path / "store", keep=3) as s:
        yield AsyncCheckpointStore(s, max_concurrent=1)


def _job(output: Path, job_id: str = "ex") -> Job:
    return Job(
        id=job_id,
        command=(sys.executable, "-m", "node.jobs.example_job", "--steps", str(STEPS), "--work", str(WORK),
                 "--seed", SEED, "--output", str(output), "--progress-every", "10"),
    )


async def _until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling a job's state
            await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def expected() -> str:
    return example_job.compute(SEED, STEPS, WORK)


def test_state_file_round_trip() -> None:
    state = example_job.encode_state(3, 10, 5, "s", b"\x01" * 32)
    assert example_job.decode_state(state, steps=10, work=5, seed="s") == (3, b"\x01" * 32)
    with pytest.raises(ValueError):
        example_job.decode_state(state, steps=10, work=5, seed="other")
    with pytest.raises(ValueError):
        example_job.decode_state(state[:-1], steps=10, work=5, seed="s")


async def test_uninterrupted_run_finishes(tmp_path: Path, store: AsyncCheckpointStore, expected: str) -> None:
    events: list[ProcessEvent] = []
    async with ProcessJob(_job(tmp_path / "out"), store=store, staging_root=tmp_path / "staging",
                          on_event=events.append) as pj:
        assert await pj.start() is None
        assert await pj.wait() == 0
        assert pj.job.state is JobState.FINISHED and pj.job.progress == STEPS
    assert (tmp_path / "out").read_text().strip() == expected
    kinds = [e.kind for e in events]
    assert kinds[:2] == [ProcessEventKind.STARTED, ProcessEventKind.READY] and kinds[-1] is ProcessEventKind.EXITED


async def test_killed_job_resumes_and_gets_the_same_answer(
    tmp_path: Path, store: AsyncCheckpointStore, expected: str
) -> None:
    events: list[ProcessEvent] = []
    output = tmp_path / "out"
    pj = ProcessJob(_job(output), store=store, staging_root=tmp_path / "staging", on_event=events.append)
    async with pj:
        await pj.start()
        await _until(lambda: pj.job.progress >= 200)
        first = await pj.checkpoint()
        assert first.progress >= 200 and pj.job.state is JobState.RUNNING
        committed = [e for e in events if e.kind is ProcessEventKind.CHECKPOINTED]
        assert len(committed) == 1 and committed[0].cost_s is not None and committed[0].checkpoint == first
        await _until(lambda: pj.job.progress >= first.progress + 100)
        assert await pj.kill() < 0
        assert pj.job.state is JobState.FAILED
        assert not output.exists()

        resumed = await pj.restart()
        assert resumed is not None and resumed.seq == first.seq
        assert pj.job.progress == first.progress and pj.job.state is JobState.RUNNING
        await pj.wait()
        assert pj.job.state is JobState.FINISHED
    starts = [i for i, e in enumerate(events) if e.kind is ProcessEventKind.STARTED]
    second = events[starts[1]]
    assert second.checkpoint is not None and second.checkpoint.seq == first.seq
    # It really resumed: the first progress report of the second run is just past the checkpoint.
    after = next(e.job.progress for e in events[starts[1]:] if e.kind is ProcessEventKind.PROGRESS)
    assert first.progress < after <= first.progress + 10
    assert output.read_text().strip() == expected


async def test_stop_takes_a_final_checkpoint_and_restart_finishes(
    tmp_path: Path, store: AsyncCheckpointStore, expected: str
) -> None:
    output = tmp_path / "out"
    async with ProcessJob(_job(output), store=store, staging_root=tmp_path / "staging") as pj:
        await pj.start()
        await _until(lambda: pj.job.progress >= 100)
        assert await pj.stop() == 0
        assert pj.job.state is JobState.PAUSED
        final = pj.job.last_checkpoint
        assert final is not None and final.progress >= 100
        assert store.store.latest("ex") is not None
        resumed = await pj.restart()
        assert resumed is not None and resumed.progress == final.progress
        await pj.wait()
        assert pj.job.state is JobState.FINISHED
    assert output.read_text().strip() == expected


async def test_job_that_ignores_sigterm_is_killed(tmp_path: Path, store: AsyncCheckpointStore) -> None:
    script = "import signal, time, os\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" \
             "os.write(int(os.environ['UMBRA_CONTROL_FD']), b'READY\\n')\ntime.sleep(60)\n"
    job = Job(id="stubborn", command=(sys.executable, "-c", script))
    events: list[ProcessEvent] = []
    async with ProcessJob(job, store=store, staging_root=tmp_path / "st", stop_timeout_s=0.5,
                          on_event=events.append) as pj:
        await pj.start()
        await _until(lambda: any(e.kind is ProcessEventKind.READY for e in events))
        assert await pj.stop() == -9
        assert pj.job.state is JobState.PAUSED


async def test_bad_checkpoint_paths_are_refused(tmp_path: Path, store: AsyncCheckpointStore) -> None:
    outside = tmp_path / "secret"
    outside.write_text("x")
    script = (
        "import os\nfd = int(os.environ['UMBRA_CONTROL_FD'])\n"
        "open(os.path.join(os.environ['UMBRA_CHECKPOINT_DIR'], 'empty'), 'w').close()\n"
        "os.write(fd, b'READY\\nCHECKPOINT ../../secret 1\\nCHECKPOINT missing 2\\nCHECKPOINT empty 3\\nWHAT\\n')\n"
    )
    events: list[ProcessEvent] = []
    job = Job(id="liar", command=(sys.executable, "-c", script))
    async with ProcessJob(job, store=store, staging_root=tmp_path / "st", on_event=events.append) as pj:
        await pj.start()
        assert await pj.wait() == 0
        assert pj.job.state is JobState.FAILED  # exit without DONE is a failure
    kinds = [e.kind for e in events]
    assert kinds.count(ProcessEventKind.CHECKPOINT_FAILED) == 3
    assert ProcessEventKind.PROTOCOL_ERROR in kinds
    assert outside.exists() and store.store.latest("liar") is None


async def test_checkpoint_of_a_job_that_dies_raises(tmp_path: Path, store: AsyncCheckpointStore) -> None:
    script = "import os, time\nos.write(int(os.environ['UMBRA_CONTROL_FD']), b'READY\\n')\ntime.sleep(0.2)\n"
    job = Job(id="quitter", command=(sys.executable, "-c", script))
    async with ProcessJob(job, store=store, staging_root=tmp_path / "st") as pj:
        await pj.start()
        with pytest.raises(JobProtocolError):
            await pj.checkpoint(timeout=5)


@pytest.mark.parametrize("jobkit", [True, False], ids=["jobkit", "bare"])
async def test_a_checkpoint_request_that_crosses_done_does_not_make_a_crash(tmp_path: Path,
                                                                           store: AsyncCheckpointStore,
                                                                           jobkit: bool) -> None:
    """A job that said DONE is exiting: the node asks for nothing more, and a request already on
    its way (SIGUSR1, whose default action kills) neither kills a jobkit job (it ignores the
    signal from DONE on) nor turns a job killed by it into a crash."""
    if jobkit:
        script = ("import time\nfrom node.jobs.jobkit import Checkpointer\nc = Checkpointer()\nc.ready()\n"
                  "c.done(1.0)\ntime.sleep(1.0)\n")
    else:
        script = ("import os, time\nfd = int(os.environ['UMBRA_CONTROL_FD'])\n"
                  "os.write(fd, b'READY\\nDONE 1.0\\n')\ntime.sleep(1.0)\n")
    events: list[ProcessEvent] = []
    job = Job(id="finisher", command=(sys.executable, "-c", script))
    async with ProcessJob(job, store=store, staging_root=tmp_path / "st", on_event=events.append) as pj:
        await pj.start()
        await _until(lambda: pj.said_done)
        with pytest.raises(JobProtocolError, match="has finished"):
            await pj.checkpoint(timeout=5)  # not asked: nothing is signalled
        pj._signal(__import__("signal").SIGUSR1)  # a request sent just before DONE arrived
        code = await pj.wait()
        assert code == (0 if jobkit else -10)
        assert pj.job.state is JobState.FINISHED
