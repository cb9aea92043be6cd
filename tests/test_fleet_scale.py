"""Fleet scale, the small configuration (the full search is `make bench`, ground.fleet_nodes_1hz).

200 simulated nodes (the real TelemetryBus and outbox each, no boards) publish 8-GPU
housekeeping at 1 Hz for 15 s through a real mosquitto into two ingest workers on one MQTT v5
shared subscription and a real PostgreSQL (hil/fleet.py): every packet is stored once, no
sequence number is missing, and the ingest latency stays bounded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.fleet import measure

pytestmark = [pytest.mark.e2e]


@pytest.mark.timeout(300)
def test_200_nodes_at_1_hz_lose_nothing(tmp_path: Path) -> None:
    r = measure(200, workers=2, processes=2, rate_hz=1.0, seconds=15.0, workdir=tmp_path)
    assert r.made == 200 * 15, r
    assert r.lost == 0 and r.unsent == 0 and r.gaps == 0, r.to_dict()
    assert r.duplicates == 0, r.to_dict()
    assert r.p99_ms < 1000.0, r.to_dict()
    assert set(r.cpu) == {"nodes", "broker", "ingest", "database"} and all(v >= 0 for v in r.cpu.values()), r.cpu
