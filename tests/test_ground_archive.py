"""The archive on real SQLite files: de-duplication, gaps, alarms, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ground.archive import Archive
from node.bus.payloads import Event, Housekeeping, NodeState, TcReport


def hk(node: str, seq: int, *, temp: float = 60.0, soc: float = 0.8, historical: bool = False,
       utc: float | None = None) -> Housekeeping:
    return Housekeeping(
        node_id=node, seq=seq, utc=utc if utc is not None else 1_700_000_000.0 + seq, t_board=float(seq),
        mode="NOMINAL", link_up=True, temp_c=(temp, temp + 1), power_w=(300.0, 310.0),
        cap_w=(700.0, 700.0), progress=(1.0, 2.0), solar_w=900.0, battery_soc=soc,
        radiator_c=40.0, board_flags=0, historical=historical,
    )


def ev(node: str, seq: int, severity: int = 1, text: str = "hello") -> Event:
    return Event(node_id=node, seq=seq, utc=1_700_000_000.0 + seq, t_board=float(seq), kind="mode",
                 severity=severity, text=text)


def test_duplicates_are_stored_once(tmp_path: Path) -> None:
    with Archive(tmp_path / "a.sqlite") as a:
        first = a.store([hk("n1", 1), ev("n1", 2), hk("n1", 3)])
        again = a.store([hk("n1", 1), ev("n1", 2), hk("n1", 4), hk("n1", 4)])
        assert (first.stored, first.duplicates) == (3, 0)
        assert (again.stored, again.duplicates) == (1, 3)
        assert a.packet_count("n1") == 4
        assert len(a.hk("n1")) == 3
        assert [e["seq"] for e in a.events("n1")] == [2]
        assert a.node("n1")["duplicates"] == 3  # type: ignore[index]


def test_gaps_open_and_late_packets_close_them(tmp_path: Path) -> None:
    with Archive(tmp_path / "a.sqlite") as a:
        a.store([hk("n1", s) for s in (10, 11, 15, 20)])
        assert [(g["first_seq"], g["last_seq"]) for g in a.gaps("n1")] == [(12, 14), (16, 19)]
        # The node's backlog after an outage: historical packets fill and split gaps.
        a.store([hk("n1", 13, historical=True), hk("n1", 16, historical=True)])
        assert [(g["first_seq"], g["last_seq"]) for g in a.gaps("n1")] == [(12, 12), (14, 14), (17, 19)]
        a.store([hk("n1", s, historical=True) for s in (12, 14, 17, 18, 19)])
        assert a.gaps("n1") == []
        assert a.packet_count("n1") == 11  # 10 … 20


def test_gaps_survive_reopening_and_nodes_are_separate(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    with Archive(path) as a:
        a.store([hk("n1", 1), hk("n2", 1), hk("n1", 3)])
    with Archive(path) as a:
        a.store([hk("n2", 2), hk("n2", 5)])
        assert [(g["node"], g["first_seq"], g["last_seq"]) for g in a.gaps()] == [
            ("n1", 2, 2), ("n2", 3, 4)]


def test_alarms_latch_until_acknowledged(tmp_path: Path) -> None:
    with Archive(tmp_path / "a.sqlite") as a:
        a.store([hk("n1", 1, temp=85.0)])  # gpu0 85 yellow, gpu1 86 yellow
        a.store([hk("n1", 2, temp=88.0)])  # red
        a.store([hk("n1", 3, temp=60.0)])  # green again: still latched
        alarms = {x["channel"]: x for x in a.alarms()}
        assert set(alarms) == {"temp_c[0]", "temp_c[1]"}
        assert alarms["temp_c[0]"]["worst"] == 2 and alarms["temp_c[0]"]["active"] == 0
        assert a.ack_alarm("n1", "temp_c[0]", "alice")
        assert {x["channel"] for x in a.alarms()} == {"temp_c[1]"}
        a.store([hk("n1", 4, temp=84.0)])  # a new violation: a new alarm
        again = {x["channel"]: x for x in a.alarms()}
        assert again["temp_c[0]"]["worst"] == 1 and again["temp_c[0]"]["acked_by"] is None


def test_states_reports_commands_and_queries(tmp_path: Path) -> None:
    with Archive(tmp_path / "a.sqlite") as a:
        a.store([NodeState(node_id="n1", online=True, boot_id="b", utc=5.0, dict_hash="abc")],
                received=100.0)
        # Received before the birth (another worker writing late): ignored, whatever its utc.
        a.store([NodeState(node_id="n1", online=False, utc=6.0)], received=99.0)
        node = a.node("n1")
        assert node is not None and node["online"] == 1 and node["dict_hash"] == "abc"
        # A claimed far-future utc does not pin the state: the next one received wins.
        a.store([NodeState(node_id="n1", online=True, boot_id="b", utc=9e10, dict_hash="abc")],
                received=101.0)
        a.store([NodeState(node_id="n1", online=False, utc=5.5)], received=102.0)
        node = a.node("n1")
        assert node is not None and node["online"] == 0
        a.store([hk("n1", s, temp=50.0 + s) for s in range(1, 6)])
        assert [v for _, _, v in a.query("temp_c[1]", "n1")] == [52.0, 53.0, 54.0, 55.0, 56.0]
        assert [s for _, s, _ in a.query("battery_soc", "n1", since=1_700_000_002.0,
                                         until=1_700_000_004.0)] == [2, 3, 4]
        a.store([TcReport(node_id="n1", seq=6, utc=1.0, id="c1", counter=1, name="ping", stage="accepted"),
                 TcReport(node_id="n1", seq=7, utc=2.0, id="c1", counter=1, name="ping", stage="completed")])
        from node.bus.payloads import Telecommand

        a.record_command(Telecommand(node_id="n1", id="c1", counter=1, name="ping", args={},
                                     expires=9e9), "alice")
        (cmd,) = a.commands("n1")
        assert cmd["operator"] == "alice" and [s["stage"] for s in cmd["stages"]] == ["accepted", "completed"]


WRITER = r"""
import sys, time
from ground.archive import Archive
from node.bus.payloads import Housekeeping
a = Archive(sys.argv[1])
seq = 0
while True:
    batch = []
    for _ in range(50):
        seq += 1
        batch.append(Housekeeping(node_id="crash", seq=seq, utc=float(seq), t_board=0.0, mode="NOMINAL",
            link_up=True, temp_c=(1.0,), power_w=(1.0,), cap_w=(1.0,), progress=(0.0,), solar_w=0.0,
            battery_soc=0.5, radiator_c=None, board_flags=0))
    a.store(batch)
    print(seq, flush=True)
"""


def test_a_writer_killed_mid_write_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = 0
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while committed < 3000 and time.monotonic() < deadline:
            committed = int(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # at an arbitrary point, likely inside a transaction
        proc.wait()
    assert committed >= 3000
    with Archive(path) as a:
        count = a.packet_count("crash")
        assert count >= committed and count % 50 == 0  # whole batches only
        assert a.gaps("crash") == []
        assert len(a.hk("crash")) == count
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def bulk_hk(path: Path, node: str, count: int, *, utc0: float = 1_700_000_000.0,
            dt: float = 0.01) -> None:
    """``count`` hk rows written straight into the table: fast enough for 100k+ rows."""
    with Archive(path):
        pass  # the schema
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO hk (node, seq, utc, t_board, mode, link_up, temp_c, power_w, cap_w, progress,"
        " solar_w, battery_soc, radiator_c, board_flags, control_us)"
        " VALUES (?, ?, ?, 0, 'NOMINAL', 1, '[50.0]', '[1.0]', '[700.0]', '[0.0]', 0, ?, 0, 0, 0)",
        ((node, s, utc0 + s * dt, s / count) for s in range(1, count + 1)))
    conn.commit()
    conn.close()


def test_reads_return_every_row_past_the_old_100k_cap(tmp_path: Path) -> None:
    from ground.export import hk_rows

    path = tmp_path / "a.sqlite"
    n = 100_003
    bulk_hk(path, "big", n)
    with Archive(path) as a:
        rows = a.query("battery_soc", "big")
        assert len(rows) == n and rows[-1][1] == n  # the newest too, not only the oldest 100k
        _, flat = hk_rows(a, "big", None, None)
        assert len(flat) == n and flat[-1]["seq"] == n and flat[-1]["link_up"] is True


def test_paged_reads_keep_order_across_equal_times(tmp_path: Path, monkeypatch: Any) -> None:
    import ground.archive

    monkeypatch.setattr(ground.archive, "HK_PAGE", 4)
    with Archive(tmp_path / "a.sqlite") as a:
        # Several packets share a utc, straddling page boundaries.
        a.store([hk("n1", s, utc=1_700_000_000.0 + s // 3) for s in range(1, 31)])
        assert [r["seq"] for r in a.hk("n1")] == list(range(1, 31))
        assert [s for _, s, _ in a.query("temp_c[1]", "n1", since=1_700_000_003.0,
                                         until=1_700_000_005.0)] == list(range(9, 18))
        latest = a.latest_hk("n1")
        assert latest is not None and latest["link_up"] is True and latest["temp_c"] == [60.0, 61.0]


def test_commands_group_reports_per_command(tmp_path: Path) -> None:
    from node.bus.payloads import Telecommand

    def report(node: str, seq: int, cid: str, stage: str) -> TcReport:
        return TcReport(node_id=node, seq=seq, utc=float(seq), id=cid, counter=1, name="ping", stage=stage)

    with Archive(tmp_path / "a.sqlite") as a:
        # (n1, c2) is in both IN lists but is no command: its report must not be attached.
        a.store([report("n1", 1, "c1", "accepted"), report("n1", 2, "c2", "failed"),
                 report("n2", 1, "c2", "accepted"), report("n1", 3, "c1", "completed")])
        for node, cid in (("n1", "c1"), ("n2", "c2"), ("n2", "c3")):
            a.record_command(Telecommand(node_id=node, id=cid, counter=1, name="ping", args={},
                                         expires=9e9), "alice")
        got = {(c["node"], c["id"]): [s["stage"] for s in c["stages"]] for c in a.commands()}
        assert got == {("n1", "c1"): ["accepted", "completed"], ("n2", "c2"): ["accepted"],
                       ("n2", "c3"): []}
        (c1,) = a.commands("n1")
        assert set(c1["stages"][0]) == {"stage", "code", "reason", "at", "text", "data", "utc",
                                        "duplicate"}


def test_alarms_by_node_and_gap_nodes(tmp_path: Path) -> None:
    with Archive(tmp_path / "a.sqlite") as a:
        a.store([hk("n1", 1, temp=88.0), hk("n2", 1, temp=88.0)])
        assert {x["node"] for x in a.alarms("n2")} == {"n2"} and len(a.alarms()) == 4
        result = a.store([hk("n1", 5), hk("n2", 2)])
        assert result.gaps_opened == 1 and result.gap_nodes == {"n1"}


def test_json_sanitiser() -> None:
    from ground.jsonsafe import dumps

    value = {1: float("nan"), "b": b"\x01", "t": (1.0, float("inf"), [float("-inf")])}
    assert dumps(value) == '{"1":null,"b":"01","t":[1.0,null,[null]]}'


def check_series(a: Archive) -> None:
    """``Archive.series`` on any engine: raw samples when few, min/max buckets when many."""
    # 100 samples 1 s apart, temp_c[1] = temp + 1, a spike of 99 at seq 57
    a.store([hk("s1", s, temp=99.0 if s == 57 else 50.0 + s % 5) for s in range(1, 101)])
    t0 = 1_700_000_000.0
    raw = a.series("temp_c[1]", "s1", t0 + 1, t0 + 10, points=1000)
    assert raw == [(t0 + s, 51.0 + s % 5) for s in range(1, 11)]
    buckets = a.series("temp_c[1]", "s1", t0 + 1, t0 + 100, points=10)
    assert 10 <= len(buckets) <= 22  # a min and a max per bucket (two buckets may fall at the ends)
    values = [v for _, v in buckets]
    assert max(values) == 100.0 and min(values) == 51.0  # the spike survives the thinning
    times = [t for t, _ in buckets]
    assert times == sorted(times) and times[0] == t0 + 1 and times[-1] == t0 + 100
    assert a.series("battery_soc", "s1", t0, t0 + 100, points=5)[0][1] == 0.8
    assert a.series("temp_c[1]", "nobody", t0, t0 + 100) == []
    for bad in ("temp_c", "battery_soc[0]", "nope", "temp_c[x]"):
        try:
            a.series(bad, "s1", t0, t0 + 1)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_series_thins_a_long_window_into_min_max_buckets(tmp_path: Path) -> None:
    with Archive(tmp_path / "a.sqlite") as a:
        check_series(a)
