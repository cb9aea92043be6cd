"""Telecommand authentication: HMAC-SHA256 over canonical bytes (docs/ICD.md §5.6.2).

The canonical bytes of a telecommand are the msgpack encoding of the 8-element array::

    ["umbra-tc-v1", node_id, id, counter, name, args, expires, exec_at]

with ``args`` a map whose keys are sorted by their UTF-8 bytes (recursively, for nested
maps), integers in msgpack's shortest form, floats always as float64 (``expires`` and
``exec_at`` are floats; ``exec_at`` may be nil), strings as msgpack str.  The tag is
``HMAC-SHA256(key, canonical bytes)``, 32 bytes, carried as msgpack bin in ``tag``.
Each node has its own key (32 random bytes; written as 64 hex digits in key files).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import msgpack

from node.bus.payloads import Telecommand
from node.errors import ConfigError

DOMAIN = "umbra-tc-v1"
KEY_BYTES = 32


def _canon(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canon(value[k]) for k in sorted(value, key=lambda k: str(k).encode())}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    return value


def canonical_bytes(tc: Telecommand) -> bytes:
    body = [
        DOMAIN,
        tc.node_id,
        tc.id,
        tc.counter,
        tc.name,
        _canon(tc.args),
        float(tc.expires),
        None if tc.exec_at is None else float(tc.exec_at),
    ]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def tag(key: bytes, tc: Telecommand) -> bytes:
    return hmac.new(key, canonical_bytes(tc), hashlib.sha256).digest()


def sign(key: bytes, tc: Telecommand) -> Telecommand:
    return dataclasses.replace(tc, tag=tag(key, tc))


def verify(key: bytes | None, tc: Telecommand) -> bool:
    if not key or len(tc.tag) != hashlib.sha256().digest_size:
        return False
    try:
        expected = tag(key, tc)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return False
    return hmac.compare_digest(expected, tc.tag)


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def load_keys(path: Path | str) -> dict[str, bytes]:
    """A key file: JSON ``{"<node_id>": "<64 hex digits>", …}`` (ground holds all, a node its own)."""
    source = str(path)
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"key file {source} does not exist", source=source) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"key file {source} is not readable JSON: {exc}", source=source) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"key file {source}: expected a map of node id to hex key", source=source)
    keys: dict[str, bytes] = {}
    for node_id, text in raw.items():
        try:
            key = bytes.fromhex(str(text))
        except ValueError:
            raise ConfigError(f"key file {source}: key of {node_id!r} is not hex", key=node_id,
                              source=source) from None
        if len(key) < 16:
            raise ConfigError(f"key file {source}: key of {node_id!r} is shorter than 16 bytes",
                              key=node_id, source=source)
        keys[str(node_id)] = key
    return keys


def write_keys(path: Path | str, keys: dict[str, bytes]) -> None:
    """Write a key file readable by its owner only."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({k: v.hex() for k, v in sorted(keys.items())}, f, indent=2)
        f.write("\n")
