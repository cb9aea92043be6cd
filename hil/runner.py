"""Run scenarios on a bench: start the parts, apply the timeline, sample, measure, judge.

One run = one scenario × one policy on its own ``BenchRun`` (own ptys, broker port, run
directory).  The harness samples ground truth (``truth.*``) over the HIL port as fast as it
answers, applies the timeline when board time reaches each entry (HIL sets, plus harness
actions: node crash and restart, broker outage, ground restart, a command storm), collects
every telemetry packet from the broker, and at the end computes the metrics of
``hil.scenario.METRICS`` and judges each measurement.  ``run_many`` runs a list of
(scenario, policy) pairs ``jobs`` at a time with a progress bar per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import platform
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import aiomqtt
import msgpack

from hil.benchfile import BenchRun, BenchSpec, RunParams
from hil.hilport import HilClient
from hil.plantbench import BenchHil, PlantOnBench
from hil.scenario import METRICS, Injection, Scenario
from node.bus.payloads import Event, Housekeeping, Leaf, TcReport, decode_message, topic
from node.errors import RemoteProtocolError

log = logging.getLogger("umbra.hil.runner")

#: HIL names sampled every round (per-GPU arrays and scalars).
SAMPLED = ("truth.t_s", "truth.temp_c", "cap_w", "power_w", "battery_soc", "truth.work_done",
           "truth.work_lost", "orbit.eclipse", "truth.shutdowns", "truth.seu", "radiator_c")
#: Final truth values read at the end.
FINAL = ("truth.t_s", "truth.slowdown_s", "truth.shutdowns", "truth.soc_min", "truth.below_floor_s",
         "truth.uv_trips", "truth.work_done", "truth.work_lost", "truth.work_saved", "truth.work_bound",
         "truth.seu", "truth.energy_gpu_j", "truth.energy_unserved_j")


@dataclass
class Sample:
    t_s: float
    wall_s: float
    temp_c: list[float]
    cap_w: list[float]
    power_w: list[float]
    soc: float
    work_done: float
    work_lost: float
    eclipse: bool
    shutdowns: float
    seu: float
    radiator_c: float


@dataclass
class Outcome:
    metric: str
    value: float | None
    min: float | None
    max: float | None
    unit: str
    why: str
    compare: bool
    outcome: str  # pass / fail / error / skipped

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RunResult:
    scenario: Scenario
    policy: str
    run_dir: Path
    bench: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    quick: bool = False
    period_s: float = float("nan")
    duration_s: float = 0.0
    wall_s: float = 0.0
    started_utc: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # t_s, kind, text, data
    modes: list[tuple[float, str]] = field(default_factory=list)  # (t_s, mode) from hk
    applied: list[dict[str, Any]] = field(default_factory=list)  # timeline entries as applied
    metrics: dict[str, float] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    error: str = ""
    logs: dict[str, str] = field(default_factory=dict)
    commands: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.error:
            return "error"
        judged = [o for o in self.outcomes if o.outcome != "skipped"]
        if any(o.outcome == "error" for o in judged):
            return "error"
        return "fail" if any(o.outcome == "fail" for o in judged) else "pass"

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome in ("fail", "error")]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("umbra", "numpy", "numba", "aiomqtt", "matplotlib"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


# --- telemetry at ground -----------------------------------------------------------------------


class Collector:
    """Every hk / event / tc/report packet of one node, via a persistent MQTT session (so a
    broker with persistence queues packets for us across an outage)."""

    def __init__(self, host: str, port: int, node_id: str, t_of: Callable[[float], float]) -> None:
        self.host, self.port, self.node_id = host, port, node_id
        self.t_of = t_of  # board t_board → run time (t since the truth reset)
        self._resets: list[float] = []  # run times of board resets not yet seen in telemetry
        self._since_reset: float | None = None  # run time of the reset the board clock counts from
        self._last_t_board = -math.inf
        self.seqs: dict[int, int] = {}
        self.events: list[dict[str, Any]] = []
        self.modes: list[tuple[float, str]] = []
        self.reports: list[TcReport] = []
        self.malformed = 0
        self.subscribed = asyncio.Event()
        self._client_id = f"umbra-hil-{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None
        self.last_hk: Housekeeping | None = None
        self.max_loss_vs_interval = 0.0
        self.job_faults = 0
        self.max_job_loss_vs_interval = float("nan")

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run(), name="umbra.hil.collect")
        await asyncio.wait_for(self.subscribed.wait(), 20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=self._client_id,
                                          clean_session=False, timeout=5.0) as client:
                    for leaf in (Leaf.HK, Leaf.EVENT, Leaf.TC_REPORT):
                        await client.subscribe(topic(self.node_id, leaf), qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self._take(str(message.topic), message.payload)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def board_reset(self, run_t: float) -> None:
        """The board was reset at run time ``run_t``: its clock restarts at 0 from there."""
        self._resets.append(run_t)

    def _run_t(self, t_board: float) -> float:
        if t_board < self._last_t_board - 1.0 and self._resets:
            self._since_reset = self._resets.pop(0)  # the clock went back: the reset shows
        self._last_t_board = t_board
        return self.t_of(t_board) if self._since_reset is None else self._since_reset + t_board

    def _take(self, name: str, data: Any) -> None:
        try:
            _, p = decode_message(name, bytes(data))
        except (RemoteProtocolError, TypeError):
            self.malformed += 1
            return
        seq = getattr(p, "seq", None)
        if seq is not None:
            self.seqs[seq] = self.seqs.get(seq, 0) + 1
            if self.seqs[seq] > 1:
                return  # a QoS 1 redelivery: ground de-duplicates by seq
        if isinstance(p, Housekeeping):
            self.last_hk = p
            t = self._run_t(p.t_board)
            if not self.modes:
                self.modes.append((t, p.mode))
        elif isinstance(p, Event):
            t = self._run_t(p.t_board)
            if p.kind == "mode" and isinstance(p.data.get("after"), str):
                self.modes.append((t, p.data["after"]))
            self.events.append({"t_s": t, "t_board": p.t_board, "kind": p.kind,
                                "severity": p.severity, "text": p.text, "data": dict(p.data)})
            if p.kind == "work_lost" and isinstance(p.data.get("lost"), int | float):
                # Against the interval in force (Umbra's estimator, or the baseline's 30 min)
                # plus the checkpoint's own time: the saved point is taken when a checkpoint
                # begins, so at worst a fault just before the next one completes loses both
                # (Daly's τ + δ).
                jobs = self.last_hk.jobs if self.last_hk is not None else {}
                at_risk = float(jobs.get("interval_s") or 1800.0) + float(jobs.get("cost_s") or 0.0)
                self.max_loss_vs_interval = max(self.max_loss_vs_interval, float(p.data["lost"]) / at_risk)
            if p.kind == "job_gpu_fault":
                self._job_fault(p.data)
        elif isinstance(p, TcReport):
            self.reports.append(p)

    def _job_fault(self, data: dict[str, Any]) -> None:
        """A process job restarted for its GPU's fault: the work it lost against the interval
        in force plus the checkpoint's cost (the node's own figures, on its interval clock)."""
        self.job_faults += 1
        try:
            ratio = float(data["lost_s"]) / (float(data["interval_s"]) + float(data["cost_s"]))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return
        if not math.isnan(ratio):
            self.max_job_loss_vs_interval = (ratio if math.isnan(self.max_job_loss_vs_interval)
                                             else max(self.max_job_loss_vs_interval, ratio))

    def job_progress(self) -> float:
        """The process jobs' progress in the newest housekeeping, summed (NaN: none reported)."""
        jobs = self.last_hk.jobs.get("process") if self.last_hk is not None else None
        if not isinstance(jobs, dict) or not jobs:
            return float("nan")
        return float(sum(float(j.get("progress", 0.0)) for j in jobs.values() if isinstance(j, dict)))

    def missing(self, first: int = 1) -> list[int]:
        if not self.seqs:
            return []
        top = max(self.seqs)
        return [s for s in range(first, top + 1) if s not in self.seqs]

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.seqs.values())


# --- command storm -----------------------------------------------------------------------------


async def command_storm(run: BenchRun, result: RunResult, *, valid: int = 6) -> None:
    """Valid signed commands (each sent twice: the repeat must be answered, not executed) mixed
    with garbage, unsigned, wrongly signed, wrong-node, replayed and expired ones."""
    from ground.send import build_telecommand
    from node.bus import signing

    assert run.key_file is not None
    key = signing.load_keys(run.key_file)[run.node_id]
    other = signing.new_key()
    counter = time.time_ns() // 1000
    good: list[str] = []
    bad: list[str] = []
    wires: list[bytes] = []

    def tc(name: str, args: dict[str, Any], *, k: bytes = key, node: str | None = None,
           expires_in: float = 60.0, c: int | None = None) -> Any:
        nonlocal counter
        counter += 1
        return build_telecommand(node_id=node or run.node_id, name=name, args=args, key=k,
                                 counter=c if c is not None else counter, expires_in=expires_in)

    for i in range(valid):
        cmd = tc("ping", {}) if i % 2 == 0 else tc("get_param", {"name": "control.limit_c"})
        good.append(cmd.id)
        wires += [cmd.to_wire(), cmd.to_wire()]  # a repeated id: answered as a duplicate
        bad_tag = tc("ping", {}, k=other)
        bad.append(bad_tag.id)
        wires.append(bad_tag.to_wire())
        unsigned = tc("set_mode", {"mode": "SAFE"})
        unsigned_wire = msgpack.packb({**msgpack.unpackb(unsigned.to_wire()), "tag": b""})
        bad.append(unsigned.id)
        wires.append(unsigned_wire)
        replay = tc("set_mode", {"mode": "SAFE"}, c=1)
        bad.append(replay.id)
        wires.append(replay.to_wire())
        expired = tc("set_mode", {"mode": "SAFE"}, expires_in=-30.0)
        bad.append(expired.id)
        wires.append(expired.to_wire())
        wires.append(bytes(range(1, 40)))  # not msgpack at all
        wires.append(msgpack.packb({"node_id": run.node_id, "id": f"junk{i}"}))  # missing keys
        wires.append(b"\x00" * 5000)  # too large
    async with aiomqtt.Client(run.mqtt_host, run.mqtt_port, identifier=f"umbra-hil-storm-{uuid.uuid4().hex[:6]}",
                              timeout=10.0) as client:
        for w in wires:
            await client.publish(topic(run.node_id, Leaf.TC), w, qos=1)
            await asyncio.sleep(0.005)
    result.commands = {"good": good, "bad": bad, "sent_messages": len(wires)}


def judge_commands(result: RunResult, reports: list[TcReport]) -> dict[str, float]:
    good = result.commands.get("good", [])
    bad = set(result.commands.get("bad", []))
    completions: dict[str, int] = {}
    for r in reports:
        if r.stage == "completed" and not r.duplicate:
            completions[r.id] = completions.get(r.id, 0) + 1
    bad_exec = sum(1 for r in reports if r.id in bad and r.stage in ("accepted", "started", "completed"))
    return {
        "commands_sent": float(len(good)),
        "commands_completed_once": float(sum(1 for c in good if completions.get(c, 0) == 1)),
        "commands_executed_twice": float(sum(1 for c in good if completions.get(c, 0) > 1)),
        "bad_commands_executed": float(bad_exec),
    }


# --- one run ------------------------------------------------------------------------------------


def _f(v: Any) -> float:
    return float(v) if not isinstance(v, tuple) else float("nan")


def _list(v: Any) -> list[float]:
    return [float(x) for x in v] if isinstance(v, tuple) else [float(v)]


class Progress:
    """Progress of many runs: one bar per run on a TTY, plain lines (every 10 %) otherwise."""

    def __init__(self, out: TextIO | None, labels: list[str]) -> None:
        self.out = out
        self.tty = bool(out is not None and out.isatty())
        self.labels = labels
        self.state: dict[str, tuple[float, str]] = {label: (0.0, "waiting") for label in labels}
        self._printed = 0
        self._last_step: dict[str, int] = {}
        self._drawn_at = 0.0

    def update(self, label: str, frac: float, note: str = "", *, force: bool = False) -> None:
        self.state[label] = (max(0.0, min(1.0, frac)), note)
        if self.out is None:
            return
        if self.tty:
            now = time.monotonic()
            if force or now - self._drawn_at > 0.2:
                self._drawn_at = now
                self._draw()
            return
        step = int(frac * 10)
        if force or step > self._last_step.get(label, -1):
            self._last_step[label] = step
            print(f"umbra-hil: {label}: {frac * 100:3.0f} % {note}", file=self.out, flush=True)

    def _draw(self) -> None:
        assert self.out is not None
        if self._printed:
            self.out.write(f"\x1b[{self._printed}F")
        width = max(len(label) for label in self.labels)
        for label in self.labels:
            frac, note = self.state[label]
            filled = int(frac * 30)
            bar = "█" * filled + "·" * (30 - filled)
            self.out.write(f"\x1b[2K{label:<{width}} [{bar}] {frac * 100:3.0f} % {note}\n")
        self._printed = len(self.labels)
        self.out.flush()

    def done(self) -> None:
        if self.tty and self.out is not None:
            self._draw()


#: What a run leaves in its directory; a directory holding these is a previous run's.
RUN_DIR_MARKS = ("record.json", "node-data", "logs", "mosquitto")


class RunDirInUse(Exception):
    """The run directory holds files the harness did not make."""


def prepare_run_dir(run_dir: Path) -> None:
    """Start every run from a clean directory: a previous run's is removed (its node data
    would otherwise carry the old telemetry numbering, outbox and events into the new run);
    a directory with anything else in it is refused rather than emptied."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if not any((run_dir / mark).exists() for mark in RUN_DIR_MARKS):
        raise RunDirInUse(f"{run_dir} holds files not made by umbra-hil; choose another --report directory")
    shutil.rmtree(run_dir)


async def run_scenario(
    scenario: Scenario,
    bench: BenchSpec,
    *,
    policy: str = "umbra",
    run_dir: Path,
    quick: bool = False,
    seed: int | None = None,
    progress: Callable[[float, str], None] = lambda f, n: None,
    sample_wall_s: float = 0.01,
) -> RunResult:
    """Run one scenario with one policy; never raises for a failure of the system under test:
    errors end up in ``result.error`` (with the logs' tails)."""
    result = RunResult(scenario=scenario, policy=policy, run_dir=run_dir, bench=bench.to_dict(),
                       seed=scenario.seed if seed is None else seed, quick=quick, started_utc=time.time())
    params = RunParams(policy=policy, orbit=scenario.orbit, gpus=scenario.gpus, rate_hz=scenario.rate_hz,
                       seed=result.seed, plant=scenario.plant,
                       persistent_broker="persistent-broker" in scenario.needs or "broker.stop" in scenario.actions(),
                       tc_keys="keys" in scenario.needs or "commands.storm" in scenario.actions(),
                       jobs=scenario.jobs, board_clock=scenario.jobs != () and scenario.speed is not None)
    wall0 = time.monotonic()
    try:
        prepare_run_dir(run_dir)
    except RunDirInUse as exc:
        result.error = str(exc)
        return result
    run = BenchRun(bench, params, run_dir)
    t_reset = [0.0]
    try:
        async with contextlib.AsyncExitStack() as stack:
            progress(0.0, "starting")
            await stack.enter_async_context(run)
            hil: HilClient | BenchHil
            if run.external_plant:  # the harness runs the plant for the board's firmware
                bench_plant = PlantOnBench(run.hil_port, run.make_plant(), rate_hz=params.rate_hz)
                hil = BenchHil(await stack.enter_async_context(bench_plant))
            else:
                hil = await stack.enter_async_context(HilClient(port=run.hil_port, timeout=2.0))
            if scenario.speed is not None:  # process jobs run in wall time: pace the board
                await hil.set("time.lockstep", 0.0)
                await hil.set("time.speed", scenario.speed)
            else:
                await hil.set("time.lockstep", 1.0 if bench.time.lockstep else 0.0)
            for name, value in scenario.initial:
                await hil.set(name, value)
            collector = await stack.enter_async_context(
                Collector(run.mqtt_host, run.mqtt_port, run.node_id, lambda tb: tb - t_reset[0]))
            ground = None
            if "ground" in scenario.needs or scenario.actions() & {"ground.stop", "ground.start"}:
                ground = GroundSide(run)
                stack.push_async_callback(ground.stop)
                await ground.start()
            await run.start_node()
            progress(0.0, "node up")
            await _wait_link(collector, 150)  # a cold numba cache compiles every kernel first
            await hil.set("truth.reset", 1.0)
            t_reset[0] = _f(await hil.get("t_board"))
            result.period_s = _f(await hil.get("orbit.period_s"))
            period = result.period_s if math.isfinite(result.period_s) and result.period_s > 0 else 5730.0
            result.duration_s = scenario.duration_s(period, quick=quick)
            pending = sorted(scenario.timeline, key=lambda i: i.at_s(period))
            speed_gpus = run.speed_gpus()
            written: dict[int, str] = {}  # what each GPU's speed file holds
            storm: asyncio.Task[None] | None = None
            while True:
                vals = await asyncio.gather(*(hil.get(n) for n in SAMPLED))
                s = Sample(t_s=_f(vals[0]), wall_s=time.monotonic() - wall0, temp_c=_list(vals[1]),
                           cap_w=_list(vals[2]), power_w=_list(vals[3]), soc=_f(vals[4]),
                           work_done=_f(vals[5]), work_lost=_f(vals[6]), eclipse=_f(vals[7]) > 0.5,
                           shutdowns=_f(vals[8]), seu=_f(vals[9]), radiator_c=_f(vals[10]))
                result.samples.append(s)
                if speed_gpus:
                    _write_gpu_speeds(run, speed_gpus, await hil.get("gpu_speed"), written)
                while pending and s.t_s >= pending[0].at_s(period):
                    entry = pending.pop(0)
                    task = await _apply(entry, s.t_s, run, hil, result, ground, collector)
                    if task is not None:
                        storm = task
                progress(s.t_s / result.duration_s, f"t={s.t_s:7.0f} s {policy}")
                if s.t_s >= result.duration_s:
                    break
                if run.node is not None and not run.node.running and not _node_down_expected(result):
                    raise RuntimeError(f"node exited with {run.node.returncode}:\n{run.node.tail(15)}")
                await asyncio.sleep(sample_wall_s)
            if storm is not None:
                await storm
            final = dict(zip(FINAL, await asyncio.gather(*(hil.get(n) for n in FINAL)), strict=True))
            progress(1.0, "draining telemetry")
            await _drain(collector)
            result.events = collector.events
            result.modes = collector.modes
            result.metrics = compute_metrics(result, final, collector, run)
            if ground is not None:
                result.metrics["archive_gaps"] = await ground.gaps()
            if result.commands:
                await asyncio.sleep(1.0)  # the last reports
                result.metrics.update(judge_commands(result, collector.reports))
    except Exception as exc:  # the system under test failed: record it, keep going
        result.error = f"{type(exc).__name__}: {exc}"
        log.debug("run %s/%s failed:\n%s", scenario.name, policy, traceback.format_exc())
    finally:
        result.wall_s = time.monotonic() - wall0
        for proc in (run.board, run.node):
            if proc is not None:
                for stream in ("stdout", "stderr"):
                    path = proc.log_path(stream)
                    if path is not None and path.exists():
                        result.logs[f"{proc.name}.{stream}"] = str(path)
        if run.mosquitto is not None and run.mosquitto.log_path.exists():
            result.logs["mosquitto"] = str(run.mosquitto.log_path)
    judge(result)
    progress(1.0, result.verdict.upper())
    return result


def _write_gpu_speeds(run: BenchRun, gpus: list[int], speeds: Any, written: dict[int, str] | None = None) -> None:
    """Each simulated GPU's speed where the process job on it reads it (atomic: a job never
    reads half a number); only what changed since ``written`` (updated in place)."""
    values = _list(speeds)
    written = {} if written is None else written
    for gpu in gpus:
        text = f"{values[gpu]:.3g}" if gpu < len(values) else None
        if text is not None and written.get(gpu) != text:
            written[gpu] = text
            path = run.gpu_speed_path(gpu)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)


def _node_down_expected(result: RunResult) -> bool:
    kills = sum(1 for a in result.applied if a.get("action") == "node.kill")
    starts = sum(1 for a in result.applied if a.get("action") == "node.start")
    return kills > starts


async def _wait_link(collector: Collector, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hk = collector.last_hk
        if hk is not None and hk.link_up and len(hk.temp_c) > 0:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the node reported no board link within {timeout:g} s")


async def _drain(collector: Collector, timeout: float = 15.0) -> None:
    """Wait until ground has every sequence number up to the newest (or the timeout)."""
    deadline = time.monotonic() + timeout
    await asyncio.sleep(0.5)
    while time.monotonic() < deadline and collector.missing():  # noqa: ASYNC110 (two conditions)
        await asyncio.sleep(0.2)


async def _apply(entry: Injection, t_s: float, run: BenchRun, hil: HilClient | BenchHil, result: RunResult,
                 ground: GroundSide | None, collector: Collector | None = None) -> asyncio.Task[None] | None:
    record: dict[str, Any] = {"t_s": t_s, "planned_s": entry.at_s(result.period_s or 5730.0),
                              "set": {k: v for k, v in entry.set}, "action": entry.action}
    result.applied.append(record)
    for name, value in entry.set:
        await hil.set(name, value)
        if name in ("board.reset", "board.resets") and collector is not None:
            collector.board_reset(t_s)
    task: asyncio.Task[None] | None = None
    if entry.action == "node.kill":
        await run.kill_node()
    elif entry.action == "node.start":
        await run.start_node()
    elif entry.action == "broker.stop":
        await run.stop_broker()
    elif entry.action == "broker.start":
        await run.start_broker()
    elif entry.action == "ground.stop" and ground is not None:
        await ground.stop()
    elif entry.action == "ground.start" and ground is not None:
        await ground.start()
    elif entry.action == "commands.storm":
        task = asyncio.create_task(command_storm(run, result), name="umbra.hil.storm")
    if entry.wait_s:
        await asyncio.sleep(entry.wait_s)
    return task


class GroundSide:
    """The ground archive's ingest (ground/ingest.py) in this process, stoppable and restartable."""

    def __init__(self, run: BenchRun) -> None:
        self.run = run
        self.path = run.workdir / (run.spec.ground.archive or "archive.sqlite")
        self._stack: contextlib.AsyncExitStack | None = None
        self._archive: Any = None
        self.client_id = f"umbra-hil-ingest-{uuid.uuid4().hex[:6]}"

    async def start(self) -> None:
        from ground.archive import Archive
        from ground.ingest import Ingestor

        self._stack = contextlib.AsyncExitStack()
        self._archive = Archive(str(self.path))
        self._stack.callback(self._archive.close)
        ing = await self._stack.enter_async_context(Ingestor(
            archive=self._archive, host=self.run.mqtt_host, port=self.run.mqtt_port, client_id=self.client_id))
        await asyncio.wait_for(ing.subscribed.wait(), 20)
        self._ingestor = ing

    async def stop(self) -> None:
        if self._stack is not None:
            with contextlib.suppress(Exception):
                await self._ingestor.drain(5.0)
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def gaps(self) -> float:
        from ground.archive import Archive

        if self._stack is not None:
            with contextlib.suppress(Exception):
                await asyncio.sleep(1.0)
                await self._ingestor.drain(10.0)
        with Archive(str(self.path)) as archive:
            rows = archive.gaps(self.run.node_id)
        return float(sum(int(r["last_seq"]) - int(r["first_seq"]) + 1 for r in rows))


def compute_metrics(result: RunResult, final: dict[str, Any], collector: Collector, run: BenchRun) -> dict[str, float]:
    m: dict[str, float] = {}
    temps = [max(t for t in s.temp_c if not math.isnan(t)) for s in result.samples if s.temp_c]
    m["max_temp_c"] = max(temps) if temps else float("nan")
    m["slowdown_s"] = _f(final["truth.slowdown_s"])
    m["shutdowns"] = _f(final["truth.shutdowns"])
    m["soc_min"] = _f(final["truth.soc_min"])
    m["below_floor_s"] = _f(final["truth.below_floor_s"])
    m["uv_trips"] = _f(final["truth.uv_trips"])
    m["work_lost"] = _f(final["truth.work_lost"])
    m["work_useful"] = _f(final["truth.work_done"]) - m["work_lost"]
    m["work_bound"] = _f(final["truth.work_bound"])
    m["work_vs_bound"] = m["work_useful"] / m["work_bound"] if m["work_bound"] > 0 else float("nan")
    m["board_time_s"] = _f(final["truth.t_s"])
    missing = collector.missing()
    m["telemetry_gaps"] = float(len(missing))
    m["telemetry_packets"] = float(len(collector.seqs))
    m["telemetry_redelivered"] = float(collector.duplicates)
    m["loss_vs_interval"] = collector.max_loss_vs_interval
    m["link_downs"] = float(sum(1 for e in collector.events if e["kind"] == "link_down"))
    m["safe_fraction"] = _safe_fraction(result)
    m["node_alive"] = 1.0 if run.node is not None and run.node.running else 0.0
    m["node_starts"] = float(run.node_starts)
    if result.scenario.jobs:
        m["job_progress"] = collector.job_progress()
        m["job_faults"] = float(collector.job_faults)
        # No fault, no loss: 0 rather than unmeasurable (job_faults says whether any happened).
        loss = collector.max_job_loss_vs_interval
        m["job_loss_vs_interval"] = 0.0 if collector.job_faults == 0 and math.isnan(loss) else loss
    return m


def _safe_fraction(result: RunResult) -> float:
    """Fraction of board time spent in SAFE, from the mode timeline."""
    if not result.modes or result.duration_s <= 0:
        return float("nan")
    total = 0.0
    for (t0, mode), (t1, _) in zip(result.modes, [*result.modes[1:], (result.duration_s, "")], strict=True):
        if mode == "SAFE":
            total += max(0.0, min(t1, result.duration_s) - max(t0, 0.0))
    return total / result.duration_s


#: Comparison metrics and the policy whose run each needs (``--compare``).
COMPARED: dict[str, str] = {"work_vs_baseline": "baseline", "job_progress_vs_baseline": "baseline",
                            "work_vs_peer": "ipa", "work_vs_ipa": "ipa", "work_vs_step_wise": "step_wise",
                            "job_progress_vs_peer": "ipa", "work_vs_oracle": "oracle",
                            "work_vs_oracle_bound": "oracle"}

#: Policies computed offline in this process rather than run on the bench (hil/oracle.py).
OFFLINE_POLICIES = ("oracle",)


def _ratio(ours: float, theirs: float) -> float:
    # The other may end having just lost everything: any of ours beats none.
    return ours / theirs if theirs > 0 else math.inf if ours > 0 else math.nan


def judge(result: RunResult, *others: RunResult | None) -> None:
    """Judge every measurement; a comparison measurement needs the run of its policy
    (:data:`COMPARED`) among ``others`` and is skipped without it."""
    ran = {o.policy: o for o in others if o is not None}
    for policy, other in ran.items():
        for metric in ("work_useful", "job_progress"):
            if metric in result.metrics and metric in other.metrics:
                ratio = _ratio(result.metrics[metric], other.metrics[metric])
                name = "work" if metric == "work_useful" else "job_progress"
                result.metrics[f"{name}_vs_{policy}"] = ratio
                if policy == "ipa":  # the peer a user would pick instead (issue #16)
                    result.metrics[f"{name}_vs_peer"] = ratio
        if policy == "oracle" and "oracle_bound" in other.metrics and "work_useful" in result.metrics:
            result.metrics["oracle_bound"] = other.metrics["oracle_bound"]
            result.metrics["work_vs_oracle_bound"] = _ratio(result.metrics["work_useful"],
                                                            other.metrics["oracle_bound"])
    outcomes = []
    for meas in result.scenario.measures:
        value = result.metrics.get(meas.metric)
        needs = COMPARED.get(meas.metric, "baseline")
        if meas.compare and needs not in ran:
            outcome = "skipped"
        elif result.policy in OFFLINE_POLICIES and meas.metric not in result.metrics:
            outcome = "skipped"  # the oracle has no node, link or ground to measure
        elif result.error:
            outcome = "error"
        else:
            outcome = meas.judge(value)
        outcomes.append(Outcome(meas.metric, value, meas.min, meas.max, meas.unit or METRICS[meas.metric][0],
                                meas.why, meas.compare, outcome))
    result.outcomes = outcomes


@dataclass
class Job:
    scenario: Scenario
    policy: str

    @property
    def label(self) -> str:
        return f"{self.scenario.name}/{self.policy}"


async def run_many(
    scenarios: list[Scenario],
    bench: BenchSpec,
    *,
    report_dir: Path,
    compare: str | list[str] | None = None,
    jobs: int = 1,
    quick: bool = False,
    out: TextIO | None = sys.stderr,
    policy: str = "umbra",
) -> list[tuple[RunResult, RunResult | None]]:
    """Run every scenario (and, with ``compare``, the same scenario under each of those
    policies too).

    Returns per scenario (run, comparison run) for one compared policy, (run, [runs]) for
    several, (run, None) for none; judged (comparison measurements on the main run against
    the run of the policy each names)."""
    compared = [compare] if isinstance(compare, str) else list(compare or [])
    todo = [Job(s, policy) for s in scenarios]
    for other_policy in compared:
        todo += [Job(s, other_policy) for s in scenarios]
    progress = Progress(out, [j.label for j in todo])
    sem = asyncio.Semaphore(max(1, jobs))
    results: dict[str, RunResult] = {}

    async def one(job: Job) -> None:
        async with sem:
            if job.policy in OFFLINE_POLICIES:  # CPU-bound: a slot like a bench run
                results[job.label] = await asyncio.to_thread(_offline, job, report_dir, quick, progress)
                return
            res = await run_scenario(
                job.scenario, bench, policy=job.policy, quick=quick,
                run_dir=report_dir / job.scenario.name / job.policy,
                progress=lambda f, n: progress.update(job.label, f, n, force=f >= 1.0))
            results[job.label] = res

    async with asyncio.TaskGroup() as tg:
        for job in todo:
            tg.create_task(one(job))
    progress.done()
    pairs: list[tuple[RunResult, Any]] = []
    for s in scenarios:
        main = results[f"{s.name}/{policy}"]
        others = [results[f"{s.name}/{p}"] for p in compared]
        judge(main, *others)
        for other in others:
            judge(other)
        pairs.append((main, others[0] if isinstance(compare, str) else others or None))
    return pairs


def _offline(job: Job, report_dir: Path, quick: bool, progress: Progress) -> RunResult:
    """An offline policy's run (the oracle's LP and its replay on the plant), judged alone."""
    from hil.oracle import run_oracle

    run_dir = report_dir / job.scenario.name / job.policy
    progress.update(job.label, 0.0, "solving")
    try:
        prepare_run_dir(run_dir)
        result = run_oracle(job.scenario, run_dir=run_dir, quick=quick)
    except RunDirInUse as exc:
        result = RunResult(scenario=job.scenario, policy=job.policy, run_dir=run_dir, error=str(exc))
    judge(result)
    progress.update(job.label, 1.0, result.verdict.upper(), force=True)
    return result
