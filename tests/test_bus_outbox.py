"""The SQLite outbox: numbering across restarts, ack-only deletion, the size bound."""

from __future__ import annotations

import msgpack

from node.bus.client import mark_historical
from node.bus.outbox import Outbox
from node.bus.payloads import Event, Housekeeping, Leaf


def hk(seq: int) -> Housekeeping:
    return Housekeeping(node_id="n", seq=seq, utc=1.0, t_board=0.0, mode="NOMINAL", link_up=True,
                        temp_c=(), power_w=(), cap_w=(), progress=(), solar_w=0.0, battery_soc=0.5,
                        radiator_c=None, board_flags=0)


def ev(seq: int) -> Event:
    return Event(node_id="n", seq=seq, utc=1.0, t_board=0.0, kind="k", severity=1, text="t")


def test_numbers_continue_after_restart_and_rows_survive(tmp_path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    for _ in range(5):
        box.put(hk(box.next_seq()))
    box.ack([1, 2])
    box.next_seq()  # handed out, never stored (a crash before put)
    box.close()
    box = Outbox(path)
    assert [r.seq for r in box.pending()] == [3, 4, 5]
    assert box.next_seq() == 6  # 6 was never stored, so re-using it repeats nothing
    assert Outbox(tmp_path / "p.sqlite", first_seq=500).next_seq() == 500


def test_numbers_never_go_below_what_was_stored_even_if_all_acked(tmp_path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    for _ in range(3):
        box.put(hk(box.next_seq()))
    box.ack([1, 2, 3])
    box.close()
    assert Outbox(path).next_seq() == 4


def test_size_bound_drops_oldest_hk_first_then_events(tmp_path) -> None:
    box = Outbox(tmp_path / "o.sqlite", limit=4)
    box.put(ev(1))
    box.put(hk(2))
    box.put(hk(3))
    box.put(ev(4))
    box.put(hk(5))  # full: drops hk 2
    assert [r.seq for r in box.pending()] == [1, 3, 4, 5]
    box.put(ev(6))
    box.put(ev(7))
    box.put(ev(8))  # hk 3, 5 go, then the oldest event 1
    assert [r.seq for r in box.pending()] == [4, 6, 7, 8]
    assert box.dropped == {"hk": 3, "event": 1, "report": 0}
    assert len(box) == 4
    box.close()
    assert Outbox(tmp_path / "o.sqlite", limit=4).dropped["hk"] == 3  # counted across restarts


def test_pending_ranges_and_historical_flag(tmp_path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.put_many([hk(i) for i in range(1, 11)])
    assert [r.seq for r in box.pending(after=3, before=7)] == [4, 5, 6]
    row = box.pending(limit=1)[0]
    assert row.leaf is Leaf.HK
    decoded = Housekeeping.from_wire(mark_historical(row.body))
    assert decoded.historical and decoded.seq == 1
    assert msgpack.unpackb(row.body)["historical"] is False
