"""The onboard controller: board events in, control decisions and telemetry out.

``NodeController`` owns a TaskGroup with two tasks: the control loop, which runs once per
sensor frame (board time is the clock for control), and the housekeeping loop, which
publishes at ``mqtt.hk_rate_hz`` of wall time.  It talks to the board only through
:class:`node.board.Board` and to ground only through a :class:`Publisher`.

One SENSOR frame, top to bottom (:meth:`NodeController._on_sensor`):

1. the rails the board reports are reconciled with the rail book;
2. the control law (policy) computes caps from the frame, ground's limits and FDIR's;
3. sensor faults become events;
4. the caps are sent (minimum caps in SAFE; again after the board's watchdog tripped);
5. FDIR evaluates its monitors and carries out their actions;
6. load shedding (where the policy sheds), then the jobs' checkpoints;
7. the operating mode follows the binding constraint;
8. STEP_DONE, so a lockstep board may go on.

Everything a board session knows is in :class:`~node.controller.session.ControlSession`,
rebuilt at every ``LinkUp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from node.board import (
    Board,
    BoardInfo,
    CommandResult,
    LinkDown,
    LinkHealth,
    LinkProblem,
    LinkUp,
    SensorReading,
)
from node.bus.payloads import Housekeeping, Mode, Severity
from node.config import NodeConfig
from node.control.law import ControlParams, Law
from node.control.params import load_params
from node.controller.boardclock import BoardClock
from node.controller.commands import GroundIntent, NodeCommands
from node.controller.events import EventLog, Publisher
from node.controller.fdir_binding import FdirBinding
from node.controller.rails import RailBook
from node.controller.sensors import SensorFaults
from node.controller.session import ControlSession
from node.controller.shedding import LoadShedder
from node.errors import LinkError
from node.fdir import Fdir
from node.jobs.manager import ESTIMATOR_PRIOR, Foresight, SimJobManager
from node.jobs.runner import ProcessJobRunner
from node.jobs.store import AsyncCheckpointStore
from node.link.messages import AckStatus, Sensor, SetCaps
from node.modes import ENTRY_ACTIONS, ModeDebouncer, ModeMachine, Transition, Trigger
from node.policy import policy_named

#: Link states (``LinkHealth.state``) in which the node can neither trust nor command the board.
_UNHEALTHY = {"blind": "link_blind", "uncommandable": "link_uncommandable", "incompatible": "link_incompatible"}


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
        rails_path: Path | None = None,
        store: AsyncCheckpointStore | None = None,
    ) -> None:
        self.config = config
        self.board = board
        self._publisher = publisher
        self._clock = clock
        self._utc = utc
        #: The checkpoint store (None: this node keeps none); ground reads its catalogue.
        self.store = store
        #: The node's process jobs (``[[jobs]]`` with a command), attached once they run.
        self.process_jobs: ProcessJobRunner | None = None
        self._eclipse_armed = True
        self._board_clock = BoardClock(clock)
        # Telemetry numbering; the CLI passes the outbox's, so numbers survive restarts.
        self._next_seq = next_seq or itertools.count(1).__next__
        self.policy = policy_named(config.policy)
        self.events = EventLog(node_id=config.node_id, publisher=publisher, next_seq=self._next_seq, utc=utc,
                               t_board=self._t_board, clock=clock)
        self._law: Law = self.policy.make_law(config.control)
        self.rails = RailBook(path=rails_path)
        self.intent = GroundIntent()
        self.jobs = SimJobManager(
            checkpoints=self.policy.make_checkpoints(config.sim_jobs),
            config=config.sim_jobs,
            estimator_config=ESTIMATOR_PRIOR,
            store=store,
            send_checkpoint=lambda gpu, pause_s: self.board.checkpoint(gpu, pause_s),
            event=lambda kind, severity, text, **data: self.events.emit(kind, Severity(severity), text, **data),
            spawn=self._spawn,
        )
        self._fdir = FdirBinding(fdir=Fdir(config.fdir), events=self.events, rails=self.rails, board=board,
                                 jobs=self.jobs)
        self._sensors = SensorFaults(self.events)
        self._shedder = (
            LoadShedder(rails=self.rails, board=board, jobs=self.jobs, events=self.events,
                        grace_s=lambda: 1.5 * self.config.sim_jobs.pause_s, on_power=self._process_power)
            if self.policy.sheds_load else None
        )
        self._modes = ModeMachine()
        self._debounce = ModeDebouncer()
        self.commands = NodeCommands(self)
        self._session: ControlSession | None = None
        self._weights = np.zeros(0)
        self._limits_w = np.zeros(0)
        # Parameters changed by command persist here and win over the config file at start.
        self.params_path = params_path
        if params_path is not None:
            self.apply_params(load_params(params_path, config.control))
        self._budget_w = float("inf")
        self._control_us = 0.0
        self.hk_wakeup = asyncio.Event()
        self._task_group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Set after every control step; tests and the service watchdog wait on it.
        self.stepped = asyncio.Event()
        self.steps = 0

    def _allocation_weights(self, gpu_count: int) -> np.ndarray:
        """Ground's job priorities, then the configured process jobs' (the same 1 + p/10 scale)."""
        weights = self.intent.weights(gpu_count)
        named = {g for mask, _ in self.intent.named_jobs.values() for g in range(gpu_count) if mask >> g & 1}
        for job in self.config.jobs:
            if job.is_process:
                for gpu in job.gpus:
                    if gpu < gpu_count and gpu not in named:  # ground's submission wins
                        weights[gpu] = 1.0 + job.priority / 10.0
        return weights

    def _process_power(self, gpu: int, on: bool) -> None:
        if self.process_jobs is not None:
            if on:
                self.process_jobs.power_on(gpu)
            else:
                self.process_jobs.power_off(gpu, "is being shed")

    def _process_jobs_frame(self, session: ControlSession, sensor: Sensor) -> None:
        """What this frame means for the process jobs: faults, and losses foreseen."""
        runner = self.process_jobs
        assert runner is not None
        runner.gpu_count = session.info.gpu_count
        runner.tick()  # an interval due on the board clock starts its checkpoint now
        for gpu, why in session.gpu_faults(sensor):  # a real job on that GPU would crash now
            runner.gpu_fault(gpu, why)
        cfg = self.config.sim_jobs
        ecl = sensor.eclipse_in_s
        if ecl == ecl and 0.0 < ecl <= cfg.eclipse_lead_s + cfg.pause_s:
            if self._eclipse_armed:  # once per approach
                runner.checkpoint_all("eclipse ahead")
                self._eclipse_armed = False
        else:
            self._eclipse_armed = True
        hot = session.temp_est > self.config.control.limit_c + cfg.thermal_lead_k
        for hot_gpu in np.flatnonzero(hot):
            runner.checkpoint_gpu(int(hot_gpu), "heading for the thermal limit")

    def _jobs_telemetry(self) -> dict[str, Any]:
        sim = self.jobs.telemetry()
        if self.process_jobs is None:
            return sim
        return {**sim, "process": self.process_jobs.telemetry()}

    def utc(self) -> float:
        """The node's UTC now (the clock it stamps telemetry with)."""
        return self._utc()

    @property
    def mode(self) -> Mode:
        return self._modes.mode

    @property
    def last_sensor(self) -> Sensor | None:
        return self._session.last if self._session is not None else None

    async def __aenter__(self) -> Self:
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._tasks = [
            self._task_group.create_task(self._control_loop(), name="umbra.node.control"),
            self._task_group.create_task(self._hk_loop(), name="umbra.node.hk"),
        ]
        self.events.emit("boot", Severity.INFO, f"node {self.config.node_id} started")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task_group is not None
        for task in self._tasks:
            task.cancel()
        await self._task_group.__aexit__(exc_type, exc, tb)

    # --- what the command facade changes ---------------------------------------------------------

    def fire(self, trigger: Trigger, reason: str) -> None:
        transition = self._modes.fire(trigger, reason)
        if transition is not None:
            self._announce(transition)
            if self._session is not None:
                self._session.resend()  # the caps follow the mode at the next frame

    def intent_changed(self) -> None:
        """Ground changed a limit, a job or a pause: recompute what the frames read."""
        info = self.board.info
        if info is not None and self._session is not None:
            self._weights = self._allocation_weights(info.gpu_count)
            self._limits_w = self.intent.limits_w(info.gpu_count, info.cap_min_w)
            self._session.resend()

    def apply_params(self, control: ControlParams) -> None:
        self.config = dataclasses.replace(self.config, control=control)
        self._law.update_params(control)  # state (estimates, integrators) carries over

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._task_group is None:
            coro.close()
            return
        self._task_group.create_task(coro, name="umbra.node.jobs.store")

    # --- telemetry --------------------------------------------------------------------------

    def board_clock(self) -> float:
        """Board seconds since the node started (:class:`BoardClock`): the interval clock of
        process jobs under ``checkpoints.clock = "board"``."""
        return self._board_clock()

    def _t_board(self) -> float:
        s = self.last_sensor
        return s.t_board if s is not None else 0.0

    def housekeeping(self) -> Housekeeping:
        s = self.last_sensor
        return Housekeeping(
            node_id=self.config.node_id,
            seq=self._next_seq(),
            utc=self._utc(),
            t_board=self._t_board(),
            mode=self.mode.value,
            link_up=self.board.link_up,
            temp_c=Housekeeping.temps_for_wire(s.temp_c) if s else (),
            power_w=s.power_w if s else (),
            cap_w=s.cap_w if s else (),
            progress=s.progress if s else (),
            solar_w=s.solar_w if s else 0.0,
            battery_soc=s.battery_soc if s else 0.0,
            radiator_c=None if s is None or s.radiator_c != s.radiator_c else s.radiator_c,
            board_flags=s.flags if s else 0,
            link=self.board.stats(),
            control_us=self._control_us,
            jobs=self._jobs_telemetry(),
            link_state=self.board.link_state,
        )

    async def _hk_loop(self) -> None:
        next_at = self._clock()
        while True:
            self._publisher.publish(self.housekeeping())
            next_at += 1.0 / self.config.mqtt.hk_rate_hz
            # If we fell far behind (suspended process), do not burst to catch up.
            next_at = max(next_at, self._clock())
            self.hk_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                # A new rate takes effect at once, not after a long old period.
                await asyncio.wait_for(self.hk_wakeup.wait(), next_at - self._clock())
                next_at = self._clock()

    # --- board events -------------------------------------------------------------------------

    def _announce(self, t: Transition) -> None:
        if "checkpoint_all" in ENTRY_ACTIONS[t.after]:
            self.jobs.request(None, f"{t.after.value} entered")
            if self.process_jobs is not None:
                self.process_jobs.checkpoint_all(f"{t.after.value} entered")
        severity = Severity.WARNING if t.after is Mode.SAFE else Severity.INFO
        self.events.emit(
            "mode",
            severity,
            f"mode {t.before.value} -> {t.after.value}: {t.reason}",
            before=t.before.value,
            after=t.after.value,
            trigger=t.trigger.value,
        )

    async def _control_loop(self) -> None:
        while True:
            event = await self.board.next_event()
            if isinstance(event, SensorReading):
                session = self._session
                if session is None:
                    continue
                if event.sensor.gpu_count != session.info.gpu_count:
                    # The serial session never delivers these; another Board might: never crash on one.
                    self.events.limited("sensor_gpu_count", "sensor_unusable", Severity.WARNING,
                                        f"SENSOR with {event.sensor.gpu_count} GPUs in a session of "
                                        f"{session.info.gpu_count}: ignored", reason="gpu_count")
                    continue
                self._on_sensor(session, event.sensor)
            elif isinstance(event, LinkUp):
                self._link_up(event.info)
            elif isinstance(event, LinkDown):
                self._session = None
                self.events.emit("link_down", Severity.WARNING, f"board link down: {event.reason}")
                self.fire(Trigger.LINK_LOST, f"board link lost ({event.reason})")
            elif isinstance(event, LinkHealth):
                self._link_health(event)
            elif isinstance(event, LinkProblem):
                self.events.limited(f"link_problem:{event.kind}:{event.reason}", event.kind, Severity.WARNING,
                                    event.text, reason=event.reason)
            elif isinstance(event, CommandResult):
                self._command_result(event)

    def _link_up(self, info: BoardInfo) -> None:
        self._session = ControlSession(info, self._law)
        n = info.gpu_count
        self._weights = self._allocation_weights(n)
        self._limits_w = self.intent.limits_w(n, info.cap_min_w)
        self._sensors.resize(n)
        self._fdir.new_session(n)
        self.jobs.reset(n, board_keeps_checkpoints=info.checkpoints)
        self.rails.new_session()
        if self._shedder is not None:
            self._shedder.new_session()
        self.events.emit(
            "link_up",
            Severity.INFO,
            f"board {info.board_id} (fw {info.fw_version}, {n} GPUs) connected",
            board_id=info.board_id,
            fw_version=info.fw_version,
            gpu_count=n,
            features=info.features,
        )
        self.fire(Trigger.LINK_UP, "board link established")

    def _link_health(self, event: LinkHealth) -> None:
        kind = _UNHEALTHY.get(event.state)
        if kind is None:  # seeing and commanding again
            self.events.emit("link_ok", Severity.INFO, f"board link healthy again: {event.reason}")
            self.fire(Trigger.LINK_UP, event.reason)
            return
        self.events.emit(kind, Severity.ERROR, event.reason, state=event.state)
        self.fire(Trigger.LINK_LOST, f"board link {event.state}: {event.reason}")

    def _command_result(self, result: CommandResult) -> None:
        if result.status == AckStatus.OK:
            return
        name = type(result.message).__name__
        if result.status is None:
            text = f"board never acknowledged {name}"
        else:
            text = f"board refused {name}: status {result.status}"
        if isinstance(result.message, SetCaps) and self._session is not None:
            self._session.resend()  # resend on the next step
        self.events.limited(f"command_failed:{name}:{result.status}", "command_failed", Severity.WARNING, text,
                            command=name, status=-1 if result.status is None else int(result.status))

    # --- one frame ------------------------------------------------------------------------------

    def _on_sensor(self, session: ControlSession, sensor: Sensor) -> None:
        started = time.perf_counter()
        info = session.info
        session.last = sensor
        self._board_clock.frame(sensor.t_board)
        self._reconcile_rails(sensor, info)
        limits = np.minimum(self._limits_w, self._fdir.limits_w)
        result = self._law.step(sensor, limits_w=limits, weights=self._weights)
        session.temp_est = result.temp_est_c
        self._budget_w = result.budget_w
        self._sensors.update(result.sensor_flags, sensor.t_board)
        session.caps[:] = session.min_caps if self.mode is Mode.SAFE else result.caps_w
        if session.watchdog_tripped(sensor):
            self.events.emit("board_watchdog", Severity.WARNING, "board watchdog put the GPUs in the safe state")
            session.resend()  # the board dropped our caps; send them again
        session.command_caps(self.board, self.config.control.deadband_w)
        self._fdir.on_frame(sensor, info, session.temp_est, self._sensors.held)
        self.fire(*self._fault_trigger())
        if self.mode is not Mode.SAFE:
            if self._shedder is not None:
                self._shedder.on_frame(sensor, info, result.budget_w, self._weights)
            else:
                self._switch_found_rails_on()
        p = self.config.control
        self.jobs.on_frame(
            sensor,
            Foresight(
                # Above the planning limit the controller is losing the GPU (pump, radiator):
                # the hardware's slowdown and shutdown are what comes next.
                hot=session.temp_est > p.limit_c + self.config.sim_jobs.thermal_lead_k,
                eclipse_in_s=sensor.eclipse_in_s if sensor.eclipse_in_s >= 0.0 else float("nan"),
            ),
        )
        if self.process_jobs is not None:
            self._process_jobs_frame(session, sensor)
        if self.mode is not Mode.SAFE:
            self._pick_operating_mode(session, result.thermal_bound, result.power_limited)
        self._control_us = (time.perf_counter() - started) * 1e6
        self.board.step_done(sensor.t_board)  # after any command: lockstep may advance
        self.steps += 1
        self.stepped.set()

    def _fault_trigger(self) -> tuple[Trigger, str]:
        """The FDIR SAFE cause as it stands this frame: held exactly while a red SAFE limit is."""
        if self._fdir.critical:
            return Trigger.CRITICAL_FAULT, f"{', '.join(self._fdir.critical)}: critical limit violated"
        return Trigger.FAULT_CLEARED, "no critical limit violated"

    def _reconcile_rails(self, sensor: Sensor, info: BoardInfo) -> None:
        found, reassert = self.rails.reconcile(sensor.rails, info.gpu_count)
        for gpu in found:
            self.events.limited(f"rail_found_off:{gpu}", "rail_found_off", Severity.WARNING,
                                f"GPU {gpu} rail is off on the board; the node will switch it on when the budget allows",
                                gpu=gpu)
        for gpu in reassert:
            with contextlib.suppress(LinkError):
                self.board.set_rail(gpu, False)  # ground switched it off; the board turned it on

    def _switch_found_rails_on(self) -> None:
        """Without load shedding nothing else would: rails found off come back on outside SAFE."""
        for gpu in self.rails.restorable():
            with contextlib.suppress(LinkError):
                self.board.set_rail(gpu, True)
                self.rails.switched_on(gpu)

    def _pick_operating_mode(self, session: ControlSession, thermal_bound: int, power_limited: bool) -> None:
        """The binding constraint names the mode (debounced: node/modes.py ModeDebouncer)."""
        p = self.config.control
        if thermal_bound:
            trigger, reason = Trigger.THERMAL_THROTTLING, f"{thermal_bound} GPU(s) held below maximum by temperature"
        elif power_limited:
            trigger, reason = Trigger.POWER_LIMITED, f"power budget {self._budget_w:.0f} W holds the GPUs back"
        elif float(np.nanmax(session.temp_est, initial=-np.inf)) < p.target_c - p.hysteresis_k:
            trigger, reason = Trigger.UNCONSTRAINED, "no thermal or power constraint binds"
        else:
            return  # inside the hysteresis band: keep the mode
        if self._debounce.vote(trigger):
            self.fire(trigger, reason)

