"""firmware_sim firmware and HIL port logic, sans-I/O: bytes in, bytes out, time passed in."""

from __future__ import annotations

import math

import pytest

from firmware_sim.config import FirmwareConfig, PlantConfig
from firmware_sim.firmware import Firmware
from firmware_sim.hil_port import HilPort
from firmware_sim.plant import FirstOrderPlant
from node.link.codec import Frame, FrameDecoder, encode_frame
from node.link.messages import (
    Ack,
    AckStatus,
    BoardFeature,
    Heartbeat,
    Hello,
    HelloAck,
    HilGet,
    HilSet,
    HilValue,
    Message,
    Sensor,
    SensorFlag,
    SetCaps,
    SetRail,
    StepDone,
)

GPUS = 4


def make(*, watchdog_s: float = 3.0, utc: float = 1.7e9, session: bool = True) -> Firmware:
    """A board; with ``session`` a node has opened one (HELLO at wall 0, its answer dropped)."""
    plant = FirstOrderPlant(config=PlantConfig(gpu_count=GPUS), seed=1)
    config = FirmwareConfig(board_id="bench-7", watchdog_s=watchdog_s, utc_at_boot=utc)
    fw = Firmware(plant=plant, config=config, wall=0.0)
    if session:
        fw.receive(encode_frame(Hello(node_id="node"), 0), wall=0.0)
    return fw


def frames(data: bytes) -> list[Frame]:
    decoder = FrameDecoder()
    decoder.feed(data)
    out = decoder.frames()
    assert decoder.stats.crc_errors == decoder.stats.decode_errors == 0
    return out


def only(data: bytes, kind: type[Message]) -> list[Message]:
    return [f.message for f in frames(data) if isinstance(f.message, kind)]


def sensor(fw: Firmware, wall: float) -> Sensor:
    (msg,) = only(fw.sensor_frame(wall=wall), Sensor)
    assert isinstance(msg, Sensor)
    return msg


def test_hello_gets_hello_ack_describing_the_board() -> None:
    fw = make(session=False)
    out = fw.receive(encode_frame(Hello(node_id="node-a"), 0), wall=0.1)
    (frame,) = frames(out)
    assert frame.seq == 0
    ack = frame.message
    assert isinstance(ack, HelloAck)
    assert (ack.version, ack.board_id, ack.gpu_count) == (1, "bench-7", GPUS)
    assert (ack.cap_min_w, ack.cap_max_w) == (200.0, 700.0)
    assert (ack.sensor_rate_hz, ack.watchdog_s) == (10.0, 3.0)
    assert ack.fw_version.startswith("sim-")
    assert ack.features == BoardFeature.LOCKSTEP  # the first-order plant keeps no checkpoints
    assert fw.node_id == "node-a"


@pytest.mark.parametrize(
    ("lo", "hi", "version"), [(1, 1, 1), (1, 7, 1), (2, 7, 0)]
)  # fmt: skip
def test_hello_negotiates_highest_common_version(lo: int, hi: int, version: int) -> None:
    fw = make(session=False)
    out = fw.receive(encode_frame(Hello(node_id="n", min_version=lo, max_version=hi), 0), wall=0.1)
    (ack,) = only(out, HelloAck)
    assert isinstance(ack, HelloAck) and ack.version == version


def test_numbered_frames_before_any_hello_are_ignored_and_do_not_feed_the_watchdog() -> None:
    """ICD §4.2 S4, §4.3: outside a session nothing is executed, acknowledged or a sign of life."""
    fw = make(session=False, watchdog_s=1.0)
    out = fw.receive(encode_frame(SetCaps(cap_w=(300.0,) * GPUS), 1) + encode_frame(Heartbeat(1.0), 2), wall=0.5)
    assert out == b"" and fw.plant.cap_w.tolist() == [700.0] * GPUS
    assert fw.link.stats.ignored_outside_session == 2
    fw.poll(wall=1.1)
    assert fw.watchdog_safe  # armed from boot, and nothing fed it


def test_hello_does_not_feed_the_watchdog() -> None:
    fw = make(watchdog_s=1.0)
    for wall in (0.3, 0.6, 0.9, 1.2):
        fw.receive(encode_frame(Hello(node_id="n"), 0), wall=wall)
        fw.poll(wall=wall)
    assert fw.watchdog_safe and fw.plant.cap_w.tolist() == [200.0] * GPUS


def test_no_common_version_opens_no_session() -> None:
    fw = make(session=False)
    fw.receive(encode_frame(Hello(node_id="n", min_version=2, max_version=3), 0), wall=0.1)
    out = fw.receive(encode_frame(SetCaps(cap_w=(300.0,) * GPUS), 1), wall=0.2)
    assert out == b"" and fw.plant.cap_w.tolist() == [700.0] * GPUS


def test_hello_starts_a_new_session() -> None:
    fw = make()
    fw.receive(encode_frame(SetCaps(cap_w=(300.0,) * GPUS), 5), wall=0.1)
    assert sensor(fw, 0.2) is not None
    fw.receive(encode_frame(Hello(node_id="n"), 0), wall=0.3)
    # Numbering restarted: the next frame the board sends is 1 again ...
    (first,) = frames(fw.sensor_frame(wall=0.4))
    assert first.seq == 1
    # ... and the node's seq 5 is new again in this session, not a duplicate.
    out = fw.receive(encode_frame(SetCaps(cap_w=(400.0,) * GPUS), 5), wall=0.5)
    assert only(out, Ack) == [Ack(ack_seq=5, status=AckStatus.OK)]
    assert fw.plant.cap_w.tolist() == [400.0] * GPUS


def test_set_caps_is_acknowledged_and_applied() -> None:
    fw = make()
    caps = (250.0, 300.0, 650.0, 700.0)
    out = fw.receive(encode_frame(SetCaps(cap_w=caps), 1), wall=0.1)
    assert only(out, Ack) == [Ack(ack_seq=1, status=AckStatus.OK)]
    assert fw.plant.cap_w.tolist() == list(caps)
    assert sensor(fw, 0.2).cap_w == caps


@pytest.mark.parametrize(
    "caps",
    [(199.0, 300.0, 300.0, 300.0), (300.0, 300.0, 300.0, 701.0), (300.0,) * 3, (300.0,) * 5],
)
def test_bad_set_caps_is_refused_and_not_applied(caps: tuple[float, ...]) -> None:
    fw = make()
    out = fw.receive(encode_frame(SetCaps(cap_w=caps), 1), wall=0.1)
    assert only(out, Ack) == [Ack(ack_seq=1, status=AckStatus.BAD_ARGUMENT)]
    assert fw.plant.cap_w.tolist() == [700.0] * GPUS
    assert fw.stats.commands_refused == 1 and fw.stats.commands_applied == 0


def test_duplicate_set_caps_is_reacked_but_applied_once() -> None:
    fw = make()
    first = encode_frame(SetCaps(cap_w=(300.0,) * GPUS), 1)
    newer = encode_frame(SetCaps(cap_w=(500.0,) * GPUS), 2)
    assert only(fw.receive(first, wall=0.1), Ack) == [Ack(ack_seq=1)]
    assert only(fw.receive(newer, wall=0.2), Ack) == [Ack(ack_seq=2)]
    # The node missed our first ack and retransmits seq 1: ack again, do not apply again.
    assert only(fw.receive(first, wall=0.3), Ack) == [Ack(ack_seq=1)]
    assert fw.plant.cap_w.tolist() == [500.0] * GPUS
    assert fw.stats.commands_applied == 2
    assert fw.link.channel.stats.duplicates == 1


def test_duplicate_of_refused_command_is_refused_again() -> None:
    fw = make()
    bad = encode_frame(SetCaps(cap_w=(100.0,) * GPUS), 1)
    fw.receive(bad, wall=0.1)
    assert only(fw.receive(bad, wall=0.2), Ack) == [Ack(ack_seq=1, status=AckStatus.BAD_ARGUMENT)]


def test_set_rail_switches_a_gpu_and_refuses_a_missing_one() -> None:
    fw = make()
    fw.advance_to(5.0)
    out = fw.receive(
        encode_frame(SetRail(gpu=2, on=False), 1) + encode_frame(SetRail(gpu=GPUS, on=False), 2),
        wall=0.1,
    )
    assert only(out, Ack) == [
        Ack(ack_seq=1, status=AckStatus.OK),
        Ack(ack_seq=2, status=AckStatus.BAD_ARGUMENT),
    ]
    fw.advance_to(10.0)
    s = sensor(fw, 0.2)
    assert s.rails == 0b1011
    assert s.power_w[2] < 5.0 < s.power_w[1]


def test_reliable_message_for_another_port_is_unsupported() -> None:
    fw = make()
    out = fw.receive(encode_frame(HilSet(name="demand_w", value=600.0), 1), wall=0.1)
    assert only(out, Ack) == [Ack(ack_seq=1, status=AckStatus.UNSUPPORTED)]
    assert fw.plant.get_param("demand_w") == (500.0,) * GPUS


def test_input_byte_by_byte_with_garbage_counts_rx_errors() -> None:
    fw = make()
    wire = b"\x01\x02garbage\x00" + encode_frame(SetCaps(cap_w=(300.0,) * GPUS), 1)
    corrupt = bytearray(encode_frame(SetCaps(cap_w=(400.0,) * GPUS), 2))
    corrupt[3] ^= 0xFF
    out = b"".join(fw.receive(bytes([b]), wall=0.1) for b in wire + bytes(corrupt))
    assert only(out, Ack) == [Ack(ack_seq=1)]
    assert fw.plant.cap_w.tolist() == [300.0] * GPUS
    assert fw.rx_errors == 2
    assert sensor(fw, 0.2).rx_errors == 2


def test_sensor_frames_carry_board_time_and_utc() -> None:
    fw = make(utc=1.7e9)
    fw.advance_to(12.5)
    first = frames(fw.sensor_frame(wall=0.1))[0]
    s = first.message
    assert isinstance(s, Sensor)
    assert s.t_board == 12.5 and s.utc == 1.7e9 + 12.5
    assert s.gpu_count == GPUS and s.flags == 0 and s.rails == 0b1111
    assert all(t > 25.0 for t in s.temp_c)
    assert frames(fw.sensor_frame(wall=0.2))[0].seq == first.seq + 1


def test_watchdog_trips_after_wall_silence_and_clears_on_a_frame_of_the_session() -> None:
    fw = make(watchdog_s=3.0)
    fw.receive(encode_frame(SetCaps(cap_w=(600.0,) * GPUS), 1), wall=1.5)
    fw.advance_to(1000.0)  # board time racing ahead does not feed or starve the watchdog
    fw.poll(wall=4.4)
    assert not fw.watchdog_safe
    fw.poll(wall=4.6)
    assert fw.watchdog_safe and fw.stats.watchdog_trips == 1
    assert fw.plant.cap_w.tolist() == [200.0] * GPUS
    s = sensor(fw, 4.7)
    assert s.flags & SensorFlag.WATCHDOG_SAFE and s.cap_w == (200.0,) * GPUS
    fw.poll(wall=20.0)
    assert fw.stats.watchdog_trips == 1  # one trip per silence
    assert fw.get_param("watchdog_safe") == 1.0

    fw.receive(encode_frame(Hello(node_id="n"), 0), wall=21.0)
    assert fw.watchdog_safe  # HELLO is no sign of life (ICD §4.3)
    fw.receive(encode_frame(Heartbeat(uptime_s=21.0), 1), wall=21.05)
    assert not fw.watchdog_safe
    s = sensor(fw, 21.1)
    assert not s.flags & SensorFlag.WATCHDOG_SAFE
    assert s.cap_w == (200.0,) * GPUS  # caps stay down until the node sets them
    fw.receive(encode_frame(SetCaps(cap_w=(450.0,) * GPUS), 2), wall=21.2)
    assert fw.plant.cap_w.tolist() == [450.0] * GPUS


def test_watchdog_is_armed_from_boot_and_any_valid_frame_of_the_session_clears_it() -> None:
    fw = make(watchdog_s=0.5)
    fw.poll(wall=0.4)
    assert not fw.watchdog_safe
    fw.receive(b"not a frame\x00", wall=0.45)  # garbage is not a sign of life
    fw.poll(wall=0.6)
    assert fw.watchdog_safe
    fw.receive(encode_frame(Heartbeat(uptime_s=3.0), 1), wall=0.7)
    assert not fw.watchdog_safe


def test_a_late_frame_still_trips_the_watchdog_first() -> None:
    """A frame arriving after the deadline, with no poll in between, cannot hide the silence."""
    fw = make(watchdog_s=1.0)
    fw.receive(encode_frame(Heartbeat(uptime_s=1.0), 1), wall=5.0)
    assert not fw.watchdog_safe and fw.stats.watchdog_trips == 1
    assert fw.plant.cap_w.tolist() == [200.0] * GPUS


def test_heartbeat_only_when_nothing_else_was_sent() -> None:
    fw = make(watchdog_s=100.0)
    fw.advance_to(2.0)
    hb_s = fw.config.heartbeat_s
    assert hb_s <= 0.25  # ICD: the board is never silent for longer than 0.25 s
    assert fw.poll(wall=hb_s / 2) == b""
    (hb,) = only(fw.poll(wall=hb_s), Heartbeat)
    assert hb == Heartbeat(uptime_s=2.0)
    fw.sensor_frame(wall=1.5 * hb_s)
    assert fw.poll(wall=2.4 * hb_s) == b""  # the sensor frame was a sign of life


# --- HIL port ---------------------------------------------------------------------------


def hil_pair(*, session: bool = True) -> tuple[Firmware, HilPort]:
    fw = make()
    hil = HilPort(target=fw)
    if session:
        hil.receive(encode_frame(Hello(node_id="harness"), 0), wall=0.0)
    return fw, hil


def test_hil_set_applies_and_acks() -> None:
    fw, hil = hil_pair()
    out = hil.receive(encode_frame(HilSet(name="demand_w", value=650.0), 1), wall=0.1)
    assert only(out, Ack) == [Ack(ack_seq=1, status=AckStatus.OK)]
    assert fw.plant.get_param("demand_w") == (650.0,) * GPUS
    per_gpu = (100.0, 200.0, 300.0, 400.0)
    hil.receive(encode_frame(HilSet(name="demand_w", value=per_gpu), 2), wall=0.2)
    assert fw.plant.get_param("demand_w") == per_gpu


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("no_such", 1.0),
        ("temp_c", 50.0),
        ("t_board", 3.0),
        ("watchdog_safe", 0.0),
        ("demand_w", (1.0, 2.0)),
        ("demand_w", math.nan),
        ("sink_c", (1.0,) * GPUS),
    ],
)
def test_hil_set_refuses_bad_names_and_values(name: str, value: float | tuple[float, ...]) -> None:
    fw, hil = hil_pair()
    before = {n: fw.get_param(n) for n in ("demand_w", "sink_c")}
    out = hil.receive(encode_frame(HilSet(name=name, value=value), 1), wall=0.1)
    assert only(out, Ack) == [Ack(ack_seq=1, status=AckStatus.BAD_ARGUMENT)]
    assert {n: fw.get_param(n) for n in before} == before


def test_hil_get_answers_with_request_seq_and_nan_for_unknown() -> None:
    fw, hil = hil_pair()
    fw.advance_to(30.0)
    wire = b"".join(
        encode_frame(HilGet(name=name), seq)
        for seq, name in enumerate(["t_board", "temp_c", "watchdog_safe", "nonsense"], start=7)
    )
    values = only(hil.receive(wire, wall=0.1), HilValue)
    assert [(v.name, v.ref) for v in values] == [  # type: ignore[attr-defined]
        ("t_board", 7),
        ("temp_c", 8),
        ("watchdog_safe", 9),
        ("nonsense", 10),
    ]
    t_board, temps, safe, unknown = (v.value for v in values)  # type: ignore[attr-defined]
    assert t_board == 30.0 and safe == 0.0
    assert temps == tuple(fw.plant.temp_c.tolist()) and len(temps) == GPUS
    assert math.isnan(unknown)


def test_hil_port_answers_hello_and_does_not_feed_the_link_watchdog() -> None:
    fw, hil = hil_pair(session=False)
    (ack,) = only(hil.receive(encode_frame(Hello(node_id="harness"), 0), wall=0.1), HelloAck)
    assert isinstance(ack, HelloAck) and ack.board_id == "bench-7"
    hil.receive(encode_frame(HilGet(name="t_board"), 1), wall=3.5)
    fw.poll(wall=3.5)
    assert fw.watchdog_safe
    assert fw.node_id == "node"  # the harness is not the node


def test_hil_port_ignores_numbered_frames_before_its_hello() -> None:
    fw, hil = hil_pair(session=False)
    assert hil.receive(encode_frame(HilSet(name="demand_w", value=650.0), 1), wall=0.1) == b""
    assert fw.plant.get_param("demand_w") == (500.0,) * GPUS


def test_duplicate_hil_get_is_answered_once() -> None:
    _fw, hil = hil_pair()
    wire = encode_frame(HilGet(name="t_board"), 4)
    assert len(only(hil.receive(wire, wall=0.1), HilValue)) == 1
    assert only(hil.receive(wire, wall=0.2), HilValue) == []


def test_hil_refuses_link_commands() -> None:
    fw, hil = hil_pair()
    out = hil.receive(encode_frame(SetCaps(cap_w=(300.0,) * GPUS), 1), wall=0.1)
    assert only(out, Ack) == [Ack(ack_seq=1, status=AckStatus.UNSUPPORTED)]
    assert fw.plant.cap_w.tolist() == [700.0] * GPUS


def test_checkpoint_command_pauses_work_then_keeps_progress() -> None:
    from firmware_sim.firmware import Firmware
    from firmware_sim.spaceplant import SpacePlant
    from node.link.messages import Checkpoint

    plant = SpacePlant(seed=3)
    fw = Firmware(plant=plant, config=FirmwareConfig(board_id="ckpt", watchdog_s=100.0), wall=0.0)
    (hello_ack,) = only(fw.receive(encode_frame(Hello("node"), 0), wall=0.0), HelloAck)
    assert hello_ack.features == BoardFeature.CHECKPOINTS | BoardFeature.LOCKSTEP
    fw.advance_to(10.0)
    before = plant.read().progress[2]
    (ack,) = only(fw.receive(encode_frame(Checkpoint(gpu=2, pause_s=5.0), 1), wall=0.1), Ack)
    assert ack.status == AckStatus.OK
    fw.advance_to(13.0)
    r = plant.read()
    assert r.progress[2] == before and r.ckpt == 1 << 2  # paused while writing
    fw.advance_to(16.0)
    fw.advance_to(20.0)
    r = plant.read()
    assert r.saved[2] == before and r.ckpt == 0 and r.progress[2] > before


def test_a_plant_without_checkpoints_refuses_them() -> None:
    from node.link.messages import Checkpoint

    fw = make()
    fw.receive(encode_frame(Hello("node"), 0), wall=0.0)
    (ack,) = only(fw.receive(encode_frame(Checkpoint(gpu=0, pause_s=5.0), 1), wall=0.1), Ack)
    assert ack.status == AckStatus.UNSUPPORTED


def test_step_done_for_a_clock_the_board_has_not_reached_is_ignored() -> None:
    # The node finished t = 500 s just as the board reset: that STEP_DONE arrives when the
    # new clock reads 0.  Believing it would let lockstep run free for 500 board seconds.
    fw = make()
    fw.receive(encode_frame(Hello(node_id="n"), 0), wall=0.0)
    fw.advance_to(500.0)
    fw.receive(encode_frame(StepDone(t_board=500.0), 1), wall=0.1)
    assert fw.step_done_t == 500.0
    fw.reboot(wall=0.2)
    fw.receive(encode_frame(Hello(node_id="n"), 0), wall=0.25)  # the node noticed the reboot
    fw.receive(encode_frame(StepDone(t_board=500.0), 1), wall=0.3)
    assert fw.step_done_t == -1.0 and fw.stats.stale_step_done == 1
    fw.receive(encode_frame(Hello(node_id="n"), 0), wall=0.4)
    fw.advance_to(1.0)
    fw.receive(encode_frame(StepDone(t_board=1.0), 1), wall=0.5)
    assert fw.step_done_t == 1.0
