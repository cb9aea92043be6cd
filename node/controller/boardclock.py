"""Board time as a monotonic clock: what "a second" means on a bench that paces the board.

A HIL bench may run the board faster (or slower) than wall time; the board's sensor frames
carry its time.  :class:`BoardClock` turns them into a clock that process jobs' checkpoint
intervals can run on (``checkpoints.clock = "board"``):

- it advances by each frame's step in board time, and never goes back (a board reset
  restarts the board's clock at 0: that step adds nothing);
- between frames it runs on at the board's measured pace (board seconds per wall second,
  smoothed), at most one frame ahead, so what lasts a fraction of a frame — a checkpoint's
  cost — is measured finer than the sensor period.

On a real board at real time it reads the same as wall time since the node started.
"""

from __future__ import annotations

from collections.abc import Callable


class BoardClock:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock  # the node's monotonic clock
        self._elapsed = 0.0  # board seconds from the frames so far
        self._t_last: float | None = None  # the last frame's board time
        self._wall_at = 0.0  # node clock at the last frame
        self._rate = 0.0  # board seconds per node second, smoothed (0: not known yet)
        self._dt = 0.0  # board seconds between the last two frames
        self._read = 0.0  # the newest value read: it never goes back

    def frame(self, t_board: float) -> None:
        """A sensor frame stamped ``t_board`` arrived."""
        now = self._clock()
        if self._t_last is not None and t_board > self._t_last:
            dt = t_board - self._t_last
            self._elapsed += dt
            self._dt = dt
            wall = now - self._wall_at
            if wall > 0.0:
                rate = dt / wall
                self._rate = rate if self._rate == 0.0 else 0.8 * self._rate + 0.2 * rate
        self._t_last = t_board
        self._wall_at = now

    def __call__(self) -> float:
        ahead = min((self._clock() - self._wall_at) * self._rate, self._dt)
        self._read = max(self._read, self._elapsed + max(0.0, ahead))
        return self._read
