"""Reliable channel over the frame codec, sans-I/O (docs/ICD.md §3).

One ``ReliableChannel`` per side of a link.  It numbers outgoing frames, keeps reliable
messages until they are acknowledged, retransmits them on timeout up to a retry limit,
detects duplicates and counts lost frames from sequence gaps.  It never touches a clock or
a port: the caller passes ``now`` (seconds, any monotonic origin) and writes the bytes
it gets back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.link.codec import Frame, encode_frame
from node.link.messages import UINT32_MAX, Ack, AckStatus, Message, MsgType

_SESSION_TYPES = (MsgType.HELLO, MsgType.HELLO_ACK)

#: How far back (in sequence numbers) duplicates and late frames are recognised.
RX_WINDOW = 1024
_HALF = 1 << 31


def seq_after(seq: int) -> int:
    """The sequence number after ``seq``: 1 … 2³²−1, then 1 again (0 is for session frames)."""
    return 1 if seq >= UINT32_MAX else seq + 1


def seq_distance(newer: int, older: int) -> int:
    """Signed distance from ``older`` to ``newer`` on the 1 … 2³²−1 circle."""
    d = (newer - older) % UINT32_MAX
    return d - UINT32_MAX if d >= _HALF else d


@dataclass(frozen=True, slots=True)
class Delivered:
    """A new message from the peer.  Reliable ones need ``ReliableChannel.ack``."""

    seq: int
    message: Message


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The peer acknowledged one of our reliable messages.

    ``superseded``: a late answer to a message a newer one had already replaced (§3.5).
    It does not settle anything pending, but it shows the peer answers that kind of
    message, so it keeps the newer one's chain from counting as stalled.
    """

    seq: int
    message: Message
    status: AckStatus | int
    superseded: bool = False


@dataclass(frozen=True, slots=True)
class GaveUp:
    """A reliable message went unacknowledged through every retry."""

    seq: int
    message: Message


@dataclass(frozen=True, slots=True)
class Stalled:
    """Messages of one supersede key went unacknowledged for the whole give-up time.

    Each was superseded before it could give up (a node sends SET_CAPS every frame), so
    GaveUp never comes; this says the peer is not answering that kind of message at all
    (ICD §3.5).  Reported once per stall; the newest message keeps being retransmitted.
    """

    key: object
    message: Message  # the newest, still pending
    since: float  # when the oldest unanswered one of the chain was first sent


ChannelEvent = Delivered | Acknowledged | GaveUp | Stalled


@dataclass(slots=True)
class ChannelStats:
    sent: int = 0
    received: int = 0
    retransmits: int = 0
    superseded: int = 0
    gave_up: int = 0
    stalled: int = 0  # supersede chains unanswered for the whole give-up time (§3.5)
    duplicates: int = 0
    lost: int = 0  # frames the peer numbered that never arrived (gaps; late arrivals give back)
    peer_restarts: int = 0
    misnumbered: int = 0  # frames other than HELLO/HELLO_ACK that carried seq 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class _Pending:
    message: Message
    wire: bytes
    deadline: float
    tries: int = 1
    sent_at: float = 0.0  # its own first transmission
    #: First transmission of the oldest unanswered message this one superseded (or its own).
    chain_since: float = 0.0
    stall_reported: bool = False


@dataclass
class ReliableChannel:
    retry_timeout: float = 0.25
    max_tries: int = 5
    stats: ChannelStats = field(default_factory=ChannelStats)
    _tx_seq: int = 0
    _pending: dict[int, _Pending] = field(default_factory=dict)
    #: Recently superseded messages (seq → message, first transmission), for late ACKs.
    _superseded: dict[int, tuple[Message, float]] = field(default_factory=dict)
    _rx_highest: int | None = None
    _rx_seen: set[int] = field(default_factory=set)
    _rx_ack_status: dict[int, int] = field(default_factory=dict)

    def reset(self) -> None:
        """Start a new session (after HELLO): forget numbering, pending and seen frames."""
        self._tx_seq = 0
        self._pending.clear()
        self._superseded.clear()
        self.reset_receive()

    def drop_pending(self) -> None:
        """Stop retransmitting everything (a sender that falls silent on purpose)."""
        self._pending.clear()
        self._superseded.clear()

    def reset_receive(self) -> None:
        """Forget what the peer numbered (it restarts at 1 after every HELLO it answers)."""
        self._rx_highest = None
        self._rx_seen.clear()
        self._rx_ack_status.clear()

    # --- sending ------------------------------------------------------------------------

    def number(self) -> int:
        """Take the next sequence number (for a frame the caller encodes itself: a test
        double's or the conformance check's deliberately bad one)."""
        self._tx_seq = seq_after(self._tx_seq)
        self.stats.sent += 1
        return self._tx_seq

    def send(self, message: Message, now: float) -> bytes:
        """Number ``message`` and return its frame; reliable ones are kept for retries."""
        wire = encode_frame(message, self.number())
        if message.RELIABLE:
            pending = _Pending(message, wire, now + self.retry_timeout, sent_at=now, chain_since=now)
            key = message.supersede_key()
            if key is not None:
                for old_seq in [s for s, p in self._pending.items() if p.message.supersede_key() == key]:
                    old = self._pending.pop(old_seq)
                    # The chain stays as old as its oldest unanswered message (ICD §3.5).
                    pending.chain_since = min(pending.chain_since, old.chain_since)
                    pending.stall_reported = old.stall_reported
                    self._superseded[old_seq] = (old.message, old.sent_at)
                    if len(self._superseded) > RX_WINDOW:
                        del self._superseded[next(iter(self._superseded))]
                    self.stats.superseded += 1
            self._pending[self._tx_seq] = pending
        return wire

    @staticmethod
    def session_frame(message: Message) -> bytes:
        """HELLO and HELLO_ACK travel outside the numbering, with sequence 0."""
        return encode_frame(message, 0)

    def ack(self, seq: int, status: AckStatus | int = AckStatus.OK) -> bytes:
        """Acknowledge the peer's reliable frame ``seq`` (acks are best-effort and numbered)."""
        self._rx_ack_status[seq] = int(status)
        if len(self._rx_ack_status) > RX_WINDOW:
            del self._rx_ack_status[next(iter(self._rx_ack_status))]
        return self.send(Ack(ack_seq=seq, status=int(status)), 0.0)

    @property
    def last_seq(self) -> int:
        """The sequence number given to the most recent ``send``."""
        return self._tx_seq

    @property
    def pending(self) -> int:
        return len(self._pending)

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    @property
    def give_up_s(self) -> float:
        """How long a reliable message is retried before the sender gives up on it."""
        return self.retry_timeout * self.max_tries

    def poll(self, now: float) -> tuple[list[ChannelEvent], list[bytes]]:
        """Retransmit what timed out; give up on what ran out of tries; report stalls."""
        events: list[ChannelEvent] = []
        out: list[bytes] = []
        for seq, pending in list(self._pending.items()):
            # (A chain as old as its newest message is GaveUp's business, not a stall.)
            stalled = pending.chain_since < pending.sent_at and now - pending.chain_since >= self.give_up_s
            if stalled and not pending.stall_reported:
                pending.stall_reported = True
                self.stats.stalled += 1
                events.append(Stalled(pending.message.supersede_key(), pending.message, pending.chain_since))
            if pending.deadline > now:
                continue
            if pending.tries >= self.max_tries:
                del self._pending[seq]
                self.stats.gave_up += 1
                events.append(GaveUp(seq, pending.message))
                continue
            pending.tries += 1
            pending.deadline = now + self.retry_timeout
            self.stats.retransmits += 1
            out.append(pending.wire)
        return events, out

    # --- receiving ----------------------------------------------------------------------

    def receive(self, frame: Frame) -> tuple[list[ChannelEvent], list[bytes]]:
        """Take one decoded frame.  Returns events and bytes to write (re-acks of duplicates)."""
        self.stats.received += 1
        message = frame.message
        if (frame.seq == 0) != (message.TYPE in _SESSION_TYPES):
            # A numbered frame with seq 0 cannot be acked (ack_seq >= 1); a session frame with a
            # number is not one (§3.1): either way, drop it.
            self.stats.misnumbered += 1
            return [], []
        if frame.seq == 0:
            return [Delivered(0, message)], []
        if not self._track(frame.seq):
            self.stats.duplicates += 1
            prior = self._rx_ack_status.get(frame.seq)
            if message.RELIABLE and prior is not None:
                return [], [self.send(Ack(ack_seq=frame.seq, status=prior), 0.0)]
            return [], []
        if isinstance(message, Ack):
            status: AckStatus | int
            try:
                status = AckStatus(message.status)
            except ValueError:
                status = message.status
            pending = self._pending.pop(message.ack_seq, None)
            if pending is not None:
                return [Acknowledged(message.ack_seq, pending.message, status)], []
            late = self._superseded.pop(message.ack_seq, None)
            if late is None:
                return [], []  # ack of something already answered or given up on
            old, sent_at = late
            # The peer answered an older message of this chain: the chain is answered up to it.
            key = old.supersede_key()
            for newer in self._pending.values():
                if newer.message.supersede_key() == key and newer.chain_since < sent_at:
                    newer.chain_since = min(sent_at, newer.sent_at)
                    newer.stall_reported = False
            return [Acknowledged(message.ack_seq, old, status, superseded=True)], []
        return [Delivered(frame.seq, message)], []

    def _track(self, seq: int) -> bool:
        """Record ``seq``; False when it is a duplicate."""
        highest = self._rx_highest
        if highest is None:
            self._rx_highest = seq
            self._rx_seen = {seq}
            return True
        distance = seq_distance(seq, highest)
        if distance > 0:
            self.stats.lost += distance - 1
            self._rx_highest = seq
            self._rx_seen.add(seq)
            if len(self._rx_seen) > 2 * RX_WINDOW:
                self._rx_seen = {s for s in self._rx_seen if seq_distance(seq, s) < RX_WINDOW}
            return True
        if -distance >= RX_WINDOW:
            # Far behind: the peer restarted its numbering without a HELLO (e.g. a reset).
            self.stats.peer_restarts += 1
            self._rx_highest = seq
            self._rx_seen = {seq}
            return True
        if seq in self._rx_seen:
            return False
        self._rx_seen.add(seq)
        self.stats.lost = max(0, self.stats.lost - 1)  # a late frame fills its gap
        return True
