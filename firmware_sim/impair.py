"""Link impairments of the simulated board, sans-I/O: bit errors, lost bytes, garbage.

The board passes every byte it writes to, and reads from, the node's link through one
:class:`LinkImpairment` (the HIL ``link.*`` names set its fields).  Randomness comes from a
seeded generator, so a seed gives one sequence of impairments.  Delays and disconnects need
a clock and a port and are done by :class:`~firmware_sim.board.Board`.
"""

from __future__ import annotations

import numpy as np


class LinkImpairment:
    """Corrupts byte streams at a bit error rate, drops bytes, and injects garbage bursts."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self.ber = 0.0  # probability that any one bit is flipped
        self.drop_rate = 0.0  # probability that any one byte is lost
        self.delay_s = 0.0  # wall seconds each write is held back (done by the board)
        self._garbage = bytearray()
        self.bits_flipped = 0
        self.bytes_dropped = 0
        self.garbage_sent = 0

    @property
    def active(self) -> bool:
        return self.ber > 0.0 or self.drop_rate > 0.0 or bool(self._garbage)

    def garbage(self, count: int) -> None:
        """Queue ``count`` random bytes (no 0x00, so they corrupt the frame that follows)."""
        self._garbage += bytes(self._rng.integers(1, 256, count, dtype=np.uint8).tobytes())

    def apply(self, data: bytes, *, outgoing: bool = True) -> bytes:
        """``data`` as the far end receives it; queued garbage goes out with outgoing data."""
        if not self.active or not data:
            return data
        garbage = bytes(self._garbage) if outgoing else b""
        buf = np.frombuffer(garbage + data, dtype=np.uint8).copy()
        if outgoing:
            self.garbage_sent += len(self._garbage)
            self._garbage.clear()
        if self.ber > 0.0:
            flips = self._rng.random(buf.size * 8) < self.ber
            if flips.any():
                bits = np.packbits(flips.astype(np.uint8))
                buf ^= bits
                self.bits_flipped += int(flips.sum())
        if self.drop_rate > 0.0:
            keep = self._rng.random(buf.size) >= self.drop_rate
            self.bytes_dropped += int(buf.size - keep.sum())
            buf = buf[keep]
        return buf.tobytes()
