"""Files to and from orbit over a real mosquitto (ICD §5.9, issue #18).

A real node process (with a simulated board) and ground's file service (in the test's
process) on a broker started for the test:

- a 200 MB checkpoint goes down across a 60 s broker outage and a SIGKILL of the node,
  arrives with a matching hash, without anything that had arrived being sent again, and
  the housekeeping sequence has no gap meanwhile;
- a chunk corrupted on the way is dropped by its CRC and sent again;
- a job's result file goes down; ground keeps it with its manifest;
- bundles: a signed one is installed and its job runs; a tampered, an unsigned, an
  oversize one and ones holding ``..``, absolute paths or links are refused with a report
  and nothing unpacked.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from collector import Collector

from ground.files import FileGround, prepare_bundle
from ground.send import build_telecommand, send_command
from hil.bench import LocalBench
from hil.broker import Mosquitto, free_port
from node.bus import signing
from node.bus.payloads import Housekeeping, TcReport
from node.errors import RemoteProtocolError
from node.files import bundle as bundles
from node.files.endpoint import file_digest
from node.files.pdu import Data, Meta, decode
from node.jobs.store import CheckpointStore

pytestmark = [pytest.mark.e2e]

NODE_DATA = "node-data"


@dataclass
class Site:
    tmp: Path
    mq: Mosquitto
    node_id: str
    key: bytes
    key_file: Path
    bench: LocalBench
    private: bytes

    @property
    def data_dir(self) -> Path:
        return self.tmp / NODE_DATA

    async def command(self, name: str, *, timeout: float = 30.0, **args: Any) -> TcReport:
        tc = build_telecommand(node_id=self.node_id, name=name, args=args, key=self.key,
                               counter=time.time_ns() // 1000)
        final = None
        async with asyncio.timeout(timeout):
            async for report in send_command(self.mq.host, self.mq.port, tc):
                final = report
        assert final is not None
        return final

    async def start(self) -> None:
        """Board and node up, and the node listening for commands (it subscribes once connected)."""
        self.bench.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.command("ping", timeout=1.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise


def _site(tmp: Path, mq: Mosquitto, node_id: str, *, files: dict[str, Any] | None = None, hk: float = 5.0) -> Site:
    key_file = tmp / "tc-keys.json"
    key = signing.new_key()
    signing.write_keys(key_file, {node_id: key})
    private = bundles.new_private_key()
    settings = {"bundle_keys": [bundles.public_key(private).hex()], **(files or {})}
    lines = ["[files]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    (tmp / "node.toml").write_text("\n".join(lines) + "\n")
    bench = LocalBench(workdir=tmp, mqtt_host=mq.host, mqtt_port=mq.port, node_id=node_id, gpus=2, rate_hz=10.0,
                       speed=1.0, hk_rate_hz=hk,
                       node_args=("--tc-key-file", str(key_file), "--config", str(tmp / "node.toml")))
    return Site(tmp, mq, node_id, key, key_file, bench, private)


async def _until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _row(files: FileGround, xfer: str) -> dict[str, Any]:
    return next((t for t in files.transfers(1000) if t["xfer"] == xfer), {})


@pytest.fixture
async def ground_files(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Any]:
    made: list[FileGround] = []

    async def make(site: Site, **kw: Any) -> FileGround:
        files = FileGround(site.tmp / "ground-files", host=site.mq.host, port=site.mq.port,
                           keys={site.node_id: site.key}, **kw)
        await files.__aenter__()
        made.append(files)
        await asyncio.wait_for(files.connected.wait(), 10)
        return files

    yield make
    for files in made:
        await files.__aexit__(None, None, None)


# -- downlinks ---------------------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_a_200_mb_downlink_survives_a_broker_outage_and_a_node_sigkill(tmp_path: Path) -> None:
    node_id = "files-big"
    mq = Mosquitto(workdir=tmp_path / "mq", port=free_port(), persistence=True)
    mq.start()
    site = _site(tmp_path, mq, node_id, files={"rate_bytes_s": 0, "probe_s": 1.0})
    size = 200 * 1000 * 1000
    store = CheckpointStore(site.data_dir / "checkpoints")
    info = store.write("train", (os.urandom(8 << 20)[: min(8 << 20, size - i)] for i in range(0, size, 8 << 20)),
                       progress=12.5, meta={"step": 1000})
    store.close()
    assert info.size == size
    files = FileGround(tmp_path / "ground-files", host=mq.host, port=mq.port, keys={node_id: site.key})
    try:
        async with Collector(mq, node_id) as col, files:
            await site.start()
            await _until(lambda: any(isinstance(p, Housekeeping) and p.link_up for p in col.packets()), 30,
                         "link up")
            report = await site.command("file_downlink", job="train")
            assert report.stage == "completed", report
            xfer = report.data["xfer"]
            assert report.data["size"] == size and report.data["seq"] == info.seq
            await _until(lambda: _row(files, xfer).get("done_bytes", 0) >= 0.3 * size, 120, "30 % down")
            # the broker goes away for a minute
            await mq.stop_async()
            down_at = _row(files, xfer)["done_bytes"]
            await asyncio.sleep(60)
            await mq.start_async()
            await _until(lambda: _row(files, xfer).get("done_bytes", 0) >= max(0.6 * size, down_at + 10e6), 120,
                         "60 % down")
            # the node is killed mid-transfer and started again
            assert site.bench.node is not None
            site.bench.node.kill()
            killed_at = _row(files, xfer)["done_bytes"]
            site.bench.start_node()
            await _until(lambda: _row(files, xfer).get("state") != "active", 150, "the downlink's end")
            row = _row(files, xfer)
            assert row["state"] == "done", row
            await _until(lambda: bool(col.events("file_downlinked")), 20, "the node's completion event")
            await _until(lambda: not col.missing(), 30, "every housekeeping packet")
            assert not col.missing()  # no telemetry gap across the transfer, the outage and the kill
    finally:
        site.bench.stop()
        mq.close()
    stored = Path(row["final_path"])
    assert stored.parent == tmp_path / "ground-files" / node_id / "checkpoint"
    assert stored.stat().st_size == size
    assert file_digest(stored, info.algorithm) == info.digest
    manifest = json.loads(stored.with_name(stored.name + ".manifest.json").read_text())
    assert manifest["digest"] == info.digest and manifest["info"]["seq"] == info.seq
    assert manifest["info"]["meta"] == {"step": 1000}
    # nothing that had arrived was sent again
    assert row["bytes_duplicate"] == 0, row
    assert 0 < killed_at < size and down_at < killed_at
    # the spool let go of the file
    assert not any((site.data_dir / "files" / "out").iterdir())


@pytest.mark.timeout(120)
async def test_a_corrupted_chunk_is_detected_and_sent_again(tmp_path: Path, mosquitto: Mosquitto,
                                                            ground_files: Any) -> None:
    site = _site(tmp_path, mosquitto, "files-crc", files={"chunk_bytes": 65536})
    store = CheckpointStore(site.data_dir / "checkpoints")
    info = store.write("j", os.urandom(3 << 20), progress=1.0)
    store.close()
    files = await ground_files(site)
    original = files._on_message
    damaged: list[int] = []

    def flip_one(name: str, payload: bytes) -> None:
        """The wire damages one chunk: a byte flipped inside its data."""
        try:
            pdu = decode(payload)
        except RemoteProtocolError:
            pdu = None
        if isinstance(pdu, Data) and pdu.offset == 1 << 20 and not damaged:
            damaged.append(pdu.offset)
            at = payload.index(pdu.data) + 1000
            payload = payload[:at] + bytes([payload[at] ^ 0x10]) + payload[at + 1:]
        original(name, payload)

    files._on_message = flip_one  # type: ignore[method-assign]
    try:
        await site.start()
        report = await site.command("file_downlink", job="j", seq=info.seq)
        xfer = report.data["xfer"]
        await _until(lambda: _row(files, xfer).get("state") not in (None, "active"), 60, "the downlink")
    finally:
        site.bench.stop()
    row = _row(files, xfer)
    assert damaged == [1 << 20]
    assert row["state"] == "done" and row["corrupt_chunks"] == 1, row
    assert file_digest(Path(row["final_path"]), info.algorithm) == info.digest


@pytest.mark.timeout(120)
async def test_a_result_file_goes_down_and_bad_requests_are_refused(tmp_path: Path, mosquitto: Mosquitto,
                                                                   ground_files: Any) -> None:
    site = _site(tmp_path, mosquitto, "files-res", files={"spool_bytes": 1 << 20})
    results = site.data_dir / "results" / "infer"
    results.mkdir(parents=True)
    (results / "out").mkdir()
    (results / "out" / "scores.csv").write_bytes(b"id,score\n" + b"1,0.5\n" * 1000)
    (results / "big.bin").write_bytes(os.urandom(2 << 20))
    files = await ground_files(site)
    try:
        await site.start()
        report = await site.command("file_downlink", job="infer", path="out/scores.csv", priority=9)
        assert report.stage == "completed", report
        xfer = report.data["xfer"]
        await _until(lambda: _row(files, xfer).get("state") not in (None, "active"), 60, "the downlink")
        row = _row(files, xfer)
        assert row["state"] == "done"
        stored = Path(row["final_path"])
        assert stored.read_bytes() == (results / "out" / "scores.csv").read_bytes()
        assert stored.parent.name == "result" and stored.name == "out-scores.csv"
        # refused, each with its reason: outside the results, missing, over the spool's bound
        for args, code in (({"path": "../../tc-keys.json"}, "BAD_ARGUMENT"), ({"path": "nope.csv"}, "NOT_FOUND"),
                           ({"path": "big.bin"}, "NOT_ALLOWED"), ({"seq": 3}, "NOT_FOUND")):
            bad = await site.command("file_downlink", job="infer", **args)
            assert bad.stage == "failed" and bad.reason == code, (args, bad)
        listing = await site.command("file_list")
        assert any(t["xfer"] == xfer and t["state"] == "done" for t in listing.data["transfers"])
    finally:
        site.bench.stop()


# -- uplinks -------------------------------------------------------------------------------------


def _tar(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """A tar of (name, data or None, kind: file | dir | symlink | link | fifo | abs)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                info.mode = 0o4755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


#: A job in the bundle that follows the checkpoint protocol (node/jobs/jobkit.py).
JOB_SCRIPT = b"""\
import pathlib, time
from node.jobs.jobkit import Checkpointer
ckpt = Checkpointer(progress_every_s=0.0)
ckpt.restore()
ckpt.ready()
pathlib.Path("ran").write_text("yes")
for step in range(6000):
    time.sleep(0.1)
    if ckpt.due:
        ckpt.save(b"step %d" % step, progress=step)
        if ckpt.stopping:
            break
"""


@pytest.mark.timeout(180)
async def test_bundles_signed_ones_install_and_run_bad_ones_are_refused(tmp_path: Path, mosquitto: Mosquitto,
                                                                       ground_files: Any) -> None:
    site = _site(tmp_path, mosquitto, "files-up", files={"max_bundle_bytes": 1 << 20})
    files = await ground_files(site)
    job_toml = f'[job]\nid = "from-bundle"\ncommand = ["{sys.executable}", "run.py"]\ngpus = [0]\n'.encode()
    script = JOB_SCRIPT
    good = _tar([("umbra-job.toml", job_toml, "file"), ("run.py", script, "file"), ("data", None, "dir"),
                 ("data/x.bin", b"\x00" * 1000, "file"), ("tool.sh", b"#!/bin/sh\n", "file")])
    src = tmp_path / "bundles"
    src.mkdir()

    async def uplink(name: str, data: bytes, *, tamper: bool = False, unsigned: bool = False,
                     other_key: bool = False) -> dict[str, Any]:
        (src / name).write_bytes(data)
        key = bundles.new_private_key() if other_key else site.private
        meta, copy = prepare_bundle(files.files_dir, node_id=site.node_id, source=src / name, private_key=key)
        if unsigned:
            meta = Meta(**{**{k: v for k, v in meta.to_map().items() if k != "k"}, "signature": b"", "key_id": ""})
        if tamper:  # changed after it was signed: same name, size and claimed hash
            blob = bytearray(copy.read_bytes())
            blob[600] ^= 0x01
            copy.write_bytes(bytes(blob))
        files.uplink(meta, copy)
        await _until(lambda: _row(files, meta.xfer).get("state") not in (None, "active"), 60, f"uplink {name}")
        return _row(files, meta.xfer)

    installed = site.data_dir / "bundles"
    async with Collector(mosquitto, site.node_id) as col:
        try:
            await site.start()
            row = await uplink("train-v1.tar", good)
            assert row["state"] == "done", row
            where = installed / "train-v1"
            assert (where / "run.py").read_bytes() == script and (where / "data" / "x.bin").stat().st_size == 1000
            assert os.stat(where / "tool.sh").st_mode & 0o7777 == 0o755  # no set-uid from a bundle
            report = await site.command("bundle_run", bundle="train-v1")
            assert report.stage == "completed" and report.data["job"] == "from-bundle", report
            await _until(lambda: (where / "ran").exists(), 30, "the bundle's job to run")

            refused = {
                "tampered": await uplink("t.tar", good, tamper=True),
                "unsigned": await uplink("u.tar", good, unsigned=True),
                "unknown_key": await uplink("k.tar", good, other_key=True),
                "too_big": await uplink("big.tar", _tar([("a.bin", os.urandom(2 << 20), "file")])),
                "dotdot": await uplink("dd.tar", _tar([("ok.txt", b"1", "file"), ("../escape.txt", b"x", "file")])),
                "absolute": await uplink("abs.tar", _tar([("/tmp/abs.txt", b"x", "file")])),
                "symlink": await uplink("sym.tar", _tar([("ok.txt", b"1", "file"), ("link", None, "symlink")])),
                "fifo": await uplink("fifo.tar", _tar([("pipe", None, "fifo")])),
                "again": await uplink("train-v1.tar", good),
            }
            reasons = {k: (v["state"], v["reason"]) for k, v in refused.items()}
            assert reasons == {
                "tampered": ("failed", "hash_mismatch"), "unsigned": ("refused", "unsigned"),
                "unknown_key": ("refused", "unknown_key"), "too_big": ("refused", "too_big"),
                "dotdot": ("refused", "unsafe_path"), "absolute": ("refused", "unsafe_path"),
                "symlink": ("refused", "unsafe_member"), "fifo": ("refused", "unsafe_member"),
                "again": ("refused", "exists"),
            }, reasons
            # nothing of them was unpacked, nothing escaped, nothing half-written is left
            assert sorted(p.name for p in installed.iterdir()) == ["train-v1"]
            assert not (site.data_dir / "escape.txt").exists() and not (installed / "escape.txt").exists()
            assert not Path("/tmp/abs.txt").exists() or Path("/tmp/abs.txt").stat().st_mtime < time.time() - 300
            assert not any((site.data_dir / "files" / "in").iterdir())
            await _until(lambda: len(col.events("bundle_refused")) >= 7, 10, "the node's reports")
            kinds = {e.data.get("reason") for e in col.events("bundle_refused")}
            assert {"unsigned", "unknown_key", "too_big", "unsafe_path", "unsafe_member", "exists"} <= kinds
        finally:
            site.bench.stop()


async def _cli(*argv: str, cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ground.cli", *argv, cwd=cwd,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


@pytest.mark.timeout(180)
async def test_the_ground_command_line_gets_and_puts_files(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """`umbra-ground files keygen | put | get | list`, with no file service running (the command
    runs it for its transfer) and with one running (the command hands it the work)."""
    code, out = await _cli("files", "keygen", str(tmp_path / "sign.key"), cwd=tmp_path)
    assert code == 0, out
    public = next(line.split()[-1] for line in out.splitlines() if line.startswith("public key:"))
    site = _site(tmp_path, mosquitto, "files-cli", files={"bundle_keys": [public]})
    assert oct((tmp_path / "sign.key").stat().st_mode & 0o777) == "0o600"
    store = CheckpointStore(site.data_dir / "checkpoints")
    info = store.write("sim", os.urandom(5 << 20), progress=3.0)
    store.close()
    mq = ("--mqtt", f"{mosquitto.host}:{mosquitto.port}", "--key-file", str(site.key_file),
          "--files-dir", str(tmp_path / "gf"))
    (tmp_path / "b.tar").write_bytes(_tar([("readme.txt", b"hello", "file")]))
    try:
        await site.start()
        code, out = await _cli("files", "get", site.node_id, "--job", "sim", *mq, cwd=tmp_path)
        assert code == 0, out
        assert "completed file_downlink" in out and out.strip().splitlines()[-1].startswith("done:"), out
        stored = tmp_path / "gf" / site.node_id / "checkpoint" / f"sim-ckpt-{info.seq:010d}.data"
        assert file_digest(stored, info.algorithm) == info.digest
        code, out = await _cli("files", "put", site.node_id, str(tmp_path / "b.tar"), "--sign-key",
                               str(tmp_path / "sign.key"), *mq, cwd=tmp_path)
        assert code == 0, out
        assert (site.data_dir / "bundles" / "b" / "readme.txt").read_bytes() == b"hello"
        # with a service running on the directory, the command hands it the work
        keys = {site.node_id: site.key}
        async with FileGround(tmp_path / "gf", host=mosquitto.host, port=mosquitto.port, keys=keys) as files:
            await asyncio.wait_for(files.connected.wait(), 10)
            (tmp_path / "c.tar").write_bytes(_tar([("x.txt", b"x", "file")]))
            code, out = await _cli("files", "put", site.node_id, str(tmp_path / "c.tar"), "--sign-key",
                                   str(tmp_path / "sign.key"), *mq, cwd=tmp_path)
            assert code == 0, out
            assert (site.data_dir / "bundles" / "c" / "x.txt").exists()
            # a bundle that would be refused is refused before it is sent
            (tmp_path / "bad.tar").write_bytes(_tar([("../x", b"x", "file")]))
            code, out = await _cli("files", "put", site.node_id, str(tmp_path / "bad.tar"), "--sign-key",
                                   str(tmp_path / "sign.key"), *mq, cwd=tmp_path)
            assert code == 2 and "unsafe_path" not in out and "leads out of the bundle" in out, out
        code, out = await _cli("files", "list", "--files-dir", str(tmp_path / "gf"), cwd=tmp_path)
        assert code == 0 and out.count("100 %  done") == 3, out
        code, out = await _cli("files", "get", site.node_id, "--job", "nope", *mq, cwd=tmp_path)
        assert code == 1 and "NOT_FOUND" in out, out
    finally:
        site.bench.stop()


@pytest.mark.timeout(120)
async def test_the_console_shows_transfers_and_serves_what_arrived(tmp_path: Path, mosquitto: Mosquitto) -> None:
    import aiohttp

    from ground.web.app import Console, ConsoleConfig

    site = _site(tmp_path, mosquitto, "files-web")
    results = site.data_dir / "results" / "j"
    results.mkdir(parents=True)
    payload = os.urandom(300_000)
    (results / "weights.bin").write_bytes(payload)
    config = ConsoleConfig(mqtt_host=mosquitto.host, mqtt_port=mosquitto.port, http_port=0,
                           archive=str(tmp_path / "archive.sqlite"), key_file=str(site.key_file))
    async with Console(config) as console:
        assert console.files is not None and console.files_dir == tmp_path / "ground-files"
        await asyncio.wait_for(console.files.connected.wait(), 10)
        try:
            await site.start()
            report = await site.command("file_downlink", job="j", path="weights.bin")
            xfer = report.data["xfer"]
            async with aiohttp.ClientSession(console.url, cookie_jar=aiohttp.CookieJar(unsafe=True),
                                             headers={"Origin": console.url}) as http:
                async with http.post("/login", data={"user": "viewer", "password": "viewer"}) as r:
                    assert r.status == 200
                deadline = time.monotonic() + 30
                while True:
                    async with http.get(f"/api/node/{site.node_id}/files") as r:
                        body = await r.json()
                    row = next((t for t in body["transfers"] if t["xfer"] == xfer), None)
                    if row is not None and row["state"] == "done":
                        break
                    assert time.monotonic() < deadline, body
                    await asyncio.sleep(0.2)
                assert body["service"] and row["fraction"] == 1.0 and "final_path" not in row  # no paths shown
                async with http.get(row["download"]) as r:
                    assert r.status == 200 and await r.read() == payload
                async with http.get("/api/files/d-nope/data") as r:
                    assert r.status == 404
        finally:
            site.bench.stop()
