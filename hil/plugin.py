"""pytest plugin (entry point ``pytest11``): HIL fixtures and the ``hil`` marker.

Fixtures:

- ``bench`` (session): the ``BenchSpec`` of ``--hil-bench FILE`` (default: a simulated board
  in lockstep with mosquitto, see hil/benchfile.py).
- ``scenario``: a scenario of the library by name, through indirect parametrisation::

      @pytest.mark.hil
      @pytest.mark.parametrize("scenario", ["beta0"], indirect=True)
      async def test_beta0(scenario, hil_run):
          result = await hil_run(scenario)
          assert result.verdict == "pass", result.failed()

- ``hil_run``: a coroutine function running a scenario on ``bench`` in a run directory
  under the test's tmp_path (``quick`` unless ``--hil-full``); the run's JSON record, JUnit
  XML and plots go to ``--hil-report DIR`` when given.

Options: ``--hil-bench FILE``, ``--hil-full`` (full-length scenarios), ``--hil-report DIR``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hil.benchfile import BenchSpec, load_bench
from hil.scenario import Scenario, library, load_scenario_file


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("umbra-hil", "Umbra HIL harness")
    group.addoption("--hil-bench", metavar="FILE", default=None, help="bench file for HIL tests")
    group.addoption("--hil-full", action="store_true", default=False,
                    help="run HIL scenarios at full length (default: quick mode)")
    group.addoption("--hil-report", metavar="DIR", default=None, help="write HIL run reports here")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil: HIL scenario runs on a bench (board, node, broker)")


@pytest.fixture(scope="session")
def bench(pytestconfig: pytest.Config) -> BenchSpec:
    """The bench HIL tests run on."""
    return load_bench(pytestconfig.getoption("--hil-bench"))


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Scenario:
    """A scenario: parametrize indirectly with a library name or a path to a .toml file."""
    name = getattr(request, "param", None)
    if name is None:
        raise pytest.UsageError("the scenario fixture needs indirect parametrisation with a scenario name")
    if isinstance(name, Scenario):
        return name
    if str(name).endswith(".toml"):
        return load_scenario_file(name)
    lib = library()
    if name not in lib:
        raise pytest.UsageError(f"no scenario {name!r}; the library has {', '.join(lib)}")
    return lib[name]


@pytest.fixture
def hil_run(bench: BenchSpec, tmp_path: Path, pytestconfig: pytest.Config) -> Callable[..., Awaitable[Any]]:
    """``await hil_run(scenario, policy="umbra")`` → a judged ``hil.runner.RunResult``."""
    from hil import report
    from hil.runner import RunResult, run_scenario

    quick = not pytestconfig.getoption("--hil-full")
    out = pytestconfig.getoption("--hil-report")

    async def run(scn: Scenario, policy: str = "umbra", **kwargs: Any) -> RunResult:
        run_dir = (Path(out) if out else tmp_path) / scn.name / policy
        result = await run_scenario(scn, bench, policy=policy, run_dir=run_dir, quick=quick, **kwargs)
        if out:
            report.write_run(result)
        return result

    return run
