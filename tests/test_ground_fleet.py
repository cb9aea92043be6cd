"""The fleet path: a real PostgreSQL and two ingest workers on one MQTT v5 shared
subscription (real mosquitto).  Every packet is stored exactly once, whichever worker
got it and however often it was published; a skipped sequence number is one gap.

PostgreSQL is Debian's: the test makes its own cluster with ``initdb`` in a temp dir,
runs ``postgres`` as its child on a free loopback port (as user ``postgres`` when the
test runs as root, since PostgreSQL refuses to run as root) and stops it by its pid.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiomqtt
import pytest

from ground.archive import Archive
from ground.ingest import Ingestor
from hil.broker import Mosquitto
from hil.pg import PrivatePostgres
from node.bus.payloads import Event, Housekeeping, Leaf, NodeState, topic
from node.errors import ConfigError

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def postgres() -> Iterator[str]:
    """A private PostgreSQL cluster (hil/pg.py); yields its connection URL."""
    try:
        pg = PrivatePostgres().start()
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield pg.url
    finally:
        pg.stop()


def _hk(node: str, seq: int) -> Housekeeping:
    return Housekeeping(node_id=node, seq=seq, utc=1_700_000_000.0 + seq, t_board=float(seq),
                        mode="NOMINAL", link_up=True, temp_c=(50.0,), power_w=(100.0,),
                        cap_w=(700.0,), progress=(0.0,), solar_w=100.0, battery_soc=0.9,
                        radiator_c=20.0, board_flags=0)


def _ev(node: str, seq: int) -> Event:
    return Event(node_id=node, seq=seq, utc=1_700_000_000.0 + seq, t_board=0.0, kind="test",
                 severity=1, text=f"event {seq}")


@pytest.mark.timeout(90)
async def test_two_shared_workers_store_every_packet_once(postgres: str, mosquitto: Mosquitto) -> None:
    nodes = ("fleet-a", "fleet-b")
    per_node = 400
    skipped = ("fleet-b", 100)
    archives = [Archive(postgres, worker=f"w{i}") for i in range(2)]
    try:
        workers = [Ingestor(archive=a, host=mosquitto.host, port=mosquitto.port,
                            shared="umbra-ingest", batch_max=64) for a in archives]
        async with workers[0] as w0, workers[1] as w1:
            await asyncio.wait_for(asyncio.gather(w0.subscribed.wait(), w1.subscribed.wait()), 10)
            sent = 0
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="fleet-pub") as pub:
                for node in nodes:
                    await pub.publish(topic(node, Leaf.STATE),
                                      NodeState(node_id=node, online=True, utc=time.time()).to_wire(),
                                      qos=1, retain=True)
                for seq in range(1, per_node + 1):
                    for node in nodes:
                        if (node, seq) == skipped:
                            continue
                        p = _ev(node, seq) if seq % 10 == 0 else _hk(node, seq)
                        await pub.publish(topic(node, p.LEAF), p.to_wire(), qos=1)
                        sent += 1
                    if seq == 1:
                        # First contact: ground counts gaps from the first packet it stores of
                        # a node, so let seq 1 of both land before the burst (two workers
                        # commit out of order, and a later seq stored first would start there).
                        deadline = time.monotonic() + 10
                        while w0.stats.stored + w1.stats.stored < len(nodes):
                            assert time.monotonic() < deadline, (w0.stats, w1.stats)
                            await asyncio.sleep(0.02)
                # A node resending after a lost PUBACK: same seq, stored once.
                for seq in range(1, 51):
                    await pub.publish(topic("fleet-a", Leaf.HK), _hk("fleet-a", seq).to_wire(), qos=1)
            deadline = time.monotonic() + 30
            while w0.stats.received + w1.stats.received < sent + 50:
                assert time.monotonic() < deadline, (w0.stats, w1.stats, sent)
                await asyncio.sleep(0.1)
            await w0.drain()
            await w1.drain()
        a = archives[0]
        assert a.packet_count() == sent == 2 * per_node - 1
        for node in nodes:
            rows = a._rows("SELECT seq FROM packets WHERE node = ? ORDER BY seq", (node,))
            expected = [s for s in range(1, per_node + 1) if (node, s) != skipped]
            assert [r["seq"] for r in rows] == expected
        assert len(a.hk("fleet-a")) + len(a.events("fleet-a", limit=10_000)) == per_node
        # The load was shared, and the redelivered packets were recognised as duplicates.
        by_worker = {r["worker"]: r["n"] for r in
                     a._rows("SELECT worker, COUNT(*) AS n FROM packets GROUP BY worker")}
        assert set(by_worker) == {"w0", "w1"} and all(n > 0 for n in by_worker.values()), by_worker
        assert w0.stats.stored + w1.stats.stored == sent
        assert w0.stats.duplicates + w1.stats.duplicates == 50
        assert [(g["node"], g["first_seq"], g["last_seq"]) for g in a.gaps()] == [("fleet-b", 100, 100)]
        # (The session's mosquitto also holds other tests' retained states: only ours count.)
        assert {n["node"]: n["online"] for n in a.nodes() if n["node"] in nodes} == {
            "fleet-a": 1, "fleet-b": 1}
    finally:
        for arc in archives:
            arc.close()


def test_series_thins_in_postgresql_as_in_sqlite(postgres: str) -> None:
    from test_ground_archive import check_series

    with Archive(postgres) as a:
        check_series(a)
