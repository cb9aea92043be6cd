"""The node's mode state machine, as a table (pure: no I/O, no clock).

Modes: BOOT → NOMINAL ⇄ THERMAL_LIMIT (⇄ POWER_SAVE in a later revision); any → SAFE on a
critical fault, link loss or command.  SAFE is left only when every cause that put the
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
    THERMAL_THROTTLING = "thermal_throttling"
    THERMAL_CLEAR = "thermal_clear"
    SAFE_COMMANDED = "safe_commanded"
    SAFE_RELEASED = "safe_released"


class IllegalTransition(UmbraError):
    def __init__(self, mode: Mode, trigger: Trigger) -> None:
        super().__init__(f"trigger {trigger.value} is not allowed in mode {mode.value}")
        self.mode = mode
        self.trigger = trigger


#: What makes each trigger a SAFE cause (entered) or clear one (left).
_SAFE_CAUSE_SET = {Trigger.LINK_LOST: "link", Trigger.SAFE_COMMANDED: "command"}
_SAFE_CAUSE_CLEAR = {Trigger.LINK_UP: "link", Trigger.SAFE_RELEASED: "command"}

_ANY_TO_SAFE = {
    (mode, trigger): Mode.SAFE
    for mode in Mode
    for trigger in (Trigger.LINK_LOST, Trigger.SAFE_COMMANDED)
}

#: (mode, trigger) → next mode.  SAFE's exits are guarded by its causes (see ``fire``).
TRANSITIONS: dict[tuple[Mode, Trigger], Mode] = {
    **_ANY_TO_SAFE,
    (Mode.BOOT, Trigger.LINK_UP): Mode.NOMINAL,
    (Mode.BOOT, Trigger.THERMAL_CLEAR): Mode.BOOT,
    (Mode.BOOT, Trigger.SAFE_RELEASED): Mode.BOOT,
    (Mode.NOMINAL, Trigger.LINK_UP): Mode.NOMINAL,
    (Mode.NOMINAL, Trigger.THERMAL_THROTTLING): Mode.THERMAL_LIMIT,
    (Mode.NOMINAL, Trigger.THERMAL_CLEAR): Mode.NOMINAL,
    (Mode.NOMINAL, Trigger.SAFE_RELEASED): Mode.NOMINAL,
    (Mode.THERMAL_LIMIT, Trigger.LINK_UP): Mode.THERMAL_LIMIT,
    (Mode.THERMAL_LIMIT, Trigger.THERMAL_THROTTLING): Mode.THERMAL_LIMIT,
    (Mode.THERMAL_LIMIT, Trigger.THERMAL_CLEAR): Mode.NOMINAL,
    (Mode.THERMAL_LIMIT, Trigger.SAFE_RELEASED): Mode.THERMAL_LIMIT,
    (Mode.POWER_SAVE, Trigger.LINK_UP): Mode.POWER_SAVE,
    (Mode.POWER_SAVE, Trigger.THERMAL_THROTTLING): Mode.THERMAL_LIMIT,
    (Mode.POWER_SAVE, Trigger.THERMAL_CLEAR): Mode.POWER_SAVE,
    (Mode.POWER_SAVE, Trigger.SAFE_RELEASED): Mode.POWER_SAVE,
    (Mode.SAFE, Trigger.LINK_UP): Mode.NOMINAL,
    (Mode.SAFE, Trigger.SAFE_RELEASED): Mode.NOMINAL,
    (Mode.SAFE, Trigger.THERMAL_THROTTLING): Mode.SAFE,
    (Mode.SAFE, Trigger.THERMAL_CLEAR): Mode.SAFE,
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
