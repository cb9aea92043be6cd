"""A minimal node for the process-job tests: a ProcessJobRunner over a real store, run as
its own process so that a test can SIGKILL it as a flight computer's watchdog would.

    python tests/jobnode.py ROOT JOB_ID -- COMMAND...

It runs the job until it finishes (exit 0) and prints ``started <pid>`` for each start.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from node.jobs.model import Job
from node.jobs.policy import IntervalEstimator, PolicyConfig
from node.jobs.runner import ProcessJobRunner
from node.jobs.store import AsyncCheckpointStore, CheckpointStore


async def main(root: Path, job_id: str, command: list[str]) -> int:
    job = Job(id=job_id, gpus=(0,), command=tuple(command), max_crashes=100)
    done = asyncio.Event()

    def on_event(kind: str, severity: int, text: str, data: dict[str, object]) -> None:
        if kind == "job_started":
            print(f"started {data['pid']}", flush=True)
        if kind == "job_finished":
            done.set()

    estimator = IntervalEstimator(PolicyConfig(min_interval_s=0.2, max_interval_s=0.2, prior_cost_s=0.01),
                                  clock=time.monotonic)
    with CheckpointStore(root / "checkpoints", keep=2) as store:
        async with ProcessJobRunner([job], store=AsyncCheckpointStore(store), staging_root=root / "staging",
                                    run_dir=root / "run", estimator=estimator, on_event=on_event,
                                    backoff_s=0.05, stop_timeout_s=5.0):
            await done.wait()
    return 0


if __name__ == "__main__":
    sep = sys.argv.index("--")
    sys.exit(asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[sep + 1:])))
