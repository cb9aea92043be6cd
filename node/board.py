"""What the controller needs from "a board", and the events a board produces.

The serial board (:class:`node.link.serial_board.SerialBoard`) is one implementation;
:class:`FakeBoard` — in-memory, scripted by tests — is another; an NVML backend will be a
third.  The controller depends only on :class:`Board`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from node.errors import LinkError
from node.link.messages import (
    AckStatus,
    BoardFeature,
    Checkpoint,
    HelloAck,
    Message,
    ResetBoard,
    Sensor,
    SetCaps,
    SetRail,
)


@dataclass(frozen=True, slots=True)
class BoardInfo:
    board_id: str
    fw_version: str
    gpu_count: int
    cap_min_w: float
    cap_max_w: float
    sensor_rate_hz: float
    watchdog_s: float
    protocol_version: int
    features: int = 0  # BoardFeature bits the board declared in HELLO_ACK

    @classmethod
    def from_hello_ack(cls, ack: HelloAck) -> BoardInfo:
        return cls(
            board_id=ack.board_id,
            fw_version=ack.fw_version,
            gpu_count=ack.gpu_count,
            cap_min_w=ack.cap_min_w,
            cap_max_w=ack.cap_max_w,
            sensor_rate_hz=ack.sensor_rate_hz,
            watchdog_s=ack.watchdog_s,
            protocol_version=ack.version,
            features=ack.features,
        )

    @property
    def checkpoints(self) -> bool:
        return bool(self.features & BoardFeature.CHECKPOINTS)


@dataclass(frozen=True, slots=True)
class LinkUp:
    info: BoardInfo


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str


@dataclass(frozen=True, slots=True)
class SensorReading:
    sensor: Sensor
    received_at: float  # wall (monotonic) time, for latency and liveness only


@dataclass(frozen=True, slots=True)
class LinkHealth:
    """The session's health changed while it lasts (ICD §4.3): ``state`` is a
    :class:`~node.link.session.LinkState` value — ``established`` (seeing and commanding),
    ``blind``, ``uncommandable``, or ``incompatible`` (no session at all)."""

    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class LinkProblem:
    """One frame the link could not use: ``kind`` (``frame_rejected``, ``sensor_unusable``,
    ``sensor_flood``) and ``reason`` (the decoder's reason, or what was implausible)."""

    kind: str
    reason: str
    text: str


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The board answered a command; ``status`` is its AckStatus (None: no answer at all)."""

    message: Message
    status: AckStatus | int | None


BoardEvent = LinkUp | LinkDown | LinkHealth | LinkProblem | SensorReading | CommandResult


class Board(Protocol):
    """A board the controller can read sensors from and send commands to."""

    @property
    def info(self) -> BoardInfo | None: ...

    @property
    def link_up(self) -> bool: ...

    @property
    def link_state(self) -> str:
        """The link's state for telemetry (``established``, ``blind``, …; node/link/session.py)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def next_event(self) -> BoardEvent:
        """Wait for the next event (link changes, sensor frames, command results)."""
        ...

    def set_caps(self, cap_w: Sequence[float]) -> None:
        """Send every GPU's power cap (reliably).  LinkError when the link is down."""
        ...

    def set_rail(self, gpu: int, on: bool) -> None: ...

    def step_done(self, t_board: float) -> None:
        """Tell the board the frame of ``t_board`` is handled (lockstep; best-effort)."""
        ...

    def reset_board(self) -> None:
        """Reboot the board (reliable).  LinkError when the link is down."""
        ...

    def checkpoint(self, gpu: int, pause_s: float) -> None:
        """Checkpoint ``gpu``'s job (reliable; the board pauses its work for ``pause_s``)."""
        ...

    def stats(self) -> dict[str, int]:
        """Link counters for telemetry."""
        ...


@dataclass
class FakeBoard:
    """An in-memory board for tests: push events in, read the commands it was sent."""

    events: asyncio.Queue[BoardEvent] = field(default_factory=asyncio.Queue)
    sent: list[Message] = field(default_factory=list)
    steps_done: list[float] = field(default_factory=list)
    current_info: BoardInfo | None = None

    @property
    def info(self) -> BoardInfo | None:
        return self.current_info

    @property
    def link_up(self) -> bool:
        return self.current_info is not None

    @property
    def link_state(self) -> str:
        return "established" if self.current_info is not None else "closed"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def next_event(self) -> BoardEvent:
        event = await self.events.get()
        if isinstance(event, LinkUp):
            self.current_info = event.info
        elif isinstance(event, LinkDown):
            self.current_info = None
        return event

    def set_caps(self, cap_w: Sequence[float]) -> None:
        if not self.link_up:
            raise LinkError("fake board link is down")
        self.sent.append(SetCaps(cap_w=tuple(float(c) for c in cap_w)))

    def set_rail(self, gpu: int, on: bool) -> None:
        if not self.link_up:
            raise LinkError("fake board link is down")
        self.sent.append(SetRail(gpu=gpu, on=on))

    def step_done(self, t_board: float) -> None:
        self.steps_done.append(t_board)

    def reset_board(self) -> None:
        if not self.link_up:
            raise LinkError("fake board link is down")
        self.sent.append(ResetBoard())

    def checkpoint(self, gpu: int, pause_s: float) -> None:
        if not self.link_up:
            raise LinkError("fake board link is down")
        self.sent.append(Checkpoint(gpu=gpu, pause_s=pause_s))

    def stats(self) -> dict[str, int]:
        return {"commands_sent": len(self.sent)}
