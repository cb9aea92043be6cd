"""The parameter table on disk: changes made by command survive a restart.

``<data_dir>/params.json`` holds the whole table as last set by command (it wins over
the config file); it is written atomically (temp file, fsync, rename, fsync of the directory).  A file
that cannot be read or holds values out of range is reported and ignored, never half-used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from node.control.law import PARAM_SPECS, ControlParams
from node.errors import ConfigError
from node.jobs.store import write_atomic

log = logging.getLogger("umbra.node.params")


def load_params(path: Path, base: ControlParams) -> ControlParams:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return base
    except (OSError, ValueError) as exc:
        log.error("ignoring unreadable parameter file %s: %s", path, exc)
        return base
    if not isinstance(raw, dict):
        log.error("ignoring parameter file %s: not an object", path)
        return base
    known = {k: v for k, v in raw.items() if k in PARAM_SPECS}
    for name in sorted(set(raw) - set(known)):  # a parameter of an older release: keep the rest
        log.warning("parameter file %s: ignoring %s, no longer a parameter", path, name)
    try:
        return base.replace(**{k: float(v) for k, v in known.items()})
    except (ConfigError, TypeError, ValueError) as exc:
        log.error("ignoring parameter file %s: %s", path, exc)
        return base


def save_params(path: Path, params: ControlParams) -> None:
    changed = {name: getattr(params, name) for name in PARAM_SPECS}
    path = Path(path)
    # The checkpoint store's atomic write: one implementation of the fsync dance.
    write_atomic(path.parent, path.name, json.dumps(changed, indent=1, sort_keys=True).encode())
