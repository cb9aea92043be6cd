"""Reliable channel: numbering, acks, retries, duplicates, superseding, loss (docs/ICD.md §3)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.link.channel import (
    RX_WINDOW,
    Acknowledged,
    ChannelEvent,
    Delivered,
    GaveUp,
    ReliableChannel,
    Stalled,
    seq_after,
    seq_distance,
)
from node.link.codec import Frame, FrameDecoder, decode_frame
from node.link.messages import (
    PROTOCOL_VERSION,
    UINT32_MAX,
    Ack,
    AckStatus,
    Heartbeat,
    Hello,
    HelloAck,
    HilSet,
    Message,
    SetCaps,
    SetRail,
)
from node.link.vectors import SENSOR_8GPU

CAPS_A = SetCaps((300.0, 300.0))
CAPS_B = SetCaps((250.0, 250.0))


@dataclass
class FakeClock:
    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def _frame(wire: bytes) -> Frame:
    return decode_frame(wire[:-1])


def _receive(channel: ReliableChannel, wire: bytes) -> tuple[list[ChannelEvent], list[bytes]]:
    return channel.receive(_frame(wire))


def _numbered(seq: int, message: Message | None = None) -> Frame:
    return Frame(PROTOCOL_VERSION, seq, message if message is not None else Heartbeat(1.0))


@dataclass
class Link:
    """Two channels joined by in-memory byte pipes that the test can cut."""

    clock: FakeClock = field(default_factory=FakeClock)
    node: ReliableChannel = field(default_factory=ReliableChannel)
    board: ReliableChannel = field(default_factory=ReliableChannel)

    def carry(self, wires: list[bytes], to: ReliableChannel) -> list[ChannelEvent]:
        decoder = FrameDecoder()
        decoder.feed(b"".join(wires))
        events: list[ChannelEvent] = []
        for frame in decoder.frames():
            new, _ = to.receive(frame)
            events += new
        return events


# --- sequence arithmetic ----------------------------------------------------------------------


def test_seq_after_wraps_to_one_not_zero() -> None:
    assert seq_after(0) == 1
    assert seq_after(1) == 2
    assert seq_after(UINT32_MAX - 1) == UINT32_MAX
    assert seq_after(UINT32_MAX) == 1


@pytest.mark.parametrize(
    ("newer", "older", "distance"),
    [
        (2, 1, 1),
        (1, 2, -1),
        (1, UINT32_MAX, 1),
        (UINT32_MAX, 1, -1),
        (3, UINT32_MAX - 1, 4),
        (5, 5, 0),
    ],
)
def test_seq_distance(newer: int, older: int, distance: int) -> None:
    assert seq_distance(newer, older) == distance


@settings(max_examples=200, deadline=None)
@given(st.integers(1, UINT32_MAX), st.integers(0, 2**31 - 2))
def test_seq_distance_inverts_stepping(start: int, steps: int) -> None:
    # Step with arithmetic instead of a loop: k steps of seq_after on the 1..2^32-1 circle.
    seq = (start - 1 + steps) % UINT32_MAX + 1
    assert seq_distance(seq, start) == steps
    assert seq_distance(start, seq) == -steps
    assert seq_distance(seq_after(seq), seq) == 1


# --- sending ----------------------------------------------------------------------------------


def test_numbering_starts_at_one_and_counts_every_numbered_frame() -> None:
    channel = ReliableChannel()
    seqs = [_frame(channel.send(m, 0.0)).seq for m in (Heartbeat(1.0), CAPS_A, Heartbeat(2.0))]
    assert seqs == [1, 2, 3]
    assert _frame(channel.ack(7)).seq == 4  # acks are numbered too
    assert channel.stats.sent == 4


def test_session_frames_carry_seq_zero_and_do_not_consume_numbers() -> None:
    channel = ReliableChannel()
    assert _frame(channel.session_frame(Hello("node-1"))).seq == 0
    assert _frame(channel.send(Heartbeat(1.0), 0.0)).seq == 1
    assert channel.pending == 0


def test_best_effort_messages_are_not_kept() -> None:
    channel = ReliableChannel()
    channel.send(Heartbeat(1.0), 0.0)
    channel.send(SENSOR_8GPU, 0.0)
    assert channel.pending == 0
    assert channel.next_deadline() is None
    assert channel.poll(100.0) == ([], [])


def test_seq_wraps_at_uint32_max() -> None:
    channel = ReliableChannel()
    channel._tx_seq = UINT32_MAX - 2  # as if 2^32-3 frames had been sent
    seqs = [_frame(channel.send(Heartbeat(1.0), 0.0)).seq for _ in range(4)]
    assert seqs == [UINT32_MAX - 1, UINT32_MAX, 1, 2]


def test_reliable_message_waits_for_its_ack_across_the_wrap() -> None:
    node, board = ReliableChannel(), ReliableChannel()
    node._tx_seq = UINT32_MAX - 1
    wire = node.send(CAPS_A, 0.0)
    assert _frame(wire).seq == UINT32_MAX
    events, _ = _receive(board, wire)
    assert events == [Delivered(UINT32_MAX, CAPS_A)]
    events, _ = _receive(node, board.ack(UINT32_MAX))
    assert events == [Acknowledged(UINT32_MAX, CAPS_A, AckStatus.OK)]
    assert _frame(node.send(CAPS_B, 0.0)).seq == 1


# --- ack, retransmit, give up -------------------------------------------------------------------


def test_ack_completes_a_reliable_message() -> None:
    link = Link()
    wire = link.node.send(CAPS_A, link.clock.now)
    assert link.node.pending == 1
    [delivered] = link.carry([wire], link.board)
    assert delivered == Delivered(1, CAPS_A)
    ack = link.board.ack(delivered.seq)
    assert _frame(ack).message == Ack(ack_seq=1, status=AckStatus.OK)
    [acknowledged] = link.carry([ack], link.node)
    assert acknowledged == Acknowledged(1, CAPS_A, AckStatus.OK)
    assert isinstance(acknowledged.status, AckStatus)
    assert link.node.pending == 0
    assert link.node.poll(link.clock.advance(10.0)) == ([], [])


def test_ack_status_is_passed_on() -> None:
    link = Link()
    wire = link.node.send(SetRail(gpu=9, on=True), link.clock.now)
    [delivered] = link.carry([wire], link.board)
    [acknowledged] = link.carry([link.board.ack(delivered.seq, AckStatus.BAD_ARGUMENT)], link.node)
    assert acknowledged == Acknowledged(1, SetRail(9, True), AckStatus.BAD_ARGUMENT)


def test_unknown_ack_status_is_passed_on_as_an_integer() -> None:
    node = ReliableChannel()
    node.send(CAPS_A, 0.0)
    events, _ = node.receive(_numbered(1, Ack(ack_seq=1, status=200)))
    assert events == [Acknowledged(1, CAPS_A, 200)]


def test_retransmits_after_the_timeout_with_identical_bytes() -> None:
    clock = FakeClock()
    channel = ReliableChannel()
    wire = channel.send(CAPS_A, clock.now)
    assert channel.next_deadline() == pytest.approx(clock.now + 0.25)
    assert channel.poll(clock.advance(0.2499)) == ([], [])
    events, out = channel.poll(clock.advance(0.0001))
    assert events == [] and out == [wire]
    assert channel.stats.retransmits == 1
    assert channel.next_deadline() == pytest.approx(clock.now + 0.25)
    assert channel.poll(clock.advance(0.1)) == ([], [])


def test_gives_up_after_five_tries_by_default() -> None:
    clock = FakeClock()
    channel = ReliableChannel()
    start = clock.now
    sent = [channel.send(CAPS_A, clock.now)]
    events: list[ChannelEvent] = []
    while not events:
        clock.advance(1 / 16)  # exact in binary, so deadlines are hit on the dot
        events, out = channel.poll(clock.now)
        sent += out
    assert len(sent) == 5  # the first transmission and four retransmissions
    assert len(set(sent)) == 1
    assert events == [GaveUp(1, CAPS_A)]
    assert clock.now - start == pytest.approx(5 * 0.25)
    assert channel.pending == 0
    assert channel.stats.gave_up == 1 and channel.stats.retransmits == 4
    assert channel.poll(clock.advance(10.0)) == ([], [])


def test_retry_parameters_are_configurable() -> None:
    clock = FakeClock()
    channel = ReliableChannel(retry_timeout=1.0, max_tries=2)
    channel.send(CAPS_A, clock.now)
    assert channel.poll(clock.advance(0.5)) == ([], [])
    assert len(channel.poll(clock.advance(0.5))[1]) == 1
    events, out = channel.poll(clock.advance(1.0))
    assert events == [GaveUp(1, CAPS_A)] and out == []


def test_ack_lost_then_retransmission_is_re_acked_not_redelivered() -> None:
    link = Link()
    wire = link.node.send(CAPS_A, link.clock.now)
    [delivered] = link.carry([wire], link.board)
    link.board.ack(delivered.seq)  # this ack is lost on the way
    _, out = link.node.poll(link.clock.advance(0.25))
    assert out == [wire]
    events, re_acks = _receive(link.board, out[0])
    assert events == []  # not executed twice
    assert link.board.stats.duplicates == 1
    assert len(re_acks) == 1
    assert _frame(re_acks[0]).message == Ack(ack_seq=1, status=AckStatus.OK)
    [acknowledged] = link.carry(re_acks, link.node)
    assert acknowledged == Acknowledged(1, CAPS_A, AckStatus.OK)


def test_re_ack_repeats_the_first_status() -> None:
    board = ReliableChannel()
    wire = ReliableChannel().send(SetRail(31, True), 0.0)
    _receive(board, wire)
    board.ack(1, AckStatus.BAD_ARGUMENT)
    _, re_acks = _receive(board, wire)
    assert _frame(re_acks[0]).message == Ack(ack_seq=1, status=AckStatus.BAD_ARGUMENT)


def test_duplicate_before_the_application_acked_is_dropped_silently() -> None:
    board = ReliableChannel()
    wire = ReliableChannel().send(CAPS_A, 0.0)
    assert _receive(board, wire)[0] == [Delivered(1, CAPS_A)]
    assert _receive(board, wire) == ([], [])
    assert board.stats.duplicates == 1


def test_duplicate_best_effort_frames_are_dropped_without_ack() -> None:
    board = ReliableChannel()
    wire = ReliableChannel().send(Heartbeat(5.0), 0.0)
    assert _receive(board, wire)[0] == [Delivered(1, Heartbeat(5.0))]
    assert _receive(board, wire) == ([], [])


def test_duplicate_ack_is_ignored() -> None:
    node = ReliableChannel()
    node.send(CAPS_A, 0.0)
    ack = ReliableChannel().ack(1)
    assert len(_receive(node, ack)[0]) == 1
    assert _receive(node, ack) == ([], [])
    assert node.stats.duplicates == 1


def test_ack_for_nothing_pending_is_ignored() -> None:
    node = ReliableChannel()
    assert node.receive(_numbered(1, Ack(ack_seq=99))) == ([], [])


# --- superseding --------------------------------------------------------------------------------


def test_newer_set_caps_supersedes_an_unacked_older_one() -> None:
    clock = FakeClock()
    node = ReliableChannel()
    node.send(CAPS_A, clock.now)
    wire_b = node.send(CAPS_B, clock.advance(0.1))
    assert node.pending == 1
    assert node.stats.superseded == 1
    # The ack of the superseded message settles nothing (it is reported as a late answer) ...
    assert node.receive(_numbered(1, Ack(ack_seq=1))) == ([Acknowledged(1, CAPS_A, AckStatus.OK, superseded=True)], [])
    assert node.receive(_numbered(3, Ack(ack_seq=1))) == ([], [])  # and only once
    assert node.pending == 1
    # ... only the newer one is retransmitted ...
    _, out = node.poll(clock.advance(0.25))
    assert out == [wire_b]
    # ... and its ack completes it.
    events, _ = node.receive(_numbered(4, Ack(ack_seq=2)))
    assert events == [Acknowledged(2, CAPS_B, AckStatus.OK)]
    assert node.pending == 0


def test_a_chain_of_superseded_messages_that_nobody_answers_is_reported_stalled() -> None:
    """SET_CAPS every 0.1 s, each superseding the last: GaveUp never comes (ICD §3.5)."""
    clock = FakeClock()
    node = ReliableChannel()  # 0.25 s × 5 tries: gives up after 1.25 s
    events: list[object] = []
    for i in range(20):
        node.send(CAPS_A if i % 2 else CAPS_B, clock.advance(0.1) if i else clock.now)
        events += node.poll(clock.now)[0]
    stalls = [e for e in events if isinstance(e, Stalled)]
    assert len(stalls) == 1 and stalls[0].since == 1000.0 and stalls[0].key == CAPS_A.supersede_key()
    assert not [e for e in events if isinstance(e, GaveUp)]
    assert node.stats.stalled == 1


def test_a_late_answer_to_a_superseded_message_keeps_its_chain_from_stalling() -> None:
    """A board whose ACKs arrive after the next SET_CAPS went out is slow, not deaf."""
    clock = FakeClock()
    node = ReliableChannel()
    events: list[object] = []
    for i in range(30):
        node.send(CAPS_A if i % 2 else CAPS_B, clock.advance(0.1) if i else clock.now)
        if i:  # the answer to the previous one arrives just after this one was sent
            events += node.receive(_numbered(i, Ack(ack_seq=i)))[0]
        events += node.poll(clock.now)[0]
    assert not [e for e in events if isinstance(e, Stalled | GaveUp)]
    assert all(e.superseded for e in events if isinstance(e, Acknowledged))


def test_set_rail_supersedes_only_the_same_gpu() -> None:
    node = ReliableChannel()
    node.send(SetRail(1, False), 0.0)
    node.send(SetRail(2, False), 0.0)
    node.send(SetRail(1, True), 0.0)
    assert node.pending == 2
    assert node.stats.superseded == 1
    node.send(CAPS_A, 0.0)  # different kinds never supersede each other
    assert node.pending == 3


def test_hil_set_supersedes_only_the_same_name() -> None:
    harness = ReliableChannel()
    harness.send(HilSet("demand_w", 600.0), 0.0)
    harness.send(HilSet("sink_c", -50.0), 0.0)
    harness.send(HilSet("demand_w", 650.0), 0.0)
    assert harness.pending == 2
    assert harness.stats.superseded == 1


def test_acked_message_is_not_superseded() -> None:
    node = ReliableChannel()
    node.send(CAPS_A, 0.0)
    node.receive(_numbered(1, Ack(ack_seq=1)))
    node.send(CAPS_B, 0.0)
    assert node.stats.superseded == 0
    assert node.pending == 1


# --- loss counting, late frames, restarts -------------------------------------------------------


def test_gaps_count_as_lost() -> None:
    rx = ReliableChannel()
    for seq in (1, 2, 5, 6, 10):
        assert rx.receive(_numbered(seq))[0] == [Delivered(seq, Heartbeat(1.0))]
    assert rx.stats.lost == 2 + 3
    assert rx.stats.received == 5


def test_gap_across_the_wrap() -> None:
    rx = ReliableChannel()
    for seq in (UINT32_MAX - 2, UINT32_MAX - 1, 2, 3):
        assert len(rx.receive(_numbered(seq))[0]) == 1
    assert rx.stats.lost == 2  # 2^32-1 and 1
    assert rx.stats.peer_restarts == 0


def test_no_loss_across_the_wrap() -> None:
    rx = ReliableChannel()
    for seq in (UINT32_MAX - 1, UINT32_MAX, 1, 2):
        rx.receive(_numbered(seq))
    assert rx.stats.lost == 0
    assert rx.stats.duplicates == 0


def test_late_frame_is_delivered_and_fills_its_gap() -> None:
    rx = ReliableChannel()
    for seq in (1, 2, 5):
        rx.receive(_numbered(seq))
    assert rx.stats.lost == 2
    events, _ = rx.receive(_numbered(3, Heartbeat(3.0)))
    assert events == [Delivered(3, Heartbeat(3.0))]
    assert rx.stats.lost == 1
    assert rx.receive(_numbered(3)) == ([], [])  # but only once
    assert rx.stats.duplicates == 1
    assert rx.stats.lost == 1


def test_late_frame_within_the_window_across_the_wrap() -> None:
    rx = ReliableChannel()
    rx.receive(_numbered(UINT32_MAX - 1))
    rx.receive(_numbered(2))
    assert rx.stats.lost == 2
    assert len(rx.receive(_numbered(UINT32_MAX))[0]) == 1
    assert rx.stats.lost == 1


def test_frame_far_behind_is_a_peer_restart() -> None:
    rx = ReliableChannel()
    for seq in range(1, RX_WINDOW + 10):
        rx.receive(_numbered(seq))
    assert rx.stats.lost == 0
    events, _ = rx.receive(_numbered(1, Heartbeat(9.0)))
    assert events == [Delivered(1, Heartbeat(9.0))]
    assert rx.stats.peer_restarts == 1
    rx.receive(_numbered(2))
    assert rx.stats.lost == 0 and rx.stats.duplicates == 0


def test_duplicates_are_recognised_within_the_window_only() -> None:
    rx = ReliableChannel()
    for seq in range(1, 3 * RX_WINDOW):
        rx.receive(_numbered(seq))
    newest = 3 * RX_WINDOW - 1
    assert rx.receive(_numbered(newest - RX_WINDOW + 1)) == ([], [])
    assert rx.stats.duplicates == 1


def test_session_frames_are_always_delivered() -> None:
    rx = ReliableChannel()
    hello = Hello("node-1")
    for _ in range(3):
        assert rx.receive(Frame(PROTOCOL_VERSION, 0, hello))[0] == [Delivered(0, hello)]
    ack = HelloAck(1, "b", "fw", 2, 200.0, 700.0, 10.0, 2.0)
    assert rx.receive(Frame(PROTOCOL_VERSION, 0, ack))[0] == [Delivered(0, ack)]
    assert rx.stats.duplicates == 0 and rx.stats.lost == 0


@pytest.mark.parametrize("message", [CAPS_A, Heartbeat(1.0)], ids=["reliable", "best-effort"])
def test_numbered_message_with_seq_zero_is_dropped(message: Message) -> None:
    """Sequence 0 belongs to HELLO and HELLO_ACK only (ICD §3.1).

    A reliable message numbered 0 cannot be acknowledged (ACK.ack_seq is 1..2^32-1), so a
    receiver must drop it.  Finds a bug: the channel delivers it, and a caller that acks
    what it is delivered then raises LocalProtocolError because of the peer's mistake.
    """
    board = ReliableChannel()
    events, out = board.receive(Frame(PROTOCOL_VERSION, 0, message))
    assert events == [] and out == []


def test_reset_starts_a_new_session() -> None:
    channel = ReliableChannel()
    channel.send(CAPS_A, 0.0)
    channel.send(Heartbeat(1.0), 0.0)
    for seq in (1, 2, 3):
        channel.receive(_numbered(seq))
    channel.reset()
    assert channel.pending == 0
    assert _frame(channel.send(Heartbeat(1.0), 0.0)).seq == 1
    # Numbers seen before the reset are new again.
    assert len(channel.receive(_numbered(1))[0]) == 1
    assert channel.stats.duplicates == 0


def test_retransmission_gets_through_after_losses() -> None:
    """An unreliable path: each try is lost until the fourth; the fourth gets through."""
    link = Link()
    wire = link.node.send(CAPS_A, link.clock.now)
    outbound = [wire]
    for _ in range(3):
        outbound = link.node.poll(link.clock.advance(0.25))[1]  # all lost
    [delivered] = link.carry(outbound, link.board)
    assert delivered.seq == 1
    [acknowledged] = link.carry([link.board.ack(1)], link.node)
    assert isinstance(acknowledged, Acknowledged)
    assert link.node.stats.retransmits == 3
    assert link.node.stats.gave_up == 0
