"""Process jobs under the node's runner (node/jobs/runner.py): real processes, a real store,
real signals.  The answer of node.jobs.example_job after kills must equal an uninterrupted
run's; no job process may outlive a killed node."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from node.errors import ConfigError
from node.jobs.example_job import compute
from node.jobs.model import Job, parse_jobs
from node.jobs.policy import IntervalEstimator, PolicyConfig
from node.jobs.runner import ProcessJobRunner
from node.jobs.store import AsyncCheckpointStore, CheckpointStore

HERE = Path(__file__).resolve().parent
STEPS, WORK = 600, 8000  # a few seconds of hashing: long enough to be killed


def example(out: Path, steps: int = STEPS) -> tuple[str, ...]:
    return (sys.executable, "-m", "node.jobs.example_job", "--steps", str(steps), "--work", str(WORK),
            "--output", str(out), "--progress-every", "10")


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, severity: int, text: str, data: dict[str, Any]) -> None:
        self.seen.append((kind, {**data, "text": text}))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.seen]

    async def wait(self, kind: str, count: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.kinds().count(kind) < count:
            if time.monotonic() >= deadline:  # every event, with its data: why it never came
                raise AssertionError(f"no {count}× {kind} in {timeout:g} s; events: {self.seen}")
            await asyncio.sleep(0.02)


def runner(tmp_path: Path, jobs: list[Job], events: Events, store: CheckpointStore, **kw: Any) -> ProcessJobRunner:
    estimator = IntervalEstimator(PolicyConfig(min_interval_s=0.2, max_interval_s=0.2, prior_cost_s=0.01),
                                  clock=time.monotonic)
    return ProcessJobRunner(jobs, store=AsyncCheckpointStore(store), staging_root=tmp_path / "staging",
                            run_dir=tmp_path / "run", estimator=estimator, on_event=events,
                            backoff_s=0.05, stop_timeout_s=5.0, **kw)


async def test_a_job_runs_on_its_gpus_with_their_devices_visible(tmp_path: Path) -> None:
    seen = tmp_path / "env.txt"
    script = (f"import os; open({str(seen)!r}, 'w').write(os.environ['CUDA_VISIBLE_DEVICES'] + ' ' + "
              "os.environ['NVIDIA_VISIBLE_DEVICES'] + ' ' + os.environ['MY_FLAG']); "
              "fd = int(os.environ['UMBRA_CONTROL_FD']); os.write(fd, b'READY\\nDONE 1\\n')")
    job = Job(id="envjob", gpus=(1, 3), command=(sys.executable, "-c", script), env=(("MY_FLAG", "on"),))
    events = Events()
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with runner(tmp_path, [job], events, store) as r:
            await events.wait("job_finished")
            assert r.telemetry()["envjob"]["state"] == "finished"
    assert seen.read_text() == "1,3 1,3 on"


@pytest.mark.timeout(120)
async def test_a_job_killed_again_and_again_gives_the_uninterrupted_answer(tmp_path: Path) -> None:
    out = tmp_path / "answer.txt"
    job = Job(id="chain", gpus=(0,), command=example(out), max_crashes=20)
    events = Events()
    rng = random.Random(7)
    with CheckpointStore(tmp_path / "ckpt", keep=2) as store:
        async with runner(tmp_path, [job], events, store) as r:
            for kill in range(4):
                await events.wait("job_started", kill + 1)
                await asyncio.sleep(rng.uniform(0.3, 0.8))
                if "job_finished" in events.kinds():
                    break
                os.kill(r.telemetry()["chain"]["pid"], signal.SIGKILL)  # a crash, as the job sees it
            await events.wait("job_finished", timeout=90)
            resumed = [d["resumed_from"] for k, d in events.seen if k == "job_started"]
    assert out.read_text().strip() == compute("umbra", STEPS, WORK)
    assert events.kinds().count("job_crashed") >= 1 and any(resumed[1:]), resumed


async def test_a_job_that_keeps_crashing_is_failed_and_can_be_resumed(tmp_path: Path) -> None:
    job = Job(id="broken", gpus=(0,), command=(sys.executable, "-c", "raise SystemExit(3)"), max_crashes=3)
    events = Events()
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with runner(tmp_path, [job], events, store) as r:
            await events.wait("job_failed")
            await asyncio.sleep(0.3)
            assert events.kinds().count("job_started") == 3  # no fourth try on its own
            assert r.telemetry()["broken"]["state"] == "failed"
            r.resume("broken")
            await events.wait("job_started", 4)


async def test_pause_resume_and_cancel_by_ground(tmp_path: Path) -> None:
    out = tmp_path / "answer.txt"
    job = Job(id="long", gpus=(0,), command=example(out, steps=100_000))
    events = Events()
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with runner(tmp_path, [job], events, store) as r:
            await events.wait("job_started")
            await asyncio.sleep(0.5)
            r.pause("long")
            await events.wait("job_stopped")
            saved = store.latest("long")
            assert saved is not None and saved.progress > 0  # the final checkpoint
            assert r.telemetry()["long"]["pid"] == 0 or r.telemetry()["long"]["state"] == "paused"
            r.resume("long")
            await events.wait("job_started", 2)
            (_, second) = [d for k, d in events.seen if k == "job_started"]
            assert second["resumed_from"] == saved.seq
            r.checkpoint("long")
            await asyncio.sleep(0.5)
            assert store.latest("long").seq > saved.seq  # type: ignore[union-attr]
            r.cancel("long")
            await events.wait("job_cancelled")
    assert not out.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _start_node(root: Path, job_id: str, command: list[str]) -> tuple[subprocess.Popen[str], int]:
    node = subprocess.Popen([sys.executable, str(HERE / "jobnode.py"), str(root), job_id, "--", *command],
                            stdout=subprocess.PIPE, text=True, cwd=HERE.parent,
                            env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    assert node.stdout is not None
    line = node.stdout.readline()
    assert line.startswith("started "), line
    return node, int(line.split()[1])


@pytest.mark.timeout(180)
def test_ten_node_kills_leave_the_answer_of_an_uninterrupted_run(tmp_path: Path) -> None:
    out = tmp_path / "answer.txt"
    rng = random.Random(11)
    kills = 0
    for _ in range(10):
        node, job_pid = _start_node(tmp_path, "chain", list(example(out, steps=2000)))
        time.sleep(rng.uniform(0.2, 0.6))
        if out.exists():
            break
        node.kill()  # SIGKILL of the node: no chance to stop its job
        node.wait()
        kills += 1
        assert _wait_gone(job_pid), "the job outlived its node"
    assert kills == 10, f"the job finished after {kills} kills: make it longer"
    node, _ = _start_node(tmp_path, "chain", list(example(out, steps=2000)))
    assert node.wait(timeout=120) == 0
    assert out.read_text().strip() == compute("umbra", 2000, WORK)


GRANDCHILD = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[1], "w").write(str(child.pid))
fd = int(os.environ["UMBRA_CONTROL_FD"]); os.write(fd, b"READY\\n")
time.sleep(300)
"""


def test_a_child_that_escapes_the_killed_node_is_ended_at_the_next_start(tmp_path: Path) -> None:
    script = tmp_path / "forker.py"
    script.write_text(GRANDCHILD)
    pid_file = tmp_path / "grandchild.pid"
    command = [sys.executable, str(script), str(pid_file)]
    node, job_pid = _start_node(tmp_path, "forker", command)
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    node.kill()
    node.wait()
    assert _wait_gone(job_pid)  # the job itself died with the node (PR_SET_PDEATHSIG)
    assert _alive(grandchild)  # its child did not: it is in the job's process group
    pid_file.unlink()
    node, _ = _start_node(tmp_path, "forker", command)  # the next node ends it first
    try:
        assert _wait_gone(grandchild)
    finally:
        node.kill()
        node.wait()


async def test_when_a_job_exits_its_leftover_children_are_ended(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = ("import os, subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(300)']); open({str(pid_file)!r}, 'w').write(str(c.pid)); "
              "os.write(int(os.environ['UMBRA_CONTROL_FD']), b'READY\\nDONE 1\\n')")
    job = Job(id="leaver", gpus=(0,), command=(sys.executable, "-c", script))
    events = Events()
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with runner(tmp_path, [job], events, store):
            await events.wait("job_finished")
    assert not _alive(int(pid_file.read_text()))


def test_job_configuration_is_checked(tmp_path: Path) -> None:
    ok = parse_jobs([{"id": "a", "gpus": [0, 1], "command": [sys.executable, "-V"], "env": {"X": "1"},
                      "cwd": str(tmp_path), "max_crashes": 5}])
    assert ok[0].env == (("X", "1"),) and ok[0].cwd == str(tmp_path) and ok[0].max_crashes == 5
    bad = [
        ([{"id": "a", "command": ["no-such-program-umbra"]}], "jobs[0].command"),
        ([{"id": "a", "gpus": [0], "command": [sys.executable]},
          {"id": "b", "gpus": [0], "command": [sys.executable]}], "jobs[1].gpus"),
        ([{"id": "a", "command": [sys.executable], "env": {"CUDA_VISIBLE_DEVICES": "7"}}], "jobs[0].env"),
        ([{"id": "a", "command": [sys.executable], "cwd": str(tmp_path / "missing")}], "jobs[0].cwd"),
    ]
    for raw, key in bad:
        with pytest.raises(ConfigError) as err:
            parse_jobs(raw)
        assert err.value.key.startswith(key), (raw, err.value)


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_umbra_node_runs_a_configured_job_and_reports_it(mosquitto, tmp_path: Path) -> None:
    """`[[jobs]]` in the node's config: the real node starts it on its GPU, checkpoints it,
    reports it in housekeeping, and the job's answer is the uninterrupted one."""
    import aiomqtt

    from hil.bench import LocalBench
    from node.bus.payloads import Housekeeping, Leaf, topic

    out = tmp_path / "answer.txt"
    command = ", ".join(f'"{c}"' for c in example(out, steps=1200))
    config = tmp_path / "node.toml"
    config.write_text(f'[checkpoints]\nmin_interval_s = 1.0\nmax_interval_s = 1.0\nprior_cost_s = 0.01\n\n'
                      f'[[jobs]]\nid = "chain"\ngpus = [1]\ncommand = [{command}]\n')
    bench = LocalBench(workdir=tmp_path / "bench", mqtt_host=mosquitto.host, mqtt_port=mosquitto.port,
                       node_id="jobs-e2e", gpus=2, hk_rate_hz=5.0, node_args=("--config", str(config)))
    seen: list[dict[str, Any]] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="jobs-e2e-ground") as ground:
        await ground.subscribe(topic("jobs-e2e", Leaf.HK), qos=1)
        bench.start()
        try:
            async with asyncio.timeout(90):
                async for m in ground.messages:
                    hk = Housekeeping.from_wire(bytes(m.payload))  # type: ignore[arg-type]
                    job = hk.jobs.get("process", {}).get("chain")
                    if job:
                        seen.append(job)
                        if job["state"] == "finished":
                            break
        finally:
            bench.stop()
    assert out.read_text().strip() == compute("umbra", 1200, WORK)
    assert any(j["state"] == "running" and j["gpus"] == [1] and j["pid"] > 0 for j in seen)
    assert max(j["checkpoint_seq"] for j in seen) >= 1  # checkpointed on its interval
    logs = (tmp_path / "bench").rglob("chain.log")
    assert any(p.read_text().strip() == compute("umbra", 1200, WORK) for p in logs)


async def test_a_gpu_fault_restarts_its_job_from_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "answer.txt"
    jobs = [Job(id="on0", gpus=(0,), command=example(out)),
            Job(id="on1", gpus=(1,), command=example(tmp_path / "other.txt", steps=100_000))]
    events = Events()
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with runner(tmp_path, jobs, events, store) as r:
            await events.wait("job_started", 2)
            await asyncio.sleep(0.6)
            other_pid = r.telemetry()["on1"]["pid"]
            r.gpu_fault(0, "reported an Xid error")
            await events.wait("job_gpu_fault")
            await events.wait("job_started", 3)
            await events.wait("job_finished", timeout=60)
            assert r.telemetry()["on1"]["pid"] == other_pid  # the other GPU's job ran on
            assert r.telemetry()["on0"]["restarts"] == 1
    assert "job_crashed" not in events.kinds()  # the node's own doing, not the job's
    restarted = [d for k, d in events.seen if k == "job_started" and d["job"] == "on0"]
    assert restarted[-1]["resumed_from"] >= 1
    assert out.read_text().strip() == compute("umbra", STEPS, WORK)


@pytest.mark.timeout(120)
async def test_a_numpy_training_loop_killed_and_paused_ends_with_the_same_weights(tmp_path: Path) -> None:
    """node/jobs/train_numpy.py, written with node/jobs/jobkit.py: bit-identical weights."""
    from node.jobs import train_numpy

    steps = 20_000
    alone = tmp_path / "alone.txt"
    assert train_numpy.main(["--steps", str(steps), "--output", str(alone)]) == 0  # no node: no-ops
    out = tmp_path / "under-umbra.txt"
    job = Job(id="mlp", gpus=(0,), command=(sys.executable, "-m", "node.jobs.train_numpy", "--steps", str(steps),
                                          "--output", str(out)), max_crashes=20)
    events = Events()
    rng = random.Random(3)
    with CheckpointStore(tmp_path / "ckpt", keep=2) as store:
        async with runner(tmp_path, [job], events, store) as r:
            for n in range(3):
                await events.wait("job_started", n + 1)
                await asyncio.sleep(rng.uniform(0.4, 0.9))
                os.kill(r.telemetry()["mlp"]["pid"], signal.SIGKILL)
            await events.wait("job_started", 4)
            await asyncio.sleep(0.5)
            r.pause("mlp")  # SIGTERM: the loop saves at its next safe point and exits
            await events.wait("job_stopped")
            r.resume("mlp")
            await events.wait("job_finished", timeout=90)
    resumed = [d["resumed_from"] for k, d in events.seen if k == "job_started"]
    assert sum(1 for x in resumed if x) >= 2, resumed
    assert out.read_text() == alone.read_text()


def test_jobkit_without_a_node_does_nothing_and_under_one_speaks_the_protocol(tmp_path: Path, monkeypatch) -> None:
    from node.jobs.jobkit import Checkpointer

    for name in ("UMBRA_CONTROL_FD", "UMBRA_CHECKPOINT_DIR", "UMBRA_RESTORE_FROM"):
        monkeypatch.delenv(name, raising=False)
    alone = Checkpointer()
    assert not alone.under_node and alone.restore() is None and not alone.due
    alone.ready(), alone.save(b"x", progress=1), alone.done(1)  # no-ops
    read_fd, write_fd = os.pipe()
    (tmp_path / "staging").mkdir()
    (tmp_path / "from.bin").write_bytes(b"resume me")
    monkeypatch.setenv("UMBRA_CONTROL_FD", str(write_fd))
    monkeypatch.setenv("UMBRA_CHECKPOINT_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("UMBRA_RESTORE_FROM", str(tmp_path / "from.bin"))
    monkeypatch.setenv("UMBRA_RESTORE_PROGRESS", "4.0")
    old = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    try:
        ck = Checkpointer(progress_every_s=0.0)
        assert ck.restore() == b"resume me" and ck.restored_progress == 4.0
        ck.ready()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert ck.due and not ck.stopping
        ck.save(b"state", progress=5)
        assert not ck.due
        ck.progress(6)
        ck.done(7)
        os.close(write_fd)
        lines = os.read(read_fd, 4096).decode().splitlines()
        assert lines == ["READY", "CHECKPOINT ckpt-00000001.bin 5.0", "PROGRESS 6.0", "DONE 7.0"]
        assert (tmp_path / "staging" / "ckpt-00000001.bin").read_bytes() == b"state"
        assert [p.name for p in (tmp_path / "staging").iterdir()] == ["ckpt-00000001.bin"]
    finally:
        signal.signal(signal.SIGUSR1, old[0])
        signal.signal(signal.SIGTERM, old[1])
        os.close(read_fd)


async def test_a_shed_gpu_stops_its_job_with_a_final_checkpoint_and_resumes_it(tmp_path: Path) -> None:
    jobs = [Job(id="pair", gpus=(0, 1), command=example(tmp_path / "a.txt", steps=100_000)),
            Job(id="solo", gpus=(2,), command=example(tmp_path / "b.txt", steps=100_000))]
    events = Events()
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with runner(tmp_path, jobs, events, store) as r:
            await events.wait("job_started", 2)
            await asyncio.sleep(0.4)
            r.power_off(1, "is being shed")
            await events.wait("job_stopped")
            assert store.latest("pair") is not None and r.telemetry()["solo"]["pid"] > 0
            r.pause("pair")  # ground's wish while it is off: not undone by the power
            r.power_on(1)
            await asyncio.sleep(0.3)
            assert events.kinds().count("job_started") == 2
            r.resume("pair")
            await events.wait("job_started", 3)
            r.power_off(0, "is being shed")
            r.power_off(1, "is being shed")
            await events.wait("job_stopped", 2)
            r.power_on(0)  # GPU 1 still off: the two-GPU job waits
            await asyncio.sleep(0.3)
            assert events.kinds().count("job_started") == 3
            r.power_on(1)
            await events.wait("job_power_on")
            await events.wait("job_started", 4)


async def test_checkpoints_for_a_hot_gpu_are_not_taken_back_to_back(tmp_path: Path) -> None:
    job = Job(id="hot", gpus=(0,), command=example(tmp_path / "a.txt", steps=100_000))
    events = Events()
    slow = IntervalEstimator(PolicyConfig(min_interval_s=60.0, max_interval_s=60.0, prior_cost_s=0.01),
                             clock=time.monotonic)
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with ProcessJobRunner([job], store=AsyncCheckpointStore(store), staging_root=tmp_path / "s",
                                    run_dir=tmp_path / "run", estimator=slow, on_event=events,
                                    stop_timeout_s=5.0) as r:
            await events.wait("job_started")
            await asyncio.sleep(6.5)  # past the gap: max(1 s, a tenth of the 60 s interval)
            for _ in range(5):
                r.checkpoint_gpu(0, "heading for the thermal limit")
                await asyncio.sleep(0.3)
            assert len(store.checkpoints("hot")) == 1


READY = "import os; fd = int(os.environ['UMBRA_CONTROL_FD']); os.write(fd, b'READY\\n'); "


@pytest.mark.parametrize(("name", "script", "expect"), [
    ("flood", READY + "exec('while True: os.write(fd, b\"PROGRESS 1\\\\n\")')", "job_failed"),
    ("quits", READY + "raise SystemExit(0)", "job_failed"),  # exit 0 without DONE: a crash
])
async def test_misbehaving_jobs_end_as_crashes_and_then_failed(tmp_path: Path, name: str, script: str,
                                                              expect: str) -> None:
    job = Job(id=name, gpus=(0,), command=(sys.executable, "-c", script), max_crashes=2)
    events = Events()
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with runner(tmp_path, [job], events, store) as r:
            await events.wait(expect, timeout=30)
            assert r.telemetry()[name]["state"] == "failed"
    assert events.kinds().count("job_crashed") == 1
    if name == "flood":
        assert any(k == "job_protocol" for k in events.kinds())


async def test_a_job_that_never_says_ready_runs_on_and_its_checkpoints_fail_loudly(tmp_path: Path) -> None:
    job = Job(id="mute", gpus=(0,), command=(sys.executable, "-c", "import time; time.sleep(60)"))
    events = Events()
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with runner(tmp_path, [job], events, store, ready_timeout_s=0.3) as r:
            await events.wait("job_started")
            pid = r.telemetry()["mute"]["pid"]
            await events.wait("job_checkpoint_failed", timeout=10)
            assert r.telemetry()["mute"]["pid"] == pid  # not restarted: it may just be slow
            r.cancel("mute")
            await events.wait("job_cancelled")


async def test_a_job_that_ignores_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    script = READY + "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    job = Job(id="stubborn", gpus=(0,), command=(sys.executable, "-c", script))
    events = Events()
    with CheckpointStore(tmp_path / "ckpt") as store:
        r = ProcessJobRunner([job], store=AsyncCheckpointStore(store), staging_root=tmp_path / "s",
                             run_dir=tmp_path / "run", on_event=events, stop_timeout_s=1.0)
        async with r:
            await events.wait("job_started")
            pid = r.telemetry()["stubborn"]["pid"]
            await asyncio.sleep(0.3)
            started = time.monotonic()
            r.pause("stubborn")
            await events.wait("job_stopped", timeout=10)
            assert 0.9 <= time.monotonic() - started < 5.0
    assert not _alive(pid)


@pytest.mark.timeout(180)
async def test_a_jax_training_loop_killed_twice_ends_with_the_same_parameters(tmp_path: Path) -> None:
    """node/jobs/train_jax.py on CPU (jax from PyPI, installed by `make test`)."""
    await _killed_twice(tmp_path, "train_jax", 6000)


@pytest.mark.timeout(300)
async def test_a_pytorch_training_loop_killed_twice_ends_with_the_same_parameters(tmp_path: Path) -> None:
    """node/jobs/train_torch.py, where PyTorch is installed (not by `make test`: several GB of
    CUDA libraries); on the job's GPU when one is visible, else on the CPU."""
    pytest.importorskip("torch")
    await _killed_twice(tmp_path, "train_torch", 6000)


async def _killed_twice(tmp_path: Path, module: str, steps: int) -> None:
    command = (sys.executable, "-m", f"node.jobs.{module}", "--steps", str(steps))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UMBRA_")}
    alone = await asyncio.to_thread(lambda: subprocess.run(
        [*command], capture_output=True, text=True, check=True, timeout=120, env=env).stdout)
    out = tmp_path / "under-umbra.txt"
    job = Job(id="train", gpus=(0,), command=(*command, "--output", str(out)), max_crashes=20)
    events = Events()
    with CheckpointStore(tmp_path / "ckpt", keep=2) as store:
        async with runner(tmp_path, [job], events, store) as r:
            for n in range(2):
                await events.wait("job_started", n + 1)
                # After jax's start-up (about 1.5 s here): some steps done and checkpointed.
                await _until_progress(r, "train", min_progress=1 + n * 1500, timeout=60)
                os.kill(r.telemetry()["train"]["pid"], signal.SIGKILL)
            await events.wait("job_finished", timeout=150)
    resumed = [d["resumed_from"] for k, d in events.seen if k == "job_started"]
    assert all(resumed[1:]), resumed
    assert out.read_text() == alone


async def _until_progress(r: ProcessJobRunner, job_id: str, *, min_progress: float, timeout: float) -> None:
    await _until(lambda: r.telemetry()[job_id]["checkpoint_seq"] and r.telemetry()[job_id]["progress"] >= min_progress,
                 timeout=timeout, why=r.telemetry)


# --- a disk that fills mid-checkpoint -----------------------------------------------------------

#: A job that answers each checkpoint request with a checkpoint of the next size in argv[2]
#: (comma-separated bytes, the last repeated; the i-th filled with chr(65 + i)) and prints
#: each ``save`` result.  argv[1]: a file-size limit for itself (0: none).
SAVER_JOB = """
import resource, sys, time
from node.jobs.jobkit import Checkpointer
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: EFBIG
sizes = [int(n) for n in sys.argv[2].split(",")]
ckpt = Checkpointer(progress_every_s=0.05)
ckpt.restore()
ckpt.ready()
step = i = 0
while True:
    time.sleep(0.01)
    step += 1
    ckpt.progress(step)
    if ckpt.due:
        data = bytes([65 + i % 26]) * sizes[min(i, len(sizes) - 1)]
        print("saved" if ckpt.save(data, progress=step) else "refused", flush=True)
        i += 1
        if ckpt.stopping:
            break
"""


def saver(*sizes: int, limit: int = 0) -> tuple[str, ...]:
    return (sys.executable, "-c", SAVER_JOB, str(limit), ",".join(str(n) for n in sizes))


#: The disk tests' checkpoints: the second (2 MB) does not fit.
DISK_SIZES = (50_000, 2_000_000, 50_000)


def _tmpfs(path: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` at ``path`` (a real disk that fills); False where not allowed."""
    path.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False)
    return done.returncode == 0


async def _fill_the_disk(root: Path, job: Job) -> None:
    events = Events()
    estimator = IntervalEstimator(PolicyConfig(min_interval_s=3600, max_interval_s=3600, prior_cost_s=0.01),
                                  clock=time.monotonic)
    with CheckpointStore(root / "ckpt", keep=3) as store:
        async with ProcessJobRunner([job], store=AsyncCheckpointStore(store), staging_root=root / "staging",
                                    run_dir=root / "run", estimator=estimator, on_event=events,
                                    stop_timeout_s=5.0, log_dir=root / "logs") as r:
            await events.wait("job_started")
            await _until(lambda: r.telemetry()[job.id]["progress"] > 0)
            pid = r.telemetry()[job.id]["pid"]
            r.checkpoint(job.id)
            await _until(lambda: r.telemetry()[job.id]["checkpoint_seq"] == 1)
            r.checkpoint(job.id)  # 2 MB: the disk is full
            await events.wait("job_checkpoint_failed")
            assert r.telemetry()[job.id]["pid"] == pid, "the job runs on"
            assert r.telemetry()[job.id]["state"] == "running"
            first = store.restore(job.id)
            assert first is not None and first.seq == 1, "the earlier checkpoint is intact"
            assert first.data_path.read_bytes() == b"A" * 50_000
            assert not [p for p in (root / "staging" / job.id).iterdir()], "no partial file left"
            r.checkpoint(job.id)  # it fits again
            await _until(lambda: r.telemetry()[job.id]["checkpoint_seq"] == 2)
            newest = store.restore(job.id)
            assert newest is not None and newest.data_path.read_bytes() == b"C" * 50_000
            assert events.kinds().count("job_crashed") == 0
    assert (root / "logs" / f"{job.id}.log").read_text().split()[:3] == ["saved", "refused", "saved"]


async def _until(cond: Any, timeout: float = 30.0, why: Any = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, why()
        await asyncio.sleep(0.02)


async def test_a_file_size_limit_mid_checkpoint_is_reported_and_loses_nothing(tmp_path: Path) -> None:
    """The write fails with EFBIG (RLIMIT_FSIZE): the same path as a full disk, everywhere."""
    job = Job(id="disk", gpus=(0,), command=saver(*DISK_SIZES, limit=1_000_000))
    await _fill_the_disk(tmp_path, job)


async def test_a_full_disk_mid_checkpoint_is_reported_and_loses_nothing(tmp_path: Path) -> None:
    """A real 1 MiB tmpfs holds the store and the staging directory: ENOSPC from the kernel."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("mounting a tmpfs needs root (the file-size-limit test covers the same path)")
    try:
        job = Job(id="disk", gpus=(0,), command=saver(*DISK_SIZES))
        await _fill_the_disk(disk, job)
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(disk)], check=False)


# --- the policy: per-job intervals, the first cost, the baseline's fixed interval ----------------

class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_a_jobs_interval_scales_with_its_share_of_the_gpus_and_the_first_comes_early(tmp_path: Path) -> None:
    from node.jobs.manager import DalyWithForesight

    clock = Clock()
    config = PolicyConfig(prior_cost_s=10.0, prior_mtbf_s=1000.0, min_interval_s=5.0, max_interval_s=1e6)
    jobs = [Job(id="one", gpus=(0,), command=saver(1)),
            Job(id="four", gpus=(1, 2, 3, 4), command=saver(1))]
    events = Events()
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with ProcessJobRunner(jobs, store=AsyncCheckpointStore(store), staging_root=tmp_path / "staging",
                                    run_dir=tmp_path / "run", estimator=IntervalEstimator(config, clock=clock),
                                    policy=DalyWithForesight(), on_event=events, clock=clock) as r:
            await events.wait("job_started", 2)
            r.gpu_count = 8
            est = r.estimator
            assert r.interval_s("one") == pytest.approx(est.interval_s(8.0))
            assert r.interval_s("four") == pytest.approx(est.interval_s(2.0))
            assert r.interval_s("one") > r.interval_s("four") > est.interval_s()
            # No cost measured yet: the first checkpoint comes after min_interval_s, whatever Daly says.
            assert r.telemetry()["one"]["interval_s"] == 5.0
            await _until(lambda: r.telemetry()["one"]["progress"] > 0 and r.telemetry()["four"]["progress"] > 0)
            clock.t = 5.0
            r.tick()
            await _until(lambda: r.telemetry()["one"]["checkpoint_seq"] == 1)
            assert est.measured >= 1
            assert r.telemetry()["one"]["interval_s"] == pytest.approx(r.interval_s("one"))
            # A fault on a GPU no job uses still counts towards the node's fault rate.
            before = est.mtbf_s
            r.gpu_fault(7, "reported an Xid error")
            assert est.mtbf_s < before
            assert "job_gpu_fault" not in events.kinds()


async def test_the_baseline_keeps_its_fixed_interval_and_foresees_nothing(tmp_path: Path) -> None:
    from node.jobs.manager import FixedInterval

    clock = Clock()
    job = Job(id="base", gpus=(0,), command=saver(1))
    events = Events()
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with ProcessJobRunner([job], store=AsyncCheckpointStore(store), staging_root=tmp_path / "staging",
                                    run_dir=tmp_path / "run", estimator=IntervalEstimator(clock=clock),
                                    policy=FixedInterval(1800.0), on_event=events, clock=clock) as r:
            await events.wait("job_started")
            await _until(lambda: r.telemetry()["base"]["progress"] > 0)
            assert r.interval_s("base") == 1800.0 and r.telemetry()["base"]["interval_s"] == 1800.0
            r.checkpoint_all("eclipse ahead")  # foresight: not the baseline's
            r.checkpoint_gpu(0, "heading for the thermal limit")
            clock.t = 1799.0
            r.tick()
            await asyncio.sleep(0.5)
            assert r.telemetry()["base"]["checkpoint_seq"] == 0
            clock.t = 1800.0
            r.tick()
            await _until(lambda: r.telemetry()["base"]["checkpoint_seq"] == 1)
            clock.t = 1850.0
            r.gpu_fault(0, "reported an Xid error")
            (fault,) = [d for k, d in events.seen if k == "job_gpu_fault"]
            assert fault["lost_s"] == 50.0 and fault["interval_s"] == 1800.0


async def test_a_held_job_waits_for_ground_and_a_checkpoint_over_budget_is_refused(tmp_path: Path) -> None:
    (job,) = parse_jobs([{"id": "held", "gpus": [0], "command": list(saver(100, 5000, 100)),
                          "autostart": False, "max_checkpoint_bytes": 1000}])
    events = Events()
    estimator = IntervalEstimator(PolicyConfig(min_interval_s=3600, max_interval_s=3600), clock=time.monotonic)
    with CheckpointStore(tmp_path / "ckpt") as store:
        async with ProcessJobRunner([job], store=AsyncCheckpointStore(store), staging_root=tmp_path / "staging",
                                    run_dir=tmp_path / "run", estimator=estimator, on_event=events) as r:
            await asyncio.sleep(0.5)
            assert "job_started" not in events.kinds() and r.telemetry()["held"]["state"] == "held"
            r.resume("held")  # ground starts it
            await events.wait("job_started")
            await _until(lambda: r.telemetry()["held"]["progress"] > 0)
            r.checkpoint("held")
            await _until(lambda: r.telemetry()["held"]["checkpoint_seq"] == 1)
            r.checkpoint("held")  # 5000 bytes: over its budget of 1000
            await events.wait("job_checkpoint_failed")
            assert r.telemetry()["held"]["checkpoint_seq"] == 1 and r.telemetry()["held"]["state"] == "running"
            assert not list((tmp_path / "staging" / "held").iterdir()), "the refused file takes no room"
            info = store.restore("held")
            assert info is not None and info.seq == 1 and info.size == 100
