"""The mode table: examples and Hypothesis state-machine invariants."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from node.bus.payloads import Mode
from node.modes import TRANSITIONS, IllegalTransition, ModeMachine, Trigger


def test_boot_to_nominal_to_safe_and_back():
    m = ModeMachine()
    t = m.fire(Trigger.LINK_UP)
    assert t is not None and (t.before, t.after) == (Mode.BOOT, Mode.NOMINAL)
    assert m.fire(Trigger.LINK_LOST).after is Mode.SAFE
    assert m.fire(Trigger.LINK_UP).after is Mode.NOMINAL


def test_same_mode_is_a_no_op():
    m = ModeMachine(mode=Mode.NOMINAL)
    assert m.fire(Trigger.UNCONSTRAINED) is None
    assert m.mode is Mode.NOMINAL


def test_illegal_trigger_raises():
    with pytest.raises(IllegalTransition) as info:
        ModeMachine().fire(Trigger.THERMAL_THROTTLING)
    assert info.value.mode is Mode.BOOT


def test_safe_held_until_every_cause_clears():
    m = ModeMachine()
    m.fire(Trigger.LINK_UP)
    m.fire(Trigger.SAFE_COMMANDED)
    m.fire(Trigger.LINK_LOST)
    assert m.fire(Trigger.LINK_UP) is None  # the command still holds SAFE
    assert m.mode is Mode.SAFE
    assert m.fire(Trigger.SAFE_RELEASED).after is Mode.NOMINAL


def test_commanded_safe_from_boot_waits_for_the_link():
    m = ModeMachine()
    m.fire(Trigger.SAFE_COMMANDED)
    assert m.fire(Trigger.SAFE_RELEASED) is None
    assert m.fire(Trigger.LINK_UP).after is Mode.NOMINAL


def test_binding_constraint_picks_the_operating_mode():
    m = ModeMachine()
    m.fire(Trigger.LINK_UP)
    assert m.fire(Trigger.POWER_LIMITED).after is Mode.POWER_SAVE
    assert m.fire(Trigger.THERMAL_THROTTLING).after is Mode.THERMAL_LIMIT
    assert m.fire(Trigger.POWER_LIMITED).after is Mode.POWER_SAVE
    assert m.fire(Trigger.UNCONSTRAINED).after is Mode.NOMINAL
    m.fire(Trigger.CRITICAL_FAULT)
    assert m.fire(Trigger.THERMAL_THROTTLING) is None  # SAFE ignores constraints
    assert m.fire(Trigger.FAULT_CLEARED).after is Mode.NOMINAL


def test_every_mode_can_reach_safe():
    for mode in Mode:
        assert TRANSITIONS[(mode, Trigger.LINK_LOST)] is Mode.SAFE
        assert TRANSITIONS[(mode, Trigger.SAFE_COMMANDED)] is Mode.SAFE


class ModeMachineInvariants(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = ModeMachine()
        self.link = False
        self.commanded = False
        self.fault = False

    @rule(trigger=st.sampled_from(list(Trigger)))
    def fire(self, trigger: Trigger) -> None:
        before = self.m.mode
        try:
            self.m.fire(trigger)
        except IllegalTransition:
            assert (before, trigger) not in TRANSITIONS
            return
        if trigger is Trigger.LINK_UP:
            self.link = True
        elif trigger is Trigger.LINK_LOST:
            self.link = False
        elif trigger is Trigger.SAFE_COMMANDED:
            self.commanded = True
        elif trigger is Trigger.SAFE_RELEASED:
            self.commanded = False
        elif trigger is Trigger.CRITICAL_FAULT:
            self.fault = True
        elif trigger is Trigger.FAULT_CLEARED:
            self.fault = False
        if before is Mode.SAFE and self.m.mode is not Mode.SAFE:
            # Left SAFE: only with every cause cleared.
            assert self.link and not self.commanded and not self.fault

    @invariant()
    def safe_while_commanded_or_faulty(self) -> None:
        if self.commanded or self.fault:
            assert self.m.mode is Mode.SAFE

    @invariant()
    def operating_only_with_a_link(self) -> None:
        if self.m.mode in (Mode.NOMINAL, Mode.POWER_SAVE, Mode.THERMAL_LIMIT):
            assert self.link

    @invariant()
    def safe_always_reachable(self) -> None:
        assert (self.m.mode, Trigger.SAFE_COMMANDED) in TRANSITIONS


TestModeMachine = ModeMachineInvariants.TestCase
TestModeMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
