"""The node's mode state machine, as a table (pure: no I/O, no clock).

Modes: BOOT → NOMINAL ⇄ POWER_SAVE ⇄ THERMAL_LIMIT (the binding constraint picks; thermal
wins over power); any → SAFE on a critical fault, link loss or command.  SAFE is left only when every cause that put the
node there has cleared.  A transition to the current mode is a no-op; a trigger the table
does not allow in the current mode raises :class:`IllegalTransition`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from node.bus.payloads import Mode
from node.errors import UmbraError


class Trigger(enum.StrEnum):
    LINK_UP = "link_up"
    LINK_LOST = "link_lost"
    THERMAL_THROTTLING = "thermal_throttling"  # a GPU's thermal bound is below its maximum
    POWER_LIMITED = "power_limited"  # the energy or heat budget holds the GPUs back
    UNCONSTRAINED = "unconstrained"  # neither, with margin
    SAFE_COMMANDED = "safe_commanded"
    SAFE_RELEASED = "safe_released"
    CRITICAL_FAULT = "critical_fault"  # an FDIR monitor's red limit with a SAFE action
    FAULT_CLEARED = "fault_cleared"


class IllegalTransition(UmbraError):
    def __init__(self, mode: Mode, trigger: Trigger) -> None:
        super().__init__(f"trigger {trigger.value} is not allowed in mode {mode.value}")
        self.mode = mode
        self.trigger = trigger


#: What makes each trigger a SAFE cause (entered) or clear one (left).
_SAFE_CAUSE_SET = {Trigger.LINK_LOST: "link", Trigger.SAFE_COMMANDED: "command", Trigger.CRITICAL_FAULT: "fault"}
_SAFE_CAUSE_CLEAR = {Trigger.LINK_UP: "link", Trigger.SAFE_RELEASED: "command", Trigger.FAULT_CLEARED: "fault"}

_TO_SAFE = (Trigger.LINK_LOST, Trigger.SAFE_COMMANDED, Trigger.CRITICAL_FAULT)
_OPERATING = (Mode.NOMINAL, Mode.POWER_SAVE, Mode.THERMAL_LIMIT)
#: In an operating mode, the constraint triggers pick the mode; thermal wins over power.
_BY_CONSTRAINT = {
    Trigger.THERMAL_THROTTLING: Mode.THERMAL_LIMIT,
    Trigger.POWER_LIMITED: Mode.POWER_SAVE,
    Trigger.UNCONSTRAINED: Mode.NOMINAL,
}

#: (mode, trigger) → next mode.  SAFE's exits are guarded by its causes (see ``fire``).
TRANSITIONS: dict[tuple[Mode, Trigger], Mode] = {
    **{(mode, trigger): Mode.SAFE for mode in Mode for trigger in _TO_SAFE},
    **{(mode, trigger): target for mode in _OPERATING for trigger, target in _BY_CONSTRAINT.items()},
    **{(mode, Trigger.LINK_UP): mode for mode in _OPERATING},
    **{(mode, t): mode for mode in _OPERATING for t in (Trigger.SAFE_RELEASED, Trigger.FAULT_CLEARED)},
    (Mode.BOOT, Trigger.LINK_UP): Mode.NOMINAL,
    (Mode.BOOT, Trigger.SAFE_RELEASED): Mode.BOOT,
    (Mode.BOOT, Trigger.FAULT_CLEARED): Mode.BOOT,
    (Mode.SAFE, Trigger.LINK_UP): Mode.NOMINAL,
    (Mode.SAFE, Trigger.SAFE_RELEASED): Mode.NOMINAL,
    (Mode.SAFE, Trigger.FAULT_CLEARED): Mode.NOMINAL,
    **{(Mode.SAFE, trigger): Mode.SAFE for trigger in _BY_CONSTRAINT},
}

#: Actions the controller runs once on entering a mode.  (SAFE's minimum caps are not an
#: entry action: the controller holds them on every frame while in SAFE.)
ENTRY_ACTIONS: dict[Mode, tuple[str, ...]] = {
    Mode.SAFE: ("checkpoint_all",),
    Mode.POWER_SAVE: (),
    Mode.THERMAL_LIMIT: (),
    Mode.NOMINAL: (),
    Mode.BOOT: (),
}


@dataclass(frozen=True, slots=True)
class Transition:
    before: Mode
    after: Mode
    trigger: Trigger
    reason: str


@dataclass
class ModeMachine:
    mode: Mode = Mode.BOOT
    # Until the board has answered, a missing link is a cause: SAFE entered from BOOT by
    # command is not left for NOMINAL before there is a board to control.
    safe_causes: set[str] = field(default_factory=lambda: {"link"})

    def fire(self, trigger: Trigger, reason: str = "") -> Transition | None:
        """Apply ``trigger``; the Transition when the mode changed, else None."""
        try:
            target = TRANSITIONS[(self.mode, trigger)]
        except KeyError:
            raise IllegalTransition(self.mode, trigger) from None
        if trigger in _SAFE_CAUSE_SET:
            self.safe_causes.add(_SAFE_CAUSE_SET[trigger])
        elif trigger in _SAFE_CAUSE_CLEAR:
            self.safe_causes.discard(_SAFE_CAUSE_CLEAR[trigger])
        if self.mode is Mode.SAFE and self.safe_causes:
            target = Mode.SAFE  # another cause still holds the node in SAFE
        if target is self.mode:
            return None
        before, self.mode = self.mode, target
        return Transition(before, target, trigger, reason or trigger.value)


#: Frames a new operating mode must hold before the node switches to it.
MODE_DEBOUNCE = 5


@dataclass
class ModeDebouncer:
    """Which operating mode the binding constraint names, held for a few frames first.

    Near a boundary the thermal bound of one GPU can dip under its maximum every other
    frame; the mode is what operators read, so it changes only when the new answer holds
    for ``MODE_DEBOUNCE`` frames — except that THERMAL_LIMIT is entered at once.
    """

    frames: int = MODE_DEBOUNCE
    _candidate: Trigger | None = None
    _votes: int = 0

    def vote(self, trigger: Trigger) -> bool:
        """Count this frame's answer; True when it should be fired now."""
        self._votes = self._votes + 1 if trigger is self._candidate else 1
        self._candidate = trigger
        return trigger is Trigger.THERMAL_THROTTLING or self._votes >= self.frames
