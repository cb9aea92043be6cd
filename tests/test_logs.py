"""Journal-friendly log lines and JSON lines."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator

import pytest

from node.logs import JsonFormatter, LineFormatter, configure_logging, priority, under_journal


@pytest.fixture(autouse=True)
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def emit(stream: io.StringIO) -> list[str]:
    log = logging.getLogger("umbra.node.link")
    log.info("opened %s", "/dev/umbra-board")
    log.warning("two\nlines")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    return stream.getvalue().splitlines()


def test_terminal_lines_have_time_level_component_and_one_line_per_record() -> None:
    out = io.StringIO()
    configure_logging(stream=out, environ={})
    lines = emit(out)
    assert len(lines) == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO umbra.node.link: opened /dev/umbra-board", lines[0])
    assert lines[1].endswith("WARNING umbra.node.link: two\\nlines")
    assert "ERROR umbra.node.link: failed\\nTraceback" in lines[2] and "ValueError: bad" in lines[2]


def test_under_journald_no_timestamp_and_a_priority_prefix() -> None:
    out = io.StringIO()
    configure_logging(stream=out, environ={"JOURNAL_STREAM": "8:12345"})
    lines = emit(out)
    assert lines[0] == "<6>INFO umbra.node.link: opened /dev/umbra-board"
    assert lines[1].startswith("<4>WARNING umbra.node.link: two")
    assert lines[2].startswith("<3>ERROR")


def test_journal_stream_is_matched_against_the_real_stream(tmp_path) -> None:
    with open(tmp_path / "log", "w") as f:
        st = os.fstat(f.fileno())
        assert under_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not under_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})  # inherited, not ours
        assert not under_journal(f, {})


def test_json_lines() -> None:
    out = io.StringIO()
    configure_logging(stream=out, json_lines=True, level="DEBUG")
    logging.getLogger("umbra.node.gpu").debug("GPU %d hot", 1, extra={"gpu": 1})
    lines = emit(out)
    docs = [json.loads(line) for line in lines]
    assert len(docs) == 4
    first = docs[0]
    assert first["level"] == "DEBUG" and first["component"] == "umbra.node.gpu"
    assert first["msg"] == "GPU 1 hot" and first["gpu"] == 1 and first["ts"].endswith("Z")
    assert docs[2]["msg"] == "two\nlines"
    assert "ValueError: bad" in docs[3]["exc"]


def test_level_filtering_and_formatters_alone() -> None:
    out = io.StringIO()
    configure_logging(stream=out, level="WARNING", environ={})
    assert len(emit(out)) == 2
    record = logging.makeLogRecord({"name": "umbra.x", "levelno": logging.ERROR, "levelname": "ERROR", "msg": "m"})
    assert LineFormatter(journal=True).format(record) == "<3>ERROR umbra.x: m"
    assert json.loads(JsonFormatter().format(record))["component"] == "umbra.x"
    assert [priority(n) for n in (5, 10, 20, 30, 40, 50)] == [7, 7, 6, 4, 3, 2]
