"""The simulated-GPU job manager: intervals, foresight, losses, and commits to the store."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import numpy as np
import pytest

from node.jobs.manager import ESTIMATOR_PRIOR, Foresight, SimJobConfig, SimJobManager
from node.jobs.policy import daly_interval
from node.jobs.store import AsyncCheckpointStore, CheckpointStore
from node.link.messages import Sensor
from node.policy import POLICIES

N = 2
COOL = Foresight(hot=np.zeros(N, dtype=bool), eclipse_in_s=math.nan)


def frame(t: float, progress, saved, ckpt: int = 0, eclipse_in: float = -1.0) -> Sensor:
    return Sensor(
        t_board=t, utc=1.7e9 + t, temp_c=(50.0,) * N, power_w=(500.0,) * N, cap_w=(700.0,) * N,
        progress=tuple(float(p) for p in progress), rails=3, solar_w=1.0, battery_soc=0.8, radiator_c=20.0,
        saved=tuple(float(s) for s in saved), ckpt=ckpt, eclipse_in_s=eclipse_in,
    )  # fmt: skip


class Rig:
    def __init__(self, policy: str, store: AsyncCheckpointStore | None = None) -> None:
        self.sent: list[tuple[int, float]] = []
        self.events: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        config = SimJobConfig()
        self.m = SimJobManager(
            checkpoints=POLICIES[policy].make_checkpoints(config), config=config,
            estimator_config=ESTIMATOR_PRIOR, store=store,
            send_checkpoint=lambda g, p: self.sent.append((g, p)),
            event=lambda kind, sev, text, **d: self.events.append(kind),
            spawn=lambda coro: self.tasks.append(asyncio.ensure_future(coro)),
        )  # fmt: skip
        self.m.reset(N, board_keeps_checkpoints=True)


def run_until_checkpoint(rig: Rig, t_end: float, step: float = 10.0) -> float | None:
    t = 0.0
    while t <= t_end:
        rig.m.on_frame(frame(t, (t, t), (0.0, 0.0)), COOL)
        if rig.sent:
            return t
        t += step
    return None


def test_baseline_checkpoints_every_thirty_minutes_and_takes_no_requests():
    rig = Rig("baseline")
    rig.m.request(None, "ground")
    assert run_until_checkpoint(rig, 4000.0) == 1800.0
    assert rig.sent[0] == (0, SimJobConfig().pause_s)


def test_umbra_uses_daly_from_its_prior():
    rig = Rig("umbra")
    at = run_until_checkpoint(rig, 4000.0)
    assert at is not None
    # No faults yet: the MTBF estimate is the prior plus the exposure so far (GPU-seconds)
    # over the prior's weight.
    low = daly_interval(ESTIMATOR_PRIOR.prior_cost_s, ESTIMATOR_PRIOR.prior_mtbf_s)
    high = daly_interval(ESTIMATOR_PRIOR.prior_cost_s,
                         ESTIMATOR_PRIOR.prior_mtbf_s + N * at / ESTIMATOR_PRIOR.prior_weight)
    assert low <= at < high + 10.0


def test_exposure_is_counted_per_gpu_that_can_be_hit():
    # Each GPU's job sees its own upsets only: exposure in GPU-seconds gives a GPU's MTBF.
    rig = Rig("umbra")
    rig.m.on_frame(frame(0.0, (0, 0), (0, 0)), COOL)
    rig.m.on_frame(frame(100.0, (100, 100), (0, 0)), COOL)
    assert rig.m.estimator.exposure_s == pytest.approx(200.0)
    one_off = dataclasses.replace(frame(150.0, (150, 100), (0, 0)), rails=1)
    rig.m.on_frame(one_off, COOL)
    assert rig.m.estimator.exposure_s == pytest.approx(250.0)  # GPU 1's rail was off


def test_a_loss_the_node_caused_by_switching_a_rail_is_not_a_fault():
    rig = Rig("umbra")
    rig.m.on_frame(frame(0.0, (0, 0), (0, 0)), COOL)
    rig.m.on_frame(frame(10.0, (10, 10), (0, 0)), COOL)
    shed = dataclasses.replace(frame(20.0, (20, 0), (0, 0)), rails=1)  # GPU 1 shed, its work lost
    rig.m.on_frame(shed, COOL)
    assert rig.m.lost.tolist() == [0.0, 10.0]
    assert rig.m.estimator.mtbf_s > ESTIMATOR_PRIOR.prior_mtbf_s  # no fault counted
    rig.m.on_frame(frame(30.0, (0, 0), (0, 0)), COOL)  # GPU 0 falls back with its rail on: an upset
    assert rig.m.estimator.mtbf_s < ESTIMATOR_PRIOR.prior_mtbf_s
    one = rig.m.estimator.mtbf_s
    rig.m.on_frame(frame(40.0, (10, 10), (0, 0)), COOL)
    rig.m.on_frame(frame(50.0, (0, 0), (0, 0)), COOL)  # both GPUs at once (a board reset): one fault
    expected = (ESTIMATOR_PRIOR.prior_weight * ESTIMATOR_PRIOR.prior_mtbf_s + rig.m.estimator.exposure_s) / (
        ESTIMATOR_PRIOR.prior_weight + 2)
    assert rig.m.estimator.mtbf_s == pytest.approx(expected) and rig.m.estimator.mtbf_s < one


def test_umbra_checkpoints_ahead_of_an_eclipse_and_a_hot_gpu():
    rig = Rig("umbra")
    rig.m.on_frame(frame(0.0, (0, 0), (0, 0)), COOL)
    rig.m.on_frame(frame(200.0, (200, 200), (0, 0)), Foresight(hot=np.array([False, True]), eclipse_in_s=math.nan))
    assert [g for g, _ in rig.sent] == [1]
    rig.m.on_frame(frame(210.0, (210, 210), (0, 0), ckpt=2), Foresight(hot=np.zeros(N, bool), eclipse_in_s=60.0))
    assert [g for g, _ in rig.sent] == [1, 0]  # GPU 1 is still checkpointing


def test_a_finished_checkpoint_is_counted_measured_and_stored(tmp_path):
    async def scenario() -> None:
        store = CheckpointStore(tmp_path / "ckpt")
        rig = Rig("umbra", AsyncCheckpointStore(store))
        rig.m.on_frame(frame(0.0, (0, 0), (0, 0)), COOL)
        rig.m.request(0, "ground")
        rig.m.on_frame(frame(50.0, (50, 50), (0, 0)), COOL)
        assert rig.sent == []  # too little work yet to be worth a checkpoint's pause
        rig.m.on_frame(frame(200.0, (200, 200), (0, 0)), COOL)
        assert rig.sent and rig.sent[0][0] == 0
        rig.m.on_frame(frame(210.0, (200, 210), (0, 0), ckpt=1), COOL)
        rig.m.on_frame(frame(225.0, (205, 225), (200, 0), ckpt=0), COOL)
        await asyncio.gather(*rig.tasks)
        assert rig.m.checkpoints.tolist() == [1, 0]
        assert rig.m.estimator.cost_s == pytest.approx(25.0)  # request at 200, finished at 225
        latest = store.latest("gpu-0")
        assert latest is not None and latest.progress == 200.0
        assert latest.size == SimJobConfig().store_bytes
        store.close()

    asyncio.run(scenario())


def test_a_loss_is_counted_and_shortens_the_interval():
    rig = Rig("umbra")
    before = rig.m.estimator.interval_s()
    rig.m.on_frame(frame(0.0, (0, 0), (0, 0)), COOL)
    rig.m.on_frame(frame(10.0, (80, 10), (0, 0)), COOL)
    rig.m.on_frame(frame(20.0, (0, 20), (0, 0)), COOL)  # GPU 0 fell back to its checkpoint
    assert rig.m.lost.tolist() == [80.0, 0.0]
    assert "work_lost" in rig.events
    assert rig.m.estimator.interval_s() < before


def test_a_board_that_declares_no_checkpoints_leaves_the_manager_idle():
    rig = Rig("umbra")
    rig.m.reset(N, board_keeps_checkpoints=False)  # what HELLO_ACK's features said
    rig.m.on_frame(frame(0.0, (0, 0), ()), COOL)
    rig.m.request(None, "ground")
    rig.m.on_frame(frame(5000.0, (1, 1), ()), COOL)
    assert not rig.m.active and rig.sent == []
