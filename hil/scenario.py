"""Scenarios as data: initial conditions, a timeline of injections, a duration, measurements.

A scenario file (``hil/scenarios/<name>.toml``) looks like::

    title = "β = 0°: worst-case eclipses"
    description = "…"
    orbit = "beta0"                 # umbra-board --orbit preset
    orbits = 3                      # duration in orbits (or seconds = …)
    quick_orbits = 1                # shortened duration for `make test` (quick mode)
    gpus = 8
    rate_hz = 1.0                   # sensor frames per board second
    seed = 1

    [plant]                         # umbra-board --set KEY=VALUE (docs/board-physics.md)
    radiator_m2_per_gpu = 0.5

    [initial]                       # HIL sets before the run starts (docs/ICD.md §4.12)
    demand_w = 700.0

    [[at]]                          # a timeline entry at board seconds since the start
    t_s = 600.0                     # or orbit = 0.5 (fraction of an orbit)
    set = { "fault.pump" = 1.0 }    # HIL sets …
    action = "node.kill"            # … and/or a harness action (ACTIONS)

    [[measure]]
    metric = "max_temp_c"           # METRICS
    max = 87.0                      # and/or min = …
    unit = "°C"
    why = "slowdown (89 °C) minus a 2 K margin"
    compare = false                 # true: judged only with --compare baseline

Process jobs (real programs the node runs, docs/jobs.md) need real time, so a scenario with
``[[jobs]]`` paces the board instead of lockstep::

    speed = 20                      # board seconds per wall second (no lockstep)

    [[jobs]]                        # the node's [[jobs]] (docs/jobs.md); {python} is the
    id = "train0"                   # interpreter the bench runs the node with
    gpus = [0]
    command = ["{python}", "-m", "node.jobs.train_numpy", "--steps", "100000000"]

Their checkpoint intervals then run on the board clock (``checkpoints.clock = "board"``),
so a fault rate per board second means the same to a process job as to a simulated one.

Everything is validated when loaded; errors name the file and the key.
"""

from __future__ import annotations

import math
import sys
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from firmware_sim.config import ORBITS
from node.errors import ConfigError
from node.jobs.model import parse_jobs

#: Metrics a measurement may judge, with their unit and meaning (computed in hil/runner.py).
METRICS: dict[str, tuple[str, str]] = {
    "max_temp_c": ("°C", "highest true GPU die temperature sampled over the run (truth.temp_c)"),
    "slowdown_s": ("GPU·s", "time in hardware thermal slowdown, summed over GPUs (truth.slowdown_s)"),
    "shutdowns": ("count", "thermal shutdowns (truth.shutdowns)"),
    "soc_min": ("1", "lowest battery state of charge (truth.soc_min)"),
    "below_floor_s": ("s", "board time below the SoC floor (truth.below_floor_s)"),
    "uv_trips": ("count", "undervoltage cutoffs (truth.uv_trips)"),
    "work_useful": ("units", "work kept: truth.work_done − truth.work_lost"),
    "work_lost": ("units", "work lost to faults, shutdowns, resets (truth.work_lost)"),
    "work_bound": ("units", "the board's upper bound on work (truth.work_bound)"),
    "work_vs_bound": ("1", "work_useful / work_bound"),
    "work_vs_baseline": ("1", "work_useful of this policy / work_useful of baseline (--compare)"),
    "work_vs_peer": ("1", "work_useful of this policy / work_useful of ipa, the Linux power_allocator peer "
                          "(--compare ipa)"),
    "work_vs_oracle": ("1", "work_useful of this policy / the useful work of the oracle's achievable plan, "
                            "replayed on the plant (--compare oracle; hil/oracle.py)"),
    "work_vs_oracle_bound": ("1", "work_useful of this policy / the oracle's upper bound (--compare oracle)"),
    "oracle_gap": ("1", "the oracle's plan over its bound: how tight the bound is (oracle runs only)"),
    "telemetry_gaps": ("count", "telemetry sequence numbers never received at ground (MQTT)"),
    "telemetry_packets": ("count", "telemetry packets received at ground (hk, event, tc/report)"),
    "archive_gaps": ("count", "sequence numbers missing in the ground archive (ground/archive.py)"),
    "link_downs": ("count", "link_down events from the node"),
    "safe_fraction": ("1", "fraction of housekeeping packets in SAFE mode"),
    "commands_sent": ("count", "valid signed commands the harness sent"),
    "commands_completed_once": ("count", "valid commands with exactly one completed report"),
    "commands_executed_twice": ("count", "commands with more than one non-duplicate completion"),
    "bad_commands_executed": ("count", "malformed/unauthenticated commands not refused"),
    "node_alive": ("flag", "1 if the node process is running at the end"),
    "loss_vs_interval": ("1", "largest single loss (node's work_lost event) over the checkpoint interval "
                              "in force then plus the checkpoint's own time (1 unit = 1 s of full-power work)"),
    "board_time_s": ("s", "board time covered by the run (truth.t_s)"),
    "job_progress": ("units", "process jobs' progress kept at the end, summed (their own units, "
                              "from the node's housekeeping)"),
    "job_progress_vs_baseline": ("1", "job_progress of this policy / job_progress of baseline (--compare)"),
    "job_faults": ("count", "process jobs restarted for their GPU's fault (job_gpu_fault events)"),
    "job_loss_vs_interval": ("1", "largest work a process job lost to one fault (board s since the "
                                  "state its newest checkpoint holds) over the interval in force "
                                  "plus the checkpoint cost"),
}

#: Harness actions a timeline entry may take (besides HIL sets).
ACTIONS = (
    "node.kill",        # SIGKILL the node process (a crash)
    "node.start",       # start it again (same data dir)
    "broker.stop",      # stop the broker (an outage)
    "broker.start",     # start it again on the same port
    "ground.stop",      # stop the ground ingest (archive writer)
    "ground.start",     # start it again
    "commands.storm",   # valid signed commands mixed with malformed and unauthenticated ones
)



@dataclass(frozen=True, slots=True)
class Injection:
    """One timeline entry: at board time ``t_s`` (or ``orbit`` × period), HIL sets and an action."""

    t_s: float | None = None
    orbit: float | None = None
    set: tuple[tuple[str, float | tuple[float, ...]], ...] = ()
    action: str | None = None
    wait_s: float = 0.0  # wall seconds to wait after the action (e.g. an outage's length)

    def at_s(self, period_s: float) -> float:
        if self.t_s is not None:
            return self.t_s
        assert self.orbit is not None
        return self.orbit * period_s

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.set]
        if self.action:
            parts.append(self.action + (f" (+{self.wait_s:g} s wall)" if self.wait_s else ""))
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Measurement:
    metric: str
    min: float | None = None
    max: float | None = None
    unit: str = ""
    why: str = ""
    compare: bool = False  # judged only when a baseline run is compared

    def judge(self, value: float | None) -> str:
        """``pass``, ``fail``, or ``error`` (no value could be measured)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "error"
        if self.min is not None and not value >= self.min:
            return "fail"
        if self.max is not None and not value <= self.max:
            return "fail"
        return "pass"

    def limits(self) -> str:
        if self.min is not None and self.max is not None:
            return f"{self.min:g} ≤ x ≤ {self.max:g}"
        if self.min is not None:
            return f"≥ {self.min:g}"
        if self.max is not None:
            return f"≤ {self.max:g}"
        return "(recorded)"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    description: str = ""
    orbit: str = "beta0"
    orbits: float | None = None
    seconds: float | None = None
    quick_orbits: float | None = None
    quick_seconds: float | None = None
    gpus: int = 8
    rate_hz: float = 1.0
    seed: int = 1
    plant: tuple[tuple[str, float], ...] = ()
    initial: tuple[tuple[str, float | tuple[float, ...]], ...] = ()
    timeline: tuple[Injection, ...] = ()
    measures: tuple[Measurement, ...] = ()
    needs: tuple[str, ...] = ()  # parts the run must start: "ground", "keys"
    #: Board seconds per wall second without lockstep (None: the bench's time settings).
    speed: float | None = None
    #: The node's ``[[jobs]]`` tables, ``{python}`` already replaced.
    jobs: tuple[dict[str, Any], ...] = ()
    source: str = ""

    def duration_s(self, period_s: float, *, quick: bool = False) -> float:
        if quick and self.quick_seconds is not None:
            return self.quick_seconds
        if quick and self.quick_orbits is not None:
            return self.quick_orbits * period_s
        if self.seconds is not None:
            return self.seconds
        assert self.orbits is not None
        return self.orbits * period_s

    def actions(self) -> set[str]:
        return {i.action for i in self.timeline if i.action}


def config_error(source: str, key: str, text: str) -> ConfigError:
    """A file's bad key, named with the file: ``source: key: text``."""
    return ConfigError(f"{source}: {key}: {text}", key=key, source=source)



def _num(source: str, key: str, v: Any, lo: float = -1e12, hi: float = 1e12) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise config_error(source, key, f"expected a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _value(source: str, key: str, v: Any) -> float | tuple[float, ...]:
    if isinstance(v, list):
        return tuple(_num(source, key, x) for x in v)
    return _num(source, key, v)


def _sets(source: str, key: str, table: Any) -> tuple[tuple[str, float | tuple[float, ...]], ...]:
    if not isinstance(table, dict):
        raise config_error(source, key, "expected a table of HIL name = value")
    return tuple((str(k), _value(source, f"{key}.{k}", v)) for k, v in table.items())


_TOP = {"title", "description", "orbit", "orbits", "seconds", "quick_orbits", "quick_seconds", "gpus",
        "rate_hz", "seed", "plant", "initial", "at", "measure", "needs", "speed", "jobs"}


def _jobs(source: str, raw: Any) -> tuple[dict[str, Any], ...]:
    """The scenario's ``[[jobs]]``, with ``{python}`` replaced, checked as the node will."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise config_error(source, "jobs", "expected an array of tables ([[jobs]])")
    tables = []
    for table in raw:
        table = dict(table)
        if isinstance(table.get("command"), list):
            table["command"] = [sys.executable if a == "{python}" else a for a in table["command"]]
        tables.append(table)
    jobs = parse_jobs(tables, source=source)  # its errors name the file and the key
    if not all(j.is_process for j in jobs):
        raise config_error(source, "jobs", "every scenario job needs a command (the board's own jobs run anyway)")
    return tuple(tables)


def parse_scenario(name: str, data: dict[str, Any], source: str = "") -> Scenario:
    source = source or name
    unknown = set(data) - _TOP
    if unknown:
        raise config_error(source, sorted(unknown)[0], f"unknown key (known: {', '.join(sorted(_TOP))})")
    if "title" not in data:
        raise config_error(source, "title", "missing")
    orbit = data.get("orbit", "beta0")
    if orbit not in ORBITS:
        raise config_error(source, "orbit", f"{orbit!r} is not one of {', '.join(ORBITS)}")
    if ("orbits" in data) == ("seconds" in data):
        raise config_error(source, "orbits", "give exactly one of orbits or seconds")
    timeline = []
    for i, entry in enumerate(data.get("at", [])):
        key = f"at[{i}]"
        extra = set(entry) - {"t_s", "orbit", "set", "action", "wait_s"}
        if extra:
            raise config_error(source, f"{key}.{sorted(extra)[0]}", "unknown key")
        if ("t_s" in entry) == ("orbit" in entry):
            raise config_error(source, key, "give exactly one of t_s or orbit")
        action = entry.get("action")
        if action is not None and action not in ACTIONS:
            raise config_error(source, f"{key}.action", f"{action!r} is not one of {', '.join(ACTIONS)}")
        timeline.append(Injection(
            t_s=_num(source, f"{key}.t_s", entry["t_s"], 0, 1e9) if "t_s" in entry else None,
            orbit=_num(source, f"{key}.orbit", entry["orbit"], 0, 1e4) if "orbit" in entry else None,
            set=_sets(source, f"{key}.set", entry.get("set", {})),
            action=action,
            wait_s=_num(source, f"{key}.wait_s", entry.get("wait_s", 0.0), 0, 600),
        ))
    measures = []
    for i, m in enumerate(data.get("measure", [])):
        key = f"measure[{i}]"
        extra = set(m) - {"metric", "min", "max", "unit", "why", "compare"}
        if extra:
            raise config_error(source, f"{key}.{sorted(extra)[0]}", "unknown key")
        metric = m.get("metric")
        if metric not in METRICS:
            raise config_error(source, f"{key}.metric", f"{metric!r} is not one of {', '.join(METRICS)}")
        measures.append(Measurement(
            metric=metric,
            min=_num(source, f"{key}.min", m["min"]) if "min" in m else None,
            max=_num(source, f"{key}.max", m["max"]) if "max" in m else None,
            unit=str(m.get("unit", METRICS[metric][0])),
            why=str(m.get("why", "")),
            compare=bool(m.get("compare", False)),
        ))
    needs = tuple(str(n) for n in data.get("needs", []))
    for n in needs:
        if n not in ("ground", "keys", "persistent-broker"):
            raise config_error(source, "needs", f"{n!r} is not ground, keys or persistent-broker")
    plant = tuple((str(k), _num(source, f"plant.{k}", v)) for k, v in data.get("plant", {}).items())
    jobs = _jobs(source, data["jobs"]) if "jobs" in data else ()
    speed = _num(source, "speed", data["speed"], 0.01, 1e4) if "speed" in data else None
    if jobs and speed is None:
        raise config_error(source, "speed", "a scenario with process jobs must pace the board (speed = …): "
                                            "its jobs run in wall time, lockstep would stall them")
    return Scenario(
        name=name,
        title=str(data["title"]),
        description=str(data.get("description", "")).strip(),
        orbit=orbit,
        orbits=_num(source, "orbits", data["orbits"], 0.001, 1e4) if "orbits" in data else None,
        seconds=_num(source, "seconds", data["seconds"], 1, 1e9) if "seconds" in data else None,
        quick_orbits=_num(source, "quick_orbits", data["quick_orbits"], 0.001, 1e4)
        if "quick_orbits" in data else None,
        quick_seconds=_num(source, "quick_seconds", data["quick_seconds"], 1, 1e9)
        if "quick_seconds" in data else None,
        gpus=int(_num(source, "gpus", data.get("gpus", 8), 1, 32)),
        rate_hz=_num(source, "rate_hz", data.get("rate_hz", 1.0), 0.01, 1000),
        seed=int(_num(source, "seed", data.get("seed", 1), 0, 2**62)),
        plant=plant,
        initial=_sets(source, "initial", data.get("initial", {})),
        timeline=tuple(timeline),
        measures=tuple(measures),
        needs=needs,
        speed=speed,
        jobs=jobs,
        source=source,
    )


def load_scenario_file(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}", key="scenario", source=str(path)) from None
    return parse_scenario(path.stem, data, str(path))


def library() -> dict[str, Scenario]:
    """Every scenario of the packaged library, by name (file stem), in name order."""
    out: dict[str, Scenario] = {}
    folder = resources.files("hil") / "scenarios"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
            name = entry.name.removesuffix(".toml")
            out[name] = parse_scenario(name, data, f"hil/scenarios/{entry.name}")
    return out


def resolve(names: list[str]) -> list[Scenario]:
    """Names from the library (``all`` for every one) or paths to scenario files."""
    lib = library()
    found: list[Scenario] = []
    for name in names:
        if name == "all":
            found += lib.values()
        elif name in lib:
            found.append(lib[name])
        elif name.endswith(".toml") and Path(name).exists():
            found.append(load_scenario_file(name))
        else:
            raise ConfigError(f"no scenario {name!r} (umbra-hil list shows the library)", key="scenario")
    return found

