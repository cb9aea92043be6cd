"""The scenario library, each scenario once in lockstep, shortened (quick mode).

Runs through the pytest plugin's fixtures (``bench``, ``scenario``, ``hil_run``).  A run
must complete, be judged (every measurement gets a value) and pass: Umbra keeps every
limit of every scenario.  The comparison with the baseline (``work_vs_baseline``) needs a
second run per scenario and is judged by ``umbra-hil run --compare baseline``.
"""

from __future__ import annotations

import pytest

from hil.scenario import library

pytestmark = [pytest.mark.hil, pytest.mark.timeout(240)]


@pytest.mark.parametrize("scenario", sorted(library()), indirect=True)
async def test_scenario_runs_and_is_judged(scenario, hil_run):
    result = await hil_run(scenario)
    assert not result.error, result.error
    unmeasured = [o.metric for o in result.outcomes if o.outcome == "error"]
    assert not unmeasured, f"no value for {unmeasured}"
    assert result.metrics["board_time_s"] >= 0.95 * result.duration_s
    if result.scenario.jobs:  # real processes ran, were measured, and (the storm) were hit
        assert result.metrics["job_progress"] > 0
        if "seu_rate_hz" in str(result.scenario.timeline):
            assert result.metrics["job_faults"] >= 1
    assert result.verdict == "pass", "\n".join(
        f"{o.metric} = {o.value} (limit min={o.min} max={o.max}): {o.why}" for o in result.failed())


def test_a_used_run_directory_is_cleaned_or_refused(tmp_path) -> None:
    from hil.runner import RunDirInUse, prepare_run_dir

    run_dir = tmp_path / "beta0" / "umbra"
    prepare_run_dir(run_dir)  # nothing there yet
    (run_dir / "node-data").mkdir(parents=True)
    (run_dir / "node-data" / "outbox.sqlite").write_bytes(b"old run")
    (run_dir / "record.json").write_text("{}")
    prepare_run_dir(run_dir)
    assert not run_dir.exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not delete")
    with pytest.raises(RunDirInUse):
        prepare_run_dir(foreign)
    assert (foreign / "thesis.tex").exists()


async def test_a_scenario_run_twice_into_one_directory_starts_clean(bench, tmp_path) -> None:
    """Issue #16: the second run used to find the first's node data (102 telemetry gaps)."""
    from hil.runner import run_scenario

    scn = library()["nominal-sso"]
    run_dir = tmp_path / "same"
    first = await run_scenario(scn, bench, run_dir=run_dir, quick=True)
    second = await run_scenario(scn, bench, run_dir=run_dir, quick=True)
    assert not first.error and not second.error, (first.error, second.error)
    assert second.metrics["telemetry_gaps"] == 0 == first.metrics["telemetry_gaps"]
    assert second.verdict == "pass"
