"""Operators: users with hashed passwords, two roles, and login sessions.

Users file (JSON or TOML)::

    [users.alice]
    role = "commander"            # or "viewer"
    password = "scrypt$16384$8$1$<salt hex>$<key hex>"

Make a hash with ``python -m ground.web.auth`` (it asks for the password).  Without a
users file the console runs with the documented demo users ``demo``/``demo``
(commander) and ``viewer``/``viewer`` (viewer) and says so at startup.
"""

from __future__ import annotations

import enum
import getpass
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_TTL_S = 12 * 3600.0


class Role(enum.StrEnum):
    VIEWER = "viewer"
    COMMANDER = "commander"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${key.hex()}"


def check_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(bytes.fromhex(key)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, bytes.fromhex(key))


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    password_hash: str

    @property
    def can_command(self) -> bool:
        return self.role == Role.COMMANDER


DEMO_USERS = {"demo": ("demo", Role.COMMANDER), "viewer": ("viewer", Role.VIEWER)}


def demo_users() -> dict[str, User]:
    return {name: User(name, role, hash_password(pw)) for name, (pw, role) in DEMO_USERS.items()}


def load_users(path: Path | str) -> dict[str, User]:
    source = str(path)
    try:
        text = Path(path).read_text()
        raw = tomllib.loads(text) if source.endswith(".toml") else json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"users file {source} does not exist", source=source) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"users file {source}: {exc}", source=source) from None
    table = raw.get("users") if isinstance(raw, dict) else None
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"users file {source}: expected a non-empty 'users' table", key="users",
                          source=source)
    users: dict[str, User] = {}
    for name, entry in table.items():
        key = f"users.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: {key} must be a table", key=key, source=source)
        try:
            role = Role(entry.get("role", ""))
        except ValueError:
            raise ConfigError(f"{source}: {key}.role must be 'viewer' or 'commander'",
                              key=f"{key}.role", source=source) from None
        pw = entry.get("password", "")
        if not isinstance(pw, str) or not pw.startswith("scrypt$"):
            raise ConfigError(f"{source}: {key}.password must be a scrypt hash "
                              "(python -m ground.web.auth)", key=f"{key}.password", source=source)
        users[str(name)] = User(str(name), role, pw)
    return users


class Sessions:
    """Random session tokens held in memory (a console restart logs everyone out)."""

    def __init__(self, users: dict[str, User], *, ttl: float = SESSION_TTL_S) -> None:
        self.users = users
        self.ttl = ttl
        self._tokens: dict[str, tuple[str, float]] = {}
        # Checked against for an unknown name: one scrypt per login attempt, as for a user.
        self._dummy_hash = hash_password(secrets.token_hex(16))

    def login(self, name: str, password: str) -> str | None:
        user = self.users.get(name)
        if user is None:
            check_password(password, self._dummy_hash)  # same work either way
            return None
        if not check_password(password, user.password_hash):
            return None
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (name, time.time() + self.ttl)
        return token

    def user(self, token: str | None) -> User | None:
        if not token:
            return None
        entry = self._tokens.get(token)
        if entry is None:
            return None
        name, expires = entry
        if time.time() > expires or name not in self.users:
            self._tokens.pop(token, None)
            return None
        return self.users[name]

    def logout(self, token: str | None) -> None:
        if token:
            self._tokens.pop(token, None)


def main() -> int:
    password = getpass.getpass("password: ")
    if password != getpass.getpass("again: "):
        print("passwords differ", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
