"""The far end of a board's pseudo-terminal for tests: raw frames, numbered by the shared core.

Tests that talk to a board frame by frame (deliberately, without a node session) still
number their frames with :class:`~node.link.channel.ReliableChannel`, so the numbering
rules (1 after HELLO, wrap to 1, never 0) have one implementation.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from node.link.channel import ReliableChannel
from node.link.codec import FrameDecoder
from node.link.messages import Hello, Message


class PtyPeer:
    """One end of a pty: plain os.open, non-blocking."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.decoder = FrameDecoder()
        self.channel = ReliableChannel()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def hello(self, node_id: str = "n", *, lo: int = 1, hi: int = 1) -> None:
        """Open a session: HELLO (seq 0), and our numbering starts again at 1 (ICD §4.2 S1)."""
        self.channel.reset()
        self.write(self.channel.session_frame(Hello(node_id=node_id, min_version=lo, max_version=hi)))

    def send(self, message: Message) -> int:
        """Send ``message`` with the next sequence number; returns it."""
        self.write(self.channel.send(message, time.monotonic()))
        return self.channel.last_seq

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def pump(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while data := os.read(self.fd, 65536):
                self.decoder.feed(data)
