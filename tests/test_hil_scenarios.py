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
    assert result.verdict == "pass", "\n".join(
        f"{o.metric} = {o.value} (limit min={o.min} max={o.max}): {o.why}" for o in result.failed())
