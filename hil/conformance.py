"""``umbra-hil conformance PORT [--hil PORT]``: check a board against docs/ICD.md.

Talks to the board's main port as a node would, but frame by frame (the shared numbering,
its own retransmissions, deliberate mistakes), and to the HIL port as a harness — which it
opens with HELLO before any numbered frame.  Each check says which ICD rule it exercises
and, when the board breaks it, what it did instead.  No node may be attached to the main
port while this runs.  The board is left as it was found: a fresh session, its caps and
rails, and every HIL value the checks changed put back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from node.link.channel import ReliableChannel
from node.link.codec import FrameDecoder, encode_frame, frame_from_body
from node.link.messages import (
    Ack,
    AckStatus,
    BoardFeature,
    Checkpoint,
    Heartbeat,
    Hello,
    HelloAck,
    HilGet,
    HilSet,
    HilValue,
    Message,
    ResetBoard,
    Restore,
    Sensor,
    SensorFlag,
    SetCaps,
    SetRail,
    StepDone,
)
from node.link.serial_board import open_serial

#: Names every board with a HIL port must serve (ICD §4.12, "Required").
REQUIRED_HIL = ("demand_w", "sink_c", "t_board", "temp_c", "cap_w", "power_w", "progress", "watchdog_safe")


@dataclass
class Check:
    name: str
    icd: str
    ok: bool
    detail: str = ""
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Rx:
    seq: int
    message: Message
    at: float


class Port:
    """One serial port, frame by frame: write bytes, read decoded frames with arrival times.

    Numbering is the shared core's (:class:`~node.link.channel.ReliableChannel`): HELLO
    restarts it (ICD §4.2 S1), deliberately bad frames take their numbers from it too.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.decoder = FrameDecoder()
        self.channel = ReliableChannel()
        self.frames: list[Rx] = []
        self._transport: asyncio.Transport | None = None
        self._new = asyncio.Event()
        self.last_write = 0.0

    async def open(self) -> None:
        self._transport, _ = await open_serial(self.url, self._received)
        self.write(b"\x00")  # end whatever partial frame the line holds (§2.7)

    def _received(self, data: bytes) -> None:
        self.decoder.feed(data)
        while (f := self.decoder.next_frame()) is not None:
            self.frames.append(Rx(f.seq, f.message, time.monotonic()))
        self._new.set()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)
        self.last_write = time.monotonic()

    def next_seq(self) -> int:
        return self.channel.number()

    def frame(self, msg: Message, seq: int | None = None) -> tuple[int, bytes]:
        s = self.next_seq() if seq is None else seq
        return s, encode_frame(msg, s)

    def send(self, msg: Message) -> int:
        s, wire = self.frame(msg)
        self.write(wire)
        return s

    def mark(self) -> int:
        return len(self.frames)

    async def wait(self, pred: Callable[[Rx], bool], timeout: float, since: int = 0) -> Rx | None:
        deadline = time.monotonic() + timeout
        i = since
        while True:
            while i < len(self.frames):
                if pred(self.frames[i]):
                    return self.frames[i]
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    def since(self, mark: int) -> list[Rx]:
        return self.frames[mark:]

    async def ack(self, seq: int, timeout: float = 1.0, since: int = 0) -> Rx | None:
        return await self.wait(lambda r: isinstance(r.message, Ack) and r.message.ack_seq == seq, timeout, since)

    async def hello(self, lo: int = 1, hi: int = 1, name: str = "umbra-conformance",
                    timeout: float = 3.0) -> HelloAck | None:
        self.last_hello_ack = await self.hello_rx(lo, hi, name, timeout)
        return self.last_hello_ack.message if self.last_hello_ack is not None else None  # type: ignore[return-value]

    async def hello_rx(self, lo: int = 1, hi: int = 1, name: str = "umbra-conformance",
                       timeout: float = 3.0) -> Rx | None:
        """HELLO until answered; the answer as received (its seq included)."""
        mark = self.mark()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.channel.reset()
            self.write(self.channel.session_frame(Hello(node_id=name, min_version=lo, max_version=hi)))
            got = await self.wait(lambda r: isinstance(r.message, HelloAck), 0.5, mark)
            if got is not None:
                return got
        return None

    async def sensor(self, timeout: float = 3.0, since: int | None = None) -> Sensor | None:
        got = await self.wait(lambda r: isinstance(r.message, Sensor), timeout,
                              self.mark() if since is None else since)
        return got.message if got is not None and isinstance(got.message, Sensor) else None


def raw_frame(body_obj: Any) -> bytes:
    return frame_from_body(msgpack.packb(body_obj, use_bin_type=True))


class Conformance:
    #: The groups of checks, in the order they run (``run(only=...)`` picks some; the
    #: handshake always runs first, the restore of what was changed always last).
    GROUPS = ("versions", "numbering", "sessions", "sensor_stream", "idle_heartbeat", "commands", "reliability",
              "jobs", "watchdog", "lockstep", "reset", "hil_port")

    def __init__(self, port: str, hil: str | None) -> None:
        self.main = Port(port)
        self.hil = Port(hil) if hil else None
        self.results: list[Check] = []
        self.info: HelloAck | None = None
        self._beat: asyncio.Task[None] | None = None
        self._beating = asyncio.Event()
        self._hil_ok = False
        self._saved_hil: dict[str, Any] = {}  # HIL values we changed, to put back
        self._saved_caps: tuple[float, ...] | None = None
        self._saved_rails: int | None = None

    def record(self, name: str, icd: str, ok: bool, detail: str = "", skipped: bool = False) -> bool:
        self.results.append(Check(name, icd, bool(ok), detail, skipped))
        return ok

    async def _heartbeat(self) -> None:
        while True:
            await self._beating.wait()
            with contextlib.suppress(Exception):
                self.main.send(Heartbeat(uptime_s=time.monotonic() % 1e9))
            await asyncio.sleep(0.2)

    # -- checks ------------------------------------------------------------------------------

    async def handshake(self) -> bool:
        rx = await self.main.hello_rx()
        if rx is None:
            return self.record("handshake", "§4.2 S2", False, "no HELLO_ACK within 3 s to HELLO(1..1)")
        ack = rx.message
        assert isinstance(ack, HelloAck)
        self.info = ack
        ok = ack.version == 1 and 1 <= ack.gpu_count <= 32 and ack.cap_min_w <= ack.cap_max_w
        self.record("handshake", "§4.2 S2, S6", ok,
                    f"board {ack.board_id} fw {ack.fw_version}: v{ack.version}, {ack.gpu_count} GPUs, caps "
                    f"{ack.cap_min_w:g}-{ack.cap_max_w:g} W, {ack.sensor_rate_hz:g} Hz, watchdog {ack.watchdog_s:g} s, "
                    f"features {ack.features:#x}")
        self.record("HELLO_ACK carries seq 0", "§3.1, §4.1", rx.seq == 0, f"seq {rx.seq}")
        return ok

    async def versions(self) -> None:
        wide = await self.main.hello(1, 9)
        self.record("version: common range picks the highest common", "§4.2 S4",
                    wide is not None and wide.version == min(9, wide.max_version),
                    f"HELLO(1..9) → version {wide.version if wide else 'no answer'}")
        none = await self.main.hello(200, 255)
        self.record("version: no common version answers 0", "§4.2 S4",
                    none is not None and none.version == 0,
                    f"HELLO(200..255) → version {none.version if none else 'no answer'}")
        # Without a common version there is no session: a numbered command is not executed.
        assert self.info is not None
        probe = await self._unexecuted_caps_probe()
        self.record("version 0: numbered frames are not executed", "§4.2 S4", probe is None, probe or "")
        again = await self.main.hello()
        self.record("version: session re-opens with HELLO(1..1)", "§4.2 S1/S2", again is not None and again.version == 1)

    async def numbering(self) -> None:
        mark = self.main.mark()
        rx = await self.main.hello_rx()
        index = self.main.frames.index(rx, mark) if rx is not None else None
        first = None
        if index is not None:
            later = await self.main.wait(lambda r: r.seq != 0, 2.0, index + 1)
            first = later.seq if later else None
        self.record("the board's numbering restarts at 1 after HELLO", "§3.1, §4.2 S2", first == 1,
                    f"first numbered frame after HELLO_ACK: {first}")
        # Our numbering restarts too: after a HELLO, seq 1 is new to the board, not a duplicate.
        assert self.info is not None
        self._beating.clear()  # our heartbeats would take the numbers this check needs
        await asyncio.sleep(0.25)
        for _ in range(40):
            self.main.send(Heartbeat(uptime_s=1.0))  # take us well past 1
        await self.main.hello()
        mark = self.main.mark()
        seq = self.main.send(SetRail(gpu=0, on=True))
        a = await self.main.ack(seq, 1.0, mark)
        self._beating.set()
        self.record("after HELLO the board takes our numbering from 1 again", "§4.2 S2, §3.6",
                    seq == 1 and _code(a) == AckStatus.OK, f"SET_RAIL seq {seq}: {_status(a)}")

    async def sessions(self) -> None:
        """HELLO is not a sign of life; frames before a session count for nothing (§4.3)."""
        assert self.info is not None
        # A reliable frame numbered 0 (not HELLO) is never executed (it cannot be acknowledged).
        n, lo, hi = self.info.gpu_count, self.info.cap_min_w, self.info.cap_max_w
        mid = round((lo + hi) / 2, 1)
        self.main.send(SetCaps(cap_w=(mid,) * n))
        await self._sensor_where(lambda s: all(abs(c - mid) < 1e-6 for c in s.cap_w), 3.0)
        self.main.write(encode_frame(SetCaps(cap_w=(lo,) * n), 0))
        await asyncio.sleep(0.5)
        s = await self.main.sensor(2.0)
        self.record("a reliable frame numbered 0 is not executed", "§3.1",
                    s is not None and all(abs(c - mid) < 1e-6 for c in s.cap_w),
                    f"caps after SET_CAPS(seq 0, {lo:g} W): {s.cap_w[:2] if s else '?'}")

    async def sensor_stream(self) -> None:
        assert self.info is not None
        mark = self.main.mark()
        await asyncio.sleep(2.0)
        frames = self.main.since(mark)
        sensors = [r for r in frames if isinstance(r.message, Sensor)]
        readings = [r.message for r in sensors if isinstance(r.message, Sensor)]
        ok_len = all(len(m.temp_c) == self.info.gpu_count for m in readings)
        ts = [m.t_board for m in readings]
        monotonic = all(b > a for a, b in itertools.pairwise(ts))
        self.record("SENSOR frames arrive with gpu_count-long arrays and rising t_board", "§4.4",
                    bool(sensors) and ok_len and monotonic, f"{len(sensors)} SENSOR frames in 2 s")
        saved = all(len(m.saved) == self.info.gpu_count for m in readings)
        if self.info.features & BoardFeature.CHECKPOINTS:
            self.record("a board that declares checkpoints sends saved[] per GPU", "§4.2, §4.4", bool(readings) and saved)
        arrivals = [r.at for r in frames]
        gap = max((b - a for a, b in itertools.pairwise(arrivals)), default=math.inf)
        self.record("board never silent > 0.25 s while a session is open", "§4.3", gap <= 0.3,
                    f"longest silence {gap:.3f} s")

    async def idle_heartbeat(self) -> None:
        """With no SENSOR due (board time held), the board still speaks: HEARTBEAT (§4.3)."""
        if not self._hil_ok or self.hil is None:
            self.record("HEARTBEAT when no SENSOR is due", "§4.3", True, "skipped: needs --hil", skipped=True)
            return
        if await self._hil_set(self.hil, "time.pause", 1.0) != AckStatus.OK:
            self.record("HEARTBEAT when no SENSOR is due", "§4.3", True,
                        "skipped: the board cannot hold its clock (time.pause)", skipped=True)
            return
        await asyncio.sleep(0.3)
        mark = self.main.mark()
        await asyncio.sleep(1.5)
        frames = self.main.since(mark)
        await self._hil_set(self.hil, "time.pause", 0.0)
        beats = [r for r in frames if isinstance(r.message, Heartbeat)]
        arrivals = [r.at for r in frames]
        gap = max((b - a for a, b in itertools.pairwise(arrivals)), default=math.inf)
        self.record("HEARTBEAT when no SENSOR is due", "§4.3", bool(beats) and gap <= 0.3,
                    f"{len(beats)} HEARTBEATs in 1.5 s with the clock held; longest silence {gap:.3f} s")

    async def commands(self) -> None:
        info = self.info
        assert info is not None
        n, lo, hi = info.gpu_count, info.cap_min_w, info.cap_max_w
        target = [round((lo + hi) / 2, 1)] * n
        mark = self.main.mark()
        seq = self.main.send(SetCaps(cap_w=tuple(target)))
        a = await self.main.ack(seq, 1.0, mark)
        self.record("SET_CAPS in range → ACK OK", "§4.5, §3.3", _code(a) == AckStatus.OK,
                    _status(a))
        s = await self._sensor_where(lambda s: all(abs(c - target[0]) < 1e-6 for c in s.cap_w), 3.0)
        self.record("SET_CAPS takes effect (SENSOR cap_w)", "§4.5", s is not None)
        if hi + 100 <= 5000:
            mark = self.main.mark()
            seq = self.main.send(SetCaps(cap_w=tuple([hi + 100.0] * n)))
            a = await self.main.ack(seq, 1.0, mark)
            bad = _code(a) == AckStatus.BAD_ARGUMENT
            s2 = await self.main.sensor(2.0)
            unchanged = s2 is not None and all(abs(c - target[0]) < 1e-6 for c in s2.cap_w)
            self.record("SET_CAPS out of range → BAD_ARGUMENT, nothing changes", "§4.5", bad and unchanged,
                        f"{_status(a)}; caps after: {s2.cap_w[:2] if s2 else '?'}")
            # One bad cap among good ones: nothing at all changes (the caps apply together).
            mixed = [lo] * n
            mixed[-1] = hi + 100.0
            mark = self.main.mark()
            seq = self.main.send(SetCaps(cap_w=tuple(mixed)))
            a = await self.main.ack(seq, 1.0, mark)
            await asyncio.sleep(0.3)
            s3 = await self.main.sensor(2.0)
            unchanged = s3 is not None and all(abs(c - target[0]) < 1e-6 for c in s3.cap_w)
            self.record("SET_CAPS with one cap out of range applies none of them", "§4.5",
                        _code(a) == AckStatus.BAD_ARGUMENT and unchanged,
                        f"{_status(a)}; caps after: {s3.cap_w if s3 else '?'}")
        if n < 32:
            mark = self.main.mark()
            seq = self.main.send(SetCaps(cap_w=tuple([lo] * (n + 1))))
            a = await self.main.ack(seq, 1.0, mark)
            self.record("SET_CAPS wrong length → BAD_ARGUMENT", "§4.5",
                        _code(a) == AckStatus.BAD_ARGUMENT, _status(a))
        mark = self.main.mark()
        seq = self.main.send(SetRail(gpu=0, on=False))
        a = await self.main.ack(seq, 1.0, mark)
        off = await self._sensor_where(lambda s: not s.rails & 1, 3.0)
        mark = self.main.mark()
        seq2 = self.main.send(SetRail(gpu=0, on=True))
        a2 = await self.main.ack(seq2, 1.0, mark)
        on = await self._sensor_where(lambda s: bool(s.rails & 1), 3.0)
        self.record("SET_RAIL off/on → ACK OK and SENSOR rails follow", "§4.6",
                    _code(a) == 0 and _code(a2) == 0
                    and off is not None and on is not None, f"{_status(a)}, {_status(a2)}")
        if n < 32:
            mark = self.main.mark()
            seq = self.main.send(SetRail(gpu=n, on=False))
            a = await self.main.ack(seq, 1.0, mark)
            self.record("SET_RAIL unknown GPU → BAD_ARGUMENT", "§4.6",
                        _code(a) == AckStatus.BAD_ARGUMENT, _status(a))

    async def reliability(self) -> None:
        info = self.info
        assert info is not None
        n = info.gpu_count
        caps = tuple([info.cap_max_w] * n)
        # Duplicate: the same frame twice → the same ACK twice, executed once.
        first, second = await self._sent_twice(SetCaps(cap_w=caps))
        self.record("duplicate reliable frame → re-ACK with the same status", "§3.3, §3.6",
                    first is not None and second is not None
                    and _code(first) == _code(second),
                    f"first {_status(first)}, repeat {_status(second)}")
        # The same for a refused one: the re-ACK repeats the refusal, it does not execute it.
        first, second = await self._sent_twice(SetRail(gpu=min(n, 31), on=False) if n < 32
                                               else SetCaps(cap_w=(0.0,) * n))
        self.record("duplicate of a refused frame → re-ACK with the same refusal", "§3.3",
                    _code(first) == AckStatus.BAD_ARGUMENT and _code(second) == AckStatus.BAD_ARGUMENT,
                    f"first {_status(first)}, repeat {_status(second)}")
        # A dropped frame: the next one arrives first, the retransmission later (late frame).
        lost_seq, lost_wire = self.main.frame(SetRail(gpu=0, on=True))
        mark = self.main.mark()
        later = self.main.send(SetCaps(cap_w=caps))
        got_later = await self.main.ack(later, 1.0, mark)
        self.main.write(lost_wire)  # the retransmission of the dropped frame, same seq
        got_lost = await self.main.ack(lost_seq, 1.0, mark)
        self.record("retransmission after a dropped frame is delivered and acknowledged", "§3.4, §3.6 late",
                    got_later is not None and got_lost is not None,
                    f"ACK of later frame: {_status(got_later)}; of the retransmitted one: {_status(got_lost)}")
        # A corrupted transmission, then the byte-identical retransmission.
        before = await self.main.sensor(2.0)
        seq, wire = self.main.frame(SetCaps(cap_w=caps))
        bad = bytearray(wire)
        bad[len(bad) // 2] ^= 0x5A if bad[len(bad) // 2] ^ 0x5A else 0x33
        mark = self.main.mark()
        self.main.write(bytes(bad))
        none = await self.main.ack(seq, 0.4, mark)
        self.main.write(wire)
        ok = await self.main.ack(seq, 1.0, mark)
        after = await self.main.sensor(2.0)
        counted = before is not None and after is not None and after.rx_errors > before.rx_errors
        self.record("corrupted frame is not acknowledged; its retransmission is", "§2.8, §3.4",
                    none is None and ok is not None, f"ACK to the corrupt copy: {_status(none)}; to the retry: {_status(ok)}")
        self.record("rejected frames counted in SENSOR.rx_errors", "§2.9, §4.4", counted,
                    f"rx_errors {before.rx_errors if before else '?'} → {after.rx_errors if after else '?'}")
        # Garbage, then a valid frame: resynchronise at the next 0x00.
        mark = self.main.mark()
        self.main.write(os.urandom(200).replace(b"\x00", b"\x01") + b"\x00")
        seq = self.main.send(SetCaps(cap_w=caps))
        a = await self.main.ack(seq, 1.0, mark)
        self.record("resynchronises after garbage", "§2.7", a is not None, _status(a))
        # Wrong version and unknown type: rejected silently.
        mark = self.main.mark()
        s1 = self.main.next_seq()
        self.main.write(raw_frame([2, 0x20, s1, {"cap_w": list(caps)}]))
        s2 = self.main.next_seq()
        self.main.write(raw_frame([1, 0x7E, s2, {}]))
        a = await self.main.wait(lambda r: isinstance(r.message, Ack) and r.message.ack_seq in (s1, s2), 0.5, mark)
        self.record("wrong version / unknown type are rejected without an answer", "§2.8 steps 8, 10", a is None)
        # HIL messages on the main port.
        mark = self.main.mark()
        seq = self.main.send(HilSet(name="demand_w", value=100.0))
        a = await self.main.ack(seq, 1.0, mark)
        self.record("HIL_SET on the main port → ACK UNSUPPORTED", "§4.8",
                    _code(a) == AckStatus.UNSUPPORTED, _status(a))
        mark = self.main.mark()
        self.main.send(HilGet(name="t_board"))
        v = await self.main.wait(lambda r: isinstance(r.message, HilValue), 0.5, mark)
        self.record("HIL_GET on the main port is ignored", "§4.8", v is None)

    async def jobs(self) -> None:
        """CHECKPOINT and RESTORE (§4.6.2): optional, but a board that takes them must keep them."""
        info = self.info
        assert info is not None
        n = info.gpu_count
        if n < 32:
            mark = self.main.mark()
            seq = self.main.send(Checkpoint(gpu=n, pause_s=0.5))
            a = await self.main.ack(seq, 1.0, mark)
            self.record("CHECKPOINT unknown GPU → BAD_ARGUMENT (or UNSUPPORTED)", "§4.6.2",
                        _code(a) in (AckStatus.BAD_ARGUMENT, AckStatus.UNSUPPORTED), _status(a))
        self.main.send(SetCaps(cap_w=tuple([info.cap_max_w] * n)))
        before = await self.main.sensor(2.0)
        mark = self.main.mark()
        seq = self.main.send(Checkpoint(gpu=0, pause_s=0.5))
        a = await self.main.ack(seq, 1.0, mark)
        declared = bool(info.features & BoardFeature.CHECKPOINTS)
        if _code(a) == AckStatus.UNSUPPORTED:
            # A board that keeps no checkpoints must not pretend to, in HELLO_ACK or SENSOR.
            self.record("CHECKPOINT on a board without checkpoints → UNSUPPORTED, none declared, no saved[]",
                        "§4.2, §4.6.2, §4.4", before is not None and not before.saved and not declared, _status(a))
            return
        self.record("a board that takes CHECKPOINT declares it in HELLO_ACK", "§4.2", declared,
                    f"features {info.features:#x}")
        running = await self._sensor_where(lambda s: bool(s.ckpt & 1), 2.0)
        done = await self._sensor_where(lambda s: not s.ckpt & 1 and bool(s.saved), 5.0)
        start = before.progress[0] if before is not None else math.nan
        saved = done.saved[0] if done is not None else math.nan
        self.record("CHECKPOINT → ACK OK; ckpt bit while writing; saved = progress when it began", "§4.6.2",
                    _code(a) == AckStatus.OK and running is not None and done is not None and saved >= start - 1e-6,
                    f"{_status(a)}; ckpt bit seen: {running is not None}; progress {start:.3f} → saved {saved:.3f}")
        await asyncio.sleep(1.0)  # let the job run past its checkpoint
        ahead = await self.main.sensor(2.0)
        mark = self.main.mark()
        seq = self.main.send(Restore(gpu=0, progress=saved if saved == saved else 0.0))
        a = await self.main.ack(seq, 1.0, mark)
        back = await self._sensor_where(lambda s: bool(s.saved) and abs(s.saved[0] - saved) < 1e-6, 2.0)
        rolled = (back is not None and ahead is not None
                  and saved - 1e-6 <= back.progress[0] < ahead.progress[0])
        self.record("RESTORE → ACK OK; progress and saved roll back to the checkpoint", "§4.6.2",
                    _code(a) == AckStatus.OK and rolled,
                    f"{_status(a)}; progress {ahead.progress[0] if ahead else '?'} → "
                    f"{back.progress[0] if back else '?'} (checkpoint {saved:.3f})")

    async def _sent_twice(self, message: Message) -> tuple[Rx | None, Rx | None]:
        """One numbered frame written twice, byte for byte: the ACKs of the first and the repeat."""
        seq, wire = self.main.frame(message)
        acks = []
        for _ in range(2):
            mark = self.main.mark()
            self.main.write(wire)
            acks.append(await self.main.ack(seq, 1.0, mark))
        return acks[0], acks[1]

    async def watchdog(self) -> None:
        info = self.info
        assert info is not None
        if info.watchdog_s > 10:
            self.record("watchdog", "§4.3", True, f"skipped: watchdog_s = {info.watchdog_s:g} s > 10 s", skipped=True)
            return
        self._beating.clear()
        await asyncio.sleep(0.25)
        # The watchdog runs from our last frame of the session (a HELLO before it does not count).
        self.main.send(Heartbeat(uptime_s=1.0))
        mark = self.main.mark()
        quiet_from = self.main.last_write
        # Frames on the HIL port meanwhile: they are not the node's and must not feed it (§2.1).
        hil_chatter = asyncio.create_task(self._hil_chatter()) if self._hil_ok else None
        try:
            safe = await self.main.wait(lambda r: isinstance(r.message, Sensor)
                                        and bool(r.message.flags & SensorFlag.WATCHDOG_SAFE), info.watchdog_s + 3.0, mark)
        finally:
            if hil_chatter is not None:
                hil_chatter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await hil_chatter
        tripped_after = (safe.at - quiet_from) if safe else None
        frames = self.main.since(mark)
        arrivals = [r.at for r in frames]
        gap = max((b - a for a, b in itertools.pairwise(arrivals)), default=math.inf)
        ok = (safe is not None and isinstance(safe.message, Sensor) and tripped_after is not None
              and tripped_after >= info.watchdog_s - 0.3
              and all(abs(c - info.cap_min_w) < 1e-6 for c in safe.message.cap_w))
        self.record("watchdog: node silent for watchdog_s → WATCHDOG_SAFE and caps at cap_min_w", "§4.3", ok,
                    f"tripped after {tripped_after if tripped_after is None else round(tripped_after, 2)} s "
                    f"(watchdog_s {info.watchdog_s:g}); caps {getattr(safe.message, 'cap_w', ())[:2] if safe else '?'}")
        if self._hil_ok:
            self.record("frames on the HIL port do not feed the main port's watchdog", "§2.1, §4.3", safe is not None,
                        "tripped while the HIL port was busy" if safe else "never tripped while the HIL port talked")
        self.record("board keeps talking while the node is silent", "§4.3", gap <= 0.3, f"longest silence {gap:.3f} s")
        self.main.send(Heartbeat(uptime_s=1.0))
        cleared = await self._sensor_where(lambda s: not s.flags & SensorFlag.WATCHDOG_SAFE, 2.0)
        self.record("watchdog: the next valid frame clears WATCHDOG_SAFE", "§4.3", cleared is not None)
        # HELLO is no sign of life: repeated HELLOs (each answered) must not keep it from tripping.
        await asyncio.sleep(0.25)
        quiet_from = self.main.last_write
        mark = self.main.mark()
        tripped: Rx | None = None
        deadline = time.monotonic() + info.watchdog_s + 3.0
        while tripped is None and time.monotonic() < deadline:
            self.main.write(self.main.channel.session_frame(Hello(node_id="umbra-conformance")))
            tripped = await self.main.wait(lambda r: isinstance(r.message, Sensor)
                                           and bool(r.message.flags & SensorFlag.WATCHDOG_SAFE), 0.3, mark)
        self.main.channel.reset()  # those HELLOs opened a new session: our numbering restarts
        after = tripped.at - quiet_from if tripped is not None else None
        self.record("HELLO does not feed the watchdog", "§4.3", tripped is not None and after is not None
                    and after >= info.watchdog_s - 0.3,
                    f"HELLO every 0.3 s: tripped after {after if after is None else round(after, 2)} s")
        self.main.send(Heartbeat(uptime_s=1.0))
        self._beating.set()
        await self._sensor_where(lambda s: not s.flags & SensorFlag.WATCHDOG_SAFE, 2.0)

    async def lockstep(self, hil: Port | None) -> None:
        if hil is None or not self._hil_ok:
            self.record("STEP_DONE / lockstep", "§4.3 STEP_DONE", True, "skipped: needs --hil", skipped=True)
            return
        ok_set = await self._hil_set(hil, "time.lockstep_timeout_s", 3.0) == AckStatus.OK
        ok_set &= await self._hil_set(hil, "time.lockstep", 1.0) == AckStatus.OK
        if not ok_set:
            self.record("STEP_DONE / lockstep", "§4.12 time.lockstep", False, "board refused time.lockstep")
            return
        await asyncio.sleep(0.3)
        first = await self.main.sensor(3.5)
        mark = self.main.mark()
        await asyncio.sleep(0.6)
        held = not any(isinstance(r.message, Sensor) for r in self.main.since(mark))
        t0 = first.t_board if first else 0.0
        stepped = []
        for _ in range(3):
            mark = self.main.mark()
            self.main.send(StepDone(t_board=t0))
            s = await self.main.sensor(1.0, since=mark)
            if s is None:
                break
            stepped.append(s.t_board)
            t0 = s.t_board
        # A STEP_DONE for a time the board has not reached (sent before a reset) is ignored.
        mark = self.main.mark()
        self.main.send(StepDone(t_board=t0 + 1000.0))
        future_ignored = await self.main.sensor(1.5, since=mark) is None  # the timeout is 3 s
        await self._restore_hil(hil, ("time.lockstep", "time.lockstep_timeout_s"))
        self.record("lockstep: no SENSOR until STEP_DONE", "§4.3 STEP_DONE", first is not None and held)
        self.record("lockstep: each STEP_DONE releases the next frame", "§4.3 STEP_DONE", len(stepped) == 3,
                    f"t_board after STEP_DONEs: {stepped}")
        self.record("lockstep: a STEP_DONE for a board time not yet reached is ignored", "§4.3 STEP_DONE",
                    future_ignored)
        if self.info is not None:
            self.record("a board with lockstep declares it in HELLO_ACK", "§4.2",
                        bool(self.info.features & BoardFeature.LOCKSTEP), f"features {self.info.features:#x}")

    async def reset(self) -> None:
        before = await self.main.sensor(2.0)
        mark = self.main.mark()
        seq = self.main.send(ResetBoard())
        a = await self.main.ack(seq, 1.0, mark)
        s = await self.main.wait(lambda r: isinstance(r.message, Sensor) and r.at > (a.at if a else 0), 3.0, mark)
        ok = (_code(a) == AckStatus.OK and s is not None and before is not None
              and getattr(s.message, "t_board", math.inf) < before.t_board)
        renumbered = s is not None and s.seq <= 3
        self.record("RESET_BOARD → ACK OK, board time restarts", "§4.6.1", ok,
                    f"{_status(a)}; t_board {before.t_board if before else '?'} → {getattr(s.message, 't_board', '?') if s else '?'}")
        self.record("RESET_BOARD: board restarts its numbering", "§4.6.1", renumbered,
                    f"first SENSOR seq after reset: {s.seq if s else '?'}")
        # The reset board has no session: our numbered frames (no HELLO yet) are not executed.
        probe = await self._unexecuted_caps_probe()
        self.record("after RESET_BOARD, numbered frames before a HELLO are not executed", "§4.6.1, §4.2",
                    probe is None, probe or "")
        await self.main.hello()

    async def hil_port(self, hil: Port | None) -> None:
        if hil is None:
            self.record("HIL port", "§4.9-4.12", True, "skipped: no --hil", skipped=True)
            return
        self.record("HIL port: HELLO → HELLO_ACK", "§4.2 S7", self._hil_ok)
        if not self._hil_ok:
            return
        assert self.info is not None
        n = self.info.gpu_count
        missing = []
        for name in REQUIRED_HIL:
            v = await self._hil_get(hil, name)
            per_gpu = name in ("temp_c", "cap_w", "power_w", "progress")
            if v is None or (per_gpu and (not isinstance(v, tuple) or len(v) != n)) or (
                    not per_gpu and name != "demand_w" and (isinstance(v, tuple) or math.isnan(v))):
                missing.append(f"{name}={v!r}")
        self.record("HIL port: every required name answers with its shape", "§4.12", not missing, "; ".join(missing))
        v = await self._hil_get(hil, "no.such.name")
        self.record("HIL port: unknown name reads NaN", "§4.11", isinstance(v, float) and math.isnan(v), f"{v!r}")
        st = await self._hil_set(hil, "t_board", 5.0)
        self.record("HIL port: read-only name → BAD_ARGUMENT", "§4.9", st == AckStatus.BAD_ARGUMENT, f"status {st}")
        st = await self._hil_set(hil, "demand_w", 321.0)
        now = await self._hil_get(hil, "demand_w")
        ok = st == AckStatus.OK and now is not None and all(abs(x - 321.0) < 1e-6 for x in _seq(now))
        self.record("HIL port: HIL_SET demand_w → OK, reads back", "§4.9, §4.12", ok, f"status {st}, reads {now!r}")
        mark = hil.mark()
        seq = hil.send(SetCaps(cap_w=tuple([self.info.cap_max_w] * n)))
        a = await hil.ack(seq, 1.0, mark)
        self.record("HIL port: SET_CAPS → ACK UNSUPPORTED", "§4.8",
                    _code(a) == AckStatus.UNSUPPORTED, _status(a))
        # A duplicate HIL_SET of sink_c to the value it has: re-ACKed, and nothing changes.
        sink = await self._hil_get(hil, "sink_c")
        mark = hil.mark()
        seq, wire = hil.frame(HilSet(name="sink_c", value=_first(sink)))
        hil.write(wire)
        a1 = await hil.ack(seq, 1.0, mark)
        mark = hil.mark()
        hil.write(wire)
        a2 = await hil.ack(seq, 1.0, mark)
        self.record("HIL port: duplicate HIL_SET → re-ACK", "§3.3", a1 is not None and a2 is not None)
        # A duplicate HIL_GET is not answered again (it is best-effort: a new request gets a new number).
        seq, wire = hil.frame(HilGet(name="t_board"))
        mark = hil.mark()
        hil.write(wire)
        await asyncio.sleep(0.3)
        hil.write(wire)
        await asyncio.sleep(0.5)
        answers = [r for r in hil.since(mark) if isinstance(r.message, HilValue) and r.message.ref == seq]
        self.record("HIL port: a duplicate HIL_GET is answered once", "§4.10", len(answers) == 1,
                    f"{len(answers)} answers")

    # -- helpers -----------------------------------------------------------------------------

    async def _unexecuted_caps_probe(self) -> str | None:
        """Send, numbered, caps at the minimum where none is now; None when the board ignored them."""
        assert self.info is not None
        n, lo = self.info.gpu_count, self.info.cap_min_w
        before = await self.main.sensor(2.0)
        if before is None:
            return "no SENSOR to compare with"
        mark = self.main.mark()
        seq = self.main.send(SetCaps(cap_w=(lo,) * n))
        a = await self.main.ack(seq, 0.6, mark)
        after = await self.main.sensor(2.0)
        if a is not None:
            return f"answered {_status(a)}"
        if after is not None and after.cap_w != before.cap_w and all(abs(c - lo) < 1e-6 for c in after.cap_w):
            return f"caps changed to {after.cap_w[:2]}"
        return None

    async def _hil_chatter(self) -> None:
        assert self.hil is not None
        while True:
            self.hil.send(HilGet(name="t_board"))
            await asyncio.sleep(0.2)

    async def _sensor_where(self, pred: Callable[[Sensor], bool], timeout: float) -> Sensor | None:
        got = await self.main.wait(lambda r: isinstance(r.message, Sensor) and pred(r.message), timeout,
                                   self.main.mark())
        return got.message if got is not None and isinstance(got.message, Sensor) else None

    async def _hil_set(self, hil: Port, name: str, value: Any) -> int | None:
        if name not in self._saved_hil and name != "t_board":
            self._saved_hil[name] = await self._hil_get(hil, name)  # to put back at the end
        mark = hil.mark()
        seq, wire = hil.frame(HilSet(name=name, value=value))
        hil.write(wire)
        for _ in range(5):
            a = await hil.ack(seq, 0.3, mark)
            if a is not None:
                return _code(a)
            hil.write(wire)  # retransmit, same seq
        return None

    async def _hil_get(self, hil: Port, name: str) -> Any:
        for _ in range(5):
            mark = hil.mark()
            seq = hil.send(HilGet(name=name))
            got = await hil.wait(_value_for(seq), 0.5, mark)
            if got is not None and isinstance(got.message, HilValue):
                return got.message.value
        return None

    async def _restore_hil(self, hil: Port, names: Any = None) -> None:
        for name in list(self._saved_hil) if names is None else names:
            value = self._saved_hil.pop(name, None)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            mark = hil.mark()
            seq, wire = hil.frame(HilSet(name=name, value=value))
            for _ in range(5):
                hil.write(wire)
                if await hil.ack(seq, 0.3, mark) is not None:
                    break

    async def _save_board(self) -> None:
        """What the board looks like before we change it: caps and rails, to put back."""
        s = await self.main.sensor(3.0)
        if s is not None:
            self._saved_caps, self._saved_rails = s.cap_w, s.rails

    async def _restore_board(self) -> None:
        info = self.info
        if info is None:
            return
        await self.main.hello()  # whatever the checks did, one fresh session
        caps = self._saved_caps if self._saved_caps is not None and len(self._saved_caps) == info.gpu_count else None
        caps = caps if caps is not None and all(info.cap_min_w <= c <= info.cap_max_w for c in caps) else (
            (info.cap_max_w,) * info.gpu_count)
        self.main.send(SetCaps(cap_w=tuple(caps)))
        rails = self._saved_rails if self._saved_rails is not None else (1 << info.gpu_count) - 1
        for gpu in range(info.gpu_count):
            self.main.send(SetRail(gpu=gpu, on=bool(rails >> gpu & 1)))
        await asyncio.sleep(0.3)

    async def run(self, only: tuple[str, ...] | None = None) -> list[Check]:
        """Every check group, or ``only`` those named (``GROUPS``); the handshake always."""
        unknown = set(only or ()) - set(self.GROUPS)
        if unknown:
            raise ValueError(f"unknown check groups {sorted(unknown)}: choose from {', '.join(self.GROUPS)}")
        await self.main.open()
        if self.hil is not None:
            await self.hil.open()
            # The HIL session first: numbered HIL frames before it would count for nothing (§4.2 S7).
            hil_ack = await self.hil.hello_rx(name="umbra-conformance-hil")
            self._hil_ok = hil_ack is not None and isinstance(hil_ack.message, HelloAck) and hil_ack.message.version == 1
            if hil_ack is not None:
                self.record("HIL port: HELLO_ACK carries seq 0", "§3.1, §4.2 S7", hil_ack.seq == 0, f"seq {hil_ack.seq}")
        self._beat = asyncio.create_task(self._heartbeat(), name="umbra.conformance.heartbeat")
        try:
            if not await self.handshake():
                return self.results
            self._beating.set()
            await self._save_board()
            steps: dict[str, Callable[[], Awaitable[None]]] = {
                "versions": self.versions, "numbering": self.numbering, "sessions": self.sessions,
                "sensor_stream": self.sensor_stream, "idle_heartbeat": self.idle_heartbeat,
                "commands": self.commands, "reliability": self.reliability, "jobs": self.jobs,
                "watchdog": self.watchdog, "lockstep": lambda: self.lockstep(self.hil), "reset": self.reset,
                "hil_port": lambda: self.hil_port(self.hil),
            }
            for name in self.GROUPS:
                if only is not None and name not in only:
                    continue
                try:
                    await steps[name]()
                except Exception as exc:  # a board that breaks a check must not end the others
                    self.record(name, "—", False, f"{type(exc).__name__}: {exc}")
            # Leave the board as we found it: its caps, rails and HIL values, a fresh session.
            if self.hil is not None and self._hil_ok:
                await self._restore_hil(self.hil)
            await self._restore_board()
        finally:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self.main.close()
            if self.hil is not None:
                self.hil.close()
        return self.results


def _first(v: Any) -> float:
    """A HIL value as one float (the board's own, when it answered; 0.0 when it did not)."""
    if isinstance(v, tuple):
        return float(v[0]) if v else 0.0
    return float(v) if isinstance(v, float) and v == v else 0.0


def _seq(v: Any) -> tuple[float, ...]:
    return tuple(v) if isinstance(v, tuple) else (float(v),)


def _value_for(seq: int) -> Callable[[Rx], bool]:
    return lambda r: isinstance(r.message, HilValue) and r.message.ref == seq


def _code(a: Rx | None) -> int | None:
    """The status of an ACK frame, None when there was none."""
    return int(a.message.status) if a is not None and isinstance(a.message, Ack) else None


def _status(a: Rx | None) -> str:
    if a is None:
        return "no ACK"
    msg = a.message
    if isinstance(msg, Ack):
        try:
            return f"ACK {AckStatus(msg.status).name}"
        except ValueError:
            return f"ACK status {msg.status}"
    return type(msg).__name__


async def run_conformance(port: str, *, hil: str | None = None, only: tuple[str, ...] | None = None) -> list[Check]:
    return await Conformance(port, hil).run(only)


def format_results(results: list[Check]) -> str:
    lines = []
    for r in results:
        mark = "SKIP" if r.skipped else ("ok  " if r.ok else "FAIL")
        lines.append(f"{mark} {r.name}  [{r.icd}]" + (f"\n       {r.detail}" if r.detail else ""))
    bad = [r for r in results if not r.ok]
    lines.append("")
    lines.append(f"{len(results) - len(bad)}/{len(results)} checks passed"
                 + (": the board got these wrong: " + "; ".join(r.name for r in bad) if bad else ""))
    return "\n".join(lines)
