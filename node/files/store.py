"""Transfers on disk: one SQLite database per side (node or ground), WAL mode.

One row per transfer, as sender or receiver: its ``meta`` (wire bytes), where its bytes
are, how far it got (a sender's ``sent_to``; a receiver's ranges held and whether it saw
``eof``), and how it ended.  A receiver writes its ranges only after the partial file was
fsynced, so what the row says it holds is on disk; after a restart (a SIGKILL included)
each side resumes from its rows, and the sender's first words to the receiver (``meta``,
answered by ``ack``) settle what still has to travel.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.files.pdu import Meta, decode
from node.files.ranges import RangeSet

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    xfer TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    role TEXT NOT NULL,            -- send | recv
    direction TEXT NOT NULL,       -- down | up
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    meta BLOB NOT NULL,
    path TEXT NOT NULL,            -- send: the bytes to send; recv: the partial file
    final_path TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,           -- active | done | failed | refused | cancelled
    sent_to INTEGER NOT NULL DEFAULT 0,
    have TEXT NOT NULL DEFAULT '[]',
    eof INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    bytes_resent INTEGER NOT NULL DEFAULT 0,
    bytes_duplicate INTEGER NOT NULL DEFAULT 0,
    corrupt_chunks INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL DEFAULT '',
    info TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS transfers_state ON transfers (state, priority DESC, created);
"""

ACTIVE = "active"
ENDED = ("done", "failed", "refused", "cancelled")


@dataclass(frozen=True, slots=True)
class TransferRow:
    xfer: str
    node_id: str
    role: str
    direction: str
    kind: str
    name: str
    size: int
    priority: int
    meta: Meta
    path: str
    final_path: str
    state: str
    sent_to: int
    have: RangeSet
    eof: bool
    bytes_sent: int
    bytes_resent: int
    bytes_duplicate: int
    corrupt_chunks: int
    reason: str
    text: str
    info: dict[str, Any]
    created: float
    updated: float
    finished: float | None

    @property
    def done_bytes(self) -> int:
        """Bytes that made it: held by the receiver, or sent once by the sender."""
        if self.state == "done":
            return self.size
        return self.have.total if self.role == "recv" else self.sent_to

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a console or ``files list --json``."""
        return {
            "xfer": self.xfer, "node_id": self.node_id, "role": self.role, "direction": self.direction,
            "kind": self.kind, "name": self.name, "size": self.size, "priority": self.priority,
            "state": self.state, "done_bytes": self.done_bytes,
            "fraction": 1.0 if self.size == 0 else round(self.done_bytes / self.size, 4),
            "bytes_sent": self.bytes_sent, "bytes_resent": self.bytes_resent,
            "bytes_duplicate": self.bytes_duplicate, "corrupt_chunks": self.corrupt_chunks,
            "reason": self.reason, "text": self.text, "final_path": self.final_path, "hash": self.meta.hash,
            "digest": self.meta.digest, "info": {**self.meta.info, **self.info}, "created": self.created,
            "updated": self.updated, "finished": self.finished,
        }


class TransferDb:
    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, meta: Meta, *, role: str, path: str, info: dict[str, Any] | None = None) -> None:
        now = self._clock()
        self._db.execute(
            "INSERT INTO transfers (xfer, node_id, role, direction, kind, name, size, priority, meta, path, state, "
            "info, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (meta.xfer, meta.node_id, role, meta.direction, meta.kind, meta.name, meta.size, meta.priority,
             meta.to_wire(), path, ACTIVE, json.dumps(info or {}), now, now))

    def get(self, xfer: str) -> TransferRow | None:
        rows = list(self._select("WHERE xfer = ?", (xfer,)))
        return rows[0] if rows else None

    def active(self, role: str | None = None) -> list[TransferRow]:
        if role is None:
            return list(self._select("WHERE state = ? ORDER BY priority DESC, created", (ACTIVE,)))
        return list(self._select("WHERE state = ? AND role = ? ORDER BY priority DESC, created", (ACTIVE, role)))

    def recent(self, limit: int = 200, node_id: str | None = None) -> list[TransferRow]:
        where, args = ("WHERE node_id = ?", (node_id,)) if node_id else ("", ())
        return list(self._select(f"{where} ORDER BY created DESC LIMIT ?", (*args, limit)))

    def _select(self, clause: str, args: tuple[Any, ...]) -> Iterator[TransferRow]:
        cur = self._db.execute(
            "SELECT xfer, node_id, role, direction, kind, name, size, priority, meta, path, final_path, state, "
            "sent_to, have, eof, bytes_sent, bytes_resent, bytes_duplicate, corrupt_chunks, reason, text, info, "
            f"created, updated, finished FROM transfers {clause}", args)
        for r in cur.fetchall():
            meta = decode(bytes(r[8]))
            assert isinstance(meta, Meta)
            yield TransferRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], meta, r[9], r[10], r[11], r[12],
                              RangeSet.from_wire(json.loads(r[13])), bool(r[14]), r[15], r[16], r[17], r[18], r[19],
                              r[20], json.loads(r[21]), r[22], r[23], r[24])

    def progress(self, xfer: str, **values: Any) -> None:
        """Update counters and positions (``sent_to``, ``have``, ``eof``, ``bytes_*`` …)."""
        if "have" in values:
            values["have"] = json.dumps(values["have"].to_wire())
        if "info" in values:
            values["info"] = json.dumps(values["info"])
        values["updated"] = self._clock()
        cols = ", ".join(f"{k} = ?" for k in values)
        self._db.execute(f"UPDATE transfers SET {cols} WHERE xfer = ?", (*values.values(), xfer))

    def end(self, xfer: str, state: str, *, reason: str = "", text: str = "", **values: Any) -> None:
        now = self._clock()
        self.progress(xfer, state=state, reason=reason, text=text[:2000], finished=now, **values)

    def active_bytes(self, role: str) -> int:
        row = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM transfers WHERE state = ? AND role = ?",
                               (ACTIVE, role)).fetchone()
        return int(row[0])


@contextlib.contextmanager
def reading(path: Path) -> Iterator[TransferDb | None]:
    """Another process's transfer database, opened for a look (None where there is none yet)."""
    if not path.exists():
        yield None
        return
    db = TransferDb(path)
    try:
        yield db
    finally:
        db.close()


__all__ = ["ACTIVE", "ENDED", "TransferDb", "TransferRow", "reading"]
