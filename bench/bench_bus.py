"""The bus: outbox drain rate to mosquitto at QoS 1 against a bare aiomqtt publish loop.

Both publish the same 8-GPU housekeeping packets to the same private mosquitto at QoS 1
with the same number of publishes in flight (the bus's window, 64): the bare loop keeps
its packets in a list, the bus reads them from the SQLite outbox, publishes, and deletes
each acknowledged one.  A second figure is the wall time to drain a backlog of 100,000
stored packets (10,000 with --quick) against the bare loop's time for as many.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from pathlib import Path

import aiomqtt

from bench.registry import Context, Result, benchmark
from hil.broker import Mosquitto
from node.bus.client import WINDOW, TelemetryBus
from node.bus.outbox import Outbox
from node.bus.payloads import Housekeeping, Leaf, topic
from node.config import MqttConfig

NODE = "bench-bus"


def _hk(seq: int) -> Housekeeping:
    n = 8
    return Housekeeping(
        node_id=NODE, seq=seq, utc=1.8e9 + seq, t_board=float(seq), mode="NOMINAL", link_up=True,
        temp_c=(71.5,) * n, power_w=(512.25,) * n, cap_w=(600.0,) * n, progress=(1234.5,) * n,
        solar_w=2400.0, battery_soc=0.81, radiator_c=35.0, board_flags=0,
        link={"frames": seq, "crc_errors": 0}, control_us=42.0,
    )


async def _bare(host: str, port: int, bodies: list[bytes]) -> float:
    async with aiomqtt.Client(host, port, identifier="bench-bare", max_inflight_messages=WINDOW,
                              timeout=30) as client:
        client.pending_calls_threshold = WINDOW + 16
        slots = asyncio.Semaphore(WINDOW)
        name = topic(NODE, Leaf.HK)

        async def one(body: bytes) -> None:
            try:
                await client.publish(name, body, qos=1)
            finally:
                slots.release()

        start = time.perf_counter()
        tasks = []
        for body in bodies:
            await slots.acquire()
            tasks.append(asyncio.create_task(one(body)))
        await asyncio.gather(*tasks)
        return time.perf_counter() - start


async def _bus(host: str, port: int, workdir: Path, n: int) -> float:
    box = Outbox(workdir / f"outbox-{time.monotonic_ns()}.sqlite", limit=n + 10)
    box.put_many([_hk(box.next_seq()) for _ in range(n)])
    config = MqttConfig(host=host, port=port, queue_limit=max(10, n + 10))
    start = time.perf_counter()
    async with TelemetryBus(node_id=NODE, config=config, boot_id="bench", version="bench",
                            outbox=box, backlog_rate=math.inf):
        while len(box):  # noqa: ASYNC110 - polling the count is the measurement
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - start
    box.close()
    return elapsed


def _measure(n: int, repeats: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="umbra-bench-bus-") as tmp, \
            Mosquitto(workdir=Path(tmp) / "mq") as mq:
        bodies = [_hk(i + 1).to_wire() for i in range(n)]
        bus_s, bare_s = [], []
        for _ in range(repeats):
            bare_s.append(asyncio.run(_bare(mq.host, mq.port, bodies)))
            bus_s.append(asyncio.run(_bus(mq.host, mq.port, Path(tmp), n)))
        return min(bus_s), min(bare_s)


@benchmark("bus.drain_qos1")
def drain_rate(ctx: Context) -> Result:
    n = 2_000 if ctx.quick else 20_000
    bus_s, bare_s = _measure(n, 2 if ctx.quick else 3)
    return Result(value=n / bus_s, unit="packets/s", baseline=n / bare_s,
                  notes=f"{n} 8-GPU hk packets, QoS 1, window {WINDOW}; outbox (SQLite, delete on "
                        "PUBACK) vs bare aiomqtt loop; target ratio >= 0.8")


@benchmark("bus.backlog_100k")
def backlog(ctx: Context) -> Result:
    n = 10_000 if ctx.quick else 100_000
    bus_s, bare_s = _measure(n, 1)
    return Result(value=bus_s, unit="s", baseline=bare_s, higher_is_better=False,
                  notes=f"drain a stored backlog of {n} packets (historical flag, unlimited rate) "
                        "vs the bare loop publishing as many")
