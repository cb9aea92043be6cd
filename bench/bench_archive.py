"""Ground archive: ingest rate to SQLite against a bare ``executemany`` of the same rows.

Both write the same 8-GPU housekeeping packets into a fresh SQLite file in WAL mode with
synchronous=NORMAL, in transactions of 500 packets (the ingest writer's batch).  The
archive also de-duplicates by (node, seq) in its ``packets`` ledger, tracks gaps and
evaluates limits for the alarm table; the baseline only inserts the ``hk`` rows, already
converted, with one ``executemany`` per batch.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from bench.registry import Context, Result, benchmark
from ground.archive import SCHEMA, Archive, _json
from node.bus.payloads import Housekeeping

NODE = "bench-archive"
BATCH = 500


def _hk(seq: int) -> Housekeeping:
    n = 8
    return Housekeeping(
        node_id=NODE, seq=seq, utc=1.8e9 + seq, t_board=float(seq), mode="NOMINAL", link_up=True,
        temp_c=(71.5,) * n, power_w=(512.25,) * n, cap_w=(600.0,) * n, progress=(1234.5,) * n,
        solar_w=2400.0, battery_soc=0.81, radiator_c=35.0, board_flags=0, control_us=42.0,
    )


def _row(p: Housekeeping) -> tuple[object, ...]:
    return (p.node_id, p.seq, p.utc, p.t_board, p.mode, int(p.link_up), _json(p.temp_c),
            _json(p.power_w), _json(p.cap_w), _json(p.progress), p.solar_w, p.battery_soc,
            p.radiator_c, p.board_flags, p.control_us)


def _archive_run(packets: list[Housekeeping], path: Path) -> None:
    with Archive(path) as a:
        for i in range(0, len(packets), BATCH):
            a.store(packets[i : i + BATCH])


def _bare_run(packets: list[Housekeeping], path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    sql = ("INSERT INTO hk (node, seq, utc, t_board, mode, link_up, temp_c, power_w, cap_w, progress,"
           " solar_w, battery_soc, radiator_c, board_flags, control_us)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    for i in range(0, len(packets), BATCH):
        conn.execute("BEGIN")
        conn.executemany(sql, [_row(p) for p in packets[i : i + BATCH]])
        conn.execute("COMMIT")
    conn.close()


@benchmark("ground.archive_ingest")
def archive_ingest(ctx: Context) -> Result:
    n = 5_000 if ctx.quick else 50_000
    packets = [_hk(s) for s in range(1, n + 1)]
    with tempfile.TemporaryDirectory(prefix="umbra-bench-archive-") as tmp:
        counter = iter(range(1_000_000))

        def fresh() -> Path:
            return Path(tmp) / f"{next(counter)}.sqlite"

        ours = ctx.rate(lambda k: _archive_run(packets[:k], fresh()), n)
        bare = ctx.rate(lambda k: _bare_run(packets[:k], fresh()), n)
    return Result(value=ours, unit="packets/s", baseline=bare,
                  notes=f"Archive.store ({BATCH}/transaction, dedupe ledger, gaps, alarms) vs a bare "
                  "executemany of the same hk rows; SQLite WAL, synchronous=NORMAL")
