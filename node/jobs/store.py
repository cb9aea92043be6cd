"""The checkpoint store: atomic, verified, last K kept per job (docs/jobs.md §Store).

Layout under the store's root (one directory per job)::

    <root>/.lock                         flock: one owning process at a time
    <root>/<job_id>/ckpt-0000000042.data      the checkpoint's bytes
    <root>/<job_id>/ckpt-0000000042.json      its manifest: size, hash, progress, meta …
    <root>/<job_id>/ckpt-0000000040.corrupt   the manifest of a checkpoint found corrupt
    <root>/<job_id>/.tmp-*                    writes in flight (removed at startup)

A write goes: temporary file (``O_EXCL``), chunks written while hashed (BLAKE3 by default,
multithreaded; SHA-256 on request, ``HASHES``), fsync,
rename to ``.data``, fsync of the directory; then the manifest the same way (temporary file,
fsync, rename, fsync of the directory).  **The manifest is the commit**: a checkpoint exists
once its manifest is in place, and only then are checkpoints older than the last ``keep``
deleted (manifest first, then data).  A crash at any moment leaves either the old set of
checkpoints or the old set plus the new one — never a torn one:

- killed while writing data: a ``.tmp-*`` file, removed at the next startup;
- killed between the data rename and the manifest: a ``.data`` without a manifest, ignored
  and removed at the next startup;
- a manifest is only renamed into place after its data was fsynced;
- killed between a commit and the pruning: K + 1 checkpoints, pruned at the next startup.

Restoring (:meth:`CheckpointStore.restore`) hashes the data again; a checkpoint whose data is
missing, short, or hashes differently, or whose manifest is damaged (each manifest carries a
SHA-256 of its own fields), is reported through ``on_corrupt``, set aside (its data deleted,
its manifest renamed ``.corrupt`` so its sequence number is never reused) and the previous
one is tried.  Each manifest names its algorithm (format 2: ``hash`` and ``digest``); a
format-1 manifest (``sha256``) still verifies.

All methods are blocking and thread-safe (one lock per job); :class:`AsyncCheckpointStore`
runs them in threads with at most N checkpoints writing at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, Self

import blake3

from node.jobs.errors import CheckpointCorrupt, CheckpointError, StoreLocked

#: Manifest format written: 2 names its hash algorithm; 1 (SHA-256 implied) is still read.
FORMAT = 2
FORMATS_READ = (1, 2)


def _blake3() -> Any:
    # Multithreaded for large updates (it releases the GIL): hashing keeps up with the disk.
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


#: Data hash algorithms: name → a new hasher (``update``, ``hexdigest``).
HASHES: dict[str, Callable[[], Any]] = {"blake3": _blake3, "sha256": hashlib.sha256}
DEFAULT_HASH = "blake3"


def new_hasher(algorithm: str, *, small_updates: bool = False) -> Any:
    """A hasher for ``algorithm``.  ``small_updates``: fed a chunk of a file at a time (the
    file service's 128 KiB): BLAKE3 on one thread, where its thread pool costs more than it
    gains."""
    if small_updates and algorithm == "blake3":
        return blake3.blake3()
    try:
        return HASHES[algorithm]()
    except KeyError:
        raise CheckpointError(f"unknown checkpoint hash {algorithm!r}; known: {', '.join(HASHES)}") from None


DEFAULT_CHUNK = 8 << 20
#: Job ids double as directory names: letters, digits, '-', '_', '.'; not starting with '.'.
JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FILE_RE = re.compile(r"ckpt-(\d{10})\.(data|json|corrupt)")
_TMP_PREFIX = ".tmp-"

log = logging.getLogger("umbra.node.jobs.store")


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


#: What a checkpoint can be written from: bytes, an iterable of byte chunks, or a binary file.
Source = bytes | bytearray | memoryview | Iterable[bytes | bytearray | memoryview] | BinaryIO | _Readable


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise CheckpointError(
            f"job id {job_id!r}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'",
            job_id=str(job_id),
        )
    return job_id


def _data_name(seq: int) -> str:
    return f"ckpt-{seq:010d}.data"


def _manifest_name(seq: int) -> str:
    return f"ckpt-{seq:010d}.json"


def _corrupt_name(seq: int) -> str:
    return f"ckpt-{seq:010d}.corrupt"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(directory: Path, name: str, payload: bytes) -> None:
    """Replace ``directory/name`` with ``payload`` all or nothing: temp file, fsync, rename,
    fsync of the directory.  For small files (manifests, the parameter table)."""
    tmp = directory / f"{_TMP_PREFIX}{secrets.token_hex(6)}-{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / name)
    fsync_dir(directory)


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointInfo:
    """One committed checkpoint, as its manifest describes it (a frozen value)."""

    job_id: str
    seq: int
    size: int
    #: Hex digest of the data, by ``algorithm`` (a key of HASHES).
    digest: str
    algorithm: str = DEFAULT_HASH
    progress: float
    created: float
    #: Seconds the store spent writing it (data, hash, fsyncs, manifest).
    duration_s: float
    meta: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    data_path: Path = Path()

    def to_wire(self) -> dict[str, Any]:
        """Plain values for telemetry or a ground catalogue query."""
        return {
            "job_id": self.job_id,
            "seq": self.seq,
            "size": self.size,
            "hash": self.algorithm,
            "digest": self.digest,
            "progress": self.progress,
            "created": self.created,
            "duration_s": self.duration_s,
            "meta": dict(self.meta),
        }


@dataclass(frozen=True, slots=True)
class JobCheckpoints:
    """The catalogue entry of one job: its committed checkpoints, oldest first."""

    job_id: str
    checkpoints: tuple[CheckpointInfo, ...]

    @property
    def latest(self) -> CheckpointInfo | None:
        return self.checkpoints[-1] if self.checkpoints else None

    def to_wire(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "checkpoints": [c.to_wire() for c in self.checkpoints]}


@dataclass(frozen=True, slots=True)
class CorruptCheckpoint:
    """Reported through ``on_corrupt`` when a checkpoint fails verification."""

    job_id: str
    seq: int
    reason: str  # "hash", "size", "missing", "manifest"
    detail: str


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What startup recovery cleaned up."""

    removed_temp: tuple[Path, ...] = ()
    removed_orphans: tuple[Path, ...] = ()


class CheckpointStore:
    """Checkpoints of every job under one root directory; see the module docstring."""

    def __init__(
        self,
        root: Path | str,
        *,
        keep: int = 3,
        chunk_size: int = DEFAULT_CHUNK,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
        on_corrupt: Callable[[CorruptCheckpoint], None] | None = None,
        logger: logging.Logger | None = None,
        algorithm: str = DEFAULT_HASH,
    ) -> None:
        if keep < 1:
            raise CheckpointError(f"keep = {keep}: at least one checkpoint must be kept")
        new_hasher(algorithm)  # an unknown name fails here, not at the first checkpoint
        self.algorithm = algorithm
        if chunk_size < 4096:
            raise CheckpointError(f"chunk_size = {chunk_size}: use at least 4096 bytes")
        self.root = Path(root)
        self.keep = keep
        self.chunk_size = chunk_size
        self._clock = clock
        self._timer = timer
        self._on_corrupt = on_corrupt
        self._log = logger or log
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._next_seq: dict[str, int] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreLocked(f"checkpoint store {self.root} is in use by another process") from None
            raise
        self.recovery = self._recover()

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recover(self) -> RecoveryReport:
        temp: list[Path] = []
        orphans: list[Path] = []
        for job_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if not JOB_ID_RE.fullmatch(job_dir.name):
                continue
            names = {p.name for p in job_dir.iterdir()}
            changed = False
            for name in sorted(names):
                path = job_dir / name
                if name.startswith(_TMP_PREFIX):
                    path.unlink(missing_ok=True)
                    temp.append(path)
                    changed = True
                    continue
                m = _FILE_RE.fullmatch(name)
                if m and m.group(2) == "data" and _manifest_name(int(m.group(1))) not in names:
                    path.unlink(missing_ok=True)  # renamed but never committed
                    orphans.append(path)
                    changed = True
            if changed:
                fsync_dir(job_dir)
            self._prune(job_dir)  # a crash between a commit and its pruning leaves K + 1
        if temp or orphans:
            self._log.info(
                "checkpoint store %s: removed %d temporary and %d uncommitted files",
                self.root, len(temp), len(orphans),
            )
        return RecoveryReport(tuple(temp), tuple(orphans))

    # -- helpers -------------------------------------------------------------------------

    def _lock(self, job_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(job_id, threading.Lock())

    def job_dir(self, job_id: str) -> Path:
        return self.root / check_job_id(job_id)

    def _seqs(self, job_dir: Path, kinds: tuple[str, ...]) -> list[int]:
        try:
            names = os.listdir(job_dir)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            m = _FILE_RE.fullmatch(name)
            if m and m.group(2) in kinds:
                out.append(int(m.group(1)))
        return sorted(out)

    def _allocate(self, job_id: str, job_dir: Path) -> int:
        seq = self._next_seq.get(job_id)
        if seq is None:
            seen = self._seqs(job_dir, ("data", "json", "corrupt"))
            seq = (seen[-1] + 1) if seen else 1
        self._next_seq[job_id] = seq + 1
        return seq

    # -- writing -------------------------------------------------------------------------

    def write(
        self,
        job_id: str,
        source: Source,
        *,
        progress: float,
        meta: Mapping[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Write one checkpoint of ``job_id`` from ``source`` and commit it.

        ``source`` is bytes, an iterable of byte chunks (not modified after being yielded),
        or a binary file object (read in ``chunk_size`` pieces).  Returns the committed
        checkpoint; raises :class:`CheckpointError` (nothing committed) on failure.
        """
        job_dir = self.job_dir(job_id)
        meta_dict = self._check_meta(job_id, progress, meta)
        with self._lock(job_id):
            started = self._timer()
            job_dir.mkdir(parents=True, exist_ok=True)
            seq = self._allocate(job_id, job_dir)
            size, digest = self._write_data(job_dir, seq, self._chunks(source))
            return self._commit(job_id, job_dir, seq, size, digest, progress, meta_dict, started)

    def _write_data(
        self, job_dir: Path, seq: int, chunks: Iterator[bytes | bytearray | memoryview]
    ) -> tuple[int, str]:
        """Temporary file, hashed chunked writes, fsync, rename, fsync of the directory."""
        tmp = job_dir / f"{_TMP_PREFIX}{seq:010d}-{secrets.token_hex(6)}.data"
        hasher = new_hasher(self.algorithm)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                size = _write_hashed(fd, chunks, hasher)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, job_dir / _data_name(seq))
            fsync_dir(job_dir)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size, hasher.hexdigest()

    def write_bytes(
        self, job_id: str, data: bytes, *, progress: float, meta: Mapping[str, Any] | None = None
    ) -> CheckpointInfo:
        """Convenience for small checkpoints held in memory."""
        return self.write(job_id, data, progress=progress, meta=meta)

    def adopt(
        self,
        job_id: str,
        path: Path | str,
        *,
        progress: float,
        meta: Mapping[str, Any] | None = None,
        expected_digest: str | None = None,
    ) -> CheckpointInfo:
        """Commit a file a job wrote (its staging file) as the next checkpoint of ``job_id``.

        The file is hashed (and fsynced) where it lies, then renamed into the store when it is
        on the same filesystem (no copy), copied otherwise.  The staging file is gone after a
        successful call.  ``expected_digest`` (in the store's algorithm), when the job
        reported one, must match.
        """
        src = Path(path)
        job_dir = self.job_dir(job_id)
        meta_dict = self._check_meta(job_id, progress, meta)
        with self._lock(job_id):
            started = self._timer()
            job_dir.mkdir(parents=True, exist_ok=True)
            seq = self._allocate(job_id, job_dir)
            tmp = job_dir / f"{_TMP_PREFIX}{seq:010d}-{secrets.token_hex(6)}.data"
            try:
                # Take the file away from the job first, so what is hashed is what is kept.
                try:
                    os.rename(src, tmp)
                    fsync_dir(src.parent)
                except FileNotFoundError:
                    raise CheckpointError(
                        f"job {job_id}: staged checkpoint {src} does not exist", job_id=job_id
                    ) from None
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    with open(src, "rb") as f:  # another filesystem: copy
                        size, digest = self._write_data(job_dir, seq, self._chunks(f))
                    src.unlink(missing_ok=True)
                    os.replace(job_dir / _data_name(seq), tmp)
                hasher = new_hasher(self.algorithm)
                size = 0
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    while chunk := os.read(fd, self.chunk_size):
                        hasher.update(chunk)
                        size += len(chunk)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                digest = hasher.hexdigest()
                if expected_digest is not None and expected_digest.lower() != digest:
                    raise CheckpointCorrupt(
                        f"job {job_id}: staged checkpoint {src} hashes {digest} "
                        f"({self.algorithm}), job said {expected_digest}",
                        job_id=job_id,
                    )
                os.replace(tmp, job_dir / _data_name(seq))
                fsync_dir(job_dir)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return self._commit(job_id, job_dir, seq, size, digest, progress, meta_dict, started)

    def _check_meta(self, job_id: str, progress: float, meta: Mapping[str, Any] | None) -> dict[str, Any]:
        check_job_id(job_id)
        if not isinstance(progress, int | float) or progress != progress or progress < 0:
            raise CheckpointError(f"job {job_id}: progress {progress!r} must be a number >= 0", job_id=job_id)
        meta_dict = dict(meta or {})
        try:
            _canonical(meta_dict)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"job {job_id}: meta is not plain JSON values: {exc}", job_id=job_id) from None
        return meta_dict

    def _chunks(self, source: Source) -> Iterator[bytes | bytearray | memoryview]:
        if isinstance(source, bytes | bytearray | memoryview):
            view = memoryview(source).cast("B")
            for start in range(0, len(view), self.chunk_size):
                yield view[start : start + self.chunk_size]
            return
        read = getattr(source, "read", None)
        if read is not None:
            while chunk := read(self.chunk_size):
                yield chunk
            return
        yield from source  # type: ignore[misc]

    def _commit(
        self,
        job_id: str,
        job_dir: Path,
        seq: int,
        size: int,
        digest: str,
        progress: float,
        meta: dict[str, Any],
        started: float,
    ) -> CheckpointInfo:
        created = float(self._clock())
        body: dict[str, Any] = {
            "format": FORMAT,
            "job_id": job_id,
            "seq": seq,
            "data": _data_name(seq),
            "size": size,
            "hash": self.algorithm,
            "digest": digest,
            "progress": float(progress),
            "created": created,
            "meta": meta,
        }
        # duration_s covers the manifest's own fsyncs only approximately (measured just before).
        body["duration_s"] = self._timer() - started
        body["check"] = hashlib.sha256(_canonical(body)).hexdigest()
        write_atomic(job_dir, _manifest_name(seq), _canonical(body) + b"\n")
        # Committed.  Now the older ones beyond `keep` may go.
        self._prune(job_dir)
        return _info_from_manifest(body, job_dir)

    def _prune(self, job_dir: Path) -> None:
        committed = self._seqs(job_dir, ("json",))
        doomed = committed[: -self.keep] if len(committed) > self.keep else []
        oldest_kept = committed[max(0, len(committed) - self.keep)] if committed else 0
        stale_corrupt = [s for s in self._seqs(job_dir, ("corrupt",)) if s < oldest_kept]
        if not doomed and not stale_corrupt:
            return
        for seq in doomed:
            (job_dir / _manifest_name(seq)).unlink(missing_ok=True)  # uncommit first
            (job_dir / _data_name(seq)).unlink(missing_ok=True)
        for seq in stale_corrupt[:-1]:  # keep the newest .corrupt: it holds the seq high-water mark
            (job_dir / _corrupt_name(seq)).unlink(missing_ok=True)
        fsync_dir(job_dir)

    # -- reading -------------------------------------------------------------------------

    def _load_manifest(self, job_dir: Path, seq: int) -> dict[str, Any]:
        """The manifest of ``seq``; CheckpointCorrupt(reason="manifest") when damaged."""
        raw = (job_dir / _manifest_name(seq)).read_bytes()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
            check = body.pop("check")
            if hashlib.sha256(_canonical(body)).hexdigest() != check:
                raise ValueError("self-check does not match")
            if body.get("format") not in FORMATS_READ or body.get("seq") != seq or \
                    body.get("job_id") != job_dir.name:
                raise ValueError("format, seq or job id does not match its file")
            if body["format"] == 1:  # SHA-256 implied
                body["hash"], body["digest"] = "sha256", body.pop("sha256", None)
            if body.get("hash") not in HASHES:
                raise ValueError(f"unknown hash {body.get('hash')!r}")
            for key, kind in (("size", int), ("digest", str), ("progress", float), ("created", float)):
                if not isinstance(body.get(key), kind):
                    raise ValueError(f"{key} missing or of the wrong type")
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise CheckpointCorrupt(
                f"job {job_dir.name}: manifest of checkpoint {seq} is damaged: {exc}",
                job_id=job_dir.name, seq=seq, reason="manifest",
            ) from None
        return body

    def checkpoints(self, job_id: str) -> tuple[CheckpointInfo, ...]:
        """Committed checkpoints of ``job_id``, oldest first (manifests read, data not hashed).

        Checkpoints whose manifest is damaged are left out here; :meth:`restore` reports them.
        """
        job_dir = self.job_dir(job_id)
        out = []
        for seq in self._seqs(job_dir, ("json",)):
            try:
                out.append(_info_from_manifest(self._load_manifest(job_dir, seq), job_dir))
            except (CheckpointCorrupt, FileNotFoundError):
                continue
        return tuple(out)

    def latest(self, job_id: str) -> CheckpointInfo | None:
        """Newest committed checkpoint by its manifest (not verified; see :meth:`restore`)."""
        found = self.checkpoints(job_id)
        return found[-1] if found else None

    def jobs(self) -> tuple[str, ...]:
        return tuple(
            sorted(p.name for p in self.root.iterdir() if p.is_dir() and JOB_ID_RE.fullmatch(p.name))
        )

    def catalogue(self) -> tuple[JobCheckpoints, ...]:
        """Every job and its committed checkpoints: what ground can query."""
        return tuple(JobCheckpoints(job, self.checkpoints(job)) for job in self.jobs())

    def verify(self, info: CheckpointInfo) -> None:
        """Hash ``info``'s data; raise :class:`CheckpointCorrupt` when it does not match."""
        try:
            fd = os.open(info.data_path, os.O_RDONLY)
        except FileNotFoundError:
            raise CheckpointCorrupt(
                f"job {info.job_id}: data of checkpoint {info.seq} is missing",
                job_id=info.job_id, seq=info.seq, reason="missing",
            ) from None
        hasher = new_hasher(info.algorithm)
        size = 0
        try:
            while chunk := os.read(fd, self.chunk_size):
                hasher.update(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        if size != info.size:
            raise CheckpointCorrupt(
                f"job {info.job_id}: checkpoint {info.seq} has {size} bytes, manifest says {info.size}",
                job_id=info.job_id, seq=info.seq, reason="size",
            )
        if hasher.hexdigest() != info.digest:
            raise CheckpointCorrupt(
                f"job {info.job_id}: checkpoint {info.seq} does not match its {info.algorithm}",
                job_id=info.job_id, seq=info.seq, reason="hash",
            )

    def restore(self, job_id: str) -> CheckpointInfo | None:
        """The newest checkpoint of ``job_id`` whose data verifies, or None.

        Every newer one that fails is reported through ``on_corrupt`` and set aside.
        """
        job_dir = self.job_dir(job_id)
        with self._lock(job_id):
            for seq in reversed(self._seqs(job_dir, ("json",))):
                try:
                    info = _info_from_manifest(self._load_manifest(job_dir, seq), job_dir)
                    self.verify(info)
                except CheckpointCorrupt as exc:
                    self._set_aside(job_dir, seq, exc)
                    continue
                except FileNotFoundError:
                    continue  # pruned meanwhile
                return info
        return None

    def read(self, job_id: str) -> tuple[CheckpointInfo, bytes] | None:
        """The newest verified checkpoint and its bytes (small checkpoints only)."""
        info = self.restore(job_id)
        if info is None:
            return None
        data = info.data_path.read_bytes()
        hasher = new_hasher(info.algorithm)
        hasher.update(data)
        if hasher.hexdigest() != info.digest:  # changed since verification
            return self.read(job_id)
        return info, data

    def _set_aside(self, job_dir: Path, seq: int, exc: CheckpointCorrupt) -> None:
        self._log.warning("%s; falling back to the previous checkpoint", exc)
        with contextlib.suppress(FileNotFoundError):
            os.replace(job_dir / _manifest_name(seq), job_dir / _corrupt_name(seq))
        (job_dir / _data_name(seq)).unlink(missing_ok=True)
        fsync_dir(job_dir)
        if self._on_corrupt is not None:
            self._on_corrupt(CorruptCheckpoint(job_dir.name, seq, exc.reason, str(exc)))

    def delete_job(self, job_id: str) -> None:
        """Forget every checkpoint of ``job_id`` (a cancelled or finished job)."""
        job_dir = self.job_dir(job_id)
        with self._lock(job_id):
            if not job_dir.exists():
                return
            for seq in self._seqs(job_dir, ("json",)):
                (job_dir / _manifest_name(seq)).unlink(missing_ok=True)
            for path in job_dir.iterdir():
                path.unlink(missing_ok=True)
            job_dir.rmdir()
            fsync_dir(self.root)
            self._next_seq.pop(job_id, None)


#: Most checkpoints of one job a ground catalogue lists (the newest), and most jobs.
CATALOGUE_CHECKPOINTS = 8
CATALOGUE_JOBS = 16


def ground_catalogue(store: CheckpointStore, now: float, job: str | None = None) -> list[dict[str, Any]]:
    """The store's catalogue as a ``job_catalogue`` report carries it (ICD §5.4.4).

    Small enough for one report (ICD §5.4 bounds maps at 1,024 elements): at most
    CATALOGUE_JOBS jobs, each with its newest CATALOGUE_CHECKPOINTS checkpoints; a job with
    more says ``truncated``.  Manifests are read, the data is not hashed.
    """
    jobs = [job] if job is not None else list(store.jobs())
    out: list[dict[str, Any]] = []
    for job_id in jobs[:CATALOGUE_JOBS]:
        found = store.checkpoints(job_id) if store.job_dir(job_id).is_dir() else ()
        if job is not None and not found:
            raise CheckpointError(f"no checkpoints of job {job_id!r}", job_id=job_id)
        newest = found[-CATALOGUE_CHECKPOINTS:]
        out.append({
            "job": job_id,
            "checkpoints": [
                {"seq": c.seq, "size": c.size, "hash": c.algorithm, "digest": c.digest,
                 "progress": c.progress, "age_s": round(max(0.0, now - c.created), 3)}
                for c in newest
            ],
            "truncated": len(found) > len(newest),
        })
    if len(jobs) > CATALOGUE_JOBS:
        out[-1]["truncated"] = True
    return out


def _info_from_manifest(body: Mapping[str, Any], job_dir: Path) -> CheckpointInfo:
    return CheckpointInfo(
        job_id=str(body["job_id"]),
        seq=int(body["seq"]),
        size=int(body["size"]),
        digest=str(body["digest"]),
        algorithm=str(body["hash"]),
        progress=float(body["progress"]),
        created=float(body["created"]),
        duration_s=float(body.get("duration_s", 0.0)),
        meta=types.MappingProxyType(dict(body.get("meta") or {})),
        data_path=job_dir / str(body["data"]),
    )


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        fn(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE: start writeback, do not wait

    return start


#: Starts writeback of a file range without waiting (Linux); None elsewhere.
_start_writeback = _load_sync_file_range()
#: Bytes after which the writer asks the kernel to start writing back what it has.
WRITEBACK_EVERY = 32 << 20


def _write_hashed(
    fd: int, chunks: Iterator[bytes | bytearray | memoryview], hasher: Any, depth: int = 4
) -> int:
    """Write ``chunks`` to ``fd`` while hashing them; returns the byte count.

    Hashing (this thread) and writing (a helper thread) overlap: both release the GIL, so a
    checkpoint costs about max(hash, write) rather than their sum.  The writer also starts
    the device writeback every ``WRITEBACK_EVERY`` bytes (``sync_file_range``), so the final
    fsync has little left to do and a large checkpoint does not fill the page cache with
    dirty pages.  A small first chunk is written inline: tiny checkpoints start no thread.
    """
    first = next(chunks, None)
    if first is None:
        return 0
    second = next(chunks, None)
    if second is None:
        hasher.update(first)
        _write_all(fd, first)
        return len(first)

    pending: queue.Queue[bytes | bytearray | memoryview | None] = queue.Queue(maxsize=depth)
    failure: list[BaseException] = []

    def writer() -> None:
        written = flushed = 0
        while True:
            item = pending.get()
            if item is None:
                return
            if not failure:
                try:
                    _write_all(fd, item)
                    written += len(item)
                    if _start_writeback is not None and written - flushed >= WRITEBACK_EVERY:
                        _start_writeback(fd, flushed, written - flushed)
                        flushed = written
                except BaseException as exc:  # reported to the producer; keep draining
                    failure.append(exc)

    thread = threading.Thread(target=writer, name="umbra-ckpt-writer", daemon=True)
    thread.start()
    size = 0
    try:
        for chunk in _chain(first, second, chunks):
            if failure:
                break
            hasher.update(chunk)
            size += len(chunk)
            pending.put(chunk)
    finally:
        pending.put(None)
        thread.join()
    if failure:
        raise CheckpointError(f"checkpoint write failed: {failure[0]}") from failure[0]
    return size


def _chain(
    first: bytes | bytearray | memoryview, second: bytes | bytearray | memoryview,
    rest: Iterator[bytes | bytearray | memoryview],
) -> Iterator[bytes | bytearray | memoryview]:
    yield first
    yield second
    yield from rest


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


class AsyncCheckpointStore:
    """The store for asyncio code: each call runs in a thread; at most ``max_concurrent``
    checkpoints are being written or adopted at once (restores are not limited)."""

    def __init__(self, store: CheckpointStore, *, max_concurrent: int = 2) -> None:
        if max_concurrent < 1:
            raise CheckpointError(f"max_concurrent = {max_concurrent}: must be >= 1")
        self.store = store
        self.max_concurrent = max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)
        self._writing = 0
        self._waiting = 0

    @property
    def writing(self) -> int:
        """Checkpoints being written right now."""
        return self._writing

    @property
    def waiting(self) -> int:
        """Checkpoints waiting for a free slot."""
        return self._waiting

    async def _limited(self, fn: Callable[..., CheckpointInfo], *args: Any, **kwargs: Any) -> CheckpointInfo:
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._writing += 1
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        finally:
            self._writing -= 1
            self._slots.release()

    async def write(
        self, job_id: str, source: Source, *, progress: float, meta: Mapping[str, Any] | None = None
    ) -> CheckpointInfo:
        return await self._limited(self.store.write, job_id, source, progress=progress, meta=meta)

    async def write_bytes(
        self, job_id: str, data: bytes, *, progress: float, meta: Mapping[str, Any] | None = None
    ) -> CheckpointInfo:
        return await self._limited(self.store.write, job_id, data, progress=progress, meta=meta)

    async def adopt(
        self,
        job_id: str,
        path: Path | str,
        *,
        progress: float,
        meta: Mapping[str, Any] | None = None,
        expected_digest: str | None = None,
    ) -> CheckpointInfo:
        return await self._limited(
            self.store.adopt, job_id, path, progress=progress, meta=meta, expected_digest=expected_digest
        )

    async def restore(self, job_id: str) -> CheckpointInfo | None:
        return await asyncio.to_thread(self.store.restore, job_id)

    async def catalogue(self) -> tuple[JobCheckpoints, ...]:
        return await asyncio.to_thread(self.store.catalogue)
