"""The two ends of one file transfer, sans-I/O (docs/ICD.md §5.9).

:class:`Sender` decides what to send next — ``meta``, chunks, ranges asked again, ``eof`` —
from what the receiver last said; :class:`Receiver` takes PDUs, writes chunks through a
:class:`Sink` and says where it stands.  Neither does I/O or keeps time: the caller passes
``now`` and moves the PDUs, so node and ground share one tested core, as the serial link's
sans-I/O channel is shared by node, board and harness.

The sender's states::

    SYNC ──ack──► SENDING ──all sent once──► DRAINED ──fin──► DONE
      ▲                │                       │
      └── (re)connect ─┴───────────────────────┘   any ──cancel/fin(failed)──► FAILED

- SYNC: ``meta`` every ``probe_s`` until the receiver answers.  A transfer starts here, and
  returns here after a restart or a new broker connection: the receiver's ``ack`` says what
  it holds, so nothing that arrived is sent again.
- SENDING: chunks in offset order, and first the ranges the receiver asked for again; never
  more than ``window`` bytes beyond what the receiver holds from offset 0 (so a receiver
  that went away stalls the sender instead of losing a stream of chunks), with a ``meta``
  probe every ``probe_s`` while the window is full and the receiver is silent.
- DRAINED: every byte sent once; ``eof`` every ``probe_s`` (the receiver answers with the
  ranges it still needs, which are sent again) until ``fin``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from node.files.pdu import MAX_RANGES, Ack, AnyPdu, Cancel, Data, Eof, Fin, FinStatus, Meta
from node.files.ranges import RangeSet
from node.jobs.store import new_hasher

#: Seconds between probes (``meta`` or ``eof``) while the receiver is silent.
PROBE_S = 2.0
#: Bytes the sender may be ahead of the receiver's contiguous run.
WINDOW = 16 << 20
#: The receiver says where it stands after this many new bytes, or ACK_S after the last word.
ACK_EVERY = 2 << 20
ACK_S = 1.0
#: A file whose hash does not match is received again this many times before failing.
HASH_RETRIES = 2


class SendState(enum.StrEnum):
    SYNC = "sync"
    SENDING = "sending"
    DRAINED = "drained"
    DONE = "done"
    FAILED = "failed"


@dataclass(slots=True)
class SenderStats:
    sent: int = 0       # data bytes put on the wire
    resent: int = 0     # of which asked for again by the receiver
    probes: int = 0


class Sender:
    """The sending end of one transfer.  ``read(offset, n)`` gives the file's bytes."""

    def __init__(self, meta: Meta, *, read: Callable[[int, int], bytes], sent_to: int = 0,
                 window: int = WINDOW, probe_s: float = PROBE_S, check_source: bool = False) -> None:
        self.meta = meta
        #: ``check_source``: hash the file as it is read for the first time and refuse to say
        #: ``eof`` for one that does not match ``meta.digest`` (a checkpoint damaged on the
        #: node's disk is not worth the receiver's retries).  A transfer resumed mid-way is
        #: checked by the receiver alone.
        self._hasher = new_hasher(meta.hash, small_updates=True) if check_source and sent_to == 0 else None
        self._read = read
        #: Everything below this has been sent once (persisted by the caller).
        self.sent_to = min(sent_to, meta.size)
        self.window = max(window, meta.chunk)
        self.probe_s = probe_s
        self.state = SendState.SYNC
        self.resend = RangeSet()
        self.peer_contiguous = 0
        self.peer_received = 0
        self.last_probe = float("-inf")
        self.probe_sent_to = self.sent_to  # where we were when we last asked
        self.last_heard = float("-inf")
        self.fin: Fin | None = None
        self.stats = SenderStats()
        #: Ranges sent again lately, with when: an ack that crossed them on the way still
        #: lists them, and must not make us send them a third time.
        self._resent: list[tuple[int, int, float]] = []

    @property
    def active(self) -> bool:
        return self.state not in (SendState.DONE, SendState.FAILED)

    def reconnected(self) -> None:
        """A new connection: what was in flight may be lost; ask the receiver first."""
        if self.active:
            self.state = SendState.SYNC
            self.last_probe = float("-inf")

    def _probe(self, now: float) -> AnyPdu | None:
        if now - self.last_probe < self.probe_s:
            return None
        self.last_probe = now
        self.probe_sent_to = self.sent_to
        self.stats.probes += 1
        if self.state == SendState.DRAINED:
            return Eof(node_id=self.meta.node_id, xfer=self.meta.xfer, size=self.meta.size, digest=self.meta.digest)
        return self.meta

    def next_pdu(self, now: float) -> AnyPdu | None:
        """The next PDU to send now, or None (nothing to send until the receiver speaks or
        ``probe_s`` passes)."""
        if self.state == SendState.SYNC:
            return self._probe(now)
        if self.state not in (SendState.SENDING, SendState.DRAINED):
            return None
        if len(self.resend):
            start, end = next(iter(self.resend))
            end = min(end, start + self.meta.chunk)
            self.resend = _minus(self.resend, start, end)
            data = self._read(start, end - start)
            self.stats.sent += len(data)
            self.stats.resent += len(data)
            self._resent.append((start, end, now))
            return Data.of(self.meta.node_id, self.meta.xfer, start, data)
        if self.sent_to < self.meta.size:
            if self.sent_to - self.peer_contiguous >= self.window:
                return self._probe(now)  # the window is full: is the receiver still there?
            n = min(self.meta.chunk, self.meta.size - self.sent_to)
            data = self._read(self.sent_to, n)
            if self._hasher is not None:
                self._hasher.update(data)
            pdu = Data.of(self.meta.node_id, self.meta.xfer, self.sent_to, data)
            self.sent_to += n
            self.stats.sent += n
            return pdu
        if self._hasher is not None:
            digest, self._hasher = self._hasher.hexdigest(), None
            if digest != self.meta.digest:
                return self.cancel(f"source_corrupt: the file's {self.meta.hash} is {digest}, not {self.meta.digest}")
        if self.state == SendState.SENDING:  # every byte sent once: say so
            self.state = SendState.DRAINED
            self.last_probe = float("-inf")
        return self._probe(now)

    def on_ack(self, ack: Ack, now: float) -> None:
        if not self.active:
            return
        self.last_heard = now
        if ack.need_meta:
            self.state = SendState.SYNC
            self.last_probe = float("-inf")
            return
        self.peer_contiguous = max(self.peer_contiguous, min(ack.contiguous, self.meta.size))
        self.peer_received = ack.received
        # What the receiver holds from 0 need not be sent again, even if our record of
        # what we sent is older (we were killed before writing it down).
        self.sent_to = max(self.sent_to, self.peer_contiguous)
        self._resent = [r for r in self._resent if now - r[2] < self.probe_s]
        for start, end in ack.missing:
            end = min(end, self.sent_to)  # beyond sent_to is simply not sent yet
            if start < end and not any(s <= start and end <= e for s, e, _ in self._resent):
                self.resend.add(start, end)
        if ack.probe and ack.high < min(self.probe_sent_to, self.sent_to):
            # sent before we asked, and not there: lost (a restart of either side, a broker
            # that lost its queue); the chunks sent since we asked may still be on the way
            self.resend.add(ack.high, min(self.probe_sent_to, self.sent_to))
        if self.state == SendState.SYNC and ack.probe:
            # Only the answer to our probe settles where we stand: a periodic ack can be
            # older than the chunks still on the way (sent before we restarted).
            self.state = SendState.SENDING if self.sent_to < self.meta.size else SendState.DRAINED
            self.last_probe = now
        elif self.state == SendState.DRAINED:
            self.last_probe = now  # answered: the next eof waits for probe_s

    def on_fin(self, fin: Fin) -> None:
        if not self.active:
            return
        self.fin = fin
        self.state = SendState.DONE if fin.status == FinStatus.OK else SendState.FAILED

    def cancel(self, reason: str) -> Cancel:
        self.state = SendState.FAILED
        self.fin = Fin(node_id=self.meta.node_id, xfer=self.meta.xfer, status=FinStatus.CANCELLED, reason="cancelled",
                       text=reason)
        return Cancel(node_id=self.meta.node_id, xfer=self.meta.xfer, reason=reason)


def _minus(ranges: RangeSet, start: int, end: int) -> RangeSet:
    out = RangeSet()
    for s, e in ranges:
        if e <= start or s >= end:
            out.add(s, e)
            continue
        if s < start:
            out.add(s, start)
        if e > end:
            out.add(end, e)
    return out


class Sink(Protocol):
    """Where a receiver puts the bytes (a partial file on disk).  Making them durable and
    hashing the whole file are the caller's (they take time: not on an event loop)."""

    def write(self, offset: int, data: bytes) -> None: ...
    def truncate(self) -> None: ...  # start over (the hash did not match)


class RecvState(enum.StrEnum):
    RECEIVING = "receiving"
    DONE = "done"
    FAILED = "failed"


@dataclass(slots=True)
class ReceiverStats:
    received: int = 0    # new bytes written
    duplicate: int = 0   # bytes that arrived again
    corrupt: int = 0     # chunks dropped for a bad CRC
    outside: int = 0     # chunks beyond the file's size, dropped
    hash_failures: int = 0


@dataclass(slots=True)
class Received:
    """What :meth:`Receiver.handle` did: PDUs to send back, and what the caller must do first.

    ``persist``: make the bytes written so far durable and record the ranges held, *before*
    these replies go out (they say the receiver holds them).  ``verify``: every byte is
    here: hash the whole file and hand the digest to :meth:`Receiver.verified`.
    ``complete`` (from ``verified``): the hash matched: finish the file (store or install
    it), then send ``complete()``'s fin."""

    replies: list[AnyPdu] = field(default_factory=list)
    persist: bool = False
    verify: bool = False
    complete: bool = False


class Receiver:
    """The receiving end of one transfer, from its ``meta`` on."""

    def __init__(self, meta: Meta, sink: Sink, *, have: RangeSet | None = None, eof: bool = False,
                 ack_every: int = ACK_EVERY, ack_s: float = ACK_S) -> None:
        self.meta = meta
        self.sink = sink
        self.have = have if have is not None else RangeSet()
        self.eof = eof
        self.ack_every = ack_every
        self.ack_s = ack_s
        self.state = RecvState.RECEIVING
        self.fin: Fin | None = None
        self.stats = ReceiverStats()
        self._new_since_ack = 0
        self._last_ack = float("-inf")
        #: The whole file is being hashed (by the caller); until ``verified``, nothing changes.
        self.verifying = False

    @property
    def done(self) -> bool:
        return self.state != RecvState.RECEIVING

    def ack(self, now: float, *, probe: bool = False) -> Ack:
        """Where we stand; the missing ranges stop at the highest byte held until ``eof``."""
        self._new_since_ack = 0
        self._last_ack = now
        upto = self.meta.size if self.eof else self.have.high
        return Ack(node_id=self.meta.node_id, xfer=self.meta.xfer, received=self.have.total,
                   contiguous=self.have.contiguous, missing=tuple(self.have.missing(upto, limit=MAX_RANGES)),
                   high=self.have.high, probe=probe)

    def handle(self, pdu: AnyPdu, now: float) -> Received:
        out = Received()
        if self.done:  # a late PDU: say again how it ended
            if self.fin is not None and not isinstance(pdu, Fin | Cancel):
                out.replies.append(self.fin)
            return out
        if isinstance(pdu, Meta):
            if (pdu.size, pdu.digest, pdu.hash, pdu.chunk) != (self.meta.size, self.meta.digest, self.meta.hash,
                                                               self.meta.chunk):
                out.replies.append(self.failed("meta_changed", "the file changed under the same transfer id"))
                return out
            out.persist = True
            out.replies.append(self.ack(now, probe=True))
        elif isinstance(pdu, Data):
            self._data(pdu, out, now)
        elif isinstance(pdu, Eof):
            self.eof = True
            out.persist = True
            if self.have.covers(0, self.meta.size) or self.meta.size == 0:
                self._verify(out, now)
            else:
                out.replies.append(self.ack(now, probe=True))
        elif isinstance(pdu, Cancel):
            self.state = RecvState.FAILED
            self.fin = Fin(node_id=self.meta.node_id, xfer=self.meta.xfer, status=FinStatus.CANCELLED,
                           reason="cancelled", text=pdu.reason)
            out.persist = True
        return out

    def _data(self, pdu: Data, out: Received, now: float) -> None:
        end = pdu.offset + len(pdu.data)
        if not pdu.intact:
            self.stats.corrupt += 1
            # ask for it at once: the gap is below what we hold once later chunks arrive
            out.replies.append(self._ack_with(now, (pdu.offset, end)))
            return
        if end > self.meta.size:
            self.stats.outside += 1
            return
        if self.have.covers(pdu.offset, end):
            self.stats.duplicate += len(pdu.data)
        else:
            self.sink.write(pdu.offset, pdu.data)
            new = self.have.add(pdu.offset, end)
            self.stats.received += new
            self.stats.duplicate += len(pdu.data) - new
            self._new_since_ack += new
        if self.have.covers(0, self.meta.size) and self.eof:
            self._verify(out, now)
        elif self._new_since_ack >= self.ack_every:
            out.persist = True
            out.replies.append(self.ack(now))

    def _ack_with(self, now: float, extra: tuple[int, int]) -> Ack:
        ack = self.ack(now)
        missing = RangeSet(ack.missing)
        missing.add(*extra)
        return Ack(node_id=ack.node_id, xfer=ack.xfer, received=ack.received, contiguous=ack.contiguous,
                   missing=tuple(list(missing)[:MAX_RANGES]))

    def tick(self, now: float) -> Received:
        """A periodic word while bytes arrive: the sender's window moves on."""
        out = Received()
        if not self.done and self._new_since_ack > 0 and now - self._last_ack >= self.ack_s:
            out.persist = True
            out.replies.append(self.ack(now))
        return out

    def _verify(self, out: Received, now: float) -> None:
        out.persist = True
        if not self.verifying:
            self.verifying = True
            out.verify = True

    def verified(self, digest: str, now: float) -> Received:
        """The caller hashed the whole file: ``complete``, or start over, or fail."""
        out = Received()
        self.verifying = False
        if self.done:
            return out
        if digest == self.meta.digest:
            out.complete = True
            return out
        self.stats.hash_failures += 1
        if self.stats.hash_failures > HASH_RETRIES:
            out.replies.append(self.failed("hash_mismatch", f"{self.meta.hash} of the file received "
                                           f"{self.stats.hash_failures} times is {digest}, not {self.meta.digest}"))
            return out
        # Every chunk passed its CRC, yet the whole does not match: start over.
        self.sink.truncate()
        self.have = RangeSet()
        out.persist = True
        out.replies.append(self.ack(now, probe=True))
        return out

    def complete(self, info: dict[str, object] | None = None) -> Fin:
        self.state = RecvState.DONE
        self.fin = Fin(node_id=self.meta.node_id, xfer=self.meta.xfer, status=FinStatus.OK, info=dict(info or {}))
        return self.fin

    def failed(self, reason: str, text: str, *, refused: bool = False) -> Fin:
        self.state = RecvState.FAILED
        self.fin = Fin(node_id=self.meta.node_id, xfer=self.meta.xfer,
                       status=FinStatus.REFUSED if refused else FinStatus.FAILED, reason=reason, text=text[:2000])
        return self.fin


__all__ = ["ACK_EVERY", "PROBE_S", "WINDOW", "Received", "Receiver", "RecvState", "SendState", "Sender", "Sink"]
