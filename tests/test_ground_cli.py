"""``umbra-ground events | query | export`` on a real SQLite archive."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from test_ground_archive import ev, hk

from ground.archive import Archive
from ground.cli import main
from ground.query import parse_time


@pytest.fixture
def archive(tmp_path: Path) -> str:
    path = tmp_path / "a.sqlite"
    with Archive(path) as a:
        a.store([hk("n1", s, temp=50.0 + s) for s in range(1, 11)])
        a.store([ev("n1", 11, 1, "mode NOMINAL"), ev("n1", 12, 3, "board watchdog fired"),
                 ev("n2", 1, 2, "other node")])
    return str(path)


def test_events_filters_by_severity_node_and_text(archive: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "--archive", archive, "--severity", "warning"]) == 0
    out = capsys.readouterr().out
    assert "board watchdog fired" in out and "other node" in out and "mode NOMINAL" not in out
    assert main(["events", "--archive", archive, "--node", "n1", "--search", "WATCHDOG"]) == 0
    out = capsys.readouterr().out
    assert "ERROR" in out and "other node" not in out


def test_query_prints_a_table_of_one_channel(archive: str, capsys: pytest.CaptureFixture[str]) -> None:
    since, until = str(1_700_000_003), str(1_700_000_005)
    assert main(["query", "temp_c[1]", "--node", "n1", "--since", since, "--until", until,
                 "--archive", archive]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["utc", "seq", "temp_c[1]"]
    assert [ln.split()[-2:] for ln in lines[2:]] == [["3", "54.0"], ["4", "55.0"], ["5", "56.0"]]
    assert main(["query", "temp_c", "--node", "n1", "--archive", archive]) == 2
    assert "per GPU" in capsys.readouterr().err


def test_export_csv_and_parquet(archive: str, tmp_path: Path) -> None:
    out = tmp_path / "out" / "hk.csv"
    assert main(["export", "--format", "csv", "--out", str(out), "--archive", archive]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 10 and rows[0]["temp_c[1]"] == "52.0" and rows[0]["node"] == "n1"
    events = list(csv.DictReader((tmp_path / "out" / "hk-events.csv").open()))
    assert [e["text"] for e in events] == ["mode NOMINAL", "board watchdog fired", "other node"]
    pq_path = tmp_path / "hk.parquet"
    assert main(["export", "--format", "parquet", "--out", str(pq_path), "--node", "n1",
                 "--archive", archive]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(pq_path)
    assert table.num_rows == 10 and table.column("temp_c[0]").to_pylist()[-1] == 60.0


def test_times() -> None:
    assert parse_time("-10m", now=1000.0) == 400.0
    assert parse_time("now", now=5.0) == 5.0
    assert parse_time("1970-01-01T00:01:00") == 60.0
    assert parse_time("12.5") == 12.5
