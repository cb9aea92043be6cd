"""Ground's file service: downlinks received into the archive, bundles uplinked (ICD §5.9).

``async with FileGround(files_dir, …) as files:`` owns ``files_dir`` (an flock: one
service per directory) and one MQTT connection on which it takes every node's ``file/tm``
and answers on ``file/tc`` in envelopes sealed with that node's telecommand key.  What it
keeps, under ``files_dir``::

    transfers.sqlite                  every transfer, active or ended (node/files/store.py)
    .part/<xfer>                      a downlink on its way
    .out/<xfer>                       a bundle being uplinked (a copy: the original may change)
    <node>/<kind>/<name>              a complete downlink (kind: checkpoint, result)
    <node>/<kind>/<name>.manifest.json   its meta, digest, times and transfer figures

A complete file is moved into place only after its hash matched; a name already taken gets
the transfer id appended.  The command line (``umbra-ground files``) queues uplinks through
the database's ``requests`` table when the service runs elsewhere (``serve``), and runs the
service itself for the length of one transfer when nobody does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import ssl
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt

from node.bus.client import no_delay
from node.bus.payloads import Leaf, parse_topic, topic, topic_filter
from node.errors import ConfigError, RemoteProtocolError
from node.files import bundle as bundles
from node.files.endpoint import Admit, Endpoint, file_digest
from node.files.pdu import DOMAIN, AnyPdu, Fin, FinStatus, Meta, decode, seal
from node.files.pump import Pump
from node.files.service import new_xfer
from node.files.store import TransferDb, TransferRow

log = logging.getLogger("umbra.ground.files")

DEFAULT_CHUNK = 128 << 10
#: Where ground keeps files unless told otherwise (``--files-dir``, ``$UMBRA_FILES_DIR``).
DEFAULT_FILES_DIR = Path(os.environ.get("UMBRA_FILES_DIR", "./var/ground-files"))
BACKOFF_S = (0.2, 10.0)
#: Unacknowledged publishes at a time (answers and uplink chunks, all nodes together).
MAX_INFLIGHT = 16

_REQUESTS = """
CREATE TABLE IF NOT EXISTS requests (
    xfer TEXT PRIMARY KEY,
    meta BLOB NOT NULL,
    path TEXT NOT NULL,
    made REAL NOT NULL,
    taken REAL
);
"""


class FilesBusy(ConfigError):
    """Another process runs the file service on this directory."""


def _db_requests(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_REQUESTS)
    return db


def service_running(files_dir: Path) -> bool:
    """Some process holds ``files_dir``'s lock (runs the file service there)."""
    lock = files_dir / ".lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def prepare_bundle(files_dir: Path, *, node_id: str, source: Path, private_key: bytes, priority: int = 5,
                   chunk: int = DEFAULT_CHUNK, name: str | None = None) -> tuple[Meta, Path]:
    """Copy ``source`` into the outgoing spool, hash and sign it: the uplink's meta and copy."""
    name = name or source.name
    if not bundles.NAME_OK.fullmatch(bundles.stem(name)):
        raise ConfigError(f"bundle name {name!r}: letters, digits, '.', '-', '_' (then .tar, .tar.gz, …)")
    out = files_dir / ".out"
    out.mkdir(parents=True, exist_ok=True)
    xfer = new_xfer("u")
    copy = out / xfer
    shutil.copyfile(source, copy)
    size = copy.stat().st_size
    digest = file_digest(copy, "blake3")
    signature = bundles.sign(private_key, name, size, "blake3", digest)
    meta = Meta(node_id=node_id, xfer=xfer, direction="up", name=name, size=size, chunk=chunk, hash="blake3",
                digest=digest, kind="bundle", priority=priority, info={"bundle": bundles.stem(name)},
                signature=signature, key_id=bundles.key_id(bundles.public_key(private_key)))
    return meta, copy


def queue_request(files_dir: Path, meta: Meta, path: Path) -> None:
    """Hand an uplink to the file service running on ``files_dir`` (it looks every second)."""
    db = _db_requests(files_dir / "transfers.sqlite")
    try:
        db.execute("INSERT INTO requests (xfer, meta, path, made) VALUES (?, ?, ?, ?)",
                   (meta.xfer, meta.to_wire(), str(path), time.time()))
    finally:
        db.close()


def read_private_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"bundle signing key {path}: {exc}") from None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"bundle signing key {path}: expected 64 hex digits (umbra-ground files keygen)")
    return raw


class FileGround:
    def __init__(self, files_dir: Path | str, *, host: str, port: int, keys: dict[str, bytes],
                 username: str | None = None, password: str | None = None,
                 tls_context: ssl.SSLContext | None = None, window: int | None = None,
                 probe_s: float | None = None) -> None:
        self.files_dir = Path(files_dir)
        self.host, self.port = host, port
        self.keys = keys
        self._username, self._password, self._tls = username, password, tls_context
        self._lock_fd = -1
        self.db: TransferDb | None = None
        self._requests: sqlite3.Connection | None = None
        self.endpoint: Endpoint | None = None
        self._window = window
        self._probe_s = probe_s
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pump: Pump | None = None
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.refused = 0  # messages that were not file PDUs of their topic's node
        self.unkeyed = 0  # answers we could not send: no key for the node

    # -- life -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.files_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.files_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FilesBusy(f"the file service already runs on {self.files_dir}") from None
        self._lock_fd = fd
        self.db = TransferDb(self.files_dir / "transfers.sqlite")
        self._requests = _db_requests(self.files_dir / "transfers.sqlite")
        kw: dict[str, Any] = {}
        if self._window is not None:
            kw["window"] = self._window
        if self._probe_s is not None:
            kw["probe_s"] = self._probe_s
        self.endpoint = Endpoint(self.db, admit=self._admit, finish=self._finish, on_end=self._ended, inline=False,
                                 **kw)
        self.endpoint.load()
        self.pump = Pump(self.endpoint, max_inflight=MAX_INFLIGHT)
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._tasks = [self._tg.create_task(self._run(), name="umbra.ground.files"),
                       self._tg.create_task(self.pump.settle_forever(), name="umbra.ground.files.settle"),
                       self._tg.create_task(self._requests_forever(), name="umbra.ground.files.requests")]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tg is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._tg.__aexit__(None, None, None)
        if self.endpoint is not None:
            self.endpoint.close()
        if self._requests is not None:
            self._requests.close()
        if self.db is not None:
            self.db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- what operators ask ----------------------------------------------------------------

    def uplink(self, meta: Meta, path: Path) -> None:
        """Send a prepared bundle (``prepare_bundle``) now."""
        assert self.endpoint is not None
        if meta.node_id not in self.keys:
            raise ConfigError(f"no telecommand key for {meta.node_id}: its file service cannot be reached")
        self.endpoint.send(meta, path, info={"bundle": meta.info.get("bundle", "")})
        assert self.pump is not None
        self.pump.wake()

    def cancel(self, xfer: str) -> bool:
        assert self.endpoint is not None
        done = self.endpoint.cancel(xfer, "cancelled by an operator")
        assert self.pump is not None
        self.pump.wake()
        return done

    def transfers(self, limit: int = 200, node_id: str | None = None) -> list[dict[str, Any]]:
        assert self.db is not None
        return [r.to_dict() for r in self.db.recent(limit, node_id)]

    async def _requests_forever(self) -> None:
        """Uplinks queued by ``umbra-ground files put`` in another process, every second."""
        while True:
            self._take_requests()
            await asyncio.sleep(1.0)

    def _take_requests(self) -> None:
        assert self._requests is not None
        rows = self._requests.execute("SELECT xfer, meta, path FROM requests WHERE taken IS NULL").fetchall()
        for xfer, wire, path in rows:
            self._requests.execute("UPDATE requests SET taken = ? WHERE xfer = ?", (time.time(), xfer))
            try:
                meta = decode(bytes(wire))
                assert isinstance(meta, Meta)
                self.uplink(meta, Path(path))
            except (RemoteProtocolError, AssertionError, ConfigError, OSError) as exc:
                log.error("uplink request %s dropped: %s", xfer, exc)

    # -- receiving downlinks --------------------------------------------------------------

    def _admit(self, meta: Meta) -> Admit:
        if meta.direction != "down":
            return Admit(refuse=Fin(node_id=meta.node_id, xfer=meta.xfer, status=FinStatus.REFUSED,
                                    reason="wrong_direction", text="ground takes downlinks only"))
        free = shutil.disk_usage(self.files_dir).free
        if meta.size > free:
            return Admit(refuse=Fin(node_id=meta.node_id, xfer=meta.xfer, status=FinStatus.REFUSED,
                                    reason="no_space", text=f"{meta.size} bytes; ground has {free} free"))
        log.info("downlink %s from %s: %s (%d bytes)", meta.xfer, meta.node_id, meta.name, meta.size)
        return Admit(path=self.files_dir / ".part" / meta.xfer)

    def _finish(self, row: TransferRow, path: Path) -> Fin:
        folder = self.files_dir / row.node_id / row.kind
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / row.name
        if target.exists():
            target = folder / f"{row.name}.{row.xfer}"
        manifest = {
            "format": 1, "node_id": row.node_id, "xfer": row.xfer, "name": row.name, "kind": row.kind,
            "size": row.size, "hash": row.meta.hash, "digest": row.meta.digest, "info": row.meta.info,
            "received": time.time(), "started": row.created, "duplicate_bytes": row.bytes_duplicate,
            "corrupt_chunks": row.corrupt_chunks,
        }
        tmp = target.with_name(f".{target.name}.manifest.tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        os.replace(path, target)
        os.replace(tmp, target.with_name(target.name + ".manifest.json"))
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        assert self.db is not None
        self.db.progress(row.xfer, final_path=str(target))
        return Fin(node_id=row.node_id, xfer=row.xfer, status=FinStatus.OK, info={"stored": target.name})

    def _ended(self, row: TransferRow) -> None:
        what = "downlink" if row.direction == "down" else "uplink"
        level = logging.INFO if row.state == "done" else logging.WARNING
        log.log(level, "%s %s of %s from %s: %s %s %s", what, row.xfer, row.name, row.node_id, row.state, row.reason,
                row.text)
        if row.role == "send":
            Path(row.path).unlink(missing_ok=True)
        elif row.state != "done" and row.path:
            Path(row.path).unlink(missing_ok=True)

    # -- on the wire ------------------------------------------------------------------------

    def _on_message(self, name: str, payload: bytes) -> None:
        assert self.pump is not None
        try:
            node_id, leaf = parse_topic(name)
            if leaf != Leaf.FILE_TM:
                raise RemoteProtocolError(f"not a file topic: {name}")
            pdu = decode(payload)
            if pdu.node_id != node_id:
                raise RemoteProtocolError(f"PDU on {name} claims node {pdu.node_id!r}", reason="node_mismatch")
            if isinstance(pdu, Meta) and pdu.direction != "down":
                raise RemoteProtocolError("a node sends downlinks only", reason="wrong_direction")
        except RemoteProtocolError as exc:
            self.refused += 1
            if self.refused & (self.refused - 1) == 0:
                log.warning("file message refused: %s (%d so far)", exc, self.refused)
            return
        self.pump.handle(pdu)

    async def _run(self) -> None:
        delay = BACKOFF_S[0]
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=f"umbra-ground-files-{uuid.uuid4().hex[:8]}",
                    username=self._username, password=self._password, tls_context=self._tls, timeout=10.0,
                    max_inflight_messages=64,
                ) as client:
                    no_delay(client)
                    await client.subscribe(topic_filter(Leaf.FILE_TM), qos=1)
                    self.connected.set()
                    delay = BACKOFF_S[0]
                    assert self.endpoint is not None
                    self.endpoint.reconnected()
                    both = {asyncio.create_task(self._receive(client)), asyncio.create_task(self._send(client))}
                    try:
                        done, _ = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for task in both:
                            task.cancel()
                        await asyncio.gather(*both, return_exceptions=True)
                    for task in done:
                        task.result()  # the MqttError that ended the connection
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                log.warning("file service: broker %s:%d: %s; retrying in %.1f s", self.host, self.port, exc, delay)
                await asyncio.sleep(delay)
                delay = min(BACKOFF_S[1], delay * 2)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload: Any = message.payload
            self._on_message(message.topic.value, payload if isinstance(payload, bytes) else b"")

    async def _send(self, client: aiomqtt.Client) -> None:
        assert self.pump is not None
        await self.pump.run(self._seal, lambda pdu, body: client.publish(topic(pdu.node_id, Leaf.FILE_TC), body,
                                                                         qos=1))

    def _seal(self, pdu: AnyPdu) -> bytes | None:
        key = self.keys.get(pdu.node_id)
        if key is None:
            self.unkeyed += 1
            if self.unkeyed & (self.unkeyed - 1) == 0:
                log.warning("no telecommand key for %s: cannot answer its file transfers", pdu.node_id)
            return None
        return seal(key, pdu)


__all__ = ["DEFAULT_FILES_DIR", "DOMAIN", "FileGround", "FilesBusy", "prepare_bundle", "queue_request", "read_private_key",
           "service_running"]
