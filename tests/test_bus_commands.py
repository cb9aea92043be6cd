"""The command dictionary: validation, key=value parsing, the hash and the ICD table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from node.bus.commands import BY_NAME, dictionary_hash, markdown, parse_assignments, validate
from node.errors import CommandRejected, Reason

ICD = Path(__file__).resolve().parent.parent / "docs" / "ICD.md"


def test_icd_command_table_is_current() -> None:
    text = ICD.read_text()
    assert markdown() in text, (
        "docs/ICD.md §5.7 is stale: paste `python -m node.bus.commands --markdown` into it"
    )


def test_required_commands_exist() -> None:
    for name in ("ping", "set_mode", "get_param", "set_param", "set_cap_limit", "set_rail",
                 "set_hk_rate", "job_submit", "job_cancel", "job_pause", "job_resume",
                 "job_checkpoint", "reboot_board", "schedule_list", "schedule_delete"):
        assert name in BY_NAME


@pytest.mark.parametrize(("name", "args", "code"), [
    ("nope", {}, Reason.UNKNOWN_COMMAND),
    ("set_rail", {"gpu": 0}, Reason.BAD_ARGUMENT),
    ("set_rail", {"gpu": 0, "on": 1}, Reason.BAD_ARGUMENT),
    ("set_rail", {"gpu": 0.0, "on": True}, Reason.BAD_ARGUMENT),
    ("set_rail", {"gpu": 40, "on": True}, Reason.OUT_OF_RANGE),
    ("set_rail", {"gpu": 0, "on": True, "x": 1}, Reason.BAD_ARGUMENT),
    ("set_mode", {"mode": "FAST"}, Reason.OUT_OF_RANGE),
    ("set_hk_rate", {"hz": float("inf")}, Reason.OUT_OF_RANGE),
    ("get_param", {"name": "x" * 100}, Reason.OUT_OF_RANGE),
])
def test_validation_reasons(name, args, code) -> None:
    with pytest.raises(CommandRejected) as info:
        validate(name, args)
    assert info.value.code == code


def test_valid_arguments_are_normalised() -> None:
    _, args = validate("set_hk_rate", {"hz": 2})
    assert args == {"hz": 2.0} and isinstance(args["hz"], float)
    _, args = validate("set_cap_limit", {"gpu": 1})
    assert args == {"gpu": 1, "max_w": None}


def test_parse_assignments() -> None:
    assert parse_assignments("set_rail", ["gpu=2", "on=off"]) == {"gpu": 2, "on": False}
    with pytest.raises(ValueError):
        parse_assignments("set_rail", ["volts=3"])


def test_hash_is_stable_and_printed() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", dictionary_hash())
    out = subprocess.run([sys.executable, "-m", "node.bus.commands"], capture_output=True, text=True)
    assert out.stdout.strip() == dictionary_hash()
