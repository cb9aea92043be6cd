"""The board firmware's side of the serial link, sans-I/O.

:class:`Firmware` is fed the bytes that arrive from the node and told the time; it returns
the bytes to write back.  It never reads a clock or touches a port: board time arrives
through :meth:`Firmware.advance_to` (which steps the plant) and wall time as ``wall=``
arguments (seconds, any monotonic origin).

Behaviour (docs/ICD.md):

- HELLO → HELLO_ACK with the highest protocol version both sides speak (0: none) and the
  features the board declares (lockstep; checkpoints when the plant keeps them); the
  reliable channel starts a new session.  The session, its numbering and the watchdog's
  feeding are :class:`~node.link.session.BoardSession`'s: numbered frames count only inside
  a session of a common version, and HELLO does not feed the watchdog (ICD §4.3).
- SET_CAPS / SET_RAIL are applied and acknowledged OK, or refused with BAD_ARGUMENT and no
  effect (wrong length, cap outside the hardware range, no such GPU).  Duplicates are
  re-acknowledged by the channel and never applied twice.  Other reliable messages are
  acknowledged UNSUPPORTED.
- SENSOR frames are built on request (the board's clock asks at the sensor rate).
- Watchdog: after ``watchdog_s`` of *wall* time without one valid frame of a session from
  the node (armed from boot), every cap drops to the minimum and SENSOR carries
  WATCHDOG_SAFE.  The next such frame clears the flag; the caps stay at the minimum until the node sets new
  ones.  Liveness uses wall time because board time may run many times faster.
- HEARTBEAT when nothing else was sent for ``heartbeat_s`` of wall time (slow sensor rates).
- ``rx_errors`` in SENSOR counts frames the decoder rejected (CRC, oversize, other errors).
- STEP_DONE records the newest board time the node has finished (lockstep, read by the
  board's clock as :attr:`Firmware.step_done_t`).
- RESET_BOARD is acknowledged OK and sets :attr:`Firmware.reset_requested`; the board then
  calls :meth:`Firmware.reboot` (board time 0, channel and decoder state forgotten, GPUs
  re-initialised by the plant, unsaved work lost).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from firmware_sim.config import FirmwareConfig
from firmware_sim.plant import ParamValue, Plant
from node.errors import CommandRejected
from node.link.messages import (
    UINT32_MAX,
    AckStatus,
    BoardFeature,
    Checkpoint,
    Hello,
    HelloAck,
    Message,
    ResetBoard,
    Restore,
    Sensor,
    SensorFlag,
    SetCaps,
    SetRail,
    StepDone,
)
from node.link.session import BoardSession

#: Parameters the firmware answers itself (read-only); the rest go to the plant.
FIRMWARE_PARAMS = ("t_board", "watchdog_safe", "rx_errors")


@dataclass(slots=True)
class FirmwareStats:
    hellos: int = 0
    commands_applied: int = 0
    commands_refused: int = 0  # BAD_ARGUMENT or UNSUPPORTED
    watchdog_trips: int = 0
    sensor_frames: int = 0
    stale_step_done: int = 0  # STEP_DONE for a board time not reached (sent before a reset)


def negotiate(hello: Hello, lo: int, hi: int) -> int:
    """Highest protocol version in both ranges, 0 when they do not overlap."""
    top = min(hello.max_version, hi)
    return top if max(hello.min_version, lo) <= top else 0


class Firmware:
    """Board firmware logic for one node link."""

    #: The session of the main port (a test may run a deliberately deviant one).
    session_cls: type[BoardSession] = BoardSession

    def __init__(
        self,
        *,
        plant: Plant,
        wall: float,
        config: FirmwareConfig | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = cfg = config if config is not None else FirmwareConfig()
        self.plant = plant
        self.log = logger or logging.getLogger("umbra.board.firmware")
        self.link = self.session_cls(
            hello_ack=self._hello, wall=wall, heartbeat_s=cfg.heartbeat_s, uptime=lambda: self._t_board,
            retry_timeout_s=cfg.retry_timeout_s, max_tries=cfg.max_tries,
        )
        self.stats = FirmwareStats()
        self._t_board = 0.0
        self._safe = False
        self.step_done_t = -1.0
        self.reset_requested = False

    def reboot(self, *, wall: float) -> None:
        """Board reset: time restarts at 0, the link forgets its session, the GPUs restart."""
        self.link.reboot(wall)
        self._t_board = 0.0
        self._safe = False
        self.step_done_t = -1.0
        self.reset_requested = False
        self.plant.reboot()
        self.log.warning("board reset: board time restarts at 0")

    # --- state ----------------------------------------------------------------------------

    @property
    def t_board(self) -> float:
        return self._t_board

    @property
    def watchdog_safe(self) -> bool:
        return self._safe

    @property
    def node_id(self) -> str | None:
        return self.link.peer

    @property
    def rx_errors(self) -> int:
        return min(self.link.rx_errors, UINT32_MAX)

    # --- time -----------------------------------------------------------------------------

    def advance_to(self, t_board: float) -> None:
        """Step the plant up to board time ``t_board`` (never backwards)."""
        if t_board > self._t_board:
            self.plant.step(t_board - self._t_board)
            self._t_board = t_board

    def poll(self, *, wall: float) -> bytes:
        """Retransmits, watchdog and heartbeat due at ``wall``."""
        self._check_watchdog(wall)
        self.link.poll(wall)
        return self.link.take_output()

    # --- receiving ------------------------------------------------------------------------

    def receive(self, data: bytes, *, wall: float) -> bytes:
        """Bytes from the node in; bytes for the node out."""
        # A silence that ran out before these bytes still trips: the caps went to minimum.
        self._check_watchdog(wall)
        fed_before = self.link.fed_at
        delivered = self.link.receive(data, wall)
        if self._safe and self.link.fed_at != fed_before:
            self._safe = False
            self.log.warning("node is back; watchdog safe state cleared (caps stay at minimum)")
        for seq, message in delivered:
            self._deliver(seq, message, wall)
        return self.link.take_output()

    def _hello(self, hello: Hello) -> HelloAck:
        self.stats.hellos += 1
        ack = self.hello_ack(hello)
        self.log.info("HELLO from %s: version %d", hello.node_id, ack.version)
        return ack

    def hello_ack(self, hello: Hello) -> HelloAck:
        cfg = self.config
        lo, hi = self.plant.cap_range_w
        return HelloAck(
            version=negotiate(hello, cfg.min_version, cfg.max_version),
            board_id=cfg.board_id,
            fw_version=cfg.fw_version,
            gpu_count=self.plant.gpu_count,
            cap_min_w=float(lo),
            cap_max_w=float(hi),
            sensor_rate_hz=float(cfg.sensor_rate_hz),
            watchdog_s=float(cfg.watchdog_s),
            min_version=cfg.min_version,
            max_version=cfg.max_version,
            features=int(self.features),
        )

    @property
    def features(self) -> BoardFeature:
        """What this board declares: lockstep always (the board's clock), checkpoints if the plant keeps them."""
        return BoardFeature.LOCKSTEP | (BoardFeature.CHECKPOINTS if self.plant.keeps_checkpoints else BoardFeature(0))

    def _deliver(self, seq: int, message: Message, wall: float) -> None:
        if isinstance(message, StepDone):
            # A node cannot have finished a frame this board has not sent yet: such a
            # STEP_DONE was meant for the clock before a reset, and believing it would let
            # lockstep run free until board time caught up with it.
            if message.t_board <= self._t_board + 1e-6:
                self.step_done_t = max(self.step_done_t, message.t_board)
            else:
                self.stats.stale_step_done += 1
            return
        if not message.RELIABLE:
            return  # HEARTBEAT (liveness only) and messages meant for the other side
        status: int = AckStatus.OK
        try:
            if isinstance(message, SetCaps):
                self.plant.set_caps(message.cap_w)
            elif isinstance(message, SetRail):
                self.plant.set_rail(message.gpu, message.on)
            elif isinstance(message, ResetBoard):
                self.reset_requested = True
            elif isinstance(message, Checkpoint):
                self.plant.start_checkpoint(message.gpu, message.pause_s)
            elif isinstance(message, Restore):
                self.plant.restore(message.gpu, message.progress)
            else:
                raise CommandRejected(
                    f"{type(message).__name__} is not served on this port",
                    code=AckStatus.UNSUPPORTED,
                )
        except CommandRejected as exc:
            status = exc.code
            self.stats.commands_refused += 1
            self.log.info("refused %s (seq %d): %s", type(message).__name__, seq, exc)
        else:
            self.stats.commands_applied += 1
        self.link.ack(seq, status, wall)

    # --- sending --------------------------------------------------------------------------

    def sensor_frame(self, *, wall: float) -> bytes:
        """The SENSOR frame for the current board time."""
        reading = self.plant.read()
        flags = SensorFlag(0)
        if self._safe:
            flags |= SensorFlag.WATCHDOG_SAFE
        if reading.eclipse:
            flags |= SensorFlag.ECLIPSE
        if reading.hw_slowdown:
            flags |= SensorFlag.HW_SLOWDOWN
        sensor = Sensor(
            t_board=self._t_board,
            utc=self.config.utc_at_boot + self._t_board,
            temp_c=reading.temp_c,
            power_w=reading.power_w,
            cap_w=reading.cap_w,
            progress=reading.progress,
            rails=reading.rails,
            solar_w=reading.solar_w,
            battery_soc=reading.battery_soc,
            radiator_c=reading.radiator_c,
            flags=int(flags),
            rx_errors=self.rx_errors,
            battery_wh=reading.battery_wh,
            battery_capacity_wh=reading.battery_capacity_wh,
            bus_v=reading.bus_v,
            avionics_w=reading.avionics_w,
            orbit_period_s=reading.orbit_period_s,
            eclipse_in_s=reading.eclipse_in_s,
            sun_in_s=reading.sun_in_s,
            xid=reading.xid,
            gpu_ok=reading.gpu_ok,
            slowdown=reading.slowdown,
            saved=reading.saved,
            ckpt=reading.ckpt,
        )
        self.stats.sensor_frames += 1
        self.link.send(sensor, wall)
        return self.link.take_output()

    # --- watchdog -------------------------------------------------------------------------

    def _check_watchdog(self, wall: float) -> None:
        if self._safe or wall - self.link.fed_at < self.config.watchdog_s:
            return
        lo, _hi = self.plant.cap_range_w
        self.plant.set_caps((lo,) * self.plant.gpu_count)
        self._safe = True
        self.stats.watchdog_trips += 1
        self.log.warning(
            "no frame from the node for %.1f s: every cap to %g W (watchdog safe)",
            wall - self.link.fed_at,
            lo,
        )

    # --- parameters (HIL) -----------------------------------------------------------------

    def get_param(self, name: str) -> ParamValue:
        if name == "t_board":
            return self._t_board
        if name == "watchdog_safe":
            return 1.0 if self._safe else 0.0
        if name == "rx_errors":
            return float(self.rx_errors)
        return self.plant.get_param(name)

    def set_param(self, name: str, value: ParamValue) -> None:
        if name in FIRMWARE_PARAMS:
            raise CommandRejected(f"read-only parameter {name!r}", code=AckStatus.BAD_ARGUMENT)
        self.plant.set_param(name, value)

    def param_names(self) -> tuple[str, ...]:
        return FIRMWARE_PARAMS + self.plant.param_names()
