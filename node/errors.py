"""One exception tree for all of Umbra.

Every error Umbra raises on purpose is an ``UmbraError``.  The branches say *whose* fault
it is and what the caller can do about it; context travels as attributes, not only in
the message text.
"""

from __future__ import annotations

import enum


class UmbraError(Exception):
    """Base of every error Umbra raises on purpose."""


class ProtocolError(UmbraError):
    """Something is wrong with bytes or messages on a link."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that breaks the protocol (bad CRC, bad body, bad value).

    Receivers count these and carry on; they never crash a controller.
    """

    def __init__(self, message: str, *, reason: str = "decode", whole: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        #: The frame arrived whole (its CRC matched): a live peer sent it, not line noise.
        self.whole = whole


class LocalProtocolError(ProtocolError):
    """Our own code tried to build or send something the protocol does not allow."""


class LinkError(UmbraError):
    """A link (serial port, broker connection) is missing or went away."""

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class ConfigError(UmbraError):
    """A configuration value is missing, unknown or out of range."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.source = source


class HardwareFault(UmbraError):
    """The hardware (or its simulation) reported a fault."""

    def __init__(self, message: str, *, component: str | None = None) -> None:
        super().__init__(message)
        self.component = component


class CommandRejected(UmbraError):
    """A command was refused; ``code`` is the reason code reported to its sender."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class Reason(enum.IntEnum):
    """Reason codes of failed telecommands (verification reports, docs/ICD.md §5)."""

    BAD_TAG = 1  # HMAC tag missing or wrong
    REPLAYED = 2  # counter not above the last accepted one
    EXPIRED = 3  # past its expiry time
    UNKNOWN_COMMAND = 4
    BAD_ARGUMENT = 5  # missing, extra or wrongly typed argument
    OUT_OF_RANGE = 6
    NOT_ALLOWED = 7  # not allowed in the current mode or state
    LINK_DOWN = 8  # needs the board and the board link is down
    EXECUTION_FAILED = 9
    WRONG_NODE = 10  # addressed to another node
    MALFORMED = 11  # not a telecommand at all
    SCHEDULE_FULL = 12
    UNSUPPORTED = 13  # known command this node or board cannot carry out
    NOT_FOUND = 14  # the thing the command names (scheduled command, job) does not exist
    INTERRUPTED = 15  # execution was cut short by a node restart; its effect is unknown
    COUNTER_AHEAD = 16  # counter beyond the node's UTC in µs plus a day: one bad counter must not lock ground out
