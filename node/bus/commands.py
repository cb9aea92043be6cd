"""The command dictionary: every telecommand, its arguments, types, units and ranges.

One table drives the node's validation (:func:`validate`), the ICD's command table
(``python -m node.bus.commands --markdown``, checked by ``tests/test_bus_commands.py``),
the ground's ``send`` argument parsing and (later) its forms.  :func:`dictionary_hash`
covers this table and the telemetry payload layouts; the node puts it in its birth
message so ground can warn when its dictionary differs from the node's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from node.errors import CommandRejected, Reason

ArgType = Literal["int", "float", "bool", "str", "enum"]

#: Longest string argument accepted (parameter names, job ids).
MAX_STR = 64


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    type: ArgType
    description: str
    unit: str = ""
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = True

    def check(self, command: str, value: Any) -> Any:
        """The value if it fits this argument; CommandRejected otherwise."""
        where = f"{command}.{self.name}"
        if value is None and not self.required:
            return None
        if self.type == "bool":
            if not isinstance(value, bool):
                raise CommandRejected(f"{where}: expected bool", code=Reason.BAD_ARGUMENT)
            return value
        if self.type in ("str", "enum"):
            if not isinstance(value, str):
                raise CommandRejected(f"{where}: expected str", code=Reason.BAD_ARGUMENT)
            if self.type == "enum" and value not in self.choices:
                raise CommandRejected(
                    f"{where}: {value!r} is not one of {', '.join(self.choices)}",
                    code=Reason.OUT_OF_RANGE,
                )
            if not 1 <= len(value) <= MAX_STR or not value.isprintable():
                raise CommandRejected(
                    f"{where}: 1-{MAX_STR} printable characters", code=Reason.OUT_OF_RANGE
                )
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandRejected(f"{where}: expected {self.type}", code=Reason.BAD_ARGUMENT)
        if self.type == "int" and not isinstance(value, int):
            raise CommandRejected(f"{where}: expected int", code=Reason.BAD_ARGUMENT)
        number: int | float = value if self.type == "int" else float(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise CommandRejected(f"{where}: must be finite", code=Reason.OUT_OF_RANGE)
        if (self.lo is not None and number < self.lo) or (self.hi is not None and number > self.hi):
            raise CommandRejected(
                f"{where} = {number} outside [{self.lo}, {self.hi}] {self.unit}".rstrip(),
                code=Reason.OUT_OF_RANGE,
            )
        return number

    def parse(self, text: str) -> Any:
        """A ground operator's ``key=value`` text → the typed value (ValueError if not)."""
        if self.type == "bool":
            lowered = text.lower()
            if lowered in ("1", "true", "on", "yes"):
                return True
            if lowered in ("0", "false", "off", "no"):
                return False
            raise ValueError(f"{self.name}: {text!r} is not a bool (on/off, true/false)")
        if self.type == "int":
            return int(text)
        if self.type == "float":
            if not self.required and text.lower() in ("none", "nil", ""):
                return None
            return float(text)
        return text

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "unit": self.unit,
            "lo": self.lo,
            "hi": self.hi,
            "choices": list(self.choices),
            "required": self.required,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class CommandDef:
    name: str
    description: str
    args: tuple[Arg, ...] = ()
    #: Executed by the command processor itself rather than the target.
    internal: bool = False
    #: Not carried out by this node yet: the target answers UNSUPPORTED.
    status: str = "v1"
    arg_index: dict[str, Arg] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arg_index", {a.name: a for a in self.args})

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "args": [a.describe() for a in self.args],
            "internal": self.internal,
        }


_GPU = Arg("gpu", "int", "GPU index", lo=0, hi=31)
_JOB = Arg("job", "str", "job id")

COMMANDS: tuple[CommandDef, ...] = (
    CommandDef("ping", "Answer completed with the node's UTC; proves the command path.", internal=True),
    CommandDef(
        "set_mode",
        "Enter SAFE (minimum caps) or release SAFE back to NOMINAL.",
        (Arg("mode", "enum", "target mode", choices=("SAFE", "NOMINAL")),),
    ),
    CommandDef("list_params", "Completed report lists the settable parameter names."),
    CommandDef(
        "get_param",
        "Completed report carries the parameter's value.",
        (Arg("name", "str", "parameter name, e.g. control.target_c"),),
    ),
    CommandDef(
        "set_param",
        "Set a control parameter; the node checks it against its own range.",
        (
            Arg("name", "str", "parameter name, e.g. control.target_c"),
            Arg("value", "float", "new value (unit of the parameter)", lo=-1e9, hi=1e9),
        ),
    ),
    CommandDef(
        "set_cap_limit",
        "Ground's upper limit on one GPU's power cap; omit max_w to lift it.",
        (
            _GPU,
            Arg("max_w", "float", "cap limit (within the board's cap range)", unit="W", lo=0.0,
                hi=2000.0, required=False),
        ),
    ),
    CommandDef(
        "set_rail",
        "Switch one GPU's power rail on or off.",
        (_GPU, Arg("on", "bool", "true: rail on")),
    ),
    CommandDef(
        "set_hk_rate",
        "Housekeeping rate, in Hz of wall time.",
        (Arg("hz", "float", "packets per second", unit="Hz", lo=0.01, hi=100.0),),
    ),
    CommandDef(
        "job_submit",
        "Submit a job to GPUs: its priority weights their share of the power budget.",
        (_JOB, Arg("gpus", "int", "bit mask of GPUs", lo=1, hi=2**32 - 1),
         Arg("priority", "int", "higher runs first", lo=0, hi=100, required=False)),
    ),
    CommandDef("job_cancel", "Cancel a submitted job (its GPUs go back to their own jobs).", (_JOB,)),
    CommandDef("job_pause", "Pause a job after a checkpoint: its GPUs held at minimum cap.", (_JOB,)),
    CommandDef("job_resume", "Resume a paused job.", (_JOB,)),
    CommandDef("job_checkpoint", "Checkpoint a job now (`gpu-<i>` is GPU i's own job).", (_JOB,)),
    CommandDef(
        "job_catalogue",
        "Completed report lists each job's committed checkpoints: seq, size, hash, digest, "
        "progress, age.",
        (Arg("job", "str", "only this job", required=False),),
    ),
    CommandDef("reboot_board", "Reboot the dev board (RESET_BOARD): unsaved work is lost.", ()),
    CommandDef(
        "file_downlink",
        "Send a file to ground (ICD §5.9): a job's checkpoint (seq; 0 the newest) or, with path, one of "
        "its result files. Completed report: the transfer id (xfer), name and size.",
        (_JOB, Arg("seq", "int", "checkpoint seq (0 or none: the newest)", lo=0, hi=2**31 - 1, required=False),
         Arg("path", "str", "a result file, relative to the job's results directory", required=False),
         Arg("priority", "int", "higher goes first (default 5)", lo=0, hi=9, required=False)),
    ),
    CommandDef("file_cancel", "Cancel a file transfer.", (Arg("xfer", "str", "transfer id"),)),
    CommandDef("file_list", "Completed report lists the file transfers: active and the last ended.", ()),
    CommandDef(
        "bundle_run",
        "Start the job an installed bundle names in its umbra-job.toml.",
        (Arg("bundle", "str", "bundle name (its file name without .tar…)"),),
    ),
    CommandDef("schedule_list", "Completed report lists the time-tagged commands waiting.",
               internal=True),
    CommandDef(
        "schedule_delete",
        "Delete one waiting time-tagged command.",
        (Arg("id", "str", "command id of the time-tagged command"),),
        internal=True,
    ),
)

BY_NAME: dict[str, CommandDef] = {c.name: c for c in COMMANDS}


def validate(name: Any, args: Any) -> tuple[CommandDef, dict[str, Any]]:
    """The command and its checked arguments; CommandRejected with the reason otherwise."""
    if not isinstance(name, str) or name not in BY_NAME:
        raise CommandRejected(f"unknown command {name!r}"[:120], code=Reason.UNKNOWN_COMMAND)
    cmd = BY_NAME[name]
    if not isinstance(args, Mapping):
        raise CommandRejected(f"{name}: args must be a map", code=Reason.BAD_ARGUMENT)
    extra = [k for k in args if k not in cmd.arg_index]
    if extra:
        raise CommandRejected(f"{name}: unknown argument(s) {extra!r}"[:120], code=Reason.BAD_ARGUMENT)
    checked: dict[str, Any] = {}
    for arg in cmd.args:
        if arg.name not in args:
            if arg.required:
                raise CommandRejected(f"{name}: missing {arg.name}", code=Reason.BAD_ARGUMENT)
            checked[arg.name] = None
            continue
        checked[arg.name] = arg.check(name, args[arg.name])
    return cmd, checked


def parse_assignments(name: str, pairs: Sequence[str]) -> dict[str, Any]:
    """Ground: ``["gpu=1", "on=true"]`` → typed args for ``name`` (ValueError if wrong)."""
    cmd = BY_NAME.get(name)
    if cmd is None:
        raise ValueError(f"unknown command {name!r}; known: {', '.join(BY_NAME)}")
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r} is not key=value")
        arg = cmd.arg_index.get(key)
        if arg is None:
            raise ValueError(f"{name} has no argument {key!r} (has: {', '.join(cmd.arg_index) or 'none'})")
        out[key] = arg.parse(text)
    return out


def dictionary() -> dict[str, Any]:
    """The command and telemetry dictionary as plain data (what the hash covers)."""
    from node.bus.payloads import PAYLOAD_FOR_LEAF, Telecommand, _Payload

    classes: list[type[_Payload]] = [*PAYLOAD_FOR_LEAF.values(), Telecommand]
    return {
        "commands": [c.describe() for c in COMMANDS],
        "telemetry": {cls.__name__: dict(cls.TYPES) for cls in classes},
        "reasons": {r.name: int(r) for r in Reason},
    }


def dictionary_hash() -> str:
    """First 16 hex digits of SHA-256 over the canonical JSON of :func:`dictionary`."""
    text = json.dumps(dictionary(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _range(a: Arg) -> str:
    if a.type == "enum":
        return " \\| ".join(f"`{c}`" for c in a.choices)
    if a.lo is None and a.hi is None:
        return "1 … 64 chars" if a.type == "str" else "—"
    return f"{a.lo:g} … {a.hi:g}"


def markdown() -> str:
    """The ICD §5.7 command table."""
    lines = [
        "<!-- generated by `python -m node.bus.commands --markdown`; do not edit -->",
        "",
        f"Dictionary hash: `{dictionary_hash()}`",
        "",
        "| Command | Argument | Type | Unit | Range | Req. | Description |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in COMMANDS:
        note = " **(UNSUPPORTED until implemented)**" if c.status == "unsupported" else ""
        lines.append(f"| `{c.name}` | | | | | | {c.description}{note} |")
        for a in c.args:
            lines.append(
                f"| | `{a.name}` | {a.type} | {a.unit or '—'} | {_range(a)} | "
                f"{'yes' if a.required else 'no'} | {a.description} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m node.bus.commands")
    p.add_argument("--markdown", action="store_true", help="the ICD command table")
    p.add_argument("--json", action="store_true", help="the whole dictionary as JSON")
    args = p.parse_args(argv)
    if args.json:
        print(json.dumps(dictionary(), indent=2, sort_keys=True))
    elif args.markdown:
        sys.stdout.write(markdown())
    else:
        print(dictionary_hash())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
