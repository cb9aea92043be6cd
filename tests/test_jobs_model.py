"""The job model: state table (examples + Hypothesis invariants) and [[jobs]] parsing."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from node.errors import ConfigError
from node.jobs import (
    TRANSITIONS,
    CheckpointConfig,
    CheckpointRef,
    IllegalJobTransition,
    Job,
    JobEvent,
    JobState,
    parse_jobs,
)


def test_life_of_a_job() -> None:
    job = Job(id="a", gpus=(0,))
    job = job.fire(JobEvent.START)
    assert job.state is JobState.RUNNING and job.active
    job = job.fire(JobEvent.CHECKPOINT).with_checkpoint(CheckpointRef(1, 5.0, 10.0, 100, "ab"))
    assert job.state is JobState.CHECKPOINTING
    job = job.fire(JobEvent.CHECKPOINTED).fire(JobEvent.FAIL, "upset")
    assert (job.state, job.reason) == (JobState.FAILED, "upset")
    job = job.fire(JobEvent.START).fire(JobEvent.FINISH)
    assert job.state is JobState.FINISHED and job.last_checkpoint is not None


def test_same_state_is_a_no_op_and_illegal_raises() -> None:
    job = Job(id="a").fire(JobEvent.START)
    assert job.fire(JobEvent.START) is job
    done = job.fire(JobEvent.FINISH)
    with pytest.raises(IllegalJobTransition) as info:
        done.fire(JobEvent.START)
    assert (info.value.state, info.value.event) == ("finished", "start")
    with pytest.raises(IllegalJobTransition):
        Job(id="b").fire(JobEvent.CHECKPOINT)


def test_history_is_bounded() -> None:
    job = Job(id="a", history_limit=3)
    for i in range(5):
        job = job.with_checkpoint(CheckpointRef(i, float(i), 0.0, 1, ""))
    assert [c.seq for c in job.history] == [2, 3, 4]


def test_job_value_validates_itself() -> None:
    for kwargs in ({"id": "../x"}, {"id": "a", "gpus": (0, 0)}, {"id": "a", "work": -1.0}):
        with pytest.raises(ValueError):
            Job(**kwargs)  # type: ignore[arg-type]


class JobInvariants(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.job = Job(id="h")
        self.finished = False

    @rule(event=st.sampled_from(list(JobEvent)))
    def fire(self, event: JobEvent) -> None:
        before = self.job
        allowed = (before.state, event) in TRANSITIONS
        try:
            after = before.fire(event)
        except IllegalJobTransition:
            assert not allowed
            return
        assert allowed and after.state is TRANSITIONS[(before.state, event)]
        if after.state is before.state:
            assert after is before
        self.job = after
        self.finished = self.finished or after.state is JobState.FINISHED

    @invariant()
    def finished_is_final(self) -> None:
        if self.finished:
            assert self.job.state is JobState.FINISHED

    @invariant()
    def fail_and_stop_always_possible_until_finished(self) -> None:
        if self.job.state is not JobState.FINISHED:
            assert (self.job.state, JobEvent.FAIL) in TRANSITIONS
            assert (self.job.state, JobEvent.REQUEUE) in TRANSITIONS

    @invariant()
    def checkpointing_only_from_running(self) -> None:
        for (state, _event), target in TRANSITIONS.items():
            if target is JobState.CHECKPOINTING:
                assert state in (JobState.RUNNING, JobState.CHECKPOINTING)


TestJobInvariants = JobInvariants.TestCase
TestJobInvariants.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_every_non_final_state_can_get_back_to_running() -> None:
    for state in JobState:
        if state is JobState.FINISHED:
            continue
        reachable = {state}
        for _ in range(3):
            reachable |= {t for (s, _e), t in TRANSITIONS.items() if s in reachable}
        assert JobState.RUNNING in reachable


CONFIG = """
[checkpoints]
keep = 4
max_concurrent = 1
prior_mtbf_s = 7200
dir = "/tmp/ckpt"

[[jobs]]
id = "train-a"
priority = 5
gpus = [0, 1]
work = 1e6
checkpoint_bytes = 1073741824

[[jobs]]
id = "example"
command = ["python", "-m", "node.jobs.example_job"]
"""


def test_parse_jobs_and_checkpoint_config() -> None:
    raw = tomllib.loads(CONFIG)
    jobs = parse_jobs(raw["jobs"], source="node.toml")
    assert [j.id for j in jobs] == ["train-a", "example"]
    assert jobs[0].gpus == (0, 1) and jobs[0].priority == 5 and jobs[0].work == 1e6
    assert not jobs[0].is_process and jobs[1].is_process
    assert all(j.state is JobState.QUEUED for j in jobs)
    cfg = CheckpointConfig.from_mapping(raw["checkpoints"], source="node.toml")
    assert cfg.keep == 4 and cfg.max_concurrent == 1 and cfg.policy.prior_mtbf_s == 7200.0
    assert str(cfg.store_dir(__import__("pathlib").Path("/d"))) == "/tmp/ckpt"
    assert parse_jobs(None) == ()


@pytest.mark.parametrize(
    ("jobs", "key"),
    [
        ([{"priority": 1}], "jobs[0].id"),
        ([{"id": "a"}, {"id": "a"}], "jobs[1].id"),
        ([{"id": "a", "gpus": [0, 0]}], "jobs[0].gpus"),
        ([{"id": "a", "gpus": "0"}], "jobs[0].gpus"),
        ([{"id": "a", "priority": 1.5}], "jobs[0].priority"),
        ([{"id": "a", "colour": "red"}], "jobs[0].colour"),
        ([{"id": "a", "command": ["x", 1]}], "jobs[0].command"),
        ([{"id": "a b"}], "jobs[0].id"),
        ({"id": "a"}, "jobs"),
    ],
)
def test_job_errors_name_the_key(jobs: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_jobs(jobs, source="node.toml")
    assert info.value.key == key and info.value.source == "node.toml"
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("values", "key"),
    [({"keep": 0}, "checkpoints.keep"), ({"nope": 1}, "checkpoints.nope"),
     ({"cost_alpha": 2.0}, "checkpoints.cost_alpha"), ({"keep": "3"}, "checkpoints.keep")],
)
def test_checkpoint_config_errors_name_the_key(values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        CheckpointConfig.from_mapping(values, source="node.toml")
    assert info.value.key == key and "node.toml" in str(info.value)
