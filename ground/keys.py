"""Ground's telecommand keys and counters.

Keys: a JSON file ``{"<node_id>": "<hex key>"}`` (node.bus.signing.load_keys).  Counters:
a JSON file ``{"<node_id>": last_counter}`` beside it, updated under an exclusive lock and
replaced atomically, so two operators on one machine never send the same counter.  The
next counter is ``max(last + 1, UTC in microseconds)``: it only grows, even if the file
is lost or another ground station sends too (as long as clocks are roughly right).  A
stored counter beyond UTC plus a day (a corrupt file, a clock that was years ahead) is
not followed: nodes refuse such counters (COUNTER_AHEAD, ICD §5.6.3).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from node.bus.payloads import counter_limit

log = logging.getLogger("umbra.ground.keys")

DEFAULT_KEY_FILE = Path(os.environ.get("UMBRA_TC_KEYS", "~/.config/umbra/tc-keys.json")).expanduser()


def counter_path(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + ".counters")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class CounterStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): int(v) for k, v in data.items()}

    def last(self, node_id: str) -> int:
        return self._read().get(node_id, 0)

    def next(self, node_id: str, *, now: float | None = None) -> int:
        """Reserve and return the next counter for ``node_id`` (persisted before returning)."""
        with _locked(self.path):
            data = self._read()
            now = time.time() if now is None else now
            clock_us = int(now * 1_000_000)
            last = data.get(node_id, 0)
            if last + 1 > counter_limit(now):
                log.warning("stored counter %d for %s is beyond UTC plus a day; using the clock",
                            last, node_id)
                last = 0
            value = max(last + 1, clock_us)
            data[node_id] = value
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return value
