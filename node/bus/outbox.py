"""Store-and-forward outbox: every telemetry packet on disk until the broker has it.

An SQLite database in WAL mode in the node's data directory holds one row per packet
(``tm/hk``, ``tm/event``, ``tc/report``), keyed by its telemetry sequence number.  The
bus publishes rows at QoS 1 and deletes a row only when the broker acknowledged it, so a
broker outage, a lost connection or a killed node loses nothing that was written.

Numbering (docs/ICD.md §5.5): the outbox is the node's one sequence counter.
:meth:`Outbox.next_seq` hands numbers out (the controller's ``next_seq``); :meth:`put`
stores the packet under the number it carries and records the high-water mark in the same
transaction.  After a restart numbering continues above both the mark and every stored
row, so a number is never given to two different stored packets.  A number handed out
but never stored (a crash in between) may be given again: it was never published.

Size bound: at most ``limit`` rows.  Beyond it the oldest housekeeping goes first; events
and verification reports go only when no housekeeping is left, oldest first.  Drops are
counted per kind, persisted, and reported by the bus as a ``telemetry_dropped`` event.

Durability: ``synchronous=NORMAL`` in WAL mode — a committed row survives the process
being killed at any point; a power loss can lose the last few commits but never corrupts
the database.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node.bus.payloads import Leaf

#: Drop priority: lower goes first when the outbox is full.
PRIORITY = {Leaf.HK: 0, Leaf.EVENT: 1, Leaf.TC_REPORT: 1}
KINDS = {Leaf.HK: "hk", Leaf.EVENT: "event", Leaf.TC_REPORT: "report"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packets (
    seq INTEGER PRIMARY KEY,
    leaf TEXT NOT NULL,
    prio INTEGER NOT NULL,
    body BLOB NOT NULL,
    made REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS packets_drop ON packets (prio, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Packet(Protocol):
    @property
    def seq(self) -> int: ...

    @property
    def LEAF(self) -> Leaf: ...

    def to_wire(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    leaf: Leaf
    body: bytes


class Outbox:
    def __init__(
        self,
        path: Path | str,
        *,
        limit: int = 10_000,
        first_seq: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit < 1:
            raise ValueError("outbox limit must be >= 1")
        self.path = str(path)
        self.limit = limit
        self._clock = clock
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        top = self._db.execute("SELECT MAX(seq), COUNT(*) FROM packets").fetchone()
        self._next = max(first_seq, int(meta.get("next_seq", 1)), (top[0] or 0) + 1)
        self._count = int(top[1])
        self.dropped = {kind: int(meta.get(f"dropped_{kind}", 0)) for kind in KINDS.values()}

    # -- numbering ------------------------------------------------------------------------

    def next_seq(self) -> int:
        """Hand out the next telemetry sequence number."""
        value = self._next
        self._next += 1
        return value

    def peek_seq(self) -> int:
        """The number :meth:`next_seq` would hand out now (everything stored is below it)."""
        return self._next

    # -- storing --------------------------------------------------------------------------

    def put(self, packet: Packet) -> None:
        self.put_many((packet,))

    def put_many(self, packets: Iterable[Packet]) -> None:
        now = self._clock()
        rows = [(p.seq, p.LEAF.value, PRIORITY[p.LEAF], p.to_wire(), now) for p in packets]
        if not rows:
            return
        top = max(r[0] for r in rows)
        self._next = max(self._next, top + 1)
        db = self._db
        db.execute("BEGIN")
        try:
            # Every stored number is below _next, so a fresh number never collides.
            db.executemany("INSERT INTO packets VALUES (?, ?, ?, ?, ?)", rows)
            db.execute(
                "INSERT INTO meta VALUES ('next_seq', ?) ON CONFLICT(key) DO UPDATE "
                "SET value = MAX(value, excluded.value)",
                (top + 1,),
            )
            self._count += len(rows)
            if self._count > self.limit:
                self._drop(self._count - self.limit)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._count = db.execute("SELECT COUNT(*) FROM packets").fetchone()[0]
            raise

    def _drop(self, n: int) -> None:
        victims = self._db.execute(
            "SELECT seq, leaf FROM packets ORDER BY prio, seq LIMIT ?", (n,)
        ).fetchall()
        self._db.executemany("DELETE FROM packets WHERE seq = ?", [(s,) for s, _ in victims])
        for _, leaf in victims:
            kind = KINDS[Leaf(leaf)]
            self.dropped[kind] += 1
        for kind, value in self.dropped.items():
            self._db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (f"dropped_{kind}", value),
            )
        self._count -= len(victims)

    # -- forwarding -----------------------------------------------------------------------

    def pending(self, *, after: int = 0, before: int | None = None, limit: int = 256) -> list[Row]:
        """Stored rows with after < seq (< before), in sequence order."""
        if before is None:
            cur = self._db.execute(
                "SELECT seq, leaf, body FROM packets WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            )
        else:
            cur = self._db.execute(
                "SELECT seq, leaf, body FROM packets WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (after, before, limit),
            )
        return [Row(seq, Leaf(leaf), bytes(body)) for seq, leaf, body in cur.fetchall()]

    def ack(self, seqs: Iterable[int]) -> None:
        """The broker has these: forget them."""
        batch = [(s,) for s in seqs]
        if not batch:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            deleted = db.executemany("DELETE FROM packets WHERE seq = ?", batch).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._count -= deleted

    def __len__(self) -> int:
        return self._count

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def close(self) -> None:
        self._db.close()
