"""The file service (ICD §5.9): downlink throughput against a bare aiomqtt loop, and what a
transfer does to housekeeping latency.

``files.downlink``: a checkpoint of 128 MB (24 MB with --quick) goes down through a private
mosquitto — the node's TelemetryBus and FileService in this process, ground's FileGround in
another, no rate limit — from the ``file_downlink`` request to the verified file in
ground's store.  The baseline is a bare aiomqtt loop publishing the same bytes in the same
chunks (data PDUs encoded beforehand, as many in flight as the file service allows) until
a subscriber in another process holds them all; no hashing, no fsync, no acknowledgement.
Goal: ratio ≥ 0.7.

``files.hk_latency_p99``: housekeeping published at 10 Hz on the same bus, its latency (made
→ received by a ground subscriber) at the 99th percentile while a downlink runs at the
default rate limit (8 MB/s), against the same with no transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from bench.registry import Context, Result, benchmark
from ground.files import FileGround
from hil.broker import Mosquitto
from node.bus import signing
from node.bus.client import TelemetryBus
from node.bus.outbox import Outbox
from node.bus.payloads import Housekeeping, Leaf, topic
from node.config import MqttConfig
from node.files.config import FilesConfig
from node.files.pdu import Data
from node.files.service import FileService
from node.files.store import TransferDb
from node.jobs.store import CheckpointStore

NODE = "bench-files"
CHUNK = 128 << 10


def _hk(seq: int) -> Housekeeping:
    n = 8
    return Housekeeping(
        node_id=NODE, seq=seq, utc=time.time(), t_board=float(seq), mode="NOMINAL", link_up=True,
        temp_c=(71.5,) * n, power_w=(512.25,) * n, cap_w=(600.0,) * n, progress=(1234.5,) * n,
        solar_w=2400.0, battery_soc=0.81, radiator_c=35.0, board_flags=0)


async def _sink(host: str, port: int, total: int) -> None:
    """The baseline's receiver (its own process, as ground is): exit once ``total`` bytes of
    chunks arrived, printing when."""
    got = 0
    async with aiomqtt.Client(host, port, identifier=f"bench-sink-{os.getpid()}", max_inflight_messages=64) as sub:
        await sub.subscribe(topic(NODE, Leaf.FILE_TM), qos=1)
        print("ready", flush=True)
        async for m in sub.messages:
            got += len(m.payload)  # type: ignore[arg-type]
            if got >= total:
                print(f"done {time.time()!r}", flush=True)
                return


def _child(*argv: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_files", *argv], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"bench child {argv[0]} did not start: {line!r}")
    return proc


async def _bare(host: str, port: int, data: bytes, inflight: int) -> float:
    """Seconds for a bare loop to publish ``data`` in chunks until a subscriber in another
    process has it all."""
    bodies = [Data.of(NODE, "d-bare", off, data[off:off + CHUNK]).to_wire() for off in range(0, len(data), CHUNK)]
    sink = _child("sink", host, str(port), str(sum(len(b) for b in bodies)))
    try:
        async with aiomqtt.Client(host, port, identifier="bench-bare-pub", max_inflight_messages=64) as pub:
            slots = asyncio.Semaphore(inflight)
            start = time.time()

            async def one(body: bytes) -> None:
                try:
                    await pub.publish(topic(NODE, Leaf.FILE_TM), body, qos=1)
                finally:
                    slots.release()

            tasks = []
            for body in bodies:
                await slots.acquire()
                tasks.append(asyncio.create_task(one(body)))
            await asyncio.gather(*tasks)
            assert sink.stdout is not None
            line = await asyncio.to_thread(sink.stdout.readline)
        return float(line.split()[1]) - start
    finally:
        sink.kill()
        sink.wait()


async def _ground(host: str, port: int, files_dir: str, key_hex: str) -> None:
    """Ground's file service (its own process, as in a real ground station)."""
    async with FileGround(Path(files_dir), host=host, port=port, keys={NODE: bytes.fromhex(key_hex)}) as ground:
        await asyncio.wait_for(ground.connected.wait(), 10)
        print("ready", flush=True)
        await asyncio.Event().wait()


class _Node:
    """The node's bus and file service, with a checkpoint of ``size`` bytes in its store."""

    def __init__(self, root: Path, host: str, port: int, key: bytes, config: FilesConfig) -> None:
        self.root = root
        self.store = CheckpointStore(root / "checkpoints")
        self.outbox = Outbox(root / "outbox.sqlite")
        self.files = FileService(node_id=NODE, data_dir=root, config=config, key=key, store=self.store)
        self.bus = TelemetryBus(node_id=NODE, config=MqttConfig(host=host, port=port), boot_id="bench",
                                version="bench", outbox=self.outbox, files=self.files)

    def close(self) -> None:
        self.files.close()
        self.outbox.close()
        self.store.close()


async def _ours(host: str, port: int, root: Path, data: bytes, *, hk: bool = False, rate: float = 0.0) -> float:
    """Seconds from the downlink's request to the verified file in ground's store."""
    key = signing.new_key()
    node = _Node(root / "node", host, port, key, FilesConfig(rate_bytes_s=rate, chunk_bytes=CHUNK))
    info = node.store.write("bench", data, progress=1.0)
    ground = _child("ground", host, str(port), str(root / "ground"), key.hex())
    hk_task: asyncio.Task[None] | None = None
    try:
        async with node.bus:
            while not node.bus.connected:  # noqa: ASYNC110 - a start-up wait, not the measurement
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # subscriptions settle

            async def housekeeping() -> None:
                seq = 0
                while True:
                    seq += 1
                    node.bus.publish(_hk(seq))
                    await asyncio.sleep(0.1)

            if hk:
                hk_task = asyncio.create_task(housekeeping())
            start = time.time()
            xfer = node.files.downlink_checkpoint("bench", info.seq, 5)["xfer"]
            db = TransferDb(root / "ground" / "transfers.sqlite")
            try:
                while True:
                    row = db.get(xfer)
                    if row is not None and row.state != "active":
                        break
                    await asyncio.sleep(0.02)
            finally:
                db.close()
            assert row.state == "done", (row.state, row.reason)
            assert row.finished is not None
            return row.finished - start
    finally:
        if hk_task is not None:
            hk_task.cancel()
        ground.kill()
        ground.wait()
        node.close()


async def _hk_latency(host: str, port: int, root: Path, data: bytes | None, seconds: float) -> list[float]:
    """Housekeeping latencies (s) seen by a ground subscriber, with or without a downlink."""
    latencies: list[float] = []
    async with aiomqtt.Client(host, port, identifier=f"bench-hk-{time.monotonic_ns()}") as sub:
        await sub.subscribe(topic(NODE, Leaf.HK), qos=1)

        async def receive() -> None:
            async for m in sub.messages:
                p = Housekeeping.from_wire(bytes(m.payload))  # type: ignore[arg-type]
                latencies.append(time.time() - p.utc)

        reader = asyncio.create_task(receive())
        if data is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await _ours(host, port, root, data, hk=True, rate=FilesConfig().rate_bytes_s)
        else:
            key = signing.new_key()
            node = _Node(root / "idle", host, port, key, FilesConfig())
            try:
                async with node.bus:
                    for seq in range(1, int(seconds * 10)):
                        node.bus.publish(_hk(seq))
                        await asyncio.sleep(0.1)
            finally:
                node.close()
        await asyncio.sleep(0.5)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return latencies


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


@benchmark("files.downlink")
def downlink(ctx: Context) -> Result:
    size = (24 if ctx.quick else 128) * 1000 * 1000
    data = os.urandom(size)
    ours, bare = [], []
    with tempfile.TemporaryDirectory(prefix="umbra-bench-files-") as tmp, \
            Mosquitto(workdir=Path(tmp) / "mq") as mq:
        for i in range(1 if ctx.quick else 3):  # interleaved: the same conditions for both
            bare.append(asyncio.run(_bare(mq.host, mq.port, data, FilesConfig().max_inflight)))
            ours.append(asyncio.run(_ours(mq.host, mq.port, Path(tmp) / f"run{i}", data)))
    return Result(value=size / min(ours) / 1e6, unit="MB/s", baseline=size / min(bare) / 1e6,
                  notes=f"{size // 1_000_000} MB checkpoint, request → verified in ground's store (chunks of "
                        f"{CHUNK // 1024} KiB, {FilesConfig().max_inflight} in flight, no rate limit) vs a bare "
                        "aiomqtt loop publishing the same chunks to a subscriber; goal ratio >= 0.7")


@benchmark("files.hk_latency_p99")
def hk_latency(ctx: Context) -> Result:
    seconds = 4.0 if ctx.quick else 10.0
    size = int(FilesConfig().rate_bytes_s * seconds * 2)  # still going when we stop looking
    with tempfile.TemporaryDirectory(prefix="umbra-bench-files-") as tmp, \
            Mosquitto(workdir=Path(tmp) / "mq") as mq:
        idle = asyncio.run(_hk_latency(mq.host, mq.port, Path(tmp), None, seconds))
        busy = asyncio.run(_hk_latency(mq.host, mq.port, Path(tmp), os.urandom(size), seconds))
    return Result(value=_p99(busy) * 1e3, unit="ms", baseline=_p99(idle) * 1e3, higher_is_better=False,
                  notes=f"10 Hz housekeeping, p99 of made → received at ground, during a downlink at "
                        f"{FilesConfig().rate_bytes_s / 1e6:g} MB/s ({len(busy)} packets) vs no transfer "
                        f"({len(idle)}); max during: {max(busy, default=0) * 1e3:.1f} ms")


if __name__ == "__main__":  # the benchmark's other processes
    if sys.argv[1] == "sink":
        asyncio.run(_sink(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    elif sys.argv[1] == "ground":
        asyncio.run(_ground(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
