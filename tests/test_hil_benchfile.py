"""Bench files, scenario files and reports: parsing, validation that names the key, output."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.benchfile import default_bench, parse_bench
from hil.report import summary_table, write_report
from hil.runner import Collector, RunResult, Sample, judge
from hil.scenario import library, parse_scenario
from node.errors import ConfigError


def test_bench_file_round_trip():
    spec = parse_bench({
        "board": {"kind": "port", "port": "/dev/ttyUSB0", "hil": "/dev/ttyUSB1"},
        "broker": {"kind": "external", "host": "10.0.0.2", "port": 1883, "username": "u", "password": "p"},
        "node": {"node_id": "dev-1", "hk_rate_hz": 5},
        "time": {"lockstep": False, "speed": 60},
    }, "bench.toml")
    assert spec.board.kind == "port" and spec.broker.port == 1883 and spec.time.speed == 60
    assert spec.to_dict()["broker"]["password"] == "***"
    assert default_bench().time.lockstep


@pytest.mark.parametrize("data, key", [
    ({"board": {"kind": "fpga"}}, "board.kind"),
    ({"board": {"kind": "port", "port": "/dev/ttyUSB0"}}, "board.port"),
    ({"broker": {"kind": "external"}}, "broker.port"),
    ({"time": {"speed": 0}}, "time.speed"),
    ({"node": {"colour": 1}}, "node.colour"),
    ({"oven": {}}, "oven"),
])
def test_bench_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_bench(data, "b.toml")
    assert err.value.key == key


def test_library_has_every_required_scenario():
    names = set(library())
    assert {"nominal-sso", "beta0", "low-battery-eclipse", "radiator-degradation", "pump-failure",
            "sensor-faults", "upset-storm", "serial-noise", "board-reset", "node-crash", "broker-outage",
            "command-storm", "ground-restart"} <= names
    for s in library().values():
        assert s.measures, s.name


@pytest.mark.parametrize("data, key", [
    ({"title": "x", "orbits": 1, "measure": [{"metric": "fun"}]}, "measure[0].metric"),
    ({"title": "x"}, "orbits"),
    ({"title": "x", "orbits": 1, "at": [{"t_s": 1, "action": "dance"}]}, "at[0].action"),
    ({"title": "x", "orbits": 1, "orbit": "mars"}, "orbit"),
])
def test_scenario_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_scenario("s", data)
    assert err.value.key == key


def _fake(tmp_path: Path, policy: str, temp: float, work: float) -> RunResult:
    s = library()["beta0"]
    r = RunResult(scenario=s, policy=policy, run_dir=tmp_path / s.name / policy, duration_s=100.0, period_s=5730.0, seed=s.seed)
    r.samples = [Sample(t_s=t, wall_s=t / 100, temp_c=[temp - 10 + t / 10] * 2, cap_w=[500.0] * 2,
                        power_w=[400.0] * 2, soc=0.9, work_done=t, work_lost=0.0, eclipse=t > 50,
                        shutdowns=0.0, seu=0.0, radiator_c=30.0) for t in range(0, 101, 10)]
    r.modes = [(0.0, "NOMINAL"), (60.0, "THERMAL_LIMIT")]
    r.metrics = {"max_temp_c": temp, "slowdown_s": 0.0, "shutdowns": 0.0, "soc_min": 0.8,
                 "telemetry_gaps": 0.0, "work_useful": work, "work_vs_bound": 0.5, "work_bound": 2 * work}
    return r


def test_report_files_and_compare(tmp_path):
    umbra, base = _fake(tmp_path, "umbra", 80.0, 100.0), _fake(tmp_path, "baseline", 89.5, 90.0)
    judge(umbra, base)
    judge(base)
    assert umbra.metrics["work_vs_baseline"] == pytest.approx(100 / 90)
    assert umbra.verdict == "pass" and base.verdict == "fail"
    table = write_report([(umbra, base)], tmp_path)
    assert "beta0" in table and "PASS" in table
    rec = json.loads((tmp_path / "beta0" / "umbra" / "record.json").read_text())
    assert rec["verdict"] == "pass" and rec["measurements"] and "versions" in rec and rec["seed"] == 1
    assert (tmp_path / "beta0" / "umbra" / "run.png").stat().st_size > 10_000
    assert (tmp_path / "beta0" / "compare.png").exists()
    suites = ET.parse(tmp_path / "junit.xml").getroot()
    assert len(suites.findall("testsuite")) == 2
    assert "| scenario |" in summary_table([(umbra, None)])


def test_a_comparison_with_several_policies_judges_each_against_its_own(tmp_path):
    from hil.scenario import Measurement

    umbra, base, peer = (_fake(tmp_path, "umbra", 80.0, 100.0), _fake(tmp_path, "baseline", 89.5, 90.0),
                         _fake(tmp_path, "ipa", 82.0, 125.0))
    umbra.scenario = dataclasses.replace(umbra.scenario, measures=(
        *umbra.scenario.measures, Measurement("work_vs_peer", min=1.0, compare=True, why="beat the peer")))
    judge(umbra, base, peer)
    assert umbra.metrics["work_vs_baseline"] == pytest.approx(100 / 90)
    assert umbra.metrics["work_vs_peer"] == umbra.metrics["work_vs_ipa"] == pytest.approx(100 / 125)
    outcome = {o.metric: o.outcome for o in umbra.outcomes}
    assert outcome["work_vs_peer"] == "fail" and outcome["work_vs_baseline"] == "pass"
    judge(umbra, base)  # without the peer's run: its comparison is not judged
    assert {o.metric: o.outcome for o in umbra.outcomes}["work_vs_peer"] == "skipped"
    judge(umbra, base, peer)
    judge(base)
    judge(peer)
    table = write_report([(umbra, [base, peer])], tmp_path)
    assert "U / B / I" in table and "U/I work" in table and "0.8" in table
    assert (tmp_path / "beta0" / "compare.png").exists() and (tmp_path / "beta0" / "compare-ipa.png").exists()
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert rows[0]["ipa_verdict"] == "pass" and rows[0]["baseline_verdict"] == "fail"


def test_telemetry_after_a_board_reset_lands_at_the_right_run_time():
    # Run time 0 was board time 100; the board is reset at run time 450 and its clock
    # restarts at 0.  Packets stamped before the reset still map the old way.
    collector = Collector("127.0.0.1", 1, "n", lambda t_board: t_board - 100.0)
    assert collector._run_t(500.0) == 400.0
    collector.board_reset(450.0)
    assert collector._run_t(549.0) == 449.0  # sent before the reset, delivered after it
    assert collector._run_t(3.0) == 453.0  # the new clock
    assert collector._run_t(60.0) == 510.0


def test_broker_credentials_and_a_node_config_are_not_silently_split():
    with pytest.raises(ConfigError) as err:
        parse_bench({"broker": {"kind": "external", "port": 1883, "username": "u", "password": "p"},
                     "node": {"config": "node.toml"}}, "b")
    assert err.value.key == "broker.username" and "[mqtt]" in str(err.value)


# --- scenarios with process jobs ----------------------------------------------------------------

JOB = {"id": "train0", "gpus": [0], "command": ["{python}", "-m", "node.jobs.train_numpy"]}


def test_a_scenario_with_process_jobs_paces_the_board_and_names_its_python():
    import sys

    s = parse_scenario("s", {"title": "x", "orbits": 1, "speed": 20, "jobs": [JOB]})
    assert s.speed == 20.0 and s.jobs[0]["command"][0] == sys.executable
    assert JOB["command"][0] == "{python}", "the file's tables are not changed"
    for name in ("upset-storm-jobs", "beta0-jobs"):
        assert library()[name].jobs and library()[name].speed


@pytest.mark.parametrize("data, key", [
    ({"title": "x", "orbits": 1, "jobs": [JOB]}, "speed"),  # lockstep would stall a process job
    ({"title": "x", "orbits": 1, "speed": 20, "jobs": [{**JOB, "gpu": [0]}]}, "jobs[0].gpu"),
    ({"title": "x", "orbits": 1, "speed": 20, "jobs": [{**JOB, "command": ["/no/such/trainer"]}]},
     "jobs[0].command"),
    ({"title": "x", "orbits": 1, "speed": 20, "jobs": [{"id": "sim", "gpus": [0]}]}, "jobs"),
    ({"title": "x", "orbits": 1, "speed": 0, "jobs": [JOB]}, "speed"),
    ({"title": "x", "orbits": 1, "speed": 20, "jobs": {"id": "x"}}, "jobs"),
])
def test_process_job_scenario_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_scenario("s", data)
    assert err.value.key == key


def test_the_runs_node_config_carries_the_jobs_on_the_board_clock(tmp_path):
    import tomllib

    from hil.benchfile import BenchRun, RunParams
    from node.config import NodeConfig

    s = library()["upset-storm-jobs"]
    mine = tmp_path / "mine.toml"
    mine.write_text('[control]\nlimit_c = 86.0\n\n[[jobs]]\nid = "sim-a"\ngpus = [5]\n')
    bench = parse_bench({"node": {"config": str(mine)}}, "b")
    run = BenchRun(bench, RunParams(jobs=s.jobs, board_clock=True), tmp_path)
    merged = run.merged_node_config(run.node_config_overlay())
    from hil.benchfile import toml_dumps

    path = tmp_path / "node.toml"
    path.write_text(toml_dumps(merged))
    assert tomllib.loads(path.read_text()) == merged
    config = NodeConfig.from_toml(path)
    assert config.control.limit_c == 86.0 and config.checkpoints.clock == "board"
    assert [j.id for j in config.jobs] == ["sim-a", "train0", "train1"]


@given(st.dictionaries(
    st.sampled_from(["mqtt", "control", "checkpoints"]),
    st.dictionaries(st.text(min_size=1, max_size=8),
                    st.one_of(st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                              st.text(max_size=20), st.lists(st.integers(0, 63), max_size=4)),
                    max_size=4),
    max_size=3))
def test_toml_dumps_round_trips(config):
    import tomllib

    from hil.benchfile import toml_dumps

    assert tomllib.loads(toml_dumps(config)) == config


def test_a_jobs_command_reads_its_simulated_gpus_speed_where_the_harness_writes_it(tmp_path):
    from hil.benchfile import BenchRun, RunParams
    from hil.runner import _write_gpu_speeds

    s = library()["upset-storm-jobs"]
    run = BenchRun(default_bench(), RunParams(jobs=s.jobs, board_clock=True), tmp_path)
    assert run.speed_gpus() == [0, 1]
    jobs = run.node_config_overlay()["jobs"]
    assert jobs[1]["command"][-1] == str(tmp_path / "gpu-speed" / "1")
    assert s.jobs[1]["command"][-1] == "{gpu_speed:1}", "the scenario's tables are not changed"
    _write_gpu_speeds(run, [0, 1], (0.77, 0.0, 1.0))
    assert [float(run.gpu_speed_path(g).read_text()) for g in (0, 1)] == [0.77, 0.0]
    assert not run.gpu_speed_path(2).exists()


def test_train_numpy_steps_at_its_gpus_speed_and_waits_while_it_is_off(tmp_path):
    import time

    from node.jobs.train_numpy import gpu_speed, pace

    class Ckpt:
        due = False

    speed = tmp_path / "speed"
    assert gpu_speed(None) == 1.0 and gpu_speed(speed) == 1.0  # no file yet: full speed
    speed.write_text("0.5")
    began = time.monotonic()
    pace(0.05, speed, began, Ckpt())  # type: ignore[arg-type]
    assert time.monotonic() - began >= 0.1 - 1e-3
    speed.write_text("0")
    ckpt = Ckpt()
    began = time.monotonic()

    def later() -> None:
        time.sleep(0.3)
        ckpt.due = True  # the node asks for a checkpoint while the GPU is off: it is answered

    import threading

    t = threading.Thread(target=later)
    t.start()
    pace(0.01, speed, began, ckpt)  # type: ignore[arg-type]
    t.join()
    assert time.monotonic() - began >= 0.3
