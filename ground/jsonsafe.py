"""Values as strict JSON: the one sanitiser behind the archive, the console and ``tail --json``."""

from __future__ import annotations

import json
import math
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None (strict JSON has neither), keys as str, bytes as hex."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def dumps(value: Any) -> str:
    """Compact JSON of ``jsonable(value)``."""
    return json.dumps(jsonable(value), separators=(",", ":"))
