"""The telemetry archive: every packet from every node, stored once, gaps recorded.

One class, two engines: SQLite (the default, one file under ``./var/`` in WAL mode) and
PostgreSQL (``postgresql://…``, psycopg 3) for a fleet with several ingest workers.  The
schema is the same in both and documented in docs/ground.md.

- ``packets`` is the de-duplication ledger: primary key (node, seq).  A packet is stored
  with ``INSERT … ON CONFLICT DO NOTHING``; only when that inserted a row does its body go
  to ``hk``, ``events`` or ``tc_reports``.  So a packet sent twice (a lost PUBACK, §5.5 of
  the ICD) or received by two workers is stored exactly once, on either engine.
- ``gaps`` holds the open ranges of missing sequence numbers per node.  The node's row in
  ``nodes`` (its high-water mark) is locked for the batch (``FOR UPDATE`` on PostgreSQL;
  SQLite has one writer), so concurrent workers agree.  A late packet (the node's backlog
  after an outage) closes or splits the gap it falls in.
- ``alarms`` latch limit violations (ground/limits.py) until an operator acknowledges.
- ``commands`` is ground's history of telecommands sent, by whom; their verification
  stages are the ``tc_reports`` rows with the same (node, id).
- ``dead_letters`` keeps what ingest refused or could not store (a payload claiming another
  node's id, a timestamp in the future, a packet the database refuses), with the reason:
  the newest DEAD_LETTER_LIMIT rows.
- A node's online state follows the state message *received* last (``state_received``),
  not the newest ``utc`` it claims.

Writes come in batches, one transaction each: a batch is either all stored or not at
all, and a committed batch survives the process being killed (WAL, synchronous=NORMAL).
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ground.jsonsafe import dumps as _json
from ground.limits import violations
from node.bus.payloads import Event, Housekeeping, NodeState, TcReport, Telecommand
from node.errors import ConfigError

log = logging.getLogger("umbra.ground.archive")

DEFAULT_SQLITE = Path("var") / "umbra-archive.sqlite"
SCHEMA_VERSION = 2
#: Dead letters kept (the oldest are deleted beyond): a flood cannot fill the disk.
DEAD_LETTER_LIMIT = 10_000

Packet = Housekeeping | Event | TcReport
Storable = Housekeeping | Event | TcReport | NodeState

HK_SCALARS = ("t_board", "solar_w", "battery_soc", "radiator_c", "board_flags", "control_us")
HK_ARRAYS = ("temp_c", "power_w", "cap_w", "progress")

# Types are written the PostgreSQL way; SQLite accepts them by affinity.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packets (
    node TEXT NOT NULL, seq BIGINT NOT NULL, leaf TEXT NOT NULL,
    utc DOUBLE PRECISION NOT NULL, received DOUBLE PRECISION NOT NULL,
    historical SMALLINT NOT NULL, worker TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (node, seq));
CREATE TABLE IF NOT EXISTS hk (
    node TEXT NOT NULL, seq BIGINT NOT NULL, utc DOUBLE PRECISION NOT NULL,
    t_board DOUBLE PRECISION, mode TEXT, link_up SMALLINT,
    temp_c TEXT, power_w TEXT, cap_w TEXT, progress TEXT,
    solar_w DOUBLE PRECISION, battery_soc DOUBLE PRECISION, radiator_c DOUBLE PRECISION,
    board_flags BIGINT, control_us DOUBLE PRECISION,
    PRIMARY KEY (node, seq));
CREATE INDEX IF NOT EXISTS hk_node_utc ON hk (node, utc);
CREATE TABLE IF NOT EXISTS events (
    node TEXT NOT NULL, seq BIGINT NOT NULL, utc DOUBLE PRECISION NOT NULL,
    t_board DOUBLE PRECISION, kind TEXT NOT NULL, severity SMALLINT NOT NULL,
    text TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (node, seq));
CREATE INDEX IF NOT EXISTS events_utc ON events (utc);
CREATE INDEX IF NOT EXISTS events_node_utc ON events (node, utc);
CREATE TABLE IF NOT EXISTS tc_reports (
    node TEXT NOT NULL, seq BIGINT NOT NULL, utc DOUBLE PRECISION NOT NULL,
    id TEXT NOT NULL, counter BIGINT NOT NULL, name TEXT NOT NULL, stage TEXT NOT NULL,
    code SMALLINT NOT NULL, reason TEXT NOT NULL, at TEXT NOT NULL, text TEXT NOT NULL,
    data TEXT NOT NULL, duplicate SMALLINT NOT NULL,
    PRIMARY KEY (node, seq));
CREATE INDEX IF NOT EXISTS tc_reports_id ON tc_reports (node, id);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY, online SMALLINT, boot_id TEXT, version TEXT, dict_hash TEXT,
    state_utc DOUBLE PRECISION, last_contact DOUBLE PRECISION, max_seq BIGINT,
    packets BIGINT NOT NULL DEFAULT 0, duplicates BIGINT NOT NULL DEFAULT 0,
    mode TEXT, hk_utc DOUBLE PRECISION, state_received DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS gaps (
    node TEXT NOT NULL, first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL,
    opened DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (node, first_seq));
CREATE TABLE IF NOT EXISTS alarms (
    node TEXT NOT NULL, channel TEXT NOT NULL, level SMALLINT NOT NULL,
    worst SMALLINT NOT NULL, value DOUBLE PRECISION, first_utc DOUBLE PRECISION NOT NULL,
    last_utc DOUBLE PRECISION NOT NULL, active SMALLINT NOT NULL,
    acked_by TEXT, acked_at DOUBLE PRECISION,
    PRIMARY KEY (node, channel));
CREATE TABLE IF NOT EXISTS commands (
    node TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, args TEXT NOT NULL,
    counter BIGINT NOT NULL, operator TEXT NOT NULL, sent DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL, updated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (node, id));
CREATE INDEX IF NOT EXISTS commands_sent ON commands (sent);
CREATE TABLE IF NOT EXISTS dead_letters (
    received DOUBLE PRECISION NOT NULL, node TEXT NOT NULL, topic TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, payload TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS dead_letters_received ON dead_letters (received);
"""

#: Columns added after schema version 1, added to an older archive when it is opened.
MIGRATIONS = (("nodes", "state_received", "DOUBLE PRECISION"),)



#: Rows per read when streaming housekeeping: memory stays bounded and the lock is not
#: held between pages, so ingest keeps writing during a long export.
HK_PAGE = 10_000


def _decode_hk(row: dict[str, Any]) -> dict[str, Any]:
    """A stored hk row (all columns or some) as Python values: arrays from JSON, link_up bool."""
    for name in HK_ARRAYS:
        if name in row:
            row[name] = json.loads(row[name]) if row[name] else []
    if "link_up" in row:
        row["link_up"] = bool(row["link_up"])
    return row


@dataclass
class StoreResult:
    """What one batch did: packets stored, duplicates skipped, gaps opened."""

    stored: int = 0
    duplicates: int = 0
    states: int = 0
    gaps_opened: int = 0
    gap_nodes: set[str] = field(default_factory=set)


def parse_channel(channel: str) -> tuple[str, int | None]:
    """``battery_soc`` → (battery_soc, None); ``temp_c[2]`` → (temp_c, 2); ValueError naming
    the channels there are."""
    name, _, rest = channel.partition("[")
    index = None
    if rest:
        if not rest.endswith("]") or not rest[:-1].isdigit() or int(rest[:-1]) > 63:
            raise ValueError(f"channel {channel!r}: write GPU channels as NAME[INDEX], INDEX 0-63")
        index = int(rest[:-1])
    if name not in HK_SCALARS + HK_ARRAYS:
        known = ", ".join(HK_SCALARS) + ", " + ", ".join(f"{a}[i]" for a in HK_ARRAYS)
        raise ValueError(f"unknown channel {channel!r}; known: {known}")
    if name in HK_ARRAYS and index is None:
        raise ValueError(f"channel {name!r} is per GPU: write {name}[INDEX]")
    if name in HK_SCALARS and index is not None:
        raise ValueError(f"channel {name!r} is not per GPU")
    return name, index


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class Archive:
    """Thread-safe; every method is synchronous (call through ``asyncio.to_thread``)."""

    def __init__(self, url: str | Path | None = None, *, worker: str = "") -> None:
        text = str(url) if url is not None else str(DEFAULT_SQLITE)
        self.url = text
        self.worker = worker
        self.postgres = _is_postgres(text)
        self._lock = threading.RLock()
        self._conn: Any
        if self.postgres:
            try:
                import psycopg
            except ImportError as exc:  # pragma: no cover - a dependency of the package
                raise ConfigError("PostgreSQL archive needs psycopg: pip install 'psycopg[binary]'") from exc
            self._conn = psycopg.connect(text)
            self.path: Path | None = None
        else:
            path = Path(text.removeprefix("sqlite:///").removeprefix("sqlite://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self.path = path
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                         timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=OFF")
        self._create()

    # -- plumbing -------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self._sql(sql), params)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock:
            if self.postgres:
                with self._conn.transaction():
                    yield
            else:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._exec(sql, params)
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            if self.postgres:
                self._conn.commit()  # end the read transaction psycopg opened
            return rows

    def _create(self) -> None:
        with self._tx():
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    self._exec(stmt)
            for table, column, kind in MIGRATIONS:
                if column not in self._columns(table):
                    self._exec(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            self._exec(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),),
            )

    def _columns(self, table: str) -> set[str]:
        if self.postgres:
            cur = self._exec("SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                             (table,))
            return {r[0] for r in cur.fetchall()}
        return {r[1] for r in self._exec(f"PRAGMA table_info({table})").fetchall()}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------

    def secret(self, key: str) -> str:
        """A random value kept in ``meta`` under ``key``, made on first use."""
        with self._tx():
            self._exec("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
                       (key, secrets.token_hex(16)))
            row = self._exec("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def ping(self) -> None:
        """Raise if the database cannot take a write now (tells a bad packet from a bad day)."""
        with self._tx():  # a real write: a full disk must fail here too, not only the batch
            self._exec("INSERT INTO meta (key, value) VALUES ('last_write_check', ?) ON CONFLICT (key)"
                       " DO UPDATE SET value = excluded.value", (repr(time.time()),))

    def dead_letter(self, *, node: str, topic: str, reason: str, detail: str, payload: str,
                    received: float | None = None) -> None:
        """Keep one thing that was refused, with why (see :meth:`dead_letters_store`)."""
        self.dead_letters_store([(node, topic, reason, detail, payload)], received=received)

    def dead_letters_store(self, letters: Sequence[tuple[str, str, str, str, str]], *,
                           received: float | None = None) -> None:
        """Keep (node, topic, reason, detail, payload) rows in one transaction; the newest
        DEAD_LETTER_LIMIT stay (pruned once per call, so a flood costs one pass a batch)."""
        if not letters:
            return
        received = time.time() if received is None else received
        with self._tx():
            for node, topic, reason, detail, payload in letters:
                self._exec("INSERT INTO dead_letters (received, node, topic, reason, detail, payload)"
                           " VALUES (?, ?, ?, ?, ?, ?)",
                           (received, node[:64], topic[:200], reason[:64], detail[:1000], payload[:4000]))
            self._exec("DELETE FROM dead_letters WHERE received < (SELECT MIN(received) FROM"
                       " (SELECT received FROM dead_letters ORDER BY received DESC LIMIT ?) AS newest)",
                       (DEAD_LETTER_LIMIT,))

    def dead_letters(self, node: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if node:
            return self._rows("SELECT * FROM dead_letters WHERE node = ? ORDER BY received DESC LIMIT ?",
                              (node, limit))
        return self._rows("SELECT * FROM dead_letters ORDER BY received DESC LIMIT ?", (limit,))

    def store(self, items: Iterable[Storable], *, received: float | None = None) -> StoreResult:
        """Store a batch in one transaction; duplicates (by node, seq) are skipped.

        Statements go per batch where they can (the ledger, the bodies, the nodes' rows) rather
        than per packet: on PostgreSQL every statement is a round trip, and a fleet's ingest
        stores thousands of packets a second (docs/ground.md, fleet scale)."""
        received = time.time() if received is None else received
        batch = list(items)
        result = StoreResult()
        nodes = sorted({p.node_id for p in batch})
        packets = [p for p in batch if not isinstance(p, NodeState)]
        with self._tx():
            high = self._lock_nodes(nodes)
            counts: dict[str, list[int]] = {n: [0, 0] for n in nodes}
            for p in batch:
                if isinstance(p, NodeState):
                    self._store_state(p, received)
                    result.states += 1
            fresh = self._insert_ledger(packets, received)
            new: list[Packet] = []
            for p in packets:  # the first copy of a new (node, seq) is stored, any other is a duplicate
                key = (p.node_id, p.seq)
                stored = key in fresh
                fresh.discard(key)
                counts[p.node_id][0 if stored else 1] += 1
                if stored:
                    new.append(p)
            result.stored, result.duplicates = len(new), len(packets) - len(new)
            self._store_bodies(new)
            for p in new:
                if self._track_seq(p.node_id, p.seq, high, received):
                    result.gaps_opened += 1
                    result.gap_nodes.add(p.node_id)
            contacted = {p.node_id for p in packets}
            self._many(
                "UPDATE nodes SET max_seq = ?, packets = packets + ?, duplicates = duplicates + ?,"
                " last_contact = COALESCE(?, last_contact) WHERE node = ?",
                [(high[n], counts[n][0], counts[n][1], received if n in contacted else None, n) for n in nodes])
        return result

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._conn.cursor().executemany(self._sql(sql), rows)

    def _lock_nodes(self, nodes: Sequence[str]) -> dict[str, int | None]:
        """The batch's nodes' high-water marks, their rows locked (in name order, so that two
        workers cannot deadlock)."""
        if not nodes:
            return {}
        if self.postgres:
            self._exec("INSERT INTO nodes (node) SELECT unnest(?::text[]) ON CONFLICT DO NOTHING", (list(nodes),))
            rows = self._exec("SELECT node, max_seq FROM nodes WHERE node = ANY(?) ORDER BY node FOR UPDATE",
                              (list(nodes),)).fetchall()
            return {r[0]: r[1] for r in rows}
        high: dict[str, int | None] = {}
        for node in nodes:  # SQLite: one writer, the transaction is the lock
            self._exec("INSERT INTO nodes (node) VALUES (?) ON CONFLICT DO NOTHING", (node,))
            high[node] = self._exec("SELECT max_seq FROM nodes WHERE node = ?", (node,)).fetchone()[0]
        return high

    def _insert_ledger(self, packets: Sequence[Packet], received: float) -> set[tuple[str, int]]:
        """Insert the batch into the de-duplication ledger; the (node, seq) that were new."""
        rows = [(p.node_id, p.seq, p.LEAF.value, p.utc, received, int(p.historical), self.worker) for p in packets]
        sql = ("INSERT INTO packets (node, seq, leaf, utc, received, historical, worker) "
               "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
        fresh: set[tuple[str, int]] = set()
        if not rows:
            return fresh
        if self.postgres:  # one pipelined round of statements; RETURNING says which were new
            cur = self._conn.cursor()
            cur.executemany(self._sql(sql + " RETURNING node, seq"), rows, returning=True)
            while True:
                fresh.update((r[0], r[1]) for r in cur.fetchall())
                if not cur.nextset():
                    break
            return fresh
        for row in rows:
            if self._exec(sql, row).rowcount == 1:
                fresh.add((row[0], row[1]))
        return fresh

    def _store_bodies(self, new: Sequence[Packet]) -> None:
        hks = [p for p in new if isinstance(p, Housekeeping)]
        self._many(
            "INSERT INTO hk (node, seq, utc, t_board, mode, link_up, temp_c, power_w, cap_w,"
            " progress, solar_w, battery_soc, radiator_c, board_flags, control_us)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(p.node_id, p.seq, p.utc, p.t_board, p.mode, int(p.link_up), _json(p.temp_c), _json(p.power_w),
              _json(p.cap_w), _json(p.progress), p.solar_w, p.battery_soc, p.radiator_c, p.board_flags,
              p.control_us) for p in hks])
        self._many(
            "INSERT INTO events (node, seq, utc, t_board, kind, severity, text, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(p.node_id, p.seq, p.utc, p.t_board, p.kind, p.severity, p.text, _json(p.data))
             for p in new if isinstance(p, Event)])
        self._many(
            "INSERT INTO tc_reports (node, seq, utc, id, counter, name, stage, code, reason,"
            " at, text, data, duplicate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(p.node_id, p.seq, p.utc, p.id, p.counter, p.name, p.stage, p.code, p.reason, p.at, p.text,
              _json(p.data), int(p.duplicate)) for p in new if isinstance(p, TcReport)])
        if not hks:
            return
        # A node's mode follows its newest housekeeping: only the newest of the batch matters.
        newest: dict[str, Housekeeping] = {}
        for p in hks:
            if p.node_id not in newest or p.utc >= newest[p.node_id].utc:
                newest[p.node_id] = p
        self._many("UPDATE nodes SET mode = ?, hk_utc = ? WHERE node = ? AND (hk_utc IS NULL OR hk_utc <= ?)",
                   [(p.mode, p.utc, p.node_id, p.utc) for p in newest.values()])
        # Alarms: a packet with a violation, or one that may clear an active alarm.
        names = sorted(newest)
        marks = ", ".join("?" for _ in names)
        active = {r[0] for r in self._exec(
            f"SELECT DISTINCT node FROM alarms WHERE active = 1 AND node IN ({marks})", names).fetchall()}
        for p in hks:
            if p.node_id in active or next(violations(p), None) is not None:
                self._update_alarms(p)
                active.add(p.node_id)

    def _track_seq(self, node: str, seq: int, high: dict[str, int | None], now: float) -> int:
        top = high[node]
        if top is None:
            high[node] = seq  # ground's first packet from this node: no gap before it
            return 0
        if seq > top + 1:
            self._exec("INSERT INTO gaps (node, first_seq, last_seq, opened) VALUES (?, ?, ?, ?)",
                       (node, top + 1, seq - 1, now))
            high[node] = seq
            return 1
        if seq == top + 1:
            high[node] = seq
            return 0
        row = self._exec(
            "SELECT first_seq, last_seq, opened FROM gaps WHERE node = ? AND first_seq <= ? "
            "AND last_seq >= ?", (node, seq, seq)).fetchone()
        if row is not None:  # a late packet: close or split the gap it falls in
            first, last, opened = row
            self._exec("DELETE FROM gaps WHERE node = ? AND first_seq = ?", (node, first))
            if first <= seq - 1:
                self._exec("INSERT INTO gaps (node, first_seq, last_seq, opened) VALUES (?, ?, ?, ?)",
                           (node, first, seq - 1, opened))
            if seq + 1 <= last:
                self._exec("INSERT INTO gaps (node, first_seq, last_seq, opened) VALUES (?, ?, ?, ?)",
                           (node, seq + 1, last, opened))
        return 0

    def _update_alarms(self, hk: Housekeeping) -> None:
        bad = list(violations(hk))
        # A new violation of an acknowledged, cleared alarm starts a new alarm.
        fresh = "(alarms.acked_at IS NOT NULL AND alarms.active = 0)"
        for channel, level, value in bad:
            self._exec(
                "INSERT INTO alarms (node, channel, level, worst, value, first_utc, last_utc, active)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (node, channel) DO UPDATE SET"
                f" first_utc = CASE WHEN {fresh} THEN excluded.first_utc ELSE alarms.first_utc END,"
                f" worst = CASE WHEN {fresh} OR excluded.worst > alarms.worst THEN excluded.worst"
                " ELSE alarms.worst END,"
                f" acked_by = CASE WHEN {fresh} THEN NULL ELSE alarms.acked_by END,"
                f" acked_at = CASE WHEN {fresh} THEN NULL ELSE alarms.acked_at END,"
                " level = excluded.level, value = excluded.value, last_utc = excluded.last_utc,"
                " active = 1",
                (hk.node_id, channel, int(level), int(level), value, hk.utc, hk.utc),
            )
        if not hk.historical:  # only the present clears an alarm's "active"
            names = [c for c, _, _ in bad]
            marks = ", ".join("?" for _ in names)
            where = f" AND channel NOT IN ({marks})" if names else ""
            self._exec(f"UPDATE alarms SET active = 0, level = 0 WHERE node = ? AND active = 1{where}",
                       (hk.node_id, *names))

    def _store_state(self, s: NodeState, received: float) -> None:
        # Ordered by when ground received it (the broker delivers one topic in publish
        # order): a claimed utc, true or not, cannot pin the node's state.
        self._exec(
            "INSERT INTO nodes (node, online, boot_id, version, dict_hash, state_utc, state_received)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node) DO UPDATE SET online = excluded.online,"
            " boot_id = excluded.boot_id, version = excluded.version,"
            " dict_hash = excluded.dict_hash, state_utc = excluded.state_utc,"
            " state_received = excluded.state_received"
            " WHERE nodes.state_received IS NULL OR nodes.state_received <= excluded.state_received",
            (s.node_id, int(s.online), s.boot_id, s.version, s.dict_hash, s.utc, received),
        )

    def record_command(self, tc: Telecommand, operator: str, status: str = "sent") -> None:
        now = time.time()
        with self._tx():
            self._exec(
                "INSERT INTO commands (node, id, name, args, counter, operator, sent, status, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node, id) DO UPDATE SET"
                " status = excluded.status, updated = excluded.updated",
                (tc.node_id, tc.id, tc.name, _json(tc.args), tc.counter, operator, now, status, now),
            )

    def set_command_status(self, node: str, command_id: str, status: str) -> None:
        with self._tx():
            self._exec("UPDATE commands SET status = ?, updated = ? WHERE node = ? AND id = ?",
                       (status, time.time(), node, command_id))

    def ack_alarm(self, node: str, channel: str, operator: str) -> bool:
        with self._tx():
            cur = self._exec(
                "UPDATE alarms SET acked_by = ?, acked_at = ? WHERE node = ? AND channel = ?"
                " AND acked_at IS NULL", (operator, time.time(), node, channel))
            return bool(cur.rowcount)

    # -- reading --------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM nodes ORDER BY node")

    def node(self, node: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM nodes WHERE node = ?", (node,))
        return rows[0] if rows else None

    def hk(self, node: str, since: float | None = None,
           until: float | None = None) -> list[dict[str, Any]]:
        return list(self.iter_hk(node, since, until))

    def iter_hk(self, node: str, since: float | None = None, until: float | None = None,
                columns: Sequence[str] = ("*",)) -> Iterator[dict[str, Any]]:
        """Every hk row of ``node`` in the window, by (utc, seq), read ``HK_PAGE`` at a time."""
        # The page key (utc, seq) is always read; named columns only once.
        cols = "*" if "*" in columns else ", ".join(dict.fromkeys(["utc", "seq", *columns]))
        last_utc = since if since is not None else -1e18
        last_seq = -1  # seq >= 0: the first page takes every row at ``since``
        top = until if until is not None else 1e18
        while True:
            # Keyset paging on (utc, seq): "utc >= ?" keeps the index range, the OR skips
            # the rows at that utc which the previous page already returned.
            rows = self._rows(
                f"SELECT {cols} FROM hk WHERE node = ? AND utc >= ? AND utc <= ?"
                " AND (utc > ? OR seq > ?) ORDER BY utc, seq LIMIT ?",
                (node, last_utc, top, last_utc, last_seq, HK_PAGE))
            for r in rows:
                yield _decode_hk(r)
            if len(rows) < HK_PAGE:
                return
            last_utc, last_seq = rows[-1]["utc"], rows[-1]["seq"]

    def hk_thinned(self, node: str, since: float, until: float, points: int) -> list[dict[str, Any]]:
        """At most about ``points`` hk rows spread over the window, the newest included.

        One row (the highest seq) per time bucket, picked in SQL so that a long window is
        not read into Python; rows before the node's first sensor frame (empty arrays)
        carry placeholders and are left out.
        """
        step = max((until - since) / max(points, 1), 1e-9)
        rows = self._rows(
            "SELECT * FROM hk WHERE node = ? AND seq IN (SELECT MAX(seq) FROM hk WHERE node = ?"
            " AND utc >= ? AND utc <= ? AND temp_c NOT IN ('', '[]')"
            " GROUP BY CAST((utc - ?) / ? AS INTEGER)) ORDER BY utc, seq",
            (node, node, since, until, since, step))
        return [_decode_hk(r) for r in rows]

    def latest_report(self, node: str, name: str, stage: str = "completed") -> dict[str, Any] | None:
        """The newest report of command ``name`` at ``stage`` from ``node`` (data decoded)."""
        rows = self._rows("SELECT * FROM tc_reports WHERE node = ? AND name = ? AND stage = ?"
                          " ORDER BY seq DESC LIMIT 1", (node, name, stage))
        if not rows:
            return None
        rows[0]["data"] = json.loads(rows[0]["data"])
        return rows[0]

    def latest_hk(self, node: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM hk WHERE node = ? ORDER BY utc DESC, seq DESC LIMIT 1", (node,))
        return _decode_hk(rows[0]) if rows else None

    def events(self, node: str | None = None, *, min_severity: int = 0, search: str = "",
               since: float | None = None, until: float | None = None,
               limit: int = 500) -> list[dict[str, Any]]:
        sql = "SELECT * FROM events WHERE severity >= ? AND utc >= ? AND utc <= ?"
        params: list[Any] = [min_severity, since if since is not None else -1e18,
                             until if until is not None else 1e18]
        if node:
            sql += " AND node = ?"
            params.append(node)
        if search:
            sql += " AND (LOWER(text) LIKE ? OR LOWER(kind) LIKE ?)"
            params += [f"%{search.lower()}%"] * 2
        sql += " ORDER BY utc DESC, seq DESC LIMIT ?"
        params.append(limit)
        rows = self._rows(sql, params)
        for r in rows:
            r["data"] = json.loads(r["data"])
        return rows

    def commands(self, node: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Commands sent, newest first, each with ``stages``: its verification reports."""
        if node:
            cmds = self._rows("SELECT * FROM commands WHERE node = ? ORDER BY sent DESC LIMIT ?",
                              (node, limit))
        else:
            cmds = self._rows("SELECT * FROM commands ORDER BY sent DESC LIMIT ?", (limit,))
        by_key: dict[tuple[str, str], dict[str, Any]] = {}
        for c in cmds:
            c["args"] = json.loads(c["args"])
            c["stages"] = []
            by_key[(c["node"], c["id"])] = c
        if not cmds:
            return cmds
        # One query for all their reports; node IN × id IN can over-match, the key filters.
        nodes, ids = sorted({n for n, _ in by_key}), sorted({i for _, i in by_key})
        reports = self._rows(
            "SELECT node, id, stage, code, reason, at, text, data, utc, duplicate FROM tc_reports"
            f" WHERE node IN ({', '.join('?' * len(nodes))}) AND id IN ({', '.join('?' * len(ids))})"
            " ORDER BY node, seq", (*nodes, *ids))
        for r in reports:
            owner = by_key.get((r.pop("node"), r.pop("id")))
            if owner is not None:
                r["data"] = json.loads(r["data"])
                owner["stages"].append(r)
        return cmds

    def alarms(self, node: str | None = None, *, include_acked: bool = False) -> list[dict[str, Any]]:
        sql = "SELECT * FROM alarms WHERE " + ("1 = 1" if include_acked else
                                               "(acked_at IS NULL OR active = 1)")
        params: list[Any] = []
        if node:
            sql += " AND node = ?"
            params.append(node)
        return self._rows(sql + " ORDER BY worst DESC, node, channel", params)

    def gaps(self, node: str | None = None) -> list[dict[str, Any]]:
        if node:
            return self._rows("SELECT * FROM gaps WHERE node = ? ORDER BY first_seq", (node,))
        return self._rows("SELECT * FROM gaps ORDER BY node, first_seq")

    def packet_count(self, node: str | None = None) -> int:
        rows = self._rows("SELECT COUNT(*) AS n FROM packets" + (" WHERE node = ?" if node else ""),
                          (node,) if node else ())
        return int(rows[0]["n"])

    def _channel_sql(self, channel: str) -> str:
        """The SQL expression of one channel: a column, or one element of a GPU array column
        (kept as JSON text: ``json_extract`` on SQLite, ``jsonb ->>`` on PostgreSQL)."""
        name, index = parse_channel(channel)
        if index is None:
            return name
        if self.postgres:
            return f"(({name})::json ->> {index})::double precision"  # json: no jsonb built per row
        return f"json_extract({name}, '$[{index}]')"

    def series(self, channel: str, node: str, since: float, until: float,
               points: int = 1000) -> list[tuple[float, float | None]]:
        """(utc, value) of one numeric channel in the window, in time order, for a plot.

        A window with more samples than ``points`` comes back as ``points`` buckets of min and
        max (each bucket's minimum at its first sample's time, its maximum at its last's), so a
        week of 1 Hz plots from 2·points values that keep every spike; the bucketing runs in
        SQL, over the (node, utc) index."""
        expr = self._channel_sql(channel)
        step = max((until - since) / max(points, 1), 1e-9)
        bucket = "FLOOR((utc - ?) / ?)" if self.postgres else "CAST((utc - ?) / ? AS INTEGER)"
        rows = self._rows(
            f"SELECT COUNT(*) AS n, MIN(utc) AS t0, MAX(utc) AS t1, MIN(v) AS lo, MAX(v) AS hi FROM "
            f"(SELECT utc, {expr} AS v FROM hk WHERE node = ? AND utc >= ? AND utc <= ?) s "
            f"GROUP BY {bucket} ORDER BY MIN(utc)",
            (node, since, until, since, step))
        out: list[tuple[float, float | None]] = []
        for r in rows:
            lo = None if r["lo"] is None else float(r["lo"])
            hi = None if r["hi"] is None else float(r["hi"])
            if r["n"] == 1 or r["t0"] == r["t1"]:
                out.append((float(r["t0"]), lo))
            else:
                out += [(float(r["t0"]), lo), (float(r["t1"]), hi)]
        return out

    def query(self, channel: str, node: str, since: float | None = None,
              until: float | None = None) -> list[tuple[float, int, float | None]]:
        """(utc, seq, value) of one housekeeping channel: a scalar (``battery_soc``) or one
        element of a GPU array (``temp_c[2]``)."""
        name, index = parse_channel(channel)
        out: list[tuple[float, int, float | None]] = []
        for r in self.iter_hk(node, since, until, columns=(name,)):  # only the one column
            if index is None:
                out.append((r["utc"], r["seq"], r[name]))
            else:
                arr = r[name]
                out.append((r["utc"], r["seq"], arr[index] if index < len(arr) else None))
        return out
