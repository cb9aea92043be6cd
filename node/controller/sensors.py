"""Per-GPU temperature sensor faults, as the estimator flags them, turned into events.

One event when a sensor is first flagged, one when it has been clean for a while: a
sensor dropping out every other frame is one fault, not one event a frame.  It counts as
recovered ``SENSOR_CLEAR_S`` board seconds after its last fault (20 frames at 10 Hz; board time,
so a board that sends a thousand frames a second does not make it flap a thousand times
faster), and until then FDIR sees it as faulty too (:attr:`SensorFaults.held`).  Both
events are rate-limited per GPU.
"""

from __future__ import annotations

import numpy as np

from node.bus.payloads import Severity
from node.control import kernels
from node.controller.events import EventLog

#: Board seconds clean before a flagged temperature sensor counts as recovered.
SENSOR_CLEAR_S = 2.0

_FLAG_NAMES = (
    (kernels.FLAG_NAN, "NaN"),
    (kernels.FLAG_RANGE, "out of range"),
    (kernels.FLAG_STUCK, "stuck"),
    (kernels.FLAG_INNOVATION, "disagrees with the model"),
    (kernels.FLAG_NEIGHBOURS, "reads colder than its neighbours"),
)


class SensorFaults:
    def __init__(self, events: EventLog) -> None:
        self._events = events
        self.held = np.zeros(0, dtype=np.int64)  # faults as reported, held until clean
        self._fault_at = np.zeros(0)  # board time of each sensor's last flagged frame

    def resize(self, gpu_count: int) -> None:
        """A new session; what is known of each sensor carries over when the board is the same size."""
        if len(self.held) != gpu_count:
            self.held = np.zeros(gpu_count, dtype=np.int64)
        self._fault_at = np.full(gpu_count, -np.inf)  # board time starts afresh with a session

    def update(self, flags: np.ndarray, t_board: float) -> None:
        if not flags.any() and not self.held.any():
            return  # the usual frame: nothing to do
        for gpu in range(len(flags)):
            now, before = int(flags[gpu]), int(self.held[gpu])
            if now:
                self._fault_at[gpu] = t_board
                if not before:
                    kinds = [name for bit, name in _FLAG_NAMES if now & bit]
                    self._events.limited(
                        f"sensor_fault:{gpu}", "sensor_fault", Severity.WARNING,
                        f"GPU {gpu} temperature sensor {'/'.join(kinds)}: running on the estimate",
                        gpu=gpu, flags=now,
                    )
                self.held[gpu] = before | now
            elif before:
                if t_board - self._fault_at[gpu] >= SENSOR_CLEAR_S - 1e-9:
                    self._events.limited(f"sensor_ok:{gpu}", "sensor_ok", Severity.INFO,
                                         f"GPU {gpu} temperature sensor recovered", gpu=gpu)
                    self.held[gpu] = 0
