"""The whole node stack against a misbehaving board, as a Hypothesis state machine (issue #13).

The node is the real one — NodeController, its NodeSession and the SessionBoard glue —
talking over an in-memory cable to :class:`~doubleboard.DoubleBoard` (a board written from
the ICD that can be told to misbehave), all on one manual clock (tests/stack.py).  Rules
pull the cable, reboot the board, make its SENSOR frames invalid, inconsistent,
implausible, silent or a flood, make it refuse or ignore caps and rails, heat its GPUs,
take the power budget away and give it back, push FDIR's battery limit red and green, and
send ground commands.  After every step:

- every cap the board was sent lies in its range;
- a node that cannot see or cannot command its board leaves no GPU powered above its
  minimum (caps at minimum, rails off or the watchdog tripped) for longer than the bound;
- in SAFE, after the bound, no GPU is above its minimum;
- SAFE is left within a bounded time once every cause has cleared;
- a GPU the node switched off is back on within a bounded time once the budget allows.

The first version of this machine (3335ddb) drove the controller alone through the Board
interface and found four bugs; its shrunk examples are in the commit message.
"""

from __future__ import annotations

import asyncio

from doubleboard import BLINDING, CAPS, RAILS, SENSORS, DoubleBoard
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from stack import TICK_S, Stack

from node.bus.payloads import Mode
from node.errors import CommandRejected

#: The rule's bound (wall s): max(T_blind, T_cmd) + the board's watchdog (1 s), plus the
#: stack's own latency: a tick to notice, a tick for the bytes to cross the in-memory cable,
#: a tick for the board to check its watchdog, and one for rounding.
BOUND_S = 2.0 + 4 * TICK_S
#: SAFE left at most this long after every cause cleared: a probe of an uncommandable board
#: (probe_s = 5 s), a new session, FDIR's persistence.
SAFE_EXIT_S = 7.5
#: A switched-off GPU back on at most this long after the budget allows: SAFE's exit, then
#: the shedder's ten frames of surplus per GPU.
RESTORE_S = SAFE_EXIT_S + 4 * 1.0 + 1.0


class NodeStackMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stack = Stack(DoubleBoard())
        self.loop.run_until_complete(self.stack.__aenter__())
        self.d = self.stack.double
        self.now = lambda: self.stack.clock.now
        self.commanded_safe = False
        self.ground_off: set[int] = set()
        self.blind_since: float | None = None  # when the node stopped seeing (cable, frames)
        self.clear_since: float | None = 0.0  # when every SAFE cause last became clear
        self.budget_since: float | None = 0.0  # when the budget last became sufficient
        self.safe_since: float | None = None
        self.loop.run_until_complete(self.stack.run(1.0))

    def teardown(self) -> None:
        self.loop.run_until_complete(self.stack.__aexit__())
        self.loop.close()

    # --- bookkeeping --------------------------------------------------------------------------

    def _causes_clear(self) -> bool:
        b = self.d.behaviour
        return (self.stack.board.plugged and b.sensors in ("good", "flood") and b.caps == "obey"
                and not self.commanded_safe and self.d.soc > 0.73)

    def _changed(self) -> None:
        """After a rule changed the world: restart the clocks of the conditions it touched."""
        now = self.now()
        blinding = not self.stack.board.plugged or self.d.behaviour.sensors in BLINDING
        if blinding and self.blind_since is None:
            self.blind_since = now
        elif not blinding:
            self.blind_since = None
        clear = self._causes_clear()
        if clear and self.clear_since is None:
            self.clear_since = now
        elif not clear:
            self.clear_since = None
        if self.d.budget_ok and self.budget_since is None:
            self.budget_since = now
        elif not self.d.budget_ok:
            self.budget_since = None

    def _run(self, seconds: float) -> None:
        end = self.now() + seconds
        while self.now() < end - 1e-9:
            self.loop.run_until_complete(self.stack.run(min(TICK_S, end - self.now())))
            safe = self.stack.node.mode is Mode.SAFE
            if safe and self.safe_since is None:
                self.safe_since = self.now()
            elif not safe:
                self.safe_since = None
            self._check()

    def _since(self, t: float | None) -> float:
        return -1.0 if t is None else self.now() - t

    def _check(self) -> None:
        powered = self.d.powered()
        blind = self._since(self.blind_since)
        disobeyed = self._since(self.d.disobeyed_at)
        assert not (powered and max(blind, disobeyed) > BOUND_S), (
            f"GPUs {powered} powered (caps {self.d.caps}, rails {self.d.rails:#x}) with the node blind for "
            f"{blind:.2f} s / its commands disobeyed for {disobeyed:.2f} s; link {self.stack.board.health}"
        )
        # (A board that disobeys is the rule's business above, from its first disobeyed command.)
        obeys = self.d.behaviour.caps == "obey" and self.stack.board.plugged
        assert not (powered and obeys and self._since(self.safe_since) > BOUND_S), (
            f"SAFE for {self._since(self.safe_since):.2f} s with GPUs {powered} above their minimum"
        )
        assert not (self._since(self.clear_since) > SAFE_EXIT_S and self.stack.node.mode is Mode.SAFE), (
            f"still SAFE {self._since(self.clear_since):.2f} s after every cause cleared; link {self.stack.board.health}"
        )
        if self.d.behaviour.rails == "obey" and min(self._since(self.clear_since), self._since(self.budget_since)) > RESTORE_S:
            off = [g for g in range(self.d.gpus) if not self.d.rails >> g & 1 and g not in self.ground_off]
            assert not off, f"GPUs {off} still off {RESTORE_S} s after the budget allowed"

    # --- rules --------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.2, 0.5, 1.0, 2.0, 4.0, 8.0]))
    def time_passes(self, seconds: float) -> None:
        self._run(seconds)

    @rule(kind=st.sampled_from(SENSORS))
    def board_sensors(self, kind: str) -> None:
        self.d.behave(sensors=kind)
        self.d.jumped = False
        self._changed()

    @rule(kind=st.sampled_from(CAPS))
    def board_caps(self, kind: str) -> None:
        self.d.behave(caps=kind)
        self._changed()

    @rule(kind=st.sampled_from(RAILS))
    def board_rails(self, kind: str) -> None:
        self.d.behave(rails=kind)
        self._changed()

    @rule(plugged=st.booleans())
    def cable(self, plugged: bool) -> None:
        self.stack.board.plugged = plugged
        self._changed()

    @rule()
    def board_reboots(self) -> None:
        self.d.reboot(self.now())
        self.clear_since = None  # a reboot ends the session: SAFE until the next one opens
        self._changed()

    @rule(hot=st.booleans())
    def gpus_heat(self, hot: bool) -> None:
        """Hot GPUs make the node throttle: a board that disobeys caps shows it."""
        self.d.temps_c = (93.0, 94.0, 94.5, 95.0) if hot else (60.0, 61.0, 62.0, 63.0)

    @rule(ok=st.booleans())
    def budget(self, ok: bool) -> None:
        self.d.budget_ok = ok
        self._changed()

    @rule(soc=st.sampled_from([0.5, 0.72, 0.8]))
    def battery(self, soc: float) -> None:
        self.d.soc = soc
        self._changed()

    @rule()
    def ground_safe(self) -> None:
        self.commanded_safe = True
        self.stack.node.commands.command_safe("machine: ground")
        self._changed()

    @rule()
    def ground_release(self) -> None:
        self.commanded_safe = False
        self.stack.node.commands.command_release_safe("machine: ground")
        self._changed()

    @precondition(lambda self: self.stack.board.link_up)
    @rule(gpu=st.integers(0, 3), on=st.booleans())
    def ground_rail(self, gpu: int, on: bool) -> None:
        try:
            self.stack.node.commands.set_rail(gpu, on)
        except CommandRejected:
            return  # link blind or uncommandable: refused, nothing changed
        (self.ground_off.discard if on else self.ground_off.add)(gpu)

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def caps_within_the_board_range(self) -> None:
        d = self.d
        for caps in d.caps_seen:
            assert len(caps) == d.gpus and all(d.cap_min_w - 1e-9 <= c <= d.cap_max_w + 1e-9 for c in caps), caps


NodeStackMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no slow 'explain'
)
TestNodeStackMachine = NodeStackMachine.TestCase
