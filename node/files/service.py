"""The node's file service: downlinks of checkpoints and results, uplinks of job bundles.

``FileService`` lives beside the bus (node/bus/client.py): while the bus is connected it
runs :meth:`FileService.run` on the same MQTT client — one connection per node, as the
production broker allows (ICD §5.8) — publishing on ``file/tm`` and taking the envelopes
ground sends on ``file/tc`` (:meth:`handle`).  Downlinks go out at no more than
``rate_bytes_s`` and ``max_inflight`` unacknowledged messages, so housekeeping, which shares
the connection, is never stuck behind a file.

Onboard storage for outgoing files is bounded: a downlink is a hard link to the file in
``<data_dir>/files/out`` (a copy where linking is not possible), so the checkpoint store
may prune its own name meanwhile; the sizes of the files waiting there never exceed
``spool_bytes`` — a request that would is refused.

Ground's telecommands (node/bus/processor.py) reach it as ``file_downlink``, ``file_cancel``,
``file_list`` and ``bundle_run``; it reports what happens as events (``file_*``,
``bundle_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

from node.bus.payloads import Severity
from node.errors import CommandRejected, Reason, RemoteProtocolError
from node.files import bundle as bundles
from node.files.config import FilesConfig
from node.files.endpoint import Admit, Endpoint, file_digest
from node.files.pdu import Fin, FinStatus, Meta, open_envelope
from node.files.pump import Pump
from node.files.store import TransferDb, TransferRow
from node.jobs.store import CheckpointStore, check_job_id

log = logging.getLogger("umbra.node.files")

EventSink = Callable[[str, Severity, str, dict[str, Any]], None]
#: A job started from an installed bundle: the runner's hook (node/cli.py).
JobStarter = Callable[[bundles.BundleJob, Path], None]
Publish = Callable[[bytes], Awaitable[None]]


def new_xfer(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


class FileService:
    def __init__(self, *, node_id: str, data_dir: Path, config: FilesConfig, key: bytes | None,
                 store: CheckpointStore | None = None, on_event: EventSink | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self.config = config
        self._key = key
        self._store = store
        self.on_event = on_event
        self.start_job: JobStarter | None = None
        root = data_dir / "files"
        self.out_dir = root / "out"
        self.in_dir = root / "in"
        for d in (self.out_dir, self.in_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.results_dir = config.results(data_dir)
        self.bundles_dir = config.bundles(data_dir)
        self._trusted = config.trusted_keys()
        self.db = TransferDb(root / "transfers.sqlite")
        self.endpoint = Endpoint(self.db, admit=self._admit, finish=self._finish, on_end=self._ended,
                                 window=config.window_bytes, probe_s=config.probe_s, clock=clock, inline=False)
        self.endpoint.load()
        self._clean_spool()
        self.pump = Pump(self.endpoint, max_inflight=config.max_inflight, rate_bytes_s=config.rate_bytes_s)
        self._thread = threading.get_ident()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._preparing: dict[str, int] = {}  # xfer → bytes reserved while hashing
        self._tasks: set[asyncio.Task[None]] = set()
        self.rejected = 0  # envelopes refused (bad tag, malformed)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.endpoint.close()
        self.db.close()

    def _clean_spool(self) -> None:
        """Spool and partial files no active transfer owns: left by a crash, removed."""
        owned = {Path(r.path).name for r in self.db.active()}
        for d in (self.out_dir, self.in_dir):
            for p in d.iterdir():
                if p.name not in owned and p.is_file():
                    p.unlink(missing_ok=True)

    def _event(self, kind: str, severity: Severity, text: str, **data: Any) -> None:
        log.log(logging.WARNING if severity >= Severity.WARNING else logging.INFO, "%s", text)
        if self.on_event is None:
            return
        if threading.get_ident() != self._thread and self._loop is not None:
            # finishing a bundle runs in a worker thread; the outbox is the loop's
            self._loop.call_soon_threadsafe(self.on_event, kind, severity, text, data)
        else:
            self.on_event(kind, severity, text, data)

    # -- what ground asks (telecommands) ------------------------------------------------------

    def spool_used(self) -> int:
        return self.db.active_bytes("send") + sum(self._preparing.values())

    def _reserve(self, size: int, what: str) -> None:
        used = self.spool_used()
        if used + size > self.config.spool_bytes:
            raise CommandRejected(f"{what}: {size} bytes do not fit the onboard file spool "
                                  f"({used} of {self.config.spool_bytes} bytes taken)", code=Reason.NOT_ALLOWED)

    def downlink_checkpoint(self, job: str, seq: int, priority: int) -> dict[str, Any]:
        """Queue a checkpoint (``seq`` 0: the newest) for downlink."""
        if self._store is None:
            raise CommandRejected("this node keeps no checkpoint store", code=Reason.UNSUPPORTED)
        try:
            check_job_id(job)
        except Exception as exc:
            raise CommandRejected(str(exc), code=Reason.BAD_ARGUMENT) from None
        found = self._store.checkpoints(job)
        info = next((c for c in reversed(found) if seq in (0, c.seq)), None)
        if info is None:
            raise CommandRejected(f"job {job!r} has no checkpoint {seq or '(none at all)'}", code=Reason.NOT_FOUND)
        if info.algorithm not in ("blake3", "sha256"):
            raise CommandRejected(f"checkpoint hash {info.algorithm} cannot be sent", code=Reason.UNSUPPORTED)
        self._reserve(info.size, f"checkpoint {job}/{info.seq}")
        xfer = new_xfer("d")
        spool = self.out_dir / xfer
        _link(info.data_path, spool)
        meta = Meta(node_id=self.node_id, xfer=xfer, direction="down", name=f"{job}-ckpt-{info.seq:010d}.data",
                    size=info.size, chunk=self.config.chunk_bytes, hash=info.algorithm, digest=info.digest,
                    kind="checkpoint", priority=priority,
                    info={"job": job, "seq": info.seq, "progress": info.progress, "created": info.created,
                          "manifest": {k: v for k, v in info.to_wire().items() if k != "meta"},
                          "meta": dict(info.meta)})
        # The manifest's digest is checked as the file is read for sending (check_source): a
        # checkpoint damaged on this disk fails as source_corrupt instead of going down.
        self.endpoint.send(meta, spool, check_source=True)
        self._event("file_queued", Severity.INFO, f"downlink {xfer} of {meta.name} queued ({info.size} bytes, "
                    f"priority {priority})", xfer=xfer, name=meta.name, size=info.size, file_kind="checkpoint")
        self.pump.wake()
        return {"xfer": xfer, "name": meta.name, "size": info.size, "seq": info.seq}

    def downlink_result(self, job: str, path: str, priority: int) -> dict[str, Any]:
        """Queue a job's result file (``path`` under ``<results_dir>/<job>/``) for downlink."""
        try:
            check_job_id(job)
        except Exception as exc:
            raise CommandRejected(str(exc), code=Reason.BAD_ARGUMENT) from None
        rel = PurePosixPath(path)
        if not path or rel.is_absolute() or ".." in rel.parts:
            raise CommandRejected(f"result path {path!r} must be relative, without '..'", code=Reason.BAD_ARGUMENT)
        base = (self.results_dir / job).resolve()
        source = (base / rel).resolve()
        if not source.is_relative_to(base) or not source.is_file():
            raise CommandRejected(f"job {job!r} has no result file {path!r}", code=Reason.NOT_FOUND)
        size = source.stat().st_size
        self._reserve(size, f"result {job}/{path}")
        xfer = new_xfer("d")
        spool = self.out_dir / xfer
        _link(source, spool)
        name = "-".join(rel.parts)
        self._preparing[xfer] = size
        task = asyncio.get_running_loop().create_task(self._hash_and_send(xfer, spool, name, job, path, priority))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"xfer": xfer, "name": name, "size": size}

    async def _hash_and_send(self, xfer: str, spool: Path, name: str, job: str, path: str, priority: int) -> None:
        try:
            digest, size = await asyncio.to_thread(lambda: (file_digest(spool, "blake3"), os.path.getsize(spool)))
            meta = Meta(node_id=self.node_id, xfer=xfer, direction="down", name=name, size=size,
                        chunk=self.config.chunk_bytes, hash="blake3", digest=digest, kind="result",
                        priority=priority, info={"job": job, "path": path})
            self.endpoint.send(meta, spool)
            self._event("file_queued", Severity.INFO, f"downlink {xfer} of {job}/{path} queued ({meta.size} bytes)",
                        xfer=xfer, name=name, size=meta.size, file_kind="result")
            self.pump.wake()
        except OSError as exc:
            _remove(spool)
            self._event("file_failed", Severity.WARNING, f"downlink {xfer} of {job}/{path}: {exc}", xfer=xfer)
        finally:
            self._preparing.pop(xfer, None)

    def cancel(self, xfer: str) -> None:
        if not self.endpoint.cancel(xfer, "cancelled by ground"):
            raise CommandRejected(f"no active transfer {xfer!r}", code=Reason.NOT_FOUND)
        self.pump.wake()

    def listing(self) -> list[dict[str, Any]]:
        """Active transfers and the last few that ended (for a ``file_list`` report)."""
        rows = self.db.recent(limit=16)
        keep = ("xfer", "direction", "kind", "name", "size", "state", "done_bytes", "reason", "priority")
        return [{k: r.to_dict()[k] for k in keep} for r in rows]

    def run_bundle(self, name: str) -> dict[str, Any]:
        """Start the job an installed bundle names (its ``umbra-job.toml``)."""
        if not bundles.NAME_OK.fullmatch(name):
            raise CommandRejected(f"bundle name {name!r}", code=Reason.BAD_ARGUMENT)
        where = self.bundles_dir / name
        if not where.is_dir():
            raise CommandRejected(f"no installed bundle {name!r}", code=Reason.NOT_FOUND)
        try:
            job = bundles.job_spec(where)
        except bundles.BundleRefused as exc:
            raise CommandRejected(f"bundle {name}: {exc}", code=Reason.BAD_ARGUMENT) from None
        if self.start_job is None:
            raise CommandRejected("this node runs no process jobs", code=Reason.UNSUPPORTED)
        try:
            self.start_job(job, where)
        except (KeyError, ValueError) as exc:
            raise CommandRejected(f"bundle {name}: {exc}", code=Reason.NOT_ALLOWED) from None
        self._event("bundle_job", Severity.INFO, f"job {job.id} started from bundle {name}", job=job.id, bundle=name)
        return {"job": job.id, "command": list(job.command)}

    # -- what ground sends ------------------------------------------------------------------

    def handle(self, data: bytes) -> None:
        """An envelope from ``file/tc`` (never raises: bad ones are counted and logged)."""
        try:
            pdu = open_envelope(self._key, self.node_id, data)
        except RemoteProtocolError as exc:
            self.rejected += 1
            if self.rejected & (self.rejected - 1) == 0:  # 1st, 2nd, 4th, …: not a flood
                log.warning("file envelope refused (%s; %d so far)", exc, self.rejected)
            return
        if isinstance(pdu, Meta) and pdu.direction != "up":
            self.rejected += 1
            return
        self.pump.handle(pdu)

    def _admit(self, meta: Meta) -> Admit:
        """A new uplink: only signed bundles this node trusts, no bigger than allowed."""
        def refuse(reason: str, text: str) -> Admit:
            self._event("bundle_refused", Severity.WARNING, f"uplink {meta.xfer} ({meta.name}) refused: {text}",
                        xfer=meta.xfer, name=meta.name, reason=reason)
            return Admit(refuse=Fin(node_id=self.node_id, xfer=meta.xfer, status=FinStatus.REFUSED, reason=reason,
                                    text=text))

        if meta.kind != "bundle":
            return refuse("not_a_bundle", f"only bundles are uplinked, not {meta.kind}")
        if meta.size > self.config.max_bundle_bytes:
            return refuse("too_big", f"{meta.size} bytes; this node takes bundles of at most "
                          f"{self.config.max_bundle_bytes}")
        if not bundles.NAME_OK.fullmatch(bundles.stem(meta.name)):
            return refuse("bad_name", f"bundle name {meta.name!r}")
        try:
            bundles.verify(self._trusted, meta.key_id, meta.signature, meta.name, meta.size, meta.hash, meta.digest)
        except bundles.BundleRefused as exc:
            return refuse(exc.reason, str(exc))
        if (self.bundles_dir / bundles.stem(meta.name)).exists():
            return refuse("exists", f"bundle {bundles.stem(meta.name)} is installed already")
        self._event("bundle_receiving", Severity.INFO, f"uplink {meta.xfer}: bundle {meta.name} "
                    f"({meta.size} bytes, key {meta.key_id})", xfer=meta.xfer, name=meta.name, size=meta.size)
        return Admit(path=self.in_dir / meta.xfer)

    def _finish(self, row: TransferRow, path: Path) -> Fin:
        """Every byte of a bundle is here and matches its signed hash: install it."""
        name = bundles.stem(row.name)
        try:
            files = bundles.unpack(path, self.bundles_dir / name, max_unpacked=self.config.max_unpacked_bytes)
        except bundles.BundleRefused as exc:
            self._event("bundle_refused", Severity.WARNING, f"bundle {row.name} refused: {exc}",
                        xfer=row.xfer, name=row.name, reason=exc.reason)
            return Fin(node_id=self.node_id, xfer=row.xfer, status=FinStatus.REFUSED, reason=exc.reason,
                       text=str(exc))
        finally:
            path.unlink(missing_ok=True)
        has_job = (self.bundles_dir / name / bundles.JOB_FILE).exists()
        self._event("bundle_installed", Severity.INFO, f"bundle {name} installed ({len(files)} files)",
                    xfer=row.xfer, bundle=name, files=len(files))
        return Fin(node_id=self.node_id, xfer=row.xfer, status=FinStatus.OK,
                   info={"bundle": name, "files": len(files), "job": has_job})

    def _ended(self, row: TransferRow) -> None:
        if row.role == "send":
            Path(row.path).unlink(missing_ok=True)  # the spool's link: the space is free again
            if row.state == "done":
                self._event("file_downlinked", Severity.INFO, f"downlink {row.xfer} of {row.name} complete "
                            f"({row.size} bytes, {row.bytes_resent} sent again)", xfer=row.xfer, name=row.name,
                            size=row.size, resent=row.bytes_resent)
            else:
                self._event("file_failed", Severity.WARNING, f"downlink {row.xfer} of {row.name} {row.state}: "
                            f"{row.reason} {row.text}".strip(), xfer=row.xfer, name=row.name, reason=row.reason)
        else:
            if row.path:
                Path(row.path).unlink(missing_ok=True)
            if row.state not in ("done", "refused"):  # refusals were reported when made
                self._event("bundle_failed", Severity.WARNING, f"uplink {row.xfer} of {row.name} {row.state}: "
                            f"{row.reason} {row.text}".strip(), xfer=row.xfer, name=row.name, reason=row.reason)

    # -- on the wire ------------------------------------------------------------------------

    async def run(self, publish: Publish) -> None:
        """Send while connected (cancelled when the connection goes)."""
        self._loop = asyncio.get_running_loop()
        self.endpoint.reconnected()
        settler = asyncio.create_task(self.pump.settle_forever(), name="umbra.node.files.settle")
        try:
            await self.pump.run(lambda pdu: pdu.to_wire(), lambda _pdu, body: publish(body))
        finally:
            settler.cancel()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _link(source: Path, spool: Path) -> None:
    """The spool's own name for ``source``: a hard link, or a copy across file systems."""
    try:
        os.link(source, spool)
    except FileNotFoundError:
        raise CommandRejected(f"{source.name} went away (pruned?)", code=Reason.NOT_FOUND) from None
    except OSError:
        shutil.copyfile(source, spool)


__all__ = ["FileService", "new_xfer"]
