"""``umbra-ground export``: archived housekeeping and events as CSV or Parquet.

Housekeeping is flattened to one column per value (``temp_c[0]``, ``temp_c[1]``, …), one
row per packet, ordered by node and sequence number; events go to a second file.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from ground.archive import HK_ARRAYS, Archive

HK_COLUMNS = ("node", "seq", "utc", "t_board", "mode", "link_up", "solar_w", "battery_soc",
              "radiator_c", "board_flags", "control_us")
EVENT_COLUMNS = ("node", "seq", "utc", "t_board", "kind", "severity", "text", "data")


def hk_rows(archive: Archive, node: str | None, since: float | None,
            until: float | None) -> tuple[list[str], list[dict[str, Any]]]:
    nodes = [node] if node else [n["node"] for n in archive.nodes()]
    rows: list[dict[str, Any]] = []
    gpus = 0
    for n in nodes:
        for r in sorted(archive.iter_hk(n, since, until), key=lambda r: r["seq"]):  # every row
            gpus = max(gpus, len(r["temp_c"]))
            rows.append(r)
    columns = list(HK_COLUMNS) + [f"{a}[{i}]" for a in HK_ARRAYS for i in range(gpus)]
    flat = []
    for r in rows:
        out = {c: r.get(c) for c in HK_COLUMNS}  # link_up is already a bool
        for a in HK_ARRAYS:
            for i in range(gpus):
                out[f"{a}[{i}]"] = r[a][i] if i < len(r[a]) else None
        flat.append(out)
    return columns, flat


def event_rows(archive: Archive, node: str | None, since: float | None,
               until: float | None) -> list[dict[str, Any]]:
    rows = archive.events(node, since=since, until=until, limit=10_000_000)
    rows.sort(key=lambda r: (r["node"], r["seq"]))
    return [{**{c: r[c] for c in EVENT_COLUMNS}, "data": json.dumps(r["data"])} for r in rows]


def write(path: Path, fmt: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: [r[c] for r in rows] for c in columns}) if rows else pa.table(
        {c: pa.array([], pa.string()) for c in columns})
    pq.write_table(table, path)


def events_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}-events{out.suffix}")


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Archive(args.archive) as a:
        columns, rows = hk_rows(a, args.node, args.since, args.until)
        events = event_rows(a, args.node, args.since, args.until)
    write(out, args.format, columns, rows)
    write(events_path(out), args.format, list(EVENT_COLUMNS), events)
    print(f"wrote {len(rows)} housekeeping rows to {out} and {len(events)} events to "
          f"{events_path(out)}", file=sys.stderr)
    return 0
