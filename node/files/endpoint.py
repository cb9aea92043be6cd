"""One side's transfers — every sender and receiver of a node, or of ground — on disk.

:class:`Endpoint` keeps the :class:`~node.files.engine.Sender` and
:class:`~node.files.engine.Receiver` of each active transfer, persists them in a
:class:`~node.files.store.TransferDb`, and answers two questions for the I/O around it
(the node's bus, ground's file service): *what PDU goes out next* (answers to the peer
first, then data by priority) and *what to do with a PDU that came in*.  What a side does
with a file it received whole — install a bundle, archive a downlink — is its own
``finish`` callback; whether it takes a new incoming file at all is its ``admit``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.files.engine import PROBE_S, WINDOW, Received, Receiver, Sender, SendState
from node.files.pdu import Ack, AnyPdu, Cancel, Data, Eof, Fin, FinStatus, Meta
from node.files.ranges import RangeSet
from node.files.store import TransferDb, TransferRow
from node.jobs.store import new_hasher

log = logging.getLogger("umbra.files")

#: Persist a sender's position after this many bytes at most.
PERSIST_EVERY = 4 << 20
READ_CHUNK = 8 << 20
#: A transfer's state in the database → the fin that says so.
_STATUS_OF = {"done": FinStatus.OK, "refused": FinStatus.REFUSED, "cancelled": FinStatus.CANCELLED,
              "failed": FinStatus.FAILED}
#: … and back.
_STATE_OF = {v: k for k, v in _STATUS_OF.items()}


class PartFile:
    """A receiver's partial file: chunks written where they belong, fsynced on demand.

    Chunks that arrive in order are hashed as they are written, so the whole file's digest
    at the end costs only what came out of order (read back from disk)."""

    def __init__(self, path: Path, algorithm: str) -> None:
        self.path = path
        self.algorithm = algorithm
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._hasher = new_hasher(algorithm, small_updates=True)
        self._hashed_to = 0  # every byte below is in the hasher (0 after a restart: read back)
        self._lock = threading.Lock()  # digest() runs in a worker thread

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        at = offset
        while view:
            n = os.pwrite(self._fd, view, at)
            view, at = view[n:], at + n
        with self._lock:
            if offset == self._hashed_to:
                self._hasher.update(data)
                self._hashed_to += len(data)

    def sync(self) -> None:
        os.fsync(self._fd)

    def digest(self, algorithm: str) -> str:
        """The whole file's digest: the in-order part already hashed, the rest read back."""
        with self._lock:
            if algorithm != self.algorithm:
                return file_digest(self.path, algorithm)
            hasher, at = self._hasher.copy(), self._hashed_to
        size = os.fstat(self._fd).st_size
        while at < size:
            chunk = os.pread(self._fd, min(READ_CHUNK, size - at), at)
            if not chunk:
                break
            hasher.update(chunk)
            at += len(chunk)
        digest: str = hasher.hexdigest()
        return digest

    def truncate(self) -> None:
        with self._lock:
            os.ftruncate(self._fd, 0)
            self._hasher = new_hasher(self.algorithm, small_updates=True)
            self._hashed_to = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def file_digest(path: Path, algorithm: str) -> str:
    hasher = new_hasher(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            hasher.update(chunk)
    digest: str = hasher.hexdigest()
    return digest


class _Source:
    """A sender's bytes: one open file, read where asked."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, offset: int, n: int) -> bytes:
        return os.pread(self._fd, n, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(slots=True)
class _Pending:
    """A receiver's replies held until its bytes are durable (and its file hashed)."""

    held: list[AnyPdu] = field(default_factory=list)
    verify: bool = False


@dataclass(slots=True)
class Admit:
    """What a side says to a new incoming ``meta``: take it (into ``path``) or refuse it."""

    path: Path | None = None
    refuse: Fin | None = None


class Endpoint:
    def __init__(
        self,
        db: TransferDb,
        *,
        admit: Callable[[Meta], Admit],
        finish: Callable[[TransferRow, Path], Fin],
        on_end: Callable[[TransferRow], None] | None = None,
        window: int = WINDOW,
        probe_s: float = PROBE_S,
        clock: Callable[[], float] = time.monotonic,
        inline: bool = True,
    ) -> None:
        self.db = db
        #: True: fsync, hash and finish as PDUs arrive (blocking); False: the caller runs
        #: ``await settle()`` (in its send loop) and they happen in a thread.
        self.inline = inline
        self._pending: dict[str, _Pending] = {}
        self._synced: dict[str, RangeSet] = {}  # what each receiver's last fsync covered
        self._admit = admit
        self._finish = finish
        self._on_end = on_end
        self.window = window
        self.probe_s = probe_s
        self._clock = clock
        self.senders: dict[str, Sender] = {}
        self.receivers: dict[str, Receiver] = {}
        self._sources: dict[str, _Source] = {}
        self._parts: dict[str, PartFile] = {}
        self._persisted: dict[str, int] = {}
        #: Answers to the peer (acks, fins), sent before any data.
        self.replies: collections.deque[AnyPdu] = collections.deque()
        #: Transfers we know ended, and how (a late PDU of one is answered with it).
        self._ended: dict[str, Fin] = {}
        self.unknown = 0  # PDUs for transfers we never heard of

    # -- life -----------------------------------------------------------------------------

    def load(self) -> None:
        """Take up the active transfers the database holds (after a restart)."""
        for row in self.db.active():
            try:
                if row.role == "send":
                    self._add_sender(row.meta, Path(row.path), sent_to=row.sent_to)
                else:
                    self._add_receiver(row.meta, Path(row.path), have=row.have, eof=row.eof)
            except OSError as exc:
                log.error("transfer %s: cannot resume (%s); failing it", row.xfer, exc)
                self.db.end(row.xfer, "failed", reason="lost", text=f"cannot resume: {exc}")

    def close(self) -> None:
        for xfer, sender in self.senders.items():
            self.db.progress(xfer, sent_to=sender.sent_to, bytes_sent=sender.stats.sent,
                             bytes_resent=sender.stats.resent)
        for source in self._sources.values():
            source.close()
        for part in self._parts.values():
            part.close()
        self._sources.clear()
        self._parts.clear()

    def reconnected(self) -> None:
        """A new connection to the broker: every sender asks its receiver first."""
        for sender in self.senders.values():
            sender.reconnected()

    # -- sending --------------------------------------------------------------------------

    def send(self, meta: Meta, path: Path, info: dict[str, Any] | None = None, *, check_source: bool = False) -> None:
        """Start sending ``path`` as ``meta`` says (the caller made ``meta`` from the file;
        ``check_source``: its digest is a claim to check on the way, not a fresh hash)."""
        self.db.add(meta, role="send", path=str(path), info=info)
        self._add_sender(meta, path, check_source=check_source)

    def _add_sender(self, meta: Meta, path: Path, sent_to: int = 0, check_source: bool = False) -> None:
        source = _Source(path)
        self._sources[meta.xfer] = source
        self.senders[meta.xfer] = Sender(meta, read=source.read, sent_to=sent_to, window=self.window,
                                         probe_s=self.probe_s, check_source=check_source)
        self._persisted[meta.xfer] = sent_to

    def cancel(self, xfer: str, reason: str) -> bool:
        """Cancel an active transfer of ours, telling the peer."""
        if (sender := self.senders.get(xfer)) is not None:
            self.replies.append(sender.cancel(reason))
            self._end(xfer, "cancelled", "cancelled", reason)
            return True
        if (receiver := self.receivers.get(xfer)) is not None:
            self.replies.append(Cancel(node_id=receiver.meta.node_id, xfer=xfer, reason=reason))
            receiver.failed("cancelled", reason)
            self._end(xfer, "cancelled", "cancelled", reason)
            return True
        return False

    def next_out(self) -> AnyPdu | None:
        """The next PDU to send: an answer first, then the most urgent sender's."""
        if self.replies:
            return self.replies.popleft()
        now = self._clock()
        for xfer in sorted(self.senders, key=lambda x: (-self.senders[x].meta.priority, x)):
            sender = self.senders[xfer]
            pdu = sender.next_pdu(now)
            if pdu is not None:
                if isinstance(pdu, Data):
                    self._maybe_persist(xfer)
                elif not sender.active and sender.fin is not None:  # it gave up by itself
                    reason, _, text = sender.fin.text.partition(": ")
                    self._end(xfer, "failed", reason, text)
                return pdu
        return None

    def _maybe_persist(self, xfer: str) -> None:
        sender = self.senders[xfer]
        if sender.sent_to - self._persisted.get(xfer, 0) >= PERSIST_EVERY or sender.sent_to == sender.meta.size:
            self._persisted[xfer] = sender.sent_to
            self.db.progress(xfer, sent_to=sender.sent_to, bytes_sent=sender.stats.sent,
                             bytes_resent=sender.stats.resent)

    def sending(self) -> bool:
        """Some sender has data it could send now (the caller need not sleep long)."""
        return bool(self.replies) or any(
            s.state in (SendState.SENDING,) and (len(s.resend) or s.sent_to < s.meta.size)
            for s in self.senders.values())

    # -- receiving ------------------------------------------------------------------------

    def _add_receiver(self, meta: Meta, path: Path, have: RangeSet | None = None, eof: bool = False) -> Receiver:
        part = PartFile(path, meta.hash)
        self._parts[meta.xfer] = part
        receiver = Receiver(meta, part, have=have, eof=eof)
        self.receivers[meta.xfer] = receiver
        self._synced[meta.xfer] = RangeSet(list(receiver.have))  # as recorded: on disk
        return receiver

    def handle(self, pdu: AnyPdu) -> None:
        """A PDU from the peer: to its sender or receiver; a new ``meta`` opens a receiver."""
        now = self._clock()
        xfer = pdu.xfer
        if (sender := self.senders.get(xfer)) is not None:
            if isinstance(pdu, Ack):
                sender.on_ack(pdu, now)
            elif isinstance(pdu, Fin):
                sender.on_fin(pdu)
                self._end(xfer, _STATE_OF[FinStatus(pdu.status)], pdu.reason, pdu.text, info=pdu.info)
            elif isinstance(pdu, Cancel):
                sender.on_fin(Fin(node_id=pdu.node_id, xfer=xfer, status=FinStatus.CANCELLED, reason="cancelled",
                                  text=pdu.reason))
                self._end(xfer, "cancelled", "cancelled", f"the receiver cancelled: {pdu.reason}")
            return
        receiver = self.receivers.get(xfer)
        if receiver is None:
            if xfer in self._ended:
                if not isinstance(pdu, Fin | Cancel | Ack):
                    self.replies.append(self._ended[xfer])
                return
            row = self.db.get(xfer)
            if row is not None and row.state != "active":  # ended before a restart
                fin = Fin(node_id=row.node_id, xfer=xfer, status=_STATUS_OF.get(row.state, FinStatus.FAILED),
                          reason=row.reason, text=row.text)
                self._ended[xfer] = fin
                if not isinstance(pdu, Fin | Cancel | Ack):
                    self.replies.append(fin)
                return
            if isinstance(pdu, Meta):
                receiver = self._open(pdu)
                if receiver is None:
                    return
            else:
                self.unknown += 1
                if isinstance(pdu, Data | Eof):
                    self.replies.append(Ack(node_id=pdu.node_id, xfer=xfer, received=0, contiguous=0,
                                            need_meta=True))
                return
        self._result(receiver, receiver.handle(pdu, now))

    def _open(self, meta: Meta) -> Receiver | None:
        decision = self._admit(meta)
        if decision.refuse is not None or decision.path is None:
            fin = decision.refuse or Fin(node_id=meta.node_id, xfer=meta.xfer, status=FinStatus.REFUSED,
                                         reason="refused", text="not accepted")
            self.replies.append(fin)
            self._ended[meta.xfer] = fin
            with contextlib.suppress(Exception):
                self.db.add(meta, role="recv", path="")
                self.db.end(meta.xfer, "refused", reason=fin.reason, text=fin.text)
                if self._on_end is not None and (row := self.db.get(meta.xfer)) is not None:
                    self._on_end(row)
            return None
        self.db.add(meta, role="recv", path=str(decision.path))
        return self._add_receiver(meta, decision.path)

    def _result(self, receiver: Receiver, result: Received) -> None:
        """What a receiver said: replies now, or held until its bytes are durable (and its
        file hashed, when it is whole)."""
        xfer = receiver.meta.xfer
        if result.persist or result.verify:
            pending = self._pending.setdefault(xfer, _Pending())
            pending.held.extend(result.replies)
            pending.verify |= result.verify
        else:
            self.replies.extend(result.replies)
        if receiver.done and xfer in self.receivers:
            if xfer in self._pending:
                self.replies.extend(self._pending.pop(xfer).held)
            fin = receiver.fin
            assert fin is not None
            self._end(xfer, _STATE_OF[FinStatus(fin.status)], fin.reason, fin.text, info=fin.info)
        elif self.inline:
            self.settle_now()

    def _take(self) -> tuple[str, _Pending, Receiver, PartFile, RangeSet] | None:
        while self._pending:
            xfer, pending = self._pending.popitem()
            receiver, part = self.receivers.get(xfer), self._parts.get(xfer)
            if receiver is None or part is None:
                self.replies.extend(pending.held)
                continue
            return xfer, pending, receiver, part, RangeSet(list(receiver.have))  # what this sync covers
        return None

    def _durable(self, xfer: str, pending: _Pending, receiver: Receiver, held: RangeSet) -> None:
        """The partial file is on stable storage up to ``held``: record it, then say so."""
        self.db.progress(xfer, have=held, eof=int(receiver.eof), bytes_duplicate=receiver.stats.duplicate,
                         corrupt_chunks=receiver.stats.corrupt)
        self.replies.extend(pending.held)

    def _complete(self, receiver: Receiver, fin: Fin) -> None:
        if fin.status == FinStatus.OK:
            receiver.complete(fin.info)
        else:
            receiver.failed(fin.reason, fin.text, refused=fin.status == FinStatus.REFUSED)
        assert receiver.fin is not None
        self.replies.append(receiver.fin)

    def _finish_safely(self, row: TransferRow) -> Fin:
        try:
            return self._finish(row, Path(row.path))
        except Exception as exc:  # the side's own failure: report it, keep running
            log.exception("transfer %s: finishing failed", row.xfer)
            return Fin(node_id=row.node_id, xfer=row.xfer, status=FinStatus.FAILED, reason="finish_failed",
                       text=f"{type(exc).__name__}: {exc}")

    def settle_now(self) -> None:
        """Make pending bytes durable, hash whole files, finish them — here and now (blocking)."""
        while (taken := self._take()) is not None:
            xfer, pending, receiver, part, held = taken
            if held != self._synced.get(xfer):
                part.sync()
                self._synced[xfer] = held
            self._durable(xfer, pending, receiver, held)
            if pending.verify:
                result = receiver.verified(part.digest(receiver.meta.hash), self._clock())
                if result.complete:
                    part.close()
                    self._parts.pop(xfer, None)
                    row = self.db.get(xfer)
                    assert row is not None
                    self._complete(receiver, self._finish_safely(row))
                self._result(receiver, Received(replies=result.replies, persist=result.persist))

    @property
    def unsettled(self) -> bool:
        return bool(self._pending)

    async def settle(self) -> None:
        """As :meth:`settle_now`, with the slow parts (fsync, hashing, finishing) in a thread,
        so the event loop keeps taking chunks (and, on a node, keeps controlling)."""
        while (taken := self._take()) is not None:
            xfer, pending, receiver, part, held = taken
            if held != self._synced.get(xfer):  # nothing written since the last fsync: none needed
                await asyncio.to_thread(part.sync)
                self._synced[xfer] = held
            if xfer not in self.receivers:  # cancelled meanwhile
                self.replies.extend(pending.held)
                continue
            self._durable(xfer, pending, receiver, held)
            if pending.verify:
                digest = await asyncio.to_thread(part.digest, receiver.meta.hash)
                if xfer not in self.receivers:
                    continue
                result = receiver.verified(digest, self._clock())
                if result.complete:
                    part.close()
                    self._parts.pop(xfer, None)
                    row = self.db.get(xfer)
                    assert row is not None
                    self._complete(receiver, await asyncio.to_thread(self._finish_safely, row))
                self._result(receiver, Received(replies=result.replies, persist=result.persist))

    def tick(self) -> None:
        now = self._clock()
        for receiver in list(self.receivers.values()):
            result = receiver.tick(now)
            if result.replies:
                self._result(receiver, result)

    # -- endings --------------------------------------------------------------------------

    def _end(self, xfer: str, state: str, reason: str, text: str, info: dict[str, Any] | None = None) -> None:
        sender = self.senders.pop(xfer, None)
        receiver = self.receivers.pop(xfer, None)
        values: dict[str, Any] = {}
        if sender is not None:
            values.update(sent_to=sender.sent_to, bytes_sent=sender.stats.sent, bytes_resent=sender.stats.resent)
            if sender.fin is not None:
                self._ended[xfer] = sender.fin
        if receiver is not None:
            values.update(have=receiver.have, bytes_duplicate=receiver.stats.duplicate,
                          corrupt_chunks=receiver.stats.corrupt)
            if receiver.fin is not None:
                self._ended[xfer] = receiver.fin
        if info:
            values["info"] = info
        if (source := self._sources.pop(xfer, None)) is not None:
            source.close()
        if (part := self._parts.pop(xfer, None)) is not None:
            part.close()
        self.db.end(xfer, state, reason=reason, text=text, **values)
        row = self.db.get(xfer)
        if row is not None and self._on_end is not None:
            self._on_end(row)


__all__ = ["Admit", "Endpoint", "PartFile", "file_digest"]
