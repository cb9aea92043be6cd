"""Where platform values NVML cannot know come from: the serial board, or a fixed profile.

A :class:`PlatformSource` is an async context manager producing :data:`PlatformEvent`s:
``LinkUp``/``LinkDown`` when the platform becomes (un)available, a :class:`PlatformSample`
each time a GPU sample is due (it also sets the pace and carries the board clock), and
``CommandResult``s for rail commands it carried out.

- :class:`BoardPlatform` wraps a :class:`~node.board.Board` (the serial board): each of its
  sensor frames is one sample, so board time stays the control clock (DESIGN.md, "Time").
- :class:`FixedPlatform` serves a :class:`~node.gpu.config.PlatformProfile` at a fixed rate of
  wall time on a lab machine with no board; board time is then seconds since start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from node.board import (
    Board,
    BoardInfo,
    CommandResult,
    LinkDown,
    LinkHealth,
    LinkProblem,
    LinkUp,
    SensorReading,
)
from node.errors import CommandRejected, Reason
from node.gpu.config import PlatformProfile
from node.link.messages import AckStatus, SensorFlag, SetRail


@dataclass(frozen=True, slots=True)
class PlatformSample:
    t_board: float
    utc: float
    solar_w: float
    battery_soc: float
    radiator_c: float
    #: Platform flags (ECLIPSE, WATCHDOG_SAFE) to pass on in the merged sensor frame.
    flags: int = 0
    #: The board's rail mask, when a board switches the GPU rails (None: no rail control).
    rails: int | None = None
    rx_errors: int = 0


PlatformEvent = PlatformSample | LinkUp | LinkDown | LinkHealth | LinkProblem | CommandResult


class PlatformSource(Protocol):
    @property
    def info(self) -> BoardInfo | None:
        """The platform board's info when there is one (None for a fixed profile)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def next_event(self) -> PlatformEvent: ...

    def set_rail(self, gpu: int, on: bool) -> None:
        """Switch a GPU rail; the answer arrives as a CommandResult.  LinkError when down."""
        ...

    def step_done(self, t_board: float) -> None:
        """The controller is done with the frame of ``t_board`` (lockstep); may do nothing."""
        ...

    def reset_board(self) -> None:
        """Reset the platform board; CommandRejected(UNSUPPORTED) when there is none."""
        ...

    def stats(self) -> dict[str, int]: ...


#: Flags of the board frame that describe the platform rather than the GPUs.
PLATFORM_FLAGS = SensorFlag.ECLIPSE | SensorFlag.WATCHDOG_SAFE


class BoardPlatform:
    """The serial board as the platform source; its sensor frames pace the GPU samples."""

    def __init__(self, board: Board) -> None:
        self._board = board

    @property
    def info(self) -> BoardInfo | None:
        return self._board.info

    async def __aenter__(self) -> Self:
        await self._board.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._board.__aexit__(exc_type, exc, tb)

    async def next_event(self) -> PlatformEvent:
        event = await self._board.next_event()
        if isinstance(event, SensorReading):
            s = event.sensor
            return PlatformSample(
                t_board=s.t_board,
                utc=s.utc,
                solar_w=s.solar_w,
                battery_soc=s.battery_soc,
                radiator_c=s.radiator_c,
                flags=s.flags & PLATFORM_FLAGS,
                rails=s.rails,
                rx_errors=s.rx_errors,
            )
        return event

    def set_rail(self, gpu: int, on: bool) -> None:
        self._board.set_rail(gpu, on)

    def step_done(self, t_board: float) -> None:
        self._board.step_done(t_board)

    def reset_board(self) -> None:
        self._board.reset_board()

    def stats(self) -> dict[str, int]:
        return {f"platform_{k}": v for k, v in self._board.stats().items()}


class FixedPlatform:
    """A lab machine's platform: the profile's values at ``rate_hz`` of wall time."""

    def __init__(
        self,
        profile: PlatformProfile,
        *,
        rate_hz: float,
        clock: Callable[[], float] = time.monotonic,
        utc: Callable[[], float] = time.time,
    ) -> None:
        self._profile = profile
        self._period = 1.0 / rate_hz
        self._clock = clock
        self._utc = utc
        self._started = clock()
        self._next_at = self._started
        self._pending: asyncio.Queue[PlatformEvent] = asyncio.Queue()
        self._rails_refused = 0

    @property
    def info(self) -> BoardInfo | None:
        return None

    async def __aenter__(self) -> Self:
        self._started = self._next_at = self._clock()
        self._pending.put_nowait(LinkUp(_PROFILE_INFO))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def next_event(self) -> PlatformEvent:
        if not self._pending.empty():
            return self._pending.get_nowait()
        delay = self._next_at - self._clock()
        if delay > 0:
            try:
                return await asyncio.wait_for(self._pending.get(), delay)
            except TimeoutError:
                pass
        now = self._clock()
        self._next_at = max(self._next_at + self._period, now)  # no bursts after a stall
        p = self._profile
        return PlatformSample(
            t_board=now - self._started,
            utc=self._utc(),
            solar_w=p.solar_w,
            battery_soc=p.battery_soc,
            radiator_c=p.radiator_c,
            flags=int(SensorFlag.ECLIPSE) if p.eclipse else 0,
        )

    def set_rail(self, gpu: int, on: bool) -> None:
        # Nothing here can switch a GPU's power; say so the way a board would.
        self._rails_refused += 1
        self._pending.put_nowait(CommandResult(SetRail(gpu=gpu, on=on), AckStatus.UNSUPPORTED))

    def step_done(self, t_board: float) -> None:
        pass  # lockstep is the serial board's business; wall time cannot be held

    def reset_board(self) -> None:
        raise CommandRejected("no platform board to reset (fixed profile)", code=Reason.UNSUPPORTED)

    def stats(self) -> dict[str, int]:
        return {"platform_rails_refused": self._rails_refused}


# FixedPlatform's LinkUp carries this placeholder; NvmlBoard builds the real BoardInfo.
_PROFILE_INFO = BoardInfo(
    board_id="profile",
    fw_version="-",
    gpu_count=1,
    cap_min_w=0.0,
    cap_max_w=0.0,
    sensor_rate_hz=1.0,
    watchdog_s=0.0,
    protocol_version=0,
)
