"""Telemetry sequence numbers that never repeat, across restarts (docs/ICD.md §5.5).

Ground de-duplicates by (node, seq), so a node that restarted at 1 would have its new
packets taken for old ones.  ``SequenceStore`` reserves numbers in blocks: the file holds
the first number *not yet reserved*; it is rewritten atomically (temporary file, fsync,
rename, fsync of the directory) before any number of a new block is handed out.  A crash
loses at most the unused rest of a block — a gap ground can see, never a repeat.
"""

from __future__ import annotations

import os
from pathlib import Path

from node.errors import ConfigError

BLOCK = 10_000


class SequenceStore:
    def __init__(self, path: Path, *, block: int = BLOCK) -> None:
        self._path = Path(path)
        self._block = block
        start = self._read()
        self._next = start
        self._limit = start
        self._reserve()

    def _read(self) -> int:
        try:
            text = self._path.read_text().strip()
        except FileNotFoundError:
            return 1
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(
                f"sequence file {self._path} is corrupt ({text[:40]!r}); refusing to reuse numbers",
                key="node.data_dir",
                source=str(self._path),
            ) from None
        return max(1, value)

    def _reserve(self) -> None:
        self._limit = self._next + self._block
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(f"{self._limit}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def next(self) -> int:
        if self._next >= self._limit:
            self._reserve()
        value = self._next
        self._next += 1
        return value
