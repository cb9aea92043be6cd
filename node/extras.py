"""Which optional parts of Umbra are installed (``pip install 'umbra[ground]'``, ``umbra[hil]``).

A flight computer installs the node alone; ``umbra-ground`` and ``umbra-hil`` then say
what to install instead of failing with an ImportError deep in a module.
"""

from __future__ import annotations

import importlib.util
import sys

#: extra → the modules it brings (what is checked).
EXTRAS: dict[str, tuple[str, ...]] = {
    "ground": ("aiohttp", "pyarrow", "psycopg"),
    "hil": ("amqtt", "matplotlib", "pytest", "aiohttp"),
}


def missing(extra: str) -> list[str]:
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, command: str) -> None:
    """Exit 2 with the install line when ``extra`` is not installed."""
    lacking = missing(extra)
    if lacking:
        print(
            f"{command}: needs Umbra's {extra} extra (missing: {', '.join(lacking)}); "
            f"install it with: pip install 'umbra[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(2)
