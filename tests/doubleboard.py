"""A deliberately misbehaving board, written from docs/ICD.md — a test double, not the simulator.

``DoubleBoard`` is sans-I/O (bytes and the wall time in, bytes out) and keeps what a real
board would: the caps in force, the rails, its watchdog (ICD §4.3: fed only by frames of
a session, not by HELLO; on expiry every cap to ``cap_min_w``).  What it does wrong is
its :class:`Behaviour`, one row of issue #13's table each:

============ =====================================================================
sensors      ``good``; ``nan_power`` (every SENSOR invalid: NaN in power_w);
             ``extra_gpu`` (arrays one longer than gpu_count); ``silent`` (sends
             nothing at all); ``cap_5000`` (reports a cap above cap_max_w);
             ``clock_jump`` (board time jumps by 10⁶ s, then carries on); ``flood``
             (a hundred frames per period, a hundredth of a period apart)
caps         ``obey``; ``refuse`` (BAD_ARGUMENT); ``busy`` (BUSY); ``ignore`` (no ACK
             and no effect)
rails        ``obey``; ``refuse``
versions     the protocol versions it speaks, ``(1, 1)`` or ``(2, 3)``
============ =====================================================================

:func:`powered` says which GPUs draw more than their minimum: the rule of the issue is
that, within the bound, a node that cannot see or command this board leaves that list
empty.  ``tests/test_link_misbehaving.py`` runs it over real pseudo-terminals;
``tests/test_controller_machine.py`` in memory, with the whole node stack.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import msgpack

from node.link.codec import frame_from_body
from node.link.messages import (
    AckStatus,
    BoardFeature,
    Checkpoint,
    Hello,
    HelloAck,
    Message,
    ResetBoard,
    SetCaps,
    SetRail,
)
from node.link.session import BoardSession

SENSORS = ("good", "nan_power", "extra_gpu", "silent", "cap_5000", "clock_jump", "flood")
CAPS = ("obey", "refuse", "busy", "ignore")
RAILS = ("obey", "refuse")
#: Behaviours in which the node cannot see or cannot command this board.
BLINDING = ("nan_power", "extra_gpu", "silent", "cap_5000")
DISOBEYING = ("refuse", "busy", "ignore")


@dataclass(frozen=True)
class Behaviour:
    sensors: str = "good"
    caps: str = "obey"
    rails: str = "obey"
    versions: tuple[int, int] = (1, 1)
    checkpoints: bool = False  # declare CHECKPOINTS and keep them (saved = progress at start)

    @property
    def cannot_see(self) -> bool:
        return self.sensors in BLINDING or self.versions[0] > 1

    @property
    def cannot_command(self) -> bool:
        return self.caps in DISOBEYING or self.versions[0] > 1


@dataclass
class DoubleBoard:
    behaviour: Behaviour = field(default_factory=Behaviour)
    gpus: int = 4
    cap_min_w: float = 200.0
    cap_max_w: float = 700.0
    rate_hz: float = 10.0
    watchdog_s: float = 1.0
    wall: float = 0.0
    #: A reading per GPU: healthy GPUs that differ by 3 K (the neighbour check must live with it);
    #: each frame adds a little deterministic noise, as real sensors do.
    temps_c: tuple[float, ...] = (60.0, 61.0, 62.0, 63.0)
    soc: float = 0.8
    budget_ok: bool = True
    caps: list[float] = field(init=False)
    rails: int = field(init=False)
    t_board: float = 0.0
    watchdog_safe: bool = False
    caps_seen: list[tuple[float, ...]] = field(default_factory=list)  # every SET_CAPS it received
    disobeyed_at: float | None = None  # wall time of the first SET_CAPS it did not carry out
    rail_commands: list[tuple[int, bool]] = field(default_factory=list)
    checkpoint_commands: list[tuple[float, int]] = field(default_factory=list)  # (wall, gpu)
    jumped: bool = False
    frames: int = 0

    def __post_init__(self) -> None:
        self.caps = [self.cap_max_w] * self.gpus  # the hardware's own default until told
        self.rails = (1 << self.gpus) - 1
        self.progress = [0.0] * self.gpus
        self.saved = [0.0] * self.gpus
        self.link = BoardSession(hello_ack=self._hello_ack, wall=self.wall, heartbeat_s=0.2,
                                 uptime=lambda: self.t_board)

    # --- what a test asks -------------------------------------------------------------------------

    def powered(self) -> list[int]:
        """GPUs drawing more than their minimum: rail on and cap above cap_min_w."""
        return [g for g in range(self.gpus) if self.rails >> g & 1 and self.caps[g] > self.cap_min_w + 1e-6]

    def behave(self, **changes: object) -> None:
        self.behaviour = dataclasses.replace(self.behaviour, **changes)  # type: ignore[arg-type]
        if self.behaviour.caps == "obey":
            self.disobeyed_at = None

    def reboot(self, wall: float) -> None:
        """RESET_BOARD: board time 0, the session forgotten, rails on, caps at minimum (§4.6.1)."""
        self.link.reboot(wall)
        self.t_board = 0.0
        self.caps = [self.cap_min_w] * self.gpus
        self.rails = (1 << self.gpus) - 1
        self.watchdog_safe = False
        self.jumped = False

    # --- the link -----------------------------------------------------------------------------------

    def _hello_ack(self, hello: Hello) -> HelloAck:
        lo, hi = self.behaviour.versions
        top = min(hello.max_version, hi)
        version = top if max(hello.min_version, lo) <= top else 0
        return HelloAck(
            version=version, board_id="double-1", fw_version="double", gpu_count=self.gpus,
            cap_min_w=self.cap_min_w, cap_max_w=self.cap_max_w, sensor_rate_hz=self.rate_hz,
            watchdog_s=self.watchdog_s, min_version=lo, max_version=hi,
            features=int(BoardFeature.LOCKSTEP | (BoardFeature.CHECKPOINTS if self.behaviour.checkpoints else 0)),
        )

    def receive(self, data: bytes, wall: float) -> bytes:
        self._check_watchdog(wall)
        fed = self.link.fed_at
        for seq, message in self.link.receive(data, wall):
            self._execute(seq, message, wall)
        if self.link.fed_at != fed:
            self.watchdog_safe = False  # the caps stay where the watchdog put them
        return self._out()

    def _execute(self, seq: int, message: Message, wall: float) -> None:
        if not message.RELIABLE:
            return
        b = self.behaviour
        if isinstance(message, SetCaps):
            self.caps_seen.append(message.cap_w)
            if b.caps != "obey" and self.disobeyed_at is None:
                self.disobeyed_at = wall
            if b.caps == "ignore":
                return
            if b.caps in ("refuse", "busy"):
                self.link.ack(seq, AckStatus.BAD_ARGUMENT if b.caps == "refuse" else AckStatus.BUSY, wall)
                return
            if len(message.cap_w) != self.gpus or not all(self.cap_min_w <= c <= self.cap_max_w for c in message.cap_w):
                self.link.ack(seq, AckStatus.BAD_ARGUMENT, wall)
                return
            self.caps = list(message.cap_w)
        elif isinstance(message, SetRail):
            self.rail_commands.append((message.gpu, message.on))
            if b.rails == "refuse" or message.gpu >= self.gpus:
                self.link.ack(seq, AckStatus.BAD_ARGUMENT, wall)
                return
            self.rails = self.rails | 1 << message.gpu if message.on else self.rails & ~(1 << message.gpu)
        elif isinstance(message, Checkpoint) and self.behaviour.checkpoints and message.gpu < self.gpus:
            self.checkpoint_commands.append((wall, message.gpu))
            self.saved[message.gpu] = self.progress[message.gpu]  # an instant checkpoint
        elif isinstance(message, ResetBoard):
            self.link.ack(seq, AckStatus.OK, wall)
            self.reboot(wall)
            return
        else:
            self.link.ack(seq, AckStatus.UNSUPPORTED, wall)
            return
        self.link.ack(seq, AckStatus.OK, wall)

    def poll(self, wall: float) -> bytes:
        self._check_watchdog(wall)
        if self.behaviour.sensors != "silent":
            self.link.poll(wall)
        else:
            self.link.take_output()
        return self._out()

    def _check_watchdog(self, wall: float) -> None:
        if not self.watchdog_safe and wall - self.link.fed_at >= self.watchdog_s:
            self.watchdog_safe = True
            self.caps = [self.cap_min_w] * self.gpus

    def _out(self) -> bytes:
        out = self.link.take_output()
        return b"" if self.behaviour.sensors == "silent" else out

    # --- SENSOR frames ------------------------------------------------------------------------------

    def frame(self, wall: float) -> bytes:
        """Advance board time one period and send that period's SENSOR frame(s)."""
        self._check_watchdog(wall)
        period = 1.0 / self.rate_hz
        b = self.behaviour
        if b.sensors == "silent":
            self.t_board += period
            return b""
        if b.sensors == "clock_jump" and not self.jumped:
            self.t_board += 1e6
            self.jumped = True
        if b.sensors == "flood":
            for _ in range(100):
                self.t_board += period / 100
                self._sensor(wall)
            return self._out()
        self.t_board += period
        self.progress = [p + period * (1.0 if self.rails >> g & 1 else 0.0) for g, p in enumerate(self.progress)]
        self._sensor(wall)
        return self._out()

    def _sensor(self, wall: float) -> None:
        b = self.behaviour
        n = self.gpus + (1 if b.sensors == "extra_gpu" else 0)
        on = [bool(self.rails >> g & 1) for g in range(n)]
        caps = ([*self.caps, self.cap_max_w])[:n]
        if b.sensors == "cap_5000":
            caps = [5000.0, *caps[1:]]
        power = [c if on[g] else 0.0 for g, c in enumerate(caps)]
        if b.sensors == "nan_power":
            power[0] = math.nan
        eclipse = not self.budget_ok
        self.frames += 1
        noise = 0.01 * (self.frames * 7 % 11)
        temps = [t + noise for t in ([*self.temps_c, 60.0] * 2)[:n]]
        payload = {
            "t_board": self.t_board, "utc": 1.7e9 + self.t_board, "temp_c": temps, "power_w": power,
            "cap_w": caps, "progress": ([*self.progress, 0.0])[:n], "rails": self.rails, "solar_w": 0.0 if eclipse else 20_000.0,
            "battery_soc": self.soc, "radiator_c": 20.0, "flags": (2 if eclipse else 0) | (1 if self.watchdog_safe else 0),
            "rx_errors": self.link.rx_errors, "battery_wh": 500.0 if eclipse else 1000.0, "battery_capacity_wh": 1000.0,
            "avionics_w": 100.0, "orbit_period_s": 5700.0, "eclipse_in_s": 0.0 if eclipse else 3000.0,
            "sun_in_s": 600.0 if eclipse else 0.0,
        }
        if b.checkpoints:
            payload["saved"] = ([*self.saved, 0.0])[:n]
        # Encoded by hand, numbered by the shared channel: a valid frame may carry bad values.
        body = msgpack.packb([1, 0x10, self.link.channel.number(), payload], use_bin_type=True)
        self.link.send_encoded(frame_from_body(body), wall)
