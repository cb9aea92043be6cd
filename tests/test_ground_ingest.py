"""Ingest's hand-off from the MQTT subscriber to the archive writer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_ground_archive import hk

from ground.archive import Archive
from ground.ingest import Ingestor
from node.bus.payloads import Housekeeping, Leaf, topic


async def test_a_full_queue_applies_back_pressure_instead_of_crashing(tmp_path: Path) -> None:
    with Archive(tmp_path / "a.sqlite") as a:
        ing = Ingestor(archive=a, host="127.0.0.1", port=1, queue_max=1)  # not started: no writer
        await ing._accept(topic("n1", Leaf.HK), hk("n1", 1).to_wire())
        second = asyncio.create_task(ing._accept(topic("n1", Leaf.HK), hk("n1", 2).to_wire()))
        await asyncio.sleep(0.05)
        assert not second.done()  # waits for room (the archive is "down"), does not raise
        first = ing._queue.get_nowait()
        assert isinstance(first, Housekeeping) and first.seq == 1
        await asyncio.wait_for(second, 1.0)
        then = ing._queue.get_nowait()
        assert isinstance(then, Housekeeping) and then.seq == 2 and ing.stats.received == 2
