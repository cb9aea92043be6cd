"""The board clock process jobs' intervals run on (node/controller/boardclock.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node.controller.boardclock import BoardClock


class Wall:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_it_follows_board_time_at_the_boards_pace() -> None:
    wall = Wall()
    clock = BoardClock(wall)
    for frame in range(11):  # a board at 20x: one board second every 50 ms
        clock.frame(1000.0 + frame)
        wall.t += 0.05
    assert abs(clock() - 11.0) < 1e-9  # ten steps of 1 s, then 50 ms at 20x: one frame ahead
    wall.t += 10.0  # the board stops sending: the clock waits, at most one frame ahead
    assert abs(clock() - 11.0) < 1e-9


def test_between_frames_it_runs_on_finer_than_a_frame() -> None:
    wall = Wall()
    clock = BoardClock(wall)
    for frame in range(5):
        clock.frame(float(frame))
        wall.t += 0.05
    wall.t -= 0.05 - 0.01  # 10 ms after the last frame, at 20 board s per wall s
    assert abs(clock() - (4.0 + 0.2)) < 1e-9


def test_a_board_reset_does_not_turn_it_back() -> None:
    wall = Wall()
    clock = BoardClock(wall)
    for t in (50.0, 51.0, 52.0):
        clock.frame(t)
        wall.t += 1.0
    before = clock()
    clock.frame(0.0)  # the board rebooted: its clock restarts
    assert clock() >= before
    wall.t += 1.0
    clock.frame(1.0)
    assert clock() == 3.0  # 2 s before the reset + 1 s after it


@given(st.lists(st.tuples(st.floats(-10.0, 1e4, allow_nan=False), st.floats(0.0, 5.0)), max_size=50))
def test_it_never_goes_back(steps: list[tuple[float, float]]) -> None:
    wall = Wall()
    clock = BoardClock(wall)
    last = clock()
    for t_board, wait in steps:
        clock.frame(t_board)
        wall.t += wait
        now = clock()
        assert now >= last
        last = now
