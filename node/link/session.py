"""Link sessions, sans-I/O (docs/ICD.md §3–§4): one connection object per side of a port.

:class:`NodeSession` is the node's side of the main port; :class:`BoardSession` is a
board's side of either port (the main port with its watchdog, the HIL port without).
Both own the port's :class:`~node.link.codec.FrameDecoder` and
:class:`~node.link.channel.ReliableChannel`, so numbering, sessions and liveness have one
implementation.  Neither touches a clock or a port: the caller passes ``now`` (wall
seconds, any monotonic origin), feeds the bytes that arrived and writes what
:meth:`take_output` returns.

The node's session is a state machine with an explicit table (:data:`NODE_TRANSITIONS`)::

    closed ──opened──► hello_sent ──answered──► established ◄──sensor_back── blind
                          │  ▲                     │    ▲  └──────sensor_lost────►│
                   refused│  │answered             │    │command_back              │
                          ▼  │            command_lost  │                command_lost
                      incompatible                 ▼    │                          ▼
                                               uncommandable ◄─────────────────────┘
    (any open state) ──silent / rebooted──► hello_sent;   (any) ──port_lost──► closed

and it carries out the rule above every other (ICD §4.3): **a node that cannot see or
cannot command its board never leaves the board's GPUs powered**.

- *blind* (frames arrive, but no SENSOR the session can use for ``T_blind``): the
  session commands every cap to ``cap_min_w``, then sends nothing else — the board's
  watchdog, fed only by frames of an established session (not HELLO), trips after
  ``watchdog_s`` if that command did not take.
- *uncommandable* (no SET_CAPS acknowledged OK for ``command_timeout_s``: refused, or
  never answered; or the minimum caps refused or unanswered while blind): a board that
  answers and refuses gets every rail off in one burst; then silence (the watchdog trips).
  Every ``probe_s`` the session tests it — a minimum SET_CAPS to a board that answers, a
  new session (HELLO) for one that answers nothing, as it may have lost ours.
- *incompatible* (no common protocol version): HELLO only, spaced further apart than the
  board's watchdog so that even a board that wrongly counts HELLO as a sign of life trips.
- *silent* (no valid frame for ``T_link``): one last SET_CAPS to the minimum, then a new
  session (HELLO, which does not feed the watchdog).

Every rejected or unusable frame is counted by reason and reported as a
:class:`LinkProblem`; the controller rate-limits them into ground events.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from node.board import (
    BoardEvent,
    BoardInfo,
    CommandResult,
    LinkDown,
    LinkHealth,
    LinkProblem,
    LinkUp,
    SensorReading,
)
from node.errors import LinkError, UmbraError
from node.link.channel import Acknowledged, Delivered, GaveUp, ReliableChannel
from node.link.codec import DELIMITER, Frame, FrameDecoder
from node.link.messages import (
    SUPPORTED_VERSIONS,
    AckStatus,
    BoardFeature,
    Heartbeat,
    Hello,
    HelloAck,
    Message,
    Sensor,
    SetCaps,
    SetRail,
    StepDone,
)

#: The link is declared silent after this many missed sensor periods, whatever the config says.
MISSED_FRAMES_FOR_TIMEOUT = 2.5
#: A forward jump of board time is believed after this many frames agree with it (a new clock).
JUMP_FRAMES_TO_BELIEVE = 3
#: Board time going back by more than this many sensor periods is a reboot (board time is
#: "seconds since board boot": it goes back only when the board restarts).
REBOOT_PERIODS = 0.5


class LinkState(enum.StrEnum):
    CLOSED = "closed"  # no port
    HELLO_SENT = "hello_sent"  # HELLO repeated, no compatible answer yet
    INCOMPATIBLE = "incompatible"  # the board answered: no protocol version in common
    ESTABLISHED = "established"  # a session: the node sees and commands the board
    BLIND = "blind"  # a session, frames arrive, but none the node can use
    UNCOMMANDABLE = "uncommandable"  # a session, but the board does not obey SET_CAPS


class LinkTrigger(enum.StrEnum):
    OPENED = "opened"
    PORT_LOST = "port_lost"
    ANSWERED = "answered"  # a HELLO_ACK with a common version
    REFUSED = "refused"  # a HELLO_ACK with version 0 (or one we do not speak)
    SILENT = "silent"  # no valid frame for T_link
    REBOOTED = "rebooted"  # board time went back, or a new clock, or a different board
    SENSOR_LOST = "sensor_lost"  # no usable SENSOR for T_blind
    SENSOR_BACK = "sensor_back"
    COMMAND_LOST = "command_lost"  # no SET_CAPS acknowledged OK for command_timeout_s
    COMMAND_BACK = "command_back"


S, T = LinkState, LinkTrigger
_SESSION = (S.ESTABLISHED, S.BLIND, S.UNCOMMANDABLE)
_OPEN = (S.HELLO_SENT, S.INCOMPATIBLE, *_SESSION)

#: (state, trigger) → next state.  A trigger to the current state is a no-op; a pair not in
#: the table raises IllegalLinkTransition.
NODE_TRANSITIONS: dict[tuple[LinkState, LinkTrigger], LinkState] = {
    (S.CLOSED, T.OPENED): S.HELLO_SENT,
    (S.CLOSED, T.PORT_LOST): S.CLOSED,
    **{(s, T.PORT_LOST): S.CLOSED for s in _OPEN},
    (S.HELLO_SENT, T.ANSWERED): S.ESTABLISHED,
    (S.HELLO_SENT, T.REFUSED): S.INCOMPATIBLE,
    (S.INCOMPATIBLE, T.ANSWERED): S.ESTABLISHED,
    (S.INCOMPATIBLE, T.REFUSED): S.INCOMPATIBLE,
    **{(s, t): S.HELLO_SENT for s in _SESSION for t in (T.SILENT, T.REBOOTED)},
    **{(s, T.ANSWERED): s for s in _SESSION},  # a late answer to a repeated HELLO
    **{(s, T.REFUSED): s for s in _SESSION},
    (S.ESTABLISHED, T.SENSOR_LOST): S.BLIND,
    (S.ESTABLISHED, T.SENSOR_BACK): S.ESTABLISHED,
    (S.BLIND, T.SENSOR_LOST): S.BLIND,
    (S.BLIND, T.SENSOR_BACK): S.ESTABLISHED,
    (S.ESTABLISHED, T.COMMAND_LOST): S.UNCOMMANDABLE,
    (S.BLIND, T.COMMAND_LOST): S.UNCOMMANDABLE,
    (S.ESTABLISHED, T.COMMAND_BACK): S.ESTABLISHED,
    (S.BLIND, T.COMMAND_BACK): S.BLIND,
    (S.UNCOMMANDABLE, T.COMMAND_LOST): S.UNCOMMANDABLE,
    (S.UNCOMMANDABLE, T.COMMAND_BACK): S.ESTABLISHED,  # blind again later if it still is
    (S.UNCOMMANDABLE, T.SENSOR_LOST): S.UNCOMMANDABLE,
    (S.UNCOMMANDABLE, T.SENSOR_BACK): S.UNCOMMANDABLE,
}
del S, T


class IllegalLinkTransition(UmbraError):
    def __init__(self, state: LinkState, trigger: LinkTrigger) -> None:
        super().__init__(f"link trigger {trigger.value} is not allowed in state {state.value}")
        self.state = state
        self.trigger = trigger


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionTimes:
    """Wall-time rules of the node's session (defaults: ICD §1.5, §4.2, §4.3)."""

    hello_interval_s: float = 0.5
    heartbeat_s: float = 0.5
    timeout_s: float = 0.5  # T_link floor: silent this long → a new session
    blind_s: float = 1.0  # T_blind floor: no usable SENSOR this long → blind
    command_timeout_s: float = 1.0  # no SET_CAPS acknowledged OK this long → uncommandable
    probe_s: float = 5.0  # uncommandable: test the board with a minimum SET_CAPS this often
    retry_timeout_s: float = 0.25
    max_tries: int = 5
    #: Board seconds per wall second a board may run at most (HIL ``time.speed`` ≤ 10⁴); a
    #: flight node with a real board sets this near 1.  Faster clock steps are jumps.
    max_board_speed: float = 1e4

    def t_link(self, info: BoardInfo) -> float:
        return max(self.timeout_s, MISSED_FRAMES_FOR_TIMEOUT / info.sensor_rate_hz)

    def t_blind(self, info: BoardInfo) -> float:
        return max(self.blind_s, MISSED_FRAMES_FOR_TIMEOUT / info.sensor_rate_hz)


class NodeSession:
    """The node's side of the main port (sans-I/O)."""

    def __init__(
        self,
        *,
        node_id: str,
        times: SessionTimes | None = None,
        versions: tuple[int, int] = SUPPORTED_VERSIONS,
        started: float = 0.0,
    ) -> None:
        self.node_id = node_id
        self.times = t = times or SessionTimes()
        self.versions = versions
        self.state = LinkState.CLOSED
        self.info: BoardInfo | None = None
        self.channel = ReliableChannel(retry_timeout=t.retry_timeout_s, max_tries=t.max_tries)
        self.decoder = FrameDecoder()
        self._started = started
        self._out = bytearray()
        self._events: list[BoardEvent] = []
        self._own: set[int] = set()  # seqs of the session's own safing commands (results not forwarded)
        self._hello_interval = t.hello_interval_s
        self._last_hello = -math.inf
        self._last_rx = 0.0
        self._last_tx = -math.inf
        #: The last usable SENSOR, in any session: the blind clock does not restart with a
        #: session, or a board that alternates silence and nonsense would be fed for ever.
        self._usable_at = started
        self._grace_until: float | None = None  # a session opened after the blind clock ran out
        self._last_t_board: float | None = None
        self._last_sensor_wall = 0.0
        self._jumps: list[float] = []  # board times of consecutive jumped frames
        self._caps_unconfirmed_since: float | None = None
        self._refusals = 0  # SET_CAPS refused since the last one acknowledged OK
        self._safing_caps_at: float | None = None  # blind: when our minimum caps went out, until answered
        self._starve_at: float | None = None
        self._probe_at = math.inf
        self._unusable: dict[str, int] = {}  # reasons since the last usable SENSOR
        self.counters: dict[str, int] = {
            "link_downs": 0, "board_reboots": 0, "version_mismatch": 0, "blind": 0, "uncommandable": 0,
            "caps_refused": 0, "sensor_early": 0, "sensor_unusable": 0,
        }

    # --- the table ---------------------------------------------------------------------------

    def _fire(self, trigger: LinkTrigger, reason: str, now: float) -> bool:
        """Apply ``trigger``; True when the state changed."""
        try:
            target = NODE_TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise IllegalLinkTransition(self.state, trigger) from None
        if target is self.state:
            return False
        before, self.state = self.state, target
        self._entered(before, trigger, reason, now)
        return True

    def _entered(self, before: LinkState, trigger: LinkTrigger, reason: str, now: float) -> None:
        state = self.state
        if state is LinkState.CLOSED or state is LinkState.HELLO_SENT:
            if before in _SESSION:
                self._session_ended(reason)
            if state is LinkState.HELLO_SENT:
                self.channel.reset()
                self._own.clear()
                self._hello_interval = self.times.hello_interval_s
                self._send_hello(now, pad=before is LinkState.CLOSED)
            return
        if state is LinkState.INCOMPATIBLE:
            self._events.append(LinkHealth(state, reason))
            return
        if state is LinkState.ESTABLISHED and before in (LinkState.HELLO_SENT, LinkState.INCOMPATIBLE):
            return  # LinkUp was emitted by the caller, with the board's info
        self._events.append(LinkHealth(state, reason))
        if state is LinkState.BLIND:
            self.counters["blind"] += 1
            if self._grace_until is None:
                self._command_minimum_caps(now)
                self._safing_caps_at = now
            # (A session that never saw anything: the board has not been fed since the last
            # one, and one more frame now would only feed it.)
        elif state is LinkState.UNCOMMANDABLE:
            self.counters["uncommandable"] += 1
            self._safing_caps_at = None
            if self._refusals:
                self._switch_rails_off(now)  # it answers, it only refuses caps: rails may still obey
            else:
                self.channel.drop_pending()  # it does not answer at all: every frame more would feed it
            self._probe_at = now + self.times.probe_s
        elif state is LinkState.ESTABLISHED:
            self._starve_at = None
            self._probe_at = math.inf

    def _session_ended(self, reason: str) -> None:
        self.info = None
        self.counters["link_downs"] += 1
        self._events.append(LinkDown(reason))

    # --- port ----------------------------------------------------------------------------------

    def opened(self, now: float) -> None:
        """The port is open: start a session (HELLO)."""
        self.decoder = FrameDecoder(stats=self.decoder.stats)
        self._fire(LinkTrigger.OPENED, "port opened", now)

    def port_lost(self, reason: str, now: float) -> None:
        self._fire(LinkTrigger.PORT_LOST, reason, now)

    @property
    def link_up(self) -> bool:
        return self.state in _SESSION

    @property
    def can_command(self) -> bool:
        """The application may send: a session in which the node sees and commands."""
        return self.state is LinkState.ESTABLISHED

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def take_events(self) -> list[BoardEvent]:
        events, self._events = self._events, []
        return events

    def stats(self) -> dict[str, int]:
        """Decoder (§2.9), channel (§3.8) and session counters; ``rejected_<reason>`` per reason."""
        return {**self.decoder.stats.as_dict(), **self.channel.stats.as_dict(), **self.counters}

    # --- sending -------------------------------------------------------------------------------

    def send(self, message: Message, now: float) -> int:
        """Send an application message; LinkError unless the node sees and commands the board."""
        if self.state is not LinkState.ESTABLISHED:
            raise LinkError(f"board link is {self.state.value}: nothing but safing goes to the board")
        return self._send(message, now)

    def step_done(self, t_board: float, now: float) -> None:
        """STEP_DONE for a handled frame, to a board that declared lockstep (best-effort)."""
        if self.state is LinkState.ESTABLISHED and self.info is not None and self.info.features & BoardFeature.LOCKSTEP:
            self._send(StepDone(t_board=t_board), now)

    def _send(self, message: Message, now: float, *, own: bool = False) -> int:
        self._out += self.channel.send(message, now)
        self._last_tx = now
        seq = self.channel.last_seq
        if isinstance(message, SetCaps) and self._caps_unconfirmed_since is None:
            self._caps_unconfirmed_since = now
        if own:
            self._own.add(seq)
        return seq

    def _send_hello(self, now: float, *, pad: bool = False) -> None:
        hello = Hello(node_id=self.node_id, min_version=self.versions[0], max_version=self.versions[1])
        # One 0x00 first after opening ends whatever partial frame the line holds (§2.7).
        self._out += (DELIMITER if pad else b"") + self.channel.session_frame(hello)
        self._last_hello = now

    def _command_minimum_caps(self, now: float) -> None:
        if self.info is not None:
            self._send(SetCaps(cap_w=(self.info.cap_min_w,) * self.info.gpu_count), now, own=True)

    def _switch_rails_off(self, now: float) -> None:
        """Every rail off in one burst, then silence: retransmissions would feed the watchdog."""
        self.channel.drop_pending()
        if self.info is not None:
            for gpu in range(self.info.gpu_count):
                self._send(SetRail(gpu=gpu, on=False), now, own=True)
        self._starve_at = now + self.times.retry_timeout_s

    # --- receiving -----------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        decoder = self.decoder
        decoder.feed(data)
        for error in decoder.take_rejected():
            key = f"rejected_{error.reason}"
            self.counters[key] = self.counters.get(key, 0) + 1
            if error.whole:
                self._last_rx = now  # a CRC-whole frame is a live board (blind, not silent: §4.3)
            if self.state in _SESSION:  # before one, it is what the line held while nobody listened
                self._events.append(LinkProblem("frame_rejected", error.reason, str(error)))
                self._note_unusable(f"rejected: {error.reason}")
        while (frame := decoder.next_frame()) is not None:
            self._frame(frame, now)

    def _frame(self, frame: Frame, now: float) -> None:
        self._last_rx = now
        message = frame.message
        if isinstance(message, Sensor) and self.info is not None and self._last_t_board is not None \
                and message.t_board < self._last_t_board - REBOOT_PERIODS / self.info.sensor_rate_hz:
            # Before the channel's duplicate filter: a rebooted board numbers from 1 again, and
            # until it passes our highest number its frames would look like old ones.
            self._new_session(f"the board rebooted (its clock went back from {self._last_t_board:.1f} s "
                              f"to {message.t_board:.1f} s)", now)
            return
        events, out = self.channel.receive(frame)
        for reply in out:
            self._out += reply
        for event in events:
            if isinstance(event, Delivered):
                self._delivered(event.seq, event.message, now)
            elif isinstance(event, Acknowledged):
                self._answered(event, now)

    def _delivered(self, seq: int, message: Message, now: float) -> None:
        if isinstance(message, HelloAck):
            self._hello_ack(message, now)
        elif self.state not in _SESSION:
            return  # numbered frames before the session opened belong to no session
        elif isinstance(message, Sensor):
            self._sensor(message, now)
        elif message.RELIABLE:
            # The board sends us nothing reliable in v1; refuse politely so it stops retrying.
            self._out += self.channel.ack(seq, AckStatus.UNSUPPORTED)

    def _hello_ack(self, ack: HelloAck, now: float) -> None:
        lo, hi = self.versions
        if ack.version == 0 or not lo <= ack.version <= hi:
            self.counters["version_mismatch"] += 1
            if self.state in (LinkState.HELLO_SENT, LinkState.INCOMPATIBLE):
                # HELLO keeps going, slower than the board's watchdog: even a board that
                # (against §4.3) counts HELLO as life trips between two of them.
                self._hello_interval = max(self.times.hello_interval_s, ack.watchdog_s + self.times.hello_interval_s)
                self._fire(
                    LinkTrigger.REFUSED,
                    f"board {ack.board_id} speaks protocol {ack.min_version}..{ack.max_version}, we speak "
                    f"{lo}..{hi}: no session; its watchdog ({ack.watchdog_s:g} s) holds the GPUs at minimum",
                    now,
                )
            return
        # The board numbers afresh after every HELLO it answers (S3), a late answer included.
        self.channel.reset_receive()
        info = BoardInfo.from_hello_ack(ack)
        if self.state in _SESSION:
            if info != self.info:  # a different board, or the same one reconfigured
                self._new_session(f"board changed under the session ({ack.board_id})", now, counter="board_changes")
            return
        self.info = info
        self._last_rx = self._last_sensor_wall = now
        # Opened after the blind clock ran out (a long outage, a late board): the first usable
        # SENSOR gets T_link to arrive, meanwhile nothing feeds the board's watchdog.
        stale = now - self._usable_at > self.times.t_blind(info)
        self._grace_until = now + self.times.t_link(info) if stale else None
        self._last_t_board = None
        self._jumps.clear()
        self._unusable.clear()
        self._caps_unconfirmed_since = None
        self._refusals = 0
        self._safing_caps_at = None
        self._starve_at = None
        self._probe_at = math.inf
        self._fire(LinkTrigger.ANSWERED, "board answered HELLO", now)
        self._events.append(LinkUp(info))

    def _new_session(self, reason: str, now: float, counter: str = "board_reboots") -> None:
        self.counters[counter] = self.counters.get(counter, 0) + 1
        self._fire(LinkTrigger.REBOOTED, reason, now)

    def _answered(self, event: Acknowledged, now: float) -> None:
        own = event.seq in self._own
        if isinstance(event.message, SetCaps):
            if event.status == AckStatus.OK:
                self._caps_unconfirmed_since = None
                self._refusals = 0
                self._safing_caps_at = None
                if self.state is LinkState.UNCOMMANDABLE:
                    self._fire(LinkTrigger.COMMAND_BACK, "board obeys SET_CAPS again", now)
            else:
                self.counters["caps_refused"] += 1
                self._refusals += 1
                info = self.info
                minimum = info is not None and all(c <= info.cap_min_w for c in event.message.cap_w)
                if minimum and self.state in (LinkState.ESTABLISHED, LinkState.BLIND):
                    # The minimum caps are always valid: a board that refuses them does not obey.
                    self._fire(LinkTrigger.COMMAND_LOST, f"board refused the minimum caps (status {event.status}): "
                               "rails off, the board's watchdog left to trip", now)
        self._own.discard(event.seq)
        if not own and not event.superseded:
            self._events.append(CommandResult(event.message, event.status))

    # --- SENSOR at the edge --------------------------------------------------------------------

    def _note_unusable(self, reason: str) -> None:
        if self.state in _SESSION:
            self._unusable[reason] = self._unusable.get(reason, 0) + 1

    def _sensor(self, sensor: Sensor, now: float) -> None:
        info = self.info
        assert info is not None
        problem = self._implausible(sensor, info, now)
        if problem is None or problem == "early":
            self._usable_at = now
            self._grace_until = None
            self._unusable.clear()
            if self.state is LinkState.BLIND:
                self._fire(LinkTrigger.SENSOR_BACK, "usable SENSOR frames again", now)
        if problem == "early":
            self.counters["sensor_early"] += 1  # a flood: more frames than the announced rate
            self._events.append(LinkProblem("sensor_flood", "early", (
                f"SENSOR for board time {sensor.t_board:.3f} s, less than half a period after the last: "
                f"the board sends faster than its announced {info.sensor_rate_hz:g} Hz; not a control step")))
            return
        if problem is not None:
            return
        self._last_t_board = sensor.t_board
        self._last_sensor_wall = now
        self._jumps.clear()
        self._events.append(SensorReading(sensor, now))

    def _implausible(self, s: Sensor, info: BoardInfo, now: float) -> str | None:
        """Why a valid SENSOR cannot be used in this session (None: it can; "early": too soon)."""
        n = info.gpu_count
        if len(s.temp_c) != n:
            return self._unusable_sensor("gpu_count", f"SENSOR carries {len(s.temp_c)} GPUs, the session has {n}")
        if info.features & BoardFeature.CHECKPOINTS and len(s.saved) != n:
            return self._unusable_sensor(
                "saved_missing", "the board declared checkpoints but its SENSOR carries no saved[] per GPU")
        limit = info.cap_max_w + max(1.0, 1e-3 * info.cap_max_w)
        top = max(s.cap_w)
        if top > limit:
            return self._unusable_sensor(
                "cap_range", f"SENSOR reports a cap of {top:g} W, above the board's declared maximum {info.cap_max_w:g} W")
        last = self._last_t_board
        if last is None:
            return None
        step = s.t_board - last  # (a clock gone back far is a reboot, caught in _frame)
        if step <= 0.0:
            return self._unusable_sensor("stale", f"SENSOR for board time {s.t_board:.3f} s, not after {last:.3f} s")
        period = 1.0 / info.sensor_rate_hz
        plausible = 10.0 * period + self.times.max_board_speed * max(0.0, now - self._last_sensor_wall)
        if step > plausible:
            if self._jumps and s.t_board > self._jumps[-1]:
                self._jumps.append(s.t_board)
            else:
                self._jumps = [s.t_board]
            if len(self._jumps) >= JUMP_FRAMES_TO_BELIEVE:
                self._new_session(f"board clock jumped from {last:.1f} s to {self._jumps[0]:.1f} s", now,
                                  counter="clock_jumps")
                return "rebooted"
            return self._unusable_sensor(
                "time_jump", f"board time jumped {step:.3g} s in {now - self._last_sensor_wall:.3g} s of wall time")
        if step < 0.5 * period:
            return "early"
        return None

    def _unusable_sensor(self, reason: str, text: str) -> str:
        self.counters["sensor_unusable"] += 1
        self._note_unusable(reason)
        self._events.append(LinkProblem("sensor_unusable", reason, text))
        return reason

    # --- time ----------------------------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Timers due at ``now``: HELLO, liveness, blindness, commands, retransmissions, heartbeat.

        The session's own judgements come before the channel's retransmissions: once it has
        decided to fall silent, not one more retransmission may feed the board's watchdog.
        """
        state = self.state
        if state is LinkState.CLOSED:
            return
        if state in (LinkState.HELLO_SENT, LinkState.INCOMPATIBLE):
            if now - self._last_hello >= self._hello_interval:
                self._send_hello(now)
            return
        info = self.info
        assert info is not None
        times = self.times
        if now - self._last_rx > times.t_link(info):
            # One last minimum-caps command, in case only the way back is broken.
            self._command_minimum_caps(now)
            self._fire(LinkTrigger.SILENT, f"no frame from the board for {now - self._last_rx:.2f} s", now)
            return
        if self.state is LinkState.ESTABLISHED and now - self._usable_at > times.t_blind(info) \
                and (self._grace_until is None or now >= self._grace_until):
            self._fire(LinkTrigger.SENSOR_LOST, self._blind_reason(now), now)
        self._judge_commands(now)
        if self.state is LinkState.UNCOMMANDABLE and self._probe(now):
            return
        events, out = self.channel.poll(now)
        for wire in out:
            self._out += wire
            self._last_tx = now
        for event in events:
            # A stalled SET_CAPS chain is the command timer's business (uncommandable).
            if isinstance(event, GaveUp):
                if event.seq not in self._own:
                    self._events.append(CommandResult(event.message, None))
                self._own.discard(event.seq)
        # Heartbeats only while the node sees: a blind node must not keep the watchdog fed.
        seeing = now - self._usable_at <= times.t_blind(info)
        if self.state is LinkState.ESTABLISHED and seeing and now - self._last_tx >= times.heartbeat_s:
            self._send(Heartbeat(uptime_s=max(0.0, now - self._started)), now)

    def _judge_commands(self, now: float) -> None:
        """Uncommandable: the minimum caps unanswered while blind, or no SET_CAPS obeyed for long."""
        times = self.times
        since = self._caps_unconfirmed_since
        if self.state is LinkState.BLIND and self._safing_caps_at is not None \
                and now - self._safing_caps_at >= times.retry_timeout_s:
            # Blind, and the minimum caps unanswered: nothing says they took; stop feeding it.
            self._fire(LinkTrigger.COMMAND_LOST, "the minimum caps went unanswered while blind: "
                       "the board's watchdog left to trip", now)
        elif since is not None and now - since >= times.command_timeout_s and self.state is not LinkState.UNCOMMANDABLE:
            what = f"{self._refusals} refused" if self._refusals else "none answered"
            self._fire(
                LinkTrigger.COMMAND_LOST,
                f"no SET_CAPS acknowledged OK for {now - since:.2f} s ({what}): "
                + ("rails off, " if self._refusals else "") + "the board's watchdog left to trip",
                now,
            )

    def _probe(self, now: float) -> bool:
        """Uncommandable: starve, and test the board now and then.  True when a new session began."""
        times = self.times
        if self._starve_at is not None and now >= self._starve_at:
            self.channel.drop_pending()  # starve: no retransmission feeds the watchdog
            self._starve_at = None
        if now < self._probe_at:
            return False
        self._probe_at = now + times.probe_s
        if not self._refusals:
            # It answers nothing: perhaps it lost our session (a reset we did not see).
            # HELLO does not feed its watchdog; a new session starts from scratch.
            self._new_session("the board answers no command: opening a new session", now, counter="session_retries")
            return True
        self._command_minimum_caps(now)  # it answers, refusing: does it obey again?
        self._starve_at = now + times.retry_timeout_s
        return False

    def _blind_reason(self, now: float) -> str:
        seen = ", ".join(f"{count} {reason}" for reason, count in sorted(self._unusable.items())) or "none"
        return (f"no usable SENSOR for {now - self._usable_at:.2f} s (frames: {seen}): caps to minimum, "
                "the board's watchdog left to trip")

    def next_deadline(self) -> float:
        """The earliest wall time at which :meth:`poll` has something to do (inf: nothing)."""
        state = self.state
        if state is LinkState.CLOSED:
            return math.inf
        if state in (LinkState.HELLO_SENT, LinkState.INCOMPATIBLE):
            return self._last_hello + self._hello_interval
        info = self.info
        assert info is not None
        times = self.times
        due = [self._last_rx + times.t_link(info), self.channel.next_deadline() or math.inf]
        if state is LinkState.ESTABLISHED:
            due += [max(self._usable_at + times.t_blind(info), self._grace_until or 0.0),
                    self._last_tx + times.heartbeat_s]
        if state is LinkState.BLIND and self._safing_caps_at is not None:
            due.append(self._safing_caps_at + times.retry_timeout_s)
        if self._caps_unconfirmed_since is not None and state is not LinkState.UNCOMMANDABLE:
            due.append(self._caps_unconfirmed_since + times.command_timeout_s)
        if state is LinkState.UNCOMMANDABLE:
            due += [self._probe_at, self._starve_at if self._starve_at is not None else math.inf]
        return min(due)



# --- the board's side ------------------------------------------------------------------------


@dataclass
class BoardLinkStats:
    hellos: int = 0
    ignored_outside_session: int = 0  # numbered frames before a (compatible) HELLO
    heartbeats_sent: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class BoardSession:
    """A board's side of one port (sans-I/O): sessions, numbering, watchdog feeding, heartbeat.

    ``hello_ack`` answers each HELLO.  Numbered frames count only inside a session opened by a
    HELLO with a common version (ICD §4.2 S4, §4.3): before it they are not executed, not
    acknowledged and do not feed the watchdog; HELLO itself never feeds it.  ``fed_at`` is the
    wall time of the last frame that did.  ``heartbeat_s`` (main port) sends HEARTBEAT when
    nothing else went out for that long; None on the HIL port.
    """

    hello_ack: Callable[[Hello], HelloAck]
    wall: float
    heartbeat_s: float | None = None
    uptime: Callable[[], float] = lambda: 0.0
    retry_timeout_s: float = 0.25
    max_tries: int = 5
    channel: ReliableChannel = field(init=False)
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    established: bool = False
    peer: str | None = None
    stats: BoardLinkStats = field(default_factory=BoardLinkStats)
    fed_at: float = field(init=False)
    _last_tx: float = field(init=False)
    _out: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.channel = ReliableChannel(retry_timeout=self.retry_timeout_s, max_tries=self.max_tries)
        self.fed_at = self._last_tx = self.wall  # armed from boot: no node at all is silence too

    def reboot(self, wall: float) -> None:
        """The board restarted: no session, fresh numbering and decoder; the watchdog re-armed."""
        self.channel = ReliableChannel(retry_timeout=self.retry_timeout_s, max_tries=self.max_tries)
        self.decoder = FrameDecoder()
        self.established = False
        self.peer = None
        self.fed_at = self._last_tx = wall

    def receive(self, data: bytes, wall: float) -> list[tuple[int, Message]]:
        """Bytes in; the messages to execute (reliable ones then need :meth:`ack`)."""
        self.decoder.feed(data)
        delivered: list[tuple[int, Message]] = []
        while (frame := self.decoder.next_frame()) is not None:
            delivered += self._frame(frame, wall)
        return delivered

    def _frame(self, frame: Frame, wall: float) -> list[tuple[int, Message]]:
        message = frame.message
        if frame.seq == 0 and isinstance(message, Hello):
            self._hello(message)
            return []
        if frame.seq != 0 and not self.established:
            self.stats.ignored_outside_session += 1
            return []
        misnumbered = self.channel.stats.misnumbered
        events, out = self.channel.receive(frame)
        if frame.seq != 0 and self.channel.stats.misnumbered == misnumbered:
            self.fed_at = wall  # a valid frame of the session (duplicates too) is a sign of life
        for reply in out:
            self._write(reply, wall)
        return [(e.seq, e.message) for e in events if isinstance(e, Delivered) and e.seq != 0]

    def _hello(self, hello: Hello) -> None:
        self.stats.hellos += 1
        self.channel.reset()
        ack = self.hello_ack(hello)
        self.established = ack.version != 0
        self.peer = hello.node_id
        self._out += self.channel.session_frame(ack)

    def ack(self, seq: int, status: int, wall: float) -> None:
        self._write(self.channel.ack(seq, status), wall)

    def send(self, message: Message, wall: float) -> None:
        self._write(self.channel.send(message, wall), wall)

    def send_encoded(self, frame: bytes, wall: float) -> None:
        """A frame the caller encoded itself (numbered with ``channel.number()``)."""
        self._write(frame, wall)

    def poll(self, wall: float) -> None:
        """Retransmissions, and a HEARTBEAT when nothing went out for ``heartbeat_s``."""
        _events, frames = self.channel.poll(wall)  # a board sends nothing reliable in v1
        for frame in frames:
            self._write(frame, wall)
        if self.heartbeat_s is not None and wall - self._last_tx >= self.heartbeat_s:
            self.stats.heartbeats_sent += 1
            self.send(Heartbeat(uptime_s=max(0.0, self.uptime())), wall)

    def _write(self, data: bytes, wall: float) -> None:
        if data:
            self._out += data
            self._last_tx = wall

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def rx_errors(self) -> int:
        s = self.decoder.stats
        return s.crc_errors + s.decode_errors + s.oversize

