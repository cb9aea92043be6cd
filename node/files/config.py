"""The ``[files]`` section of the node's config: the file service (docs/ICD.md §5.9)::

    [files]
    spool_bytes = 4294967296          # onboard bytes waiting to go down, at most (4 GiB)
    chunk_bytes = 131072              # bytes of file per data message (≤ 200 KiB)
    rate_bytes_s = 8000000            # downlink bytes per second at most (0: no limit)
    window_bytes = 16777216           # sent beyond what ground holds, at most
    probe_s = 2.0                     # how often a silent receiver is asked where it stands
    max_inflight = 8                  # data messages awaiting the broker's PUBACK at once
    max_bundle_bytes = 268435456      # an uplinked bundle, at most (256 MiB)
    max_unpacked_bytes = 1073741824   # what a bundle may unpack to, at most (1 GiB)
    bundle_keys = ["<64 hex digits>"] # Ed25519 public keys whose bundles this node installs
    results_dir = ""                  # job result files ("": <data_dir>/results)
    bundles_dir = ""                  # installed bundles ("": <data_dir>/bundles)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from node.errors import ConfigError
from node.files.bundle import key_id, public_from_hex
from node.files.pdu import MAX_CHUNK, MIN_CHUNK


@dataclass(frozen=True, slots=True, kw_only=True)
class FilesConfig:
    spool_bytes: int = 4 << 30
    chunk_bytes: int = 128 << 10
    rate_bytes_s: float = 8e6
    window_bytes: int = 16 << 20
    probe_s: float = 2.0
    max_inflight: int = 8
    max_bundle_bytes: int = 256 << 20
    max_unpacked_bytes: int = 1 << 30
    bundle_keys: tuple[str, ...] = ()
    results_dir: str = ""
    bundles_dir: str = ""

    def __post_init__(self) -> None:
        def check(key: str, value: float, lo: float, hi: float) -> None:
            if not (math.isfinite(value) and lo <= value <= hi):
                raise ConfigError(f"files.{key} = {value!r} outside [{lo:g}, {hi:g}]", key=f"files.{key}")

        check("spool_bytes", self.spool_bytes, 0, 2**50)
        check("chunk_bytes", self.chunk_bytes, MIN_CHUNK, MAX_CHUNK)
        check("rate_bytes_s", self.rate_bytes_s, 0, 1e12)
        check("window_bytes", self.window_bytes, self.chunk_bytes, 2**40)
        check("probe_s", self.probe_s, 0.05, 3600)
        check("max_inflight", self.max_inflight, 1, 64)
        check("max_bundle_bytes", self.max_bundle_bytes, 0, 2**40)
        check("max_unpacked_bytes", self.max_unpacked_bytes, 0, 2**42)
        for i, text in enumerate(self.bundle_keys):
            try:
                public_from_hex(text)
            except ValueError as exc:
                raise ConfigError(f"files.bundle_keys[{i}]: {exc}", key="files.bundle_keys") from None

    def trusted_keys(self) -> dict[str, bytes]:
        """Key id → Ed25519 public key."""
        keys = (public_from_hex(t) for t in self.bundle_keys)
        return {key_id(k): k for k in keys}

    def results(self, data_dir: Path) -> Path:
        return Path(self.results_dir) if self.results_dir else data_dir / "results"

    def bundles(self, data_dir: Path) -> Path:
        return Path(self.bundles_dir) if self.bundles_dir else data_dir / "bundles"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "<defaults>") -> Self:
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: files must be a table", key="files", source=source)
        kinds: dict[str, type] = {"spool_bytes": int, "chunk_bytes": int, "rate_bytes_s": float,
                                  "window_bytes": int, "probe_s": float, "max_inflight": int,
                                  "max_bundle_bytes": int, "max_unpacked_bytes": int, "results_dir": str,
                                  "bundles_dir": str}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            where = f"files.{key}"
            if key == "bundle_keys":
                if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise ConfigError(f"{source}: {where} must be an array of hex strings", key=where, source=source)
                kwargs[key] = tuple(value)
                continue
            kind = kinds.get(key)
            if kind is None:
                raise ConfigError(f"{source}: unknown key {where}", key=where, source=source)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(f"{source}: {where} must be {kind.__name__}", key=where, source=source)
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            exc.source = source
            exc.args = (f"{source}: {exc.args[0]}",)
            raise
