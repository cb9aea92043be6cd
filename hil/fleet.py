"""A fleet on one machine: N light nodes → mosquitto → K ingest workers → PostgreSQL.

Each simulated node is the node's real bus — a :class:`~node.bus.client.TelemetryBus` with its
:class:`~node.bus.outbox.Outbox` (in memory: 5,000 nodes would need 15,000 file descriptors
for SQLite files alone) — publishing 8-GPU housekeeping at ``rate_hz``, with no board and no
controller.  The nodes run in ``processes`` child processes (``python -m hil.fleet nodes``),
the ingest in ``umbra-ground ingest --shared --workers K`` (one MQTT v5 shared subscription),
the archive in a private PostgreSQL (hil/pg.py), the broker is a private mosquitto.

:func:`measure` runs one such fleet for ``seconds`` and reads the verdict from the archive:
every packet made stored once (loss = made − stored, gaps recorded by ingest), and the ingest
latency — ``received`` (when a worker stored its batch) minus ``utc`` (when the node made the
packet) — at the 50th and 99th percentiles, and how busy each part was (CPU seconds per
second of the run, from /proc, per process: nodes, broker, ingest, database).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from hil.broker import Mosquitto
from hil.pg import PrivatePostgres
from hil.procs import ManagedProcess

NODE_PREFIX = "fleet-"
GPUS = 8


@dataclass
class FleetResult:
    nodes: int
    workers: int
    processes: int
    rate_hz: float
    seconds: float
    made: int = 0
    stored: int = 0
    duplicates: int = 0
    gaps: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    #: CPU seconds per second of the run, by part (2.0 is both cores of a 2-core machine).
    cpu: dict[str, float] = field(default_factory=dict)
    drained_s: float = 0.0  # how long after the nodes stopped the last packet was stored
    #: Made but still in a node's outbox when its bus stopped: the simulator fell behind (on a
    #: real fleet every node is its own computer).  Counted in ``lost``.
    unsent: int = 0

    @property
    def lost(self) -> int:
        return self.made - self.stored

    def ok(self, p99_limit_ms: float) -> bool:
        return self.lost == 0 and self.gaps == 0 and self.p99_ms <= p99_limit_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lost": self.lost}


# -- the nodes (a child process) --------------------------------------------------------------


def _hk(node: str, seq: int) -> Any:
    from node.bus.payloads import Housekeeping

    t = time.time()
    return Housekeeping(
        node_id=node, seq=seq, utc=t, t_board=float(seq), mode="NOMINAL", link_up=True,
        temp_c=tuple(70.0 + (seq + i) % 7 for i in range(GPUS)), power_w=(512.0,) * GPUS, cap_w=(600.0,) * GPUS,
        progress=(float(seq),) * GPUS, solar_w=2400.0, battery_soc=0.81, radiator_c=35.0, board_flags=0,
        link={"frames": seq}, control_us=40.0)


async def run_nodes(first: int, count: int, *, host: str, port: int, rate_hz: float,
                    seconds: float) -> tuple[int, int]:
    """``count`` nodes publishing for ``seconds``; returns the packets made and those still in
    the outboxes when the buses stop (each keeps sending until its outbox is empty or 60 s
    pass): packets that never left their node, where the simulator could not keep up."""
    from node.bus.client import TelemetryBus
    from node.bus.outbox import Outbox
    from node.config import MqttConfig

    names = [f"{NODE_PREFIX}{i:05d}" for i in range(first, first + count)]
    config = MqttConfig(host=host, port=port, keepalive_s=60, queue_limit=100_000)
    buses = [TelemetryBus(node_id=n, config=config, boot_id="fleet", version="fleet",
                          outbox=Outbox(":memory:", limit=100_000)) for n in names]
    async with contextlib.AsyncExitStack() as stack:
        for bus in buses:  # connections spread over a second: no thundering herd at the broker
            await stack.enter_async_context(bus)
            await asyncio.sleep(1.0 / max(count, 1))
        deadline = time.monotonic() + 60
        while not all(b.connected for b in buses):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sum(not b.connected for b in buses)} of {count} nodes never connected")
            await asyncio.sleep(0.05)
        print("connected", flush=True)
        period = 1.0 / rate_hz
        offsets = [random.random() * period for _ in buses]  # each node its own phase
        start = time.monotonic() + 0.5
        made = 0
        ticks = int(seconds * rate_hz)
        order = sorted(range(count), key=lambda i: offsets[i])
        for tick in range(ticks):
            for i in order:
                due = start + tick * period + offsets[i]
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                bus = buses[i]
                bus.publish(_hk(names[i], bus.next_seq()))
                made += 1
        deadline = time.monotonic() + 60
        while any(b.backlog for b in buses) and time.monotonic() < deadline:  # noqa: ASYNC110 - polled counts
            await asyncio.sleep(0.1)
        unsent = sum(b.backlog for b in buses)
    return made, unsent


# -- the whole fleet ----------------------------------------------------------------------------


def _cpu(procs: dict[str, list[psutil.Process]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for part, ps in procs.items():
        total = 0.0
        for p in ps:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + sum(c.cpu_times().user + c.cpu_times().system
                                                 for c in p.children(recursive=True) if c.is_running())
        out[part] = total
    return out


def _family(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def measure(n: int, *, workers: int = 2, processes: int = 2, rate_hz: float = 1.0, seconds: float = 20.0,
            workdir: Path, python: str = sys.executable) -> FleetResult:
    """One fleet of ``n`` nodes for ``seconds``; see the module docstring."""
    result = FleetResult(nodes=n, workers=workers, processes=processes, rate_hz=rate_hz, seconds=seconds)
    workdir.mkdir(parents=True, exist_ok=True)
    with PrivatePostgres(settings={"max_connections": "100", "synchronous_commit": "off"}) as pg, \
            Mosquitto(workdir=workdir / "mq") as mq:
        from ground.archive import Archive

        Archive(pg.url).close()  # the schema, before the workers race to make it
        ingest = ManagedProcess(
            [python, "-m", "ground.cli", "ingest", "--mqtt", f"{mq.host}:{mq.port}", "--archive", pg.url,
             "--shared", "umbra-ingest", "--workers", str(workers)], name="ingest", log_dir=workdir)
        ingest.start()
        children: list[ManagedProcess] = []
        try:
            for w in range(workers):
                ingest.wait_for_line(rf"worker {w} ", 60)
            per = [n // processes + (1 if k < n % processes else 0) for k in range(processes)]
            first = 0
            for k, count in enumerate(per):
                child = ManagedProcess(
                    [python, "-m", "hil.fleet", "nodes", "--first", str(first), "--count", str(count), "--mqtt",
                     f"{mq.host}:{mq.port}", "--rate", str(rate_hz), "--seconds", str(seconds)],
                    name=f"nodes-{k}", log_dir=workdir)
                child.start()
                children.append(child)
                first += count
            for child in children:
                child.wait_for_line(r"^connected", 180)
            parts = {"broker": _family(mq.pid), "ingest": _family(ingest.pid),
                     "database": _family(pg.proc.pid if pg.proc else None)}
            before, t0 = _cpu(parts), time.monotonic()
            nodes_before = sum(_cpu({"n": _family(c.pid)})["n"] for c in children)
            for child in children:
                child.wait(seconds + 180)
            after, t1 = _cpu(parts), time.monotonic()
            result.cpu = {k: round((after[k] - before[k]) / (t1 - t0), 3) for k in parts}
            nodes_cpu = -nodes_before
            for child in children:
                line = next((ln for ln in reversed(child.lines()) if ln.startswith("made ")), "")
                if not line:
                    raise RuntimeError(f"{child.name} did not finish:\n{child.tail()}")
                words = line.split()
                result.made += int(words[1])
                nodes_cpu += float(words[3])  # the child's own account (it has exited)
                result.unsent += int(words[5])
            result.cpu["nodes"] = round(nodes_cpu / (t1 - t0), 3)
            stopped = time.monotonic()
            import psycopg

            with psycopg.connect(pg.url) as db:
                # until every packet is in, or none came for 10 s (ingest may pause for seconds
                # when two workers wait on the same nodes' rows)
                last, stable = -1, 0
                while stable < 20 and time.monotonic() - stopped < 300:
                    count = db.execute("SELECT COUNT(*) FROM packets").fetchone()[0]  # type: ignore[index]
                    stable = stable + 1 if count == last else 0
                    last = count
                    if count >= result.made:
                        break
                    time.sleep(0.5)
                result.drained_s = round(time.monotonic() - stopped, 1)
                result.stored = db.execute("SELECT COUNT(*) FROM packets").fetchone()[0]  # type: ignore[index]
                result.duplicates = int(db.execute(
                    "SELECT COALESCE(SUM(duplicates), 0) FROM nodes").fetchone()[0])  # type: ignore[index]
                result.gaps = db.execute("SELECT COUNT(*) FROM gaps").fetchone()[0]  # type: ignore[index]
                row = db.execute(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY received - utc), "
                    "percentile_cont(0.99) WITHIN GROUP (ORDER BY received - utc), MAX(received - utc) "
                    "FROM packets").fetchone()
                assert row is not None
                if row[0] is not None:
                    result.p50_ms, result.p99_ms, result.max_ms = (round(float(v) * 1000, 1) for v in row)
        finally:
            for child in children:
                child.stop(timeout=5)
            ingest.stop(timeout=5)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hil.fleet", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    nodes = sub.add_parser("nodes", help="run simulated nodes (a child of measure)")
    nodes.add_argument("--first", type=int, default=0)
    nodes.add_argument("--count", type=int, required=True)
    nodes.add_argument("--mqtt", required=True, metavar="HOST:PORT")
    nodes.add_argument("--rate", type=float, default=1.0)
    nodes.add_argument("--seconds", type=float, default=20.0)
    one = sub.add_parser("measure", help="one fleet: N nodes, K workers; prints the result as JSON")
    one.add_argument("n", type=int)
    one.add_argument("--workers", type=int, default=2)
    one.add_argument("--processes", type=int, default=2)
    one.add_argument("--seconds", type=float, default=20.0)
    one.add_argument("--workdir", type=Path, default=Path("var/fleet"))
    args = p.parse_args(argv)
    if args.command == "nodes":
        host, _, port = args.mqtt.rpartition(":")
        made, unsent = asyncio.run(run_nodes(args.first, args.count, host=host, port=int(port), rate_hz=args.rate,
                                             seconds=args.seconds))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(f"made {made} cpu {usage.ru_utime + usage.ru_stime:.3f} unsent {unsent}", flush=True)
        return 0
    result = measure(args.n, workers=args.workers, processes=args.processes, seconds=args.seconds,
                     workdir=args.workdir)
    print(json.dumps(result.to_dict()))
    return 0


__all__ = ["FleetResult", "measure", "run_nodes"]

if __name__ == "__main__":
    raise SystemExit(main())

