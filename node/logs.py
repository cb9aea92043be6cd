"""Logging set up for a service: one line per record, with level and component.

- On a terminal or in a file: ``2025-01-01T12:00:00.123Z INFO umbra.node.link: opened /dev/umbra-board``.
- Under journald (``$JOURNAL_STREAM`` names our stderr): no timestamp (the journal has its
  own) and a ``<N>`` syslog priority prefix, which journald strips and stores as the
  record's priority, so ``journalctl -p warning`` works.
- ``json=True`` (``--log-json``): one JSON object per line with ``ts``, ``level``,
  ``component``, ``msg``, ``exc`` (when there is one) and any ``extra=`` fields.

Newlines inside a message or a traceback are escaped, so a record never spans two lines.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

#: syslog priorities of the logging levels (what sd-daemon's ``<N>`` prefixes mean).
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


def _utc(created: float) -> str:
    stamp = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


class LineFormatter(logging.Formatter):
    """``[<N>]`` ``[timestamp]`` ``LEVEL component: message`` on exactly one line."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        text = _one_line(text)
        if self.journal:
            return f"<{priority(record.levelno)}>{text}"
        return f"{_utc(record.created)} {text}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``component``, ``msg`` [, ``exc``], extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname,
            "component": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in doc:
                doc[key] = value
        return json.dumps(doc, default=str, ensure_ascii=False)


def under_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is connected to journald (``$JOURNAL_STREAM`` is ``dev:inode`` of it)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return True  # cannot check (not a real file): trust the environment
    return value == f"{st.st_dev}:{st.st_ino}"


def configure_logging(
    *,
    level: int | str = logging.INFO,
    json_lines: bool = False,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one that writes ``stream`` (default stderr)."""
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(LineFormatter(journal=under_journal(out, environ)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
