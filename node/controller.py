"""The onboard controller: board events in, control decisions and telemetry out.

``NodeController`` owns a TaskGroup with two tasks: the control loop, which runs once per
sensor frame (board time is the clock for control), and the housekeeping loop, which
publishes at ``mqtt.hk_rate_hz`` of wall time.  It talks to the board only through
:class:`node.board.Board` and to ground only through a :class:`Publisher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import numpy as np

from node.board import Board, BoardInfo, CommandResult, LinkDown, LinkUp, SensorReading
from node.bus.payloads import Event, Housekeeping, Mode, Severity
from node.config import NodeConfig
from node.control import kernels
from node.control.law import PARAM_SPECS, ControlParams, Law, UmbraLaw, make_law
from node.control.params import load_params, save_params
from node.errors import CommandRejected, ConfigError, LinkError, Reason
from node.fdir import Action, Change, Fdir, Level
from node.jobs.manager import ESTIMATOR_PRIOR, Foresight, SimJobManager
from node.jobs.store import AsyncCheckpointStore
from node.link.messages import AckStatus, Sensor, SensorFlag
from node.modes import ENTRY_ACTIONS, ModeMachine, Transition, Trigger

log = logging.getLogger("umbra.node.control")

#: How long a GPU's rail stays off when FDIR resets it (board seconds).
RAIL_CYCLE_S = 2.0
#: Frames a new operating mode must hold before the node switches to it.
MODE_DEBOUNCE = 5
#: Clean frames in a row before a flagged temperature sensor counts as recovered.
SENSOR_CLEAR_FRAMES = 20

_FLAG_NAMES = (
    (kernels.FLAG_NAN, "NaN"),
    (kernels.FLAG_RANGE, "out of range"),
    (kernels.FLAG_STUCK, "stuck"),
    (kernels.FLAG_INNOVATION, "disagrees with the model"),
    (kernels.FLAG_NEIGHBOURS, "reads colder than its neighbours"),
)


class Publisher(Protocol):
    def publish(self, payload: Housekeeping | Event) -> None: ...


class NodeController:
    def __init__(
        self,
        *,
        config: NodeConfig,
        board: Board,
        publisher: Publisher,
        clock: Callable[[], float] = time.monotonic,
        utc: Callable[[], float] = time.time,
        next_seq: Callable[[], int] | None = None,
        params_path: Path | None = None,
        store: AsyncCheckpointStore | None = None,
    ) -> None:
        self._config = config
        self._board = board
        self._publisher = publisher
        self._clock = clock
        self._utc = utc
        self._modes = ModeMachine()
        # Telemetry numbering; the CLI passes the outbox's, so numbers survive restarts.
        self._next_seq = next_seq or itertools.count(1).__next__
        self._info: BoardInfo | None = None
        self._last: Sensor | None = None
        self._caps = np.zeros(0)
        self._sent = np.zeros(0)
        self._limits = np.zeros(0)
        self._weights = np.zeros(0)
        self._flags_seen = np.zeros(0, dtype=np.int64)
        self._sensor_clean = np.zeros(0, dtype=np.int64)
        self._temp_est = np.zeros(0)
        self._budget_w = float("inf")
        self._law: Law = make_law(config.policy, config.control)
        self._fdir = Fdir(config.fdir)
        self._fdir_limits = np.zeros(0)
        self._xid_seen = np.zeros(0)
        self._rail_on_at: dict[int, float] = {}  # GPU → board time to switch its rail back on
        self._jobs = SimJobManager(
            policy=config.policy,
            config=config.sim_jobs,
            estimator_config=ESTIMATOR_PRIOR,
            store=store,
            send_checkpoint=lambda gpu, pause_s: self._board.checkpoint(gpu, pause_s),
            event=lambda kind, severity, text, **data: self._event(kind, Severity(severity), text, **data),
            spawn=self._spawn,
        )
        self._named_jobs: dict[str, tuple[int, int]] = {}  # ground-submitted job → (GPU mask, priority)
        # Load shedding: GPU → board time its rail goes off (after its checkpoint), and off ones.
        self._mode_candidate: Trigger | None = None
        self._mode_votes = 0
        self._shedding: dict[int, float] = {}
        self._shed: set[int] = set()
        self._short_frames = 0
        self._surplus_frames = 0
        self._paused_gpus: set[int] = set()
        # Parameters changed by command persist here and win over the config file at start.
        self._params_path = params_path
        if params_path is not None:
            self._apply_params(load_params(params_path, config.control))
        self._watchdog_seen = False
        self._control_us = 0.0
        self._cap_limits: dict[int, float] = {}
        self._hk_wakeup = asyncio.Event()
        self._task_group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Set after every control step; tests and the service watchdog wait on it.
        self.stepped = asyncio.Event()
        self.steps = 0

    @property
    def mode(self) -> Mode:
        return self._modes.mode

    @property
    def last_sensor(self) -> Sensor | None:
        return self._last

    async def __aenter__(self) -> Self:
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._tasks = [
            self._task_group.create_task(self._control_loop(), name="umbra.node.control"),
            self._task_group.create_task(self._hk_loop(), name="umbra.node.hk"),
        ]
        self._event("boot", Severity.INFO, f"node {self._config.node_id} started")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task_group is not None
        for task in self._tasks:
            task.cancel()
        await self._task_group.__aexit__(exc_type, exc, tb)

    # --- commands (called by the bus's command processor) ------------------------------------
    # Each either takes effect or raises CommandRejected with a Reason code; none blocks.

    def command_safe(self, reason: str = "commanded by ground") -> None:
        self._fire(Trigger.SAFE_COMMANDED, reason)
        self._sent[:] = np.nan  # next step sends the minimum caps

    def command_release_safe(self, reason: str = "released by ground") -> None:
        self._fire(Trigger.SAFE_RELEASED, reason)
        self._sent[:] = np.nan

    def set_gpu_cap_limit(self, gpu: int, max_w: float | None) -> None:
        """Ground's upper limit on one GPU's cap (None lifts it); the controller stays below."""
        info = self._require_gpu(gpu)
        if max_w is None:
            self._cap_limits.pop(gpu, None)
        elif not info.cap_min_w <= max_w <= info.cap_max_w:
            raise CommandRejected(
                f"cap limit {max_w} W outside [{info.cap_min_w}, {info.cap_max_w}]", code=Reason.OUT_OF_RANGE
            )
        else:
            self._cap_limits[gpu] = max_w
        self._limits[gpu] = self._cap_limits.get(gpu, np.inf)
        self._sent[:] = np.nan

    def set_rail(self, gpu: int, on: bool) -> None:
        self._require_gpu(gpu)
        try:
            self._board.set_rail(gpu, on)
        except LinkError as exc:
            raise CommandRejected(str(exc), code=Reason.LINK_DOWN) from None

    def reboot_board(self) -> None:
        try:
            self._board.reset_board()
        except LinkError as exc:
            raise CommandRejected(str(exc), code=Reason.LINK_DOWN) from None
        self._event("board_reset", Severity.WARNING, "board reboot commanded")

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._task_group is None:
            coro.close()
            return
        self._task_group.create_task(coro, name="umbra.node.jobs.store")

    def _job_gpus(self, job: str) -> list[int]:
        info = self._require_board()
        if job in self._named_jobs:
            mask = self._named_jobs[job][0]
            return [g for g in range(info.gpu_count) if mask >> g & 1]
        if job.startswith("gpu-") and job[4:].isdigit() and int(job[4:]) < info.gpu_count:
            return [int(job[4:])]  # every GPU runs a job of its own unless ground says otherwise
        raise CommandRejected(f"no job {job!r}", code=Reason.NOT_FOUND)

    def submit_job(self, job: str, gpus: int, priority: int | None) -> None:
        info = self._require_board()
        if gpus >> info.gpu_count:
            raise CommandRejected(f"GPU mask {gpus:#x} names GPUs the board lacks", code=Reason.OUT_OF_RANGE)
        self._named_jobs[job] = (gpus, 1 if priority is None else priority)
        self._apply_weights()
        self._event("job", Severity.INFO, f"job {job} submitted on GPUs {gpus:#x}", job=job, gpus=gpus)

    def cancel_job(self, job: str) -> None:
        self._job_gpus(job)
        if job not in self._named_jobs:
            raise CommandRejected(f"job {job!r} is the GPU's own; it cannot be cancelled", code=Reason.NOT_ALLOWED)
        del self._named_jobs[job]
        self._apply_weights()
        self._event("job", Severity.INFO, f"job {job} cancelled", job=job)

    def pause_job(self, job: str) -> None:
        for gpu in self._job_gpus(job):
            self._jobs.request(gpu, f"job {job} paused")
            self._paused_gpus.add(gpu)
        self._event("job", Severity.INFO, f"job {job} paused after a checkpoint", job=job)

    def resume_job(self, job: str) -> None:
        for gpu in self._job_gpus(job):
            self._paused_gpus.discard(gpu)
        self._event("job", Severity.INFO, f"job {job} resumed", job=job)

    def checkpoint_job(self, job: str) -> None:
        gpus = self._job_gpus(job)
        if not self._jobs.active:
            raise CommandRejected("this board keeps no checkpoints", code=Reason.UNSUPPORTED)
        for gpu in gpus:
            self._jobs.request(gpu, "ground request")

    def _apply_weights(self) -> None:
        # Priority 0–100 → allocation weight 1–11: higher priority, more of the budget.
        self._weights[:] = 1.0
        for mask, priority in self._named_jobs.values():
            for gpu in range(len(self._weights)):
                if mask >> gpu & 1:
                    self._weights[gpu] = 1.0 + priority / 10.0

    def set_hk_rate(self, hz: float) -> None:
        try:
            mqtt = dataclasses.replace(self._config.mqtt, hk_rate_hz=float(hz))
        except ConfigError as exc:
            raise CommandRejected(str(exc), code=Reason.OUT_OF_RANGE) from None
        self._config = dataclasses.replace(self._config, mqtt=mqtt)
        self._hk_wakeup.set()

    def param_names(self) -> list[str]:
        return [f"control.{name}" for name in PARAM_SPECS]

    def get_param(self, name: str) -> float:
        key = name.removeprefix("control.")
        if key not in PARAM_SPECS:
            raise CommandRejected(f"unknown parameter {name!r}", code=Reason.BAD_ARGUMENT)
        return float(getattr(self._config.control, key))

    def set_param(self, name: str, value: float) -> None:
        self.get_param(name)  # validates the name
        key = name.removeprefix("control.")
        try:
            control = self._config.control.replace(**{key: float(value)})
        except (ConfigError, TypeError, ValueError) as exc:
            raise CommandRejected(str(exc), code=Reason.OUT_OF_RANGE) from None
        self._apply_params(control)
        if self._params_path is not None:
            save_params(self._params_path, control)
        self._event("param", Severity.INFO, f"{name} = {value}", name=name, value=float(value))

    def _apply_params(self, control: ControlParams) -> None:
        self._config = dataclasses.replace(self._config, control=control)
        if isinstance(self._law, UmbraLaw):
            self._law.params = control  # state (estimates, integrators) carries over

    def _require_board(self) -> BoardInfo:
        if self._info is None or not self._board.link_up:
            raise CommandRejected("the board link is down", code=Reason.LINK_DOWN)
        return self._info

    def _require_gpu(self, gpu: int) -> BoardInfo:
        info = self._require_board()
        if not 0 <= gpu < info.gpu_count:
            raise CommandRejected(f"no GPU {gpu} (board has {info.gpu_count})", code=Reason.OUT_OF_RANGE)
        return info

    # --- telemetry --------------------------------------------------------------------------

    def _t_board(self) -> float:
        return self._last.t_board if self._last is not None else 0.0

    def _event(self, kind: str, severity: Severity, text: str, **data: Any) -> None:
        log.log(logging.WARNING if severity >= Severity.WARNING else logging.INFO, "%s: %s", kind, text)
        self._publisher.publish(
            Event(
                node_id=self._config.node_id,
                seq=self._next_seq(),
                utc=self._utc(),
                t_board=self._t_board(),
                kind=kind,
                severity=int(severity),
                text=text,
                data=data,
            )
        )

    def housekeeping(self) -> Housekeeping:
        s = self._last
        return Housekeeping(
            node_id=self._config.node_id,
            seq=self._next_seq(),
            utc=self._utc(),
            t_board=self._t_board(),
            mode=self.mode.value,
            link_up=self._board.link_up,
            temp_c=Housekeeping.temps_for_wire(s.temp_c) if s else (),
            power_w=s.power_w if s else (),
            cap_w=s.cap_w if s else (),
            progress=s.progress if s else (),
            solar_w=s.solar_w if s else 0.0,
            battery_soc=s.battery_soc if s else 0.0,
            radiator_c=None if s is None or s.radiator_c != s.radiator_c else s.radiator_c,
            board_flags=s.flags if s else 0,
            link=self._board.stats(),
            control_us=self._control_us,
            jobs=self._jobs.telemetry(),
        )

    async def _hk_loop(self) -> None:
        next_at = self._clock()
        while True:
            self._publisher.publish(self.housekeeping())
            next_at += 1.0 / self._config.mqtt.hk_rate_hz
            # If we fell far behind (suspended process), do not burst to catch up.
            next_at = max(next_at, self._clock())
            self._hk_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                # A new rate takes effect at once, not after a long old period.
                await asyncio.wait_for(self._hk_wakeup.wait(), next_at - self._clock())
                next_at = self._clock()

    # --- control ----------------------------------------------------------------------------

    def _fire(self, trigger: Trigger, reason: str) -> None:
        transition = self._modes.fire(trigger, reason)
        if transition is not None:
            self._announce(transition)

    def _announce(self, t: Transition) -> None:
        if "checkpoint_all" in ENTRY_ACTIONS[t.after]:
            self._jobs.request(None, f"{t.after.value} entered")
        severity = Severity.WARNING if t.after is Mode.SAFE else Severity.INFO
        self._event(
            "mode",
            severity,
            f"mode {t.before.value} -> {t.after.value}: {t.reason}",
            before=t.before.value,
            after=t.after.value,
            trigger=t.trigger.value,
        )

    async def _control_loop(self) -> None:
        while True:
            event = await self._board.next_event()
            if isinstance(event, SensorReading):
                self._step(event.sensor)
            elif isinstance(event, LinkUp):
                self._link_up(event.info)
            elif isinstance(event, LinkDown):
                self._event("link_down", Severity.WARNING, f"board link down: {event.reason}")
                self._fire(Trigger.LINK_LOST, f"board link lost ({event.reason})")
            elif isinstance(event, CommandResult):
                self._command_result(event)

    def _link_up(self, info: BoardInfo) -> None:
        self._info = info
        n = info.gpu_count
        self._cap_limits = {g: c for g, c in self._cap_limits.items() if g < n}
        self._caps = np.zeros(n)
        self._sent = np.full(n, np.nan)  # NaN: nothing sent this session, so the next step sends
        self._limits = np.full(n, np.inf)
        for gpu, limit in self._cap_limits.items():
            self._limits[gpu] = limit
        self._weights = np.ones(n)
        self._apply_weights()
        self._flags_seen = np.zeros(n, dtype=np.int64)  # faults as reported (held until clean)
        self._sensor_clean = np.zeros(n, dtype=np.int64)  # clean frames in a row since a fault
        self._temp_est = np.full(n, np.nan)
        self._law.reset(gpu_count=n, cap_min_w=info.cap_min_w, cap_max_w=info.cap_max_w)
        self._fdir.reset()
        self._jobs.reset(n)
        self._shedding, self._shed = {}, set()
        self._fdir_limits = np.full(n, np.inf)
        self._xid_seen = np.full(n, np.nan)
        self._rail_on_at = {}
        self._watchdog_seen = False
        self._event(
            "link_up",
            Severity.INFO,
            f"board {info.board_id} (fw {info.fw_version}, {n} GPUs) connected",
            board_id=info.board_id,
            fw_version=info.fw_version,
            gpu_count=n,
        )
        self._fire(Trigger.LINK_UP, "board link established")

    def _command_result(self, result: CommandResult) -> None:
        if result.status == AckStatus.OK:
            return
        name = type(result.message).__name__
        if result.status is None:
            text = f"board never acknowledged {name}"
        else:
            text = f"board refused {name}: status {result.status}"
        self._sent[:] = np.nan  # resend on the next step
        self._event("command_failed", Severity.WARNING, text)

    def _step(self, sensor: Sensor) -> None:
        info = self._info
        if info is None or sensor.gpu_count != info.gpu_count:
            return
        started = time.perf_counter()
        self._last = sensor
        limits = np.minimum(self._limits, self._fdir_limits)
        for gpu in self._paused_gpus:
            limits[gpu] = info.cap_min_w
        result = self._law.step(sensor, limits_w=limits, weights=self._weights)
        self._caps[:] = result.caps_w
        self._temp_est = result.temp_est_c
        if self.mode is Mode.SAFE:
            self._caps[:] = info.cap_min_w
        self._sensor_events(result.sensor_flags)
        watchdog = bool(sensor.flags & SensorFlag.WATCHDOG_SAFE)
        if watchdog and not self._watchdog_seen:
            self._event("board_watchdog", Severity.WARNING, "board watchdog put the GPUs in the safe state")
            self._sent[:] = np.nan  # the board dropped our caps; send them again
        self._watchdog_seen = watchdog
        changed = bool(np.isnan(self._sent).any()) or kernels.caps_changed(
            self._caps, self._sent, self._config.control.deadband_w
        )
        if changed:
            try:
                self._board.set_caps(self._caps.tolist())
                self._sent[:] = self._caps
            except LinkError:
                pass  # the link just went down; its event is on the way
        self._budget_w = result.budget_w
        self._run_fdir(sensor, result.sensor_flags, info)
        if self.mode is not Mode.SAFE:
            self._manage_load(sensor, info, result.budget_w)
        p = self._config.control
        self._jobs.on_frame(
            sensor,
            Foresight(
                # Above the planning limit the controller is losing the GPU (pump, radiator):
                # the hardware's slowdown and shutdown are what comes next.
                hot=self._temp_est > p.limit_c + self._config.sim_jobs.thermal_lead_k,
                eclipse_in_s=sensor.eclipse_in_s if sensor.eclipse_in_s >= 0.0 else float("nan"),
            ),
        )
        if self.mode is not Mode.SAFE:
            self._pick_operating_mode(result.thermal_bound, result.power_limited)
        self._control_us = (time.perf_counter() - started) * 1e6
        self._board.step_done(sensor.t_board)  # after any command: lockstep may advance
        self.steps += 1
        self.stepped.set()

    def _run_fdir(self, sensor: Sensor, flags: np.ndarray, info: BoardInfo) -> None:
        xid = np.asarray(sensor.xid or np.zeros(info.gpu_count), dtype=float)  # (): not reported
        new_xid = np.nan_to_num(xid - self._xid_seen, nan=0.0)  # the first frame is no news
        self._xid_seen = xid
        changes = self._fdir.evaluate(
            {
                "gpu.temp_c": self._temp_est,
                "gpu.xid": new_xid,
                "gpu.sensor_fault": self._flags_seen.astype(float),
                "battery.soc": np.array([sensor.battery_soc]),
                "radiator.temp_c": np.array([sensor.radiator_c]),
            }
        )
        for change in changes:
            self._fdir_change(change, sensor, info)
        if changes:
            # Throttles hold while any throttle level holds; recomputed from the monitors.
            self._fdir_limits[:] = np.inf
            for _spec, index in self._fdir.red(Action.THROTTLE):
                if index < 0:
                    self._fdir_limits[:] = info.cap_min_w
                else:
                    self._fdir_limits[index] = info.cap_min_w
            if not self._fdir.red(Action.SAFE):
                self._fire(Trigger.FAULT_CLEARED, "no critical limit violated")
        for gpu, at in list(self._rail_on_at.items()):
            if sensor.t_board >= at:
                with contextlib.suppress(LinkError):
                    self._board.set_rail(gpu, True)
                    del self._rail_on_at[gpu]
                    self._event("rail_on", Severity.INFO, f"GPU {gpu} rail back on after reset", gpu=gpu)

    def _fdir_change(self, change: Change, sensor: Sensor, info: BoardInfo) -> None:
        spec = change.monitor
        where = f"GPU {change.index} " if change.index >= 0 else ""
        severity = {Level.GREEN: Severity.INFO, Level.YELLOW: Severity.WARNING, Level.RED: Severity.ERROR}[change.after]
        self._event(
            "limit",
            severity,
            f"{where}{spec.name} {change.before.name} -> {change.after.name} ({spec.channel} = {change.value:.3g})"
            + (f": {change.action.value}" if change.action is not Action.NONE else ""),
            monitor=spec.name,
            index=change.index,
            level=change.after.name,
            value=change.value,
            action=change.action.value,
        )
        if change.action is Action.SAFE:
            self._fire(Trigger.CRITICAL_FAULT, f"{spec.name}: {spec.description or spec.channel}")
        elif change.action is Action.RAIL_CYCLE and change.index >= 0:
            with contextlib.suppress(LinkError):
                self._board.set_rail(change.index, False)
                self._rail_on_at[change.index] = sensor.t_board + RAIL_CYCLE_S
        elif change.action is Action.CHECKPOINT:
            self._event("checkpoint_request", Severity.INFO, f"{spec.name}: checkpoint requested", monitor=spec.name)
            self._jobs.request(None, spec.name)

    def _manage_load(self, sensor: Sensor, info: BoardInfo, budget_w: float) -> None:
        """Shed GPUs when even their minimum caps overdraw the budget; restore them after.

        The lowest-priority GPU goes first, after a checkpoint (its rail goes off once the
        checkpoint had time to finish), so shedding costs no work.  Persistence on both
        sides keeps a budget hovering at the edge from switching rails back and forth.
        """
        if self._config.policy != "umbra" or budget_w == float("inf"):
            return
        t = sensor.t_board
        on = [g for g in range(info.gpu_count)
              if sensor.rails >> g & 1 and g not in self._shedding and g not in self._shed]
        floor_w = info.cap_min_w * len(on)
        self._short_frames = self._short_frames + 1 if budget_w < floor_w - 1.0 else 0
        if self._short_frames >= 3 and on:
            victim = min(on, key=lambda g: (self._weights[g], -g))
            self._jobs.request(victim, "load shed ahead")
            grace = 1.5 * self._config.sim_jobs.pause_s if self._jobs.active else 0.0
            self._shedding[victim] = t + grace
            self._short_frames = 0
            self._event("load_shed", Severity.WARNING,
                        f"budget {budget_w:.0f} W below the minimum of {len(on)} GPUs: shedding GPU {victim}",
                        gpu=victim, budget_w=budget_w)
        for gpu, at in list(self._shedding.items()):
            if t >= at:
                with contextlib.suppress(LinkError):
                    self._board.set_rail(gpu, False)
                    del self._shedding[gpu]
                    self._shed.add(gpu)
        spare = budget_w - floor_w - info.cap_min_w
        self._surplus_frames = self._surplus_frames + 1 if self._shed and spare > 100.0 else 0
        if self._surplus_frames >= 10:
            gpu = max(self._shed, key=lambda g: (self._weights[g], -g))
            with contextlib.suppress(LinkError):
                self._board.set_rail(gpu, True)
                self._shed.discard(gpu)
                self._event("load_restored", Severity.INFO, f"budget {budget_w:.0f} W: GPU {gpu} back on",
                            gpu=gpu, budget_w=budget_w)
            self._surplus_frames = 0

    def _pick_operating_mode(self, thermal_bound: int, power_limited: bool) -> None:
        """The binding constraint names the mode; a change must hold for a few frames.

        Near a boundary the thermal bound of one GPU can dip under its maximum every other
        frame; the mode is what operators read, so it changes only when the new answer
        holds for MODE_DEBOUNCE frames — except that THERMAL_LIMIT is entered at once.
        """
        p = self._config.control
        if thermal_bound:
            trigger, reason = Trigger.THERMAL_THROTTLING, f"{thermal_bound} GPU(s) held below maximum by temperature"
        elif power_limited:
            trigger, reason = Trigger.POWER_LIMITED, f"power budget {self._budget_w:.0f} W holds the GPUs back"
        elif float(np.nanmax(self._temp_est, initial=-np.inf)) < p.target_c - p.hysteresis_k:
            trigger, reason = Trigger.UNCONSTRAINED, "no thermal or power constraint binds"
        else:
            return  # inside the hysteresis band: keep the mode
        self._mode_votes = self._mode_votes + 1 if trigger is self._mode_candidate else 1
        self._mode_candidate = trigger
        if trigger is Trigger.THERMAL_THROTTLING or self._mode_votes >= MODE_DEBOUNCE:
            self._fire(trigger, reason)

    def _sensor_events(self, flags: np.ndarray) -> None:
        """One event when a sensor is first flagged, one when it has been clean for a while.

        A sensor dropping out every other frame is one fault, not one event a frame: it
        counts as recovered after ``SENSOR_CLEAR_FRAMES`` clean frames in a row, and until
        then FDIR sees it as faulty too.
        """
        for gpu in range(len(flags)):
            now, before = int(flags[gpu]), int(self._flags_seen[gpu])
            if now:
                self._sensor_clean[gpu] = 0
                if not before:
                    kinds = [name for bit, name in _FLAG_NAMES if now & bit]
                    self._event(
                        "sensor_fault",
                        Severity.WARNING,
                        f"GPU {gpu} temperature sensor {'/'.join(kinds)}: running on the estimate",
                        gpu=gpu,
                        flags=now,
                    )
                self._flags_seen[gpu] = before | now
            elif before:
                self._sensor_clean[gpu] += 1
                if self._sensor_clean[gpu] >= SENSOR_CLEAR_FRAMES:
                    self._event("sensor_ok", Severity.INFO, f"GPU {gpu} temperature sensor recovered", gpu=gpu)
                    self._flags_seen[gpu] = 0
