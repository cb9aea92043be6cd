"""What the controller knows of one board session, built from what the board reported.

A session starts at every ``LinkUp`` (a new HELLO_ACK: after a link loss, a board reboot, a
new clock) and is thrown away at the next one, so nothing of the old board's state has to
be cleared by hand: the law is reset for this board's GPUs and cap range, the caps it was
sent are unknown (so the first frame sends them), its Xid counters and its board time are
taken as the board reports them.  What must outlive a session lives elsewhere: rails in
the :class:`~node.controller.rails.RailBook`, ground's limits and jobs in
:class:`~node.controller.commands.GroundIntent`, FDIR levels in the monitors.
"""

from __future__ import annotations

import numpy as np

from node.board import Board, BoardInfo
from node.control import kernels
from node.control.law import Law
from node.errors import LinkError
from node.link.messages import Sensor, SensorFlag


class ControlSession:
    def __init__(self, info: BoardInfo, law: Law) -> None:
        self.info = info
        n = info.gpu_count
        law.reset(gpu_count=n, cap_min_w=info.cap_min_w, cap_max_w=info.cap_max_w,
                  sensor_rate_hz=info.sensor_rate_hz)
        self.caps = np.zeros(n)  # what this frame commands
        self.sent = np.full(n, np.nan)  # what the board was sent; NaN: nothing yet, so the next frame sends
        self.min_caps = np.full(n, info.cap_min_w)
        self.temp_est = np.full(n, np.nan)
        #: Xid counts and the on-bus mask of the last frame (None before the session's first).
        self._xid: tuple[int, ...] | None = None
        self._gpu_ok: int | None = None
        self.last: Sensor | None = None
        self._watchdog_seen = False

    def watchdog_tripped(self, sensor: Sensor) -> bool:
        """True on the first frame that shows the board's watchdog safe state."""
        tripped = bool(sensor.flags & SensorFlag.WATCHDOG_SAFE)
        first = tripped and not self._watchdog_seen
        self._watchdog_seen = tripped
        return first

    def gpu_faults(self, sensor: Sensor) -> list[tuple[int, str]]:
        """GPUs that reported a new Xid (ECC, an upset) or fell off the bus since the last frame.

        The session's first frame only sets the baseline: counts since board boot are old news.
        """
        faults: list[tuple[int, str]] = []
        if self._xid is not None and len(sensor.xid) == len(self._xid):
            faults += [(g, "reported an Xid error") for g, (now, before) in enumerate(zip(sensor.xid, self._xid, strict=True))
                       if now > before]
        if self._gpu_ok is not None:
            # Off the bus with its rail on: a fault.  With its rail off (shed, cycled): not.
            dropped = self._gpu_ok & ~sensor.gpu_ok & sensor.rails
            faults += [(g, "fell off the bus") for g in range(self.info.gpu_count) if dropped >> g & 1
                       and all(g != f for f, _ in faults)]
        self._xid, self._gpu_ok = tuple(sensor.xid), sensor.gpu_ok
        return faults

    def resend(self) -> None:
        """Forget what the board was sent (it dropped our caps, or refused them): send again."""
        self.sent[:] = np.nan

    def command_caps(self, board: Board, deadband_w: float) -> None:
        """Send ``caps`` when they moved beyond the deadband (or were never sent this session)."""
        if np.isnan(self.sent).any() or kernels.caps_changed(self.caps, self.sent, deadband_w):
            try:
                board.set_caps(self.caps.tolist())
            except LinkError:
                return  # the link just went down (or will not carry commands); its event is on the way
            self.sent[:] = self.caps
