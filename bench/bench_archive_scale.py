"""Archive queries at fleet scale (docs/ground.md): a week of 1 Hz housekeeping for 100 nodes
(60.5 million rows, 2 days with --quick) in a private PostgreSQL with the archive's schema,
then the query Open MCT and the console make for a plot: one channel (``temp_c[3]``) of one
node over one day, min/max-bucketed into 1,000 buckets in SQL (``Archive.series``).

The rows are made in the database (``generate_series``), time-major as ingest writes them
(every node's packet of a second before the next second's), 8-GPU arrays as JSON text like
real ones; then ``VACUUM ANALYZE``.  The figure is the query's wall time, the median of five
(the first, from a cold buffer cache, is in the notes); the baseline is the goal, 1 s.
"""

from __future__ import annotations

import statistics
import sys
import time

from bench.registry import Context, Result, benchmark
from ground.archive import Archive
from hil.pg import PrivatePostgres

NODES = 100
DAY = 86_400
START = 1_800_000_000.0


def populate(url: str, days: int, *, nodes: int = NODES) -> float:
    """Fill ``hk`` with ``days`` of 1 Hz housekeeping for ``nodes`` nodes; seconds it took."""
    import psycopg

    Archive(url).close()  # the schema and its indexes, as ingest makes them
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SET synchronous_commit = off")
        for day in range(days):  # a day per statement: progress, and bounded transactions
            db.execute(
                """
                INSERT INTO hk (node, seq, utc, t_board, mode, link_up, temp_c, power_w, cap_w, progress,
                                solar_w, battery_soc, radiator_c, board_flags, control_us)
                SELECT 'node-' || lpad(n::text, 3, '0'), s + 1, %(start)s + s, s, 'NOMINAL', 1,
                       '[' || (60 + (s + n) %% 25) || '.5,70.5,71.5,72.5,73.5,74.5,75.5,' || (60 + s %% 30) || '.0]',
                       '[500.0,500.0,500.0,500.0,500.0,500.0,500.0,500.0]',
                       '[600.0,600.0,600.0,600.0,600.0,600.0,600.0,600.0]',
                       '[' || s || '.0,' || s || '.0,' || s || '.0,' || s || '.0,' || s || '.0,' || s || '.0,'
                           || s || '.0,' || s || '.0]',
                       2400.0, 0.8, 35.0, 0, 40.0
                FROM generate_series(%(lo)s, %(hi)s) AS s, generate_series(0, %(nodes)s - 1) AS n
                ORDER BY s, n
                """,
                {"start": START, "lo": day * DAY, "hi": (day + 1) * DAY - 1, "nodes": nodes})
            print(f"  archive scale: day {day + 1}/{days} in, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                  flush=True)
        db.execute("VACUUM ANALYZE hk")
    return time.perf_counter() - t0


def query_times(url: str, days: int, repeats: int = 5) -> list[float]:
    """Wall seconds of the one-channel, one-day, 1,000-bucket query, ``repeats`` times (a
    different day each time after the first, so later ones are not all from cache)."""
    out = []
    with Archive(url) as archive:
        for k in range(repeats):
            day = (days - 1 - k) % days
            t0 = time.perf_counter()
            points = archive.series("temp_c[3]", "node-042", START + day * DAY, START + (day + 1) * DAY, 1000)
            out.append(time.perf_counter() - t0)
            assert 1000 <= len(points) <= 2000, len(points)
    return out


@benchmark("ground.archive_day_query")
def day_query(ctx: Context) -> Result:
    days = 2 if ctx.quick else 7
    with PrivatePostgres(settings={"shared_buffers": "512MB", "max_wal_size": "8GB",
                                   "checkpoint_timeout": "30min"}) as pg:
        fill_s = populate(pg.url, days)
        times = query_times(pg.url, days)
        import psycopg

        with psycopg.connect(pg.url) as db:
            rows = db.execute("SELECT COUNT(*) FROM hk").fetchone()[0]  # type: ignore[index]
            size = db.execute("SELECT pg_total_relation_size('hk')").fetchone()[0]  # type: ignore[index]
    return Result(value=statistics.median(times), unit="s", baseline=1.0, higher_is_better=False,
                  notes=f"{rows:,} hk rows ({days} days × {NODES} nodes at 1 Hz, {size / 1e9:.1f} GB with indexes, "
                        f"made in {fill_s:.0f} s); one node, one channel, one day → 1,000 min/max buckets; "
                        f"first (cold) {times[0]:.3f} s, all {[round(t, 3) for t in times]}; goal < 1 s")
