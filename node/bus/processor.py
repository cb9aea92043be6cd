"""The command processor: verify, de-duplicate, schedule and execute telecommands.

Input is the raw bytes of an MQTT message on ``umbra/v1/<node>/tc``; output is
verification reports (``tc/report``) and events (``tm/event``) handed to a
:class:`ReportSink` (the bus's outbox), and calls on a :class:`CommandTarget` (the
controller).  No I/O besides its own SQLite file, so tests drive it in-process.

Checks, in order (docs/ICD.md §5.6.3); the first that fails decides the reason code:

1. size ≤ MAX_TC_BYTES and a well-formed Telecommand map          → MALFORMED
2. addressed to this node                                          → WRONG_NODE
3. HMAC tag valid for this node's key                              → BAD_TAG
4. command id never seen: else the stored answer is repeated (``duplicate: true``),
   nothing is executed
5. counter above the last accepted one                             → REPLAYED
   and not beyond the node's UTC in µs plus a day                  → COUNTER_AHEAD
6. not expired                                                     → EXPIRED
7. known command, arguments typed and in range                     → UNKNOWN_COMMAND,
                                                                     BAD_ARGUMENT, OUT_OF_RANGE
8. time-tagged: room in the schedule                               → SCHEDULE_FULL

From step 5 on, the command id and counter are persisted before anything else happens,
so a command is executed at most once even across a crash (one interrupted mid-way is
reported failed with INTERRUPTED after the restart).

Failures of checks 1-3 come from anyone who can publish on the topic, so they are
rate-limited: the first REJECT_BURST of an interval are reported one by one, the rest
counted and summarised in one report and one event per interval.  Duplicate answers are
limited to DUPLICATE_ANSWERS per command id per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import msgpack

from node.bus import signing
from node.bus.commands import CommandDef, validate
from node.bus.payloads import (
    MAX_TC_BYTES,
    Event,
    FailedAt,
    Housekeeping,
    Severity,
    Stage,
    TcReport,
    Telecommand,
    counter_limit,
)
from node.errors import CommandRejected, Reason, RemoteProtocolError

log = logging.getLogger("umbra.node.bus.tc")

#: Time-tagged commands waiting at most.
SCHEDULE_LIMIT = 256
#: A time-tagged command found overdue (the node was down) still runs if this late at most.
LATE_TOLERANCE_S = 60.0
#: Unauthenticated rejections (checks 1-3) reported one by one per interval; the rest summarised.
REJECT_BURST = 5
REJECT_INTERVAL_S = 10.0
#: A retransmitted command is answered again at most this often per interval (a captured
#: one replayed in a loop must not turn into a report flood).
DUPLICATE_ANSWERS = 3
#: Command ids remembered for duplicate answers (oldest forgotten beyond).
HISTORY_LIMIT = 10_000


class CommandTarget(Protocol):
    """What the processor needs from the controller: each call takes effect or raises
    CommandRejected(code=Reason.X) and has no effect; none blocks.

    The controller's :class:`~node.controller.commands.NodeCommands` implements it, and so
    does :class:`FakeTarget`; ``tests/test_bus_processor.py`` keeps the three equal.
    """

    def command_safe(self, reason: str = ...) -> None: ...
    def command_release_safe(self, reason: str = ...) -> None: ...
    def set_gpu_cap_limit(self, gpu: int, max_w: float | None) -> None: ...
    def set_rail(self, gpu: int, on: bool) -> None: ...
    def set_hk_rate(self, hz: float) -> None: ...
    def param_names(self) -> list[str]: ...
    def get_param(self, name: str) -> float: ...
    def set_param(self, name: str, value: float) -> None: ...
    def submit_job(self, job: str, gpus: int, priority: int | None) -> None: ...
    def cancel_job(self, job: str) -> None: ...
    def pause_job(self, job: str) -> None: ...
    def resume_job(self, job: str) -> None: ...
    def checkpoint_job(self, job: str) -> None: ...
    def job_catalogue(self, job: str | None) -> list[dict[str, Any]]: ...
    def reboot_board(self) -> None: ...


class FileTarget(Protocol):
    """The file service's side of the file commands (node/files/service.py)."""

    def downlink_checkpoint(self, job: str, seq: int, priority: int) -> dict[str, Any]: ...
    def downlink_result(self, job: str, path: str, priority: int) -> dict[str, Any]: ...
    def cancel(self, xfer: str) -> None: ...
    def listing(self) -> list[dict[str, Any]]: ...
    def run_bundle(self, name: str) -> dict[str, Any]: ...


class ReportSink(Protocol):
    def publish(self, payload: Housekeeping | Event | TcReport) -> None: ...
    def next_seq(self) -> int: ...


def _unsupported(what: str) -> CommandRejected:
    return CommandRejected(f"{what} is not implemented on this node yet", code=Reason.UNSUPPORTED)


class ControllerTarget:
    """A CommandTarget bound late: commands before the controller runs answer NOT_ALLOWED."""

    def __init__(self, target: CommandTarget | None = None) -> None:
        self._target = target

    def bind(self, target: CommandTarget) -> None:
        self._target = target

    def _bound(self) -> CommandTarget:
        if self._target is None:
            raise CommandRejected("the controller is not running yet", code=Reason.NOT_ALLOWED)
        return self._target

    def command_safe(self, reason: str = "commanded by ground") -> None:
        self._bound().command_safe(reason)

    def command_release_safe(self, reason: str = "released by ground") -> None:
        self._bound().command_release_safe(reason)

    def set_gpu_cap_limit(self, gpu: int, max_w: float | None) -> None:
        self._bound().set_gpu_cap_limit(gpu, max_w)

    def set_rail(self, gpu: int, on: bool) -> None:
        self._bound().set_rail(gpu, on)

    def set_hk_rate(self, hz: float) -> None:
        self._bound().set_hk_rate(hz)

    def param_names(self) -> list[str]:
        return list(self._bound().param_names())

    def get_param(self, name: str) -> float:
        return float(self._bound().get_param(name))

    def set_param(self, name: str, value: float) -> None:
        self._bound().set_param(name, value)

    def submit_job(self, job: str, gpus: int, priority: int | None) -> None:
        self._bound().submit_job(job, gpus, priority)

    def cancel_job(self, job: str) -> None:
        self._bound().cancel_job(job)

    def pause_job(self, job: str) -> None:
        self._bound().pause_job(job)

    def resume_job(self, job: str) -> None:
        self._bound().resume_job(job)

    def checkpoint_job(self, job: str) -> None:
        self._bound().checkpoint_job(job)

    def job_catalogue(self, job: str | None) -> list[dict[str, Any]]:
        return self._bound().job_catalogue(job)

    def reboot_board(self) -> None:
        self._bound().reboot_board()


class FakeTarget:
    """An in-memory CommandTarget for tests: records every call that took effect.

    It refuses what the controller refuses for the same reasons (link down, no such GPU,
    unknown parameter, no such job) and knows the controller's real parameter names.
    """

    def __init__(self, *, gpus: int = 4, link_up: bool = True) -> None:
        from node.control.law import PARAM_SPECS, ControlParams  # the real table, not a copy

        self.gpus = gpus
        self.link_up = link_up
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        defaults = ControlParams()
        self.params = {f"control.{name}": float(getattr(defaults, name)) for name in PARAM_SPECS}
        self.specs = PARAM_SPECS
        self.mode = "NOMINAL"
        self.jobs: dict[str, int] = {}
        #: What job_catalogue answers (a test fills it, as the store would).
        self.catalogue: list[dict[str, Any]] = []

    def _board(self) -> None:
        if not self.link_up:
            raise CommandRejected("the board link is down", code=Reason.LINK_DOWN)

    def _gpu(self, gpu: int) -> None:
        self._board()
        if not 0 <= gpu < self.gpus:
            raise CommandRejected(f"no GPU {gpu}", code=Reason.OUT_OF_RANGE)

    def _job(self, job: str) -> None:
        self._board()
        own = job.startswith("gpu-") and job[4:].isdigit() and int(job[4:]) < self.gpus
        if job not in self.jobs and not own:
            raise CommandRejected(f"no job {job!r}", code=Reason.NOT_FOUND)

    def command_safe(self, reason: str = "commanded by ground") -> None:
        self.mode = "SAFE"
        self.calls.append(("command_safe", ()))

    def command_release_safe(self, reason: str = "released by ground") -> None:
        self.mode = "NOMINAL"
        self.calls.append(("command_release_safe", ()))

    def set_gpu_cap_limit(self, gpu: int, max_w: float | None) -> None:
        self._gpu(gpu)
        if max_w is not None and not 200.0 <= max_w <= 700.0:
            raise CommandRejected("cap limit outside [200, 700]", code=Reason.OUT_OF_RANGE)
        self.calls.append(("set_gpu_cap_limit", (gpu, max_w)))

    def set_rail(self, gpu: int, on: bool) -> None:
        self._gpu(gpu)
        self.calls.append(("set_rail", (gpu, on)))

    def set_hk_rate(self, hz: float) -> None:
        self.calls.append(("set_hk_rate", (hz,)))

    def param_names(self) -> list[str]:
        return list(self.params)

    def get_param(self, name: str) -> float:
        if name not in self.params:
            raise CommandRejected(f"unknown parameter {name!r}", code=Reason.BAD_ARGUMENT)
        return self.params[name]

    def set_param(self, name: str, value: float) -> None:
        self.get_param(name)
        lo, hi, _unit, _meaning = self.specs[name.removeprefix("control.")]
        if not lo <= value <= hi:
            raise CommandRejected(f"{name} = {value} outside [{lo}, {hi}]", code=Reason.OUT_OF_RANGE)
        self.params[name] = value
        self.calls.append(("set_param", (name, value)))

    def submit_job(self, job: str, gpus: int, priority: int | None) -> None:
        self._board()
        if gpus >> self.gpus:
            raise CommandRejected(f"GPU mask {gpus:#x} names GPUs the board lacks", code=Reason.OUT_OF_RANGE)
        self.jobs[job] = gpus
        self.calls.append(("submit_job", (job, gpus, priority)))

    def cancel_job(self, job: str) -> None:
        self._job(job)
        if job not in self.jobs:
            raise CommandRejected(f"job {job!r} is the GPU's own; it cannot be cancelled", code=Reason.NOT_ALLOWED)
        del self.jobs[job]
        self.calls.append(("cancel_job", (job,)))

    def pause_job(self, job: str) -> None:
        self._job(job)
        self.calls.append(("pause_job", (job,)))

    def resume_job(self, job: str) -> None:
        self._job(job)
        self.calls.append(("resume_job", (job,)))

    def checkpoint_job(self, job: str) -> None:
        self._job(job)
        self.calls.append(("checkpoint_job", (job,)))

    def job_catalogue(self, job: str | None) -> list[dict[str, Any]]:
        found = [j for j in self.catalogue if job is None or j["job"] == job]
        if job is not None and not found:
            raise CommandRejected(f"no checkpoints of job {job!r}", code=Reason.NOT_FOUND)
        return found

    def reboot_board(self) -> None:
        self._board()
        self.calls.append(("reboot_board", ()))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    counter INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,           -- accepted | scheduled | started | done
    final BLOB,                    -- msgpack of the final report's fields
    utc REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule (
    id TEXT PRIMARY KEY,
    exec_at REAL NOT NULL,
    counter INTEGER NOT NULL,
    name TEXT NOT NULL,
    args BLOB NOT NULL
);
"""


class _Reject(Exception):
    def __init__(self, code: Reason, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class CommandProcessor:
    def __init__(
        self,
        *,
        node_id: str,
        key: bytes | None,
        target: CommandTarget,
        sink: ReportSink,
        path: Path | str = ":memory:",
        clock: Callable[[], float] = time.time,
        schedule_limit: int = SCHEDULE_LIMIT,
        reject_burst: int = REJECT_BURST,
        duplicate_answers: int = DUPLICATE_ANSWERS,
        files: FileTarget | None = None,
    ) -> None:
        self.node_id = node_id
        self._key = key
        self._target = target
        #: The file service, for file_* and bundle_run (None: those are UNSUPPORTED).
        self.files = files
        self._sink = sink
        self._clock = clock
        self._schedule_limit = schedule_limit
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # commands are few; make them durable
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'last_counter'").fetchone()
        self.last_counter: int = int(row[0]) if row else 0
        self._schedule_changed = asyncio.Event()
        self.counters: dict[str, int] = {
            "received": 0, "accepted": 0, "rejected": 0, "completed": 0, "failed": 0, "duplicates": 0,
            "rejections_summarised": 0,
        }
        self._reject_burst = reject_burst
        self._duplicate_answers = duplicate_answers
        self._window_at = -math.inf
        self._window_reported = 0
        self._held: dict[Reason, int] = {}
        self._answers: dict[str, tuple[float, int]] = {}
        if key is None:
            log.warning("no telecommand key for %s: every command will fail with BAD_TAG", node_id)

    # -- startup ---------------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart: commands that were executing when the node died failed."""
        # 'scheduled' without its schedule row: run_due took it and the node died before the
        # command's outcome was stored.
        rows = self._db.execute(
            "SELECT id, counter, name FROM commands WHERE state IN ('accepted', 'started') OR "
            "(state = 'scheduled' AND id NOT IN (SELECT id FROM schedule))"
        ).fetchall()
        for cid, counter, name in rows:
            self._final(cid, counter, name, Stage.FAILED, Reason.INTERRUPTED, FailedAt.COMPLETION,
                        "node restarted while the command was executing; its effect is unknown")

    # -- the inbound path -----------------------------------------------------------------

    def handle(self, data: bytes) -> None:
        """Process one telecommand message; never raises."""
        self.counters["received"] += 1
        try:
            self._handle(data)
            self.flush_rejections()
        except Exception:  # a bug here must not take the node down
            log.exception("command processor failed on a %d-byte message", len(data))

    def _decode(self, data: bytes) -> Telecommand:
        if len(data) > MAX_TC_BYTES:
            raise _Reject(Reason.MALFORMED, f"telecommand of {len(data)} bytes exceeds {MAX_TC_BYTES}")
        try:
            return Telecommand.from_wire(data)
        except RemoteProtocolError as exc:
            raise _Reject(Reason.MALFORMED, str(exc)[:200]) from None

    def _handle(self, data: bytes) -> None:
        now = self._clock()
        tc: Telecommand | None = None
        try:
            tc = self._decode(bytes(data))
            if tc.node_id != self.node_id:
                raise _Reject(Reason.WRONG_NODE, f"addressed to {tc.node_id}, this is {self.node_id}")
            if not signing.verify(self._key, tc):
                raise _Reject(Reason.BAD_TAG, "HMAC tag missing or wrong")
        except _Reject as r:
            self._reject(tc, r.code, r.text, record=False)
            return
        # Authentic from here on.
        known = self._db.execute(
            "SELECT state, final, counter, name FROM commands WHERE id = ?", (tc.id,)
        ).fetchone()
        if known is not None:
            self._answer_duplicate(tc, known)
            return
        if tc.counter <= self.last_counter:
            self._reject(tc, Reason.REPLAYED, f"counter {tc.counter} not above {self.last_counter}",
                         record=False)
            return
        ahead = counter_limit(now)
        if tc.counter > ahead:
            # Accepting it would make every later command REPLAYED: the node could never be
            # commanded again.
            self._reject(tc, Reason.COUNTER_AHEAD,
                         f"counter {tc.counter} is beyond this node's UTC in µs plus a day ({ahead})",
                         record=False)
            return
        self._record(tc)
        try:
            if tc.expires < now:
                raise _Reject(Reason.EXPIRED, f"expired {now - tc.expires:.1f} s ago")
            try:
                cmd, args = validate(tc.name, tc.args)
            except CommandRejected as exc:
                raise _Reject(Reason(exc.code), str(exc)) from None
            if tc.exec_at is not None and tc.exec_at > now:
                self._schedule(tc, args)
                return
        except _Reject as r:
            self._reject(tc, r.code, r.text, record=True)
            return
        self._report(tc.id, tc.counter, tc.name, Stage.ACCEPTED)
        self._execute(tc.id, tc.counter, cmd, args)

    def _record(self, tc: Telecommand) -> None:
        db = self._db
        db.execute("BEGIN")
        db.execute(
            "INSERT INTO meta VALUES ('last_counter', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (tc.counter,),
        )
        db.execute("INSERT INTO commands VALUES (?, ?, ?, 'accepted', NULL, ?)",
                   (tc.id, tc.counter, tc.name, self._clock()))
        db.execute(
            "DELETE FROM commands WHERE rowid IN (SELECT rowid FROM commands ORDER BY counter DESC "
            "LIMIT -1 OFFSET ?) AND state = 'done'",
            (HISTORY_LIMIT,),
        )
        db.execute("COMMIT")
        self.last_counter = tc.counter
        self.counters["accepted"] += 1

    def _schedule(self, tc: Telecommand, args: dict[str, Any]) -> None:
        assert tc.exec_at is not None
        n = self._db.execute("SELECT COUNT(*) FROM schedule").fetchone()[0]
        if n >= self._schedule_limit:
            raise _Reject(Reason.SCHEDULE_FULL, f"schedule holds {n} commands already")
        db = self._db
        db.execute("BEGIN")
        db.execute("INSERT INTO schedule VALUES (?, ?, ?, ?, ?)",
                   (tc.id, tc.exec_at, tc.counter, tc.name, msgpack.packb(args, use_bin_type=True)))
        db.execute("UPDATE commands SET state = 'scheduled' WHERE id = ?", (tc.id,))
        db.execute("COMMIT")
        self._report(tc.id, tc.counter, tc.name, Stage.ACCEPTED, data={"exec_at": tc.exec_at})
        self._schedule_changed.set()

    def _answer_duplicate(self, tc: Telecommand, known: tuple[Any, ...]) -> None:
        self.counters["duplicates"] += 1
        now = time.monotonic()
        since, answered = self._answers.get(tc.id, (now, 0))
        if now - since >= REJECT_INTERVAL_S:
            since, answered = now, 0
        if answered >= self._duplicate_answers:
            return
        if len(self._answers) > 1000:
            self._answers.clear()
        self._answers[tc.id] = (since, answered + 1)
        state, final, counter, name = known
        if final is not None:
            f = msgpack.unpackb(final, raw=False)
            self._report(tc.id, counter, name, Stage(f["stage"]), code=f["code"], at=FailedAt(f["at"]),
                         text=f["text"], data=f["data"], duplicate=True)
        else:
            self._report(tc.id, counter, name, Stage.ACCEPTED, text=f"already {state}", duplicate=True)

    # -- execution ------------------------------------------------------------------------

    def _file_command(self, name: str, a: dict[str, Any]) -> dict[str, Any]:
        files = self.files
        if files is None:
            raise _unsupported("the file service")
        match name:
            case "file_downlink":
                priority = 5 if a.get("priority") is None else a["priority"]
                if a.get("path"):
                    return files.downlink_result(a["job"], a["path"], priority)
                return files.downlink_checkpoint(a["job"], a.get("seq") or 0, priority)
            case "file_cancel":
                files.cancel(a["xfer"])
                return {}
            case "file_list":
                return {"transfers": files.listing()}
            case _:
                return files.run_bundle(a["bundle"])

    def _execute(self, cid: str, counter: int, cmd: CommandDef, args: dict[str, Any]) -> None:
        self._db.execute("UPDATE commands SET state = 'started' WHERE id = ?", (cid,))
        try:
            data = self._dispatch(cmd, args, cid)
        except CommandRejected as exc:
            self._final(cid, counter, cmd.name, Stage.FAILED, Reason(exc.code), FailedAt.START, str(exc))
            return
        except Exception as exc:
            log.exception("command %s (%s) failed", cid, cmd.name)
            self._report(cid, counter, cmd.name, Stage.STARTED)
            self._final(cid, counter, cmd.name, Stage.FAILED, Reason.EXECUTION_FAILED,
                        FailedAt.COMPLETION, f"{type(exc).__name__}: {exc}"[:200])
            return
        self._report(cid, counter, cmd.name, Stage.STARTED)
        self._final(cid, counter, cmd.name, Stage.COMPLETED, None, FailedAt.NONE, "", data)

    def _dispatch(self, cmd: CommandDef, a: dict[str, Any], cid: str) -> dict[str, Any]:
        t = self._target
        why = f"telecommand {cid}"
        match cmd.name:
            case "ping":
                return {"utc": self._clock()}
            case "set_mode":
                if a["mode"] == "SAFE":
                    t.command_safe(f"commanded by ground ({why})")
                else:
                    t.command_release_safe(f"released by ground ({why})")
            case "list_params":
                return {"names": list(t.param_names())}
            case "get_param":
                return {"name": a["name"], "value": t.get_param(a["name"])}
            case "set_param":
                t.set_param(a["name"], a["value"])
            case "set_cap_limit":
                t.set_gpu_cap_limit(a["gpu"], a["max_w"])
            case "set_rail":
                t.set_rail(a["gpu"], a["on"])
            case "set_hk_rate":
                t.set_hk_rate(a["hz"])
            case "job_submit":
                t.submit_job(a["job"], a["gpus"], a["priority"])
            case "job_cancel":
                t.cancel_job(a["job"])
            case "job_pause":
                t.pause_job(a["job"])
            case "job_resume":
                t.resume_job(a["job"])
            case "job_checkpoint":
                t.checkpoint_job(a["job"])
            case "job_catalogue":
                jobs = t.job_catalogue(a.get("job"))
                return {"jobs": jobs, "truncated": any(j.get("truncated") for j in jobs)}
            case "reboot_board":
                t.reboot_board()
            case "file_downlink" | "file_cancel" | "file_list" | "bundle_run":
                return self._file_command(cmd.name, a)
            case "schedule_list":
                return {"schedule": self.schedule_list()}
            case "schedule_delete":
                if not self.schedule_delete(a["id"]):
                    raise CommandRejected(f"no time-tagged command {a['id']!r}", code=Reason.NOT_FOUND)
            case _:
                raise _unsupported(cmd.name)
        return {}

    # -- the schedule ---------------------------------------------------------------------

    def schedule_list(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, exec_at, name, args FROM schedule ORDER BY exec_at, counter"
        ).fetchall()
        return [{"id": i, "exec_at": t, "name": n, "args": msgpack.unpackb(a, raw=False)}
                for i, t, n, a in rows]

    def schedule_delete(self, cid: str) -> bool:
        row = self._db.execute("SELECT counter, name FROM schedule WHERE id = ?", (cid,)).fetchone()
        if row is None:
            return False
        self._db.execute("DELETE FROM schedule WHERE id = ?", (cid,))
        self._final(cid, row[0], row[1], Stage.FAILED, Reason.NOT_FOUND, FailedAt.START,
                    "deleted from the schedule by ground")
        self._schedule_changed.set()
        return True

    def next_due(self) -> float | None:
        row = self._db.execute("SELECT MIN(exec_at) FROM schedule").fetchone()
        return None if row[0] is None else float(row[0])

    def run_due(self) -> int:
        """Execute every scheduled command whose time has come; returns how many ran."""
        now = self._clock()
        rows = self._db.execute(
            "SELECT id, exec_at, counter, name, args FROM schedule WHERE exec_at <= ? "
            "ORDER BY exec_at, counter", (now,)
        ).fetchall()
        for cid, exec_at, counter, name, args in rows:
            # One transaction: a crash after it leaves the command 'started' (recover() then
            # reports it INTERRUPTED), never neither scheduled nor started.
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM schedule WHERE id = ?", (cid,))
            self._db.execute("UPDATE commands SET state = 'started' WHERE id = ?", (cid,))
            self._db.execute("COMMIT")
            if now - exec_at > LATE_TOLERANCE_S:
                self._final(cid, counter, name, Stage.FAILED, Reason.EXPIRED, FailedAt.START,
                            f"missed its execution time by {now - exec_at:.0f} s")
                continue
            try:
                cmd, checked = validate(name, msgpack.unpackb(args, raw=False))
            except CommandRejected as exc:
                self._final(cid, counter, name, Stage.FAILED, Reason(exc.code), FailedAt.START, str(exc))
                continue
            self._execute(cid, counter, cmd, checked)
        return len(rows)

    async def run_schedule(self) -> None:
        """Forever: run time-tagged commands when due (the bus owns this task)."""
        while True:
            self.run_due()
            self.flush_rejections()
            due = self.next_due()
            delay = 3600.0 if due is None else max(0.0, due - self._clock())
            self._schedule_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._schedule_changed.wait(), min(delay, 1.0))

    # -- reports --------------------------------------------------------------------------

    def _unauthenticated_over_limit(self, code: Reason) -> bool:
        """Count one unauthenticated rejection; True when it is past this interval's burst."""
        now = time.monotonic()
        if now - self._window_at >= REJECT_INTERVAL_S:
            self.flush_rejections(force=True)
            self._window_at, self._window_reported = now, 0
        if self._window_reported < self._reject_burst:
            self._window_reported += 1
            return False
        self._held[code] = self._held.get(code, 0) + 1
        return True

    def flush_rejections(self, *, force: bool = False) -> None:
        """Publish the summary of rejections held back, once their interval is over."""
        if not self._held or not (force or time.monotonic() - self._window_at >= REJECT_INTERVAL_S):
            return
        held, self._held = self._held, {}
        total = sum(held.values())
        self.counters["rejections_summarised"] += total
        worst = max(held, key=lambda r: held[r])
        by_reason = {r.name: n for r, n in sorted(held.items())}
        text = (f"{total} more unauthenticated telecommands rejected in {REJECT_INTERVAL_S:g} s: "
                + ", ".join(f"{k} {v}" for k, v in by_reason.items()))
        log.warning("%s", text)
        self._report("", 0, "", Stage.FAILED, code=worst, at=FailedAt.ACCEPTANCE, text=text,
                     data={"held": total, **{f"n_{k}": v for k, v in by_reason.items()}})
        self._event("tc_rejected_summary", Severity.WARNING, text, held=total, **by_reason)

    def _reject(self, tc: Telecommand | None, code: Reason, text: str, *, record: bool) -> None:
        self.counters["rejected"] += 1
        cid = tc.id if tc else ""
        counter = tc.counter if tc else 0
        name = tc.name if tc else ""
        if code in (Reason.MALFORMED, Reason.WRONG_NODE, Reason.BAD_TAG) and \
                self._unauthenticated_over_limit(code):
            return
        log.warning("telecommand %r rejected: %s (%s)", cid, code.name, text)
        if record and tc is not None:
            self._final(cid, counter, name, Stage.FAILED, code, FailedAt.ACCEPTANCE, text)
        else:
            self._report(cid, counter, name, Stage.FAILED, code=code, at=FailedAt.ACCEPTANCE, text=text)
        self._event("tc_rejected", Severity.WARNING, f"telecommand {cid or '?'} rejected: {code.name}",
                    id=cid, name=name, code=int(code), reason=code.name)

    def _final(self, cid: str, counter: int, name: str, stage: Stage, code: Reason | None,
               at: FailedAt, text: str, data: dict[str, Any] | None = None) -> None:
        fields = {"stage": stage.value, "code": int(code or 0), "at": at.value, "text": text,
                  "data": data or {}}
        self._db.execute("UPDATE commands SET state = 'done', final = ? WHERE id = ?",
                         (msgpack.packb(fields, use_bin_type=True), cid))
        self.counters["completed" if stage is Stage.COMPLETED else "failed"] += 1
        self._report(cid, counter, name, stage, code=int(code or 0), at=at, text=text, data=data)

    def _report(self, cid: str, counter: int, name: str, stage: Stage, *, code: int = 0,
                at: FailedAt = FailedAt.NONE, text: str = "", data: dict[str, Any] | None = None,
                duplicate: bool = False) -> None:
        reason = Reason(code).name if code else ""
        self._sink.publish(TcReport(
            node_id=self.node_id, seq=self._sink.next_seq(), utc=self._clock(), id=cid,
            counter=counter, name=name[:64], stage=stage.value, code=int(code), reason=reason,
            at=at.value, text=text[:300], data=_plain(data or {}), duplicate=duplicate,
        ))

    def _event(self, kind: str, severity: Severity, text: str, **data: Any) -> None:
        self._sink.publish(Event(
            node_id=self.node_id, seq=self._sink.next_seq(), utc=self._clock(), t_board=0.0,
            kind=kind, severity=int(severity), text=text, data=data,
        ))

    def close(self) -> None:
        self._db.close()


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    # Report data goes to msgpack: keep floats finite (NaN would confuse JSON ground tools).
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}
