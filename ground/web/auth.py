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
import logging
import os
import secrets
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError

log = logging.getLogger("umbra.ground.web.auth")

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_TTL_S = 12 * 3600.0
#: Failed logins allowed per user name and per client address before a lockout.
LOGIN_FREE_FAILURES = 5
#: Failures are forgotten after this long without one.
LOGIN_WINDOW_S = 900.0
#: The first lockout; each failure more doubles it, up to LOGIN_LOCK_MAX_S.
LOGIN_LOCK_S = 30.0
LOGIN_LOCK_MAX_S = 900.0


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


class LoginThrottle:
    """Failed logins per key (a user name, a client address): a lockout that grows.

    After LOGIN_FREE_FAILURES failures within LOGIN_WINDOW_S every attempt on that key is
    refused, right password or not, for LOGIN_LOCK_S, doubling with each failure more.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # key → (count, last failure)

    def locked_for(self, key: str) -> float:
        """Seconds ``key`` stays locked out (0: it may try)."""
        count, last = self._failures.get(key, (0, 0.0))
        now = self._clock()
        if count and now - last > LOGIN_WINDOW_S:
            self._failures.pop(key, None)
            return 0.0
        if count < LOGIN_FREE_FAILURES:
            return 0.0
        lock = min(LOGIN_LOCK_S * 2.0 ** (count - LOGIN_FREE_FAILURES), LOGIN_LOCK_MAX_S)
        return max(0.0, last + lock - now)

    def failed(self, key: str) -> int:
        count, last = self._failures.get(key, (0, 0.0))
        now = self._clock()
        if count and now - last > LOGIN_WINDOW_S:
            count = 0
        if len(self._failures) > 10_000:  # an address sweep must not grow memory without end
            self._failures = {k: v for k, v in self._failures.items() if now - v[1] <= LOGIN_WINDOW_S}
        self._failures[key] = (count + 1, now)
        return count + 1

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


class LoginRefused(Exception):
    """A login refused without trying the password: the user or the address is locked out."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"too many failed logins: try again in {wait_s:.0f} s")
        self.wait_s = wait_s


class Sessions:
    """Random session tokens held in memory (a console restart logs everyone out).

    Each session has its own CSRF token; expired sessions are pruned on every login and at
    least once a minute.
    """

    def __init__(self, users: dict[str, User], *, ttl: float = SESSION_TTL_S,
                 throttle: LoginThrottle | None = None) -> None:
        self.users = users
        self.ttl = ttl
        self.throttle = throttle or LoginThrottle()
        self.failed_logins = 0
        self._tokens: dict[str, tuple[str, float, str]] = {}  # token → (user, expires, csrf)
        self._pruned_at = time.time()
        # Checked against for an unknown name: one scrypt per login attempt, as for a user.
        self._dummy_hash = hash_password(secrets.token_hex(16))

    def login(self, name: str, password: str, address: str = "") -> str | None:
        """A new session token, or None for a wrong name or password; LoginRefused when locked."""
        keys = [f"user:{name}", f"addr:{address}"]
        wait = max(self.throttle.locked_for(k) for k in keys)
        if wait > 0:
            log.warning("login as %r from %s refused: locked out for %.0f s more", name, address, wait)
            raise LoginRefused(wait)
        user = self.users.get(name)
        if user is None:
            check_password(password, self._dummy_hash)  # same work either way
            ok = False
        else:
            ok = check_password(password, user.password_hash)
        if not ok:
            self.failed_logins += 1
            counts = [self.throttle.failed(k) for k in keys]
            log.warning("failed login as %r from %s (%d for this user, %d from this address)",
                        name, address, *counts)
            return None
        for k in keys:
            self.throttle.succeeded(k)
        self.prune()
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (name, time.time() + self.ttl, secrets.token_urlsafe(32))
        return token

    def prune(self) -> int:
        """Forget expired sessions; returns how many."""
        now = time.time()
        self._pruned_at = now
        dead = [t for t, (_, expires, _) in self._tokens.items() if now > expires]
        for t in dead:
            del self._tokens[t]
        return len(dead)

    def lookup(self, token: str | None) -> tuple[User, str] | None:
        """The user and the CSRF token of a live session (None: no such session)."""
        if time.time() - self._pruned_at > 60.0:
            self.prune()
        entry = self._tokens.get(token) if token else None
        if entry is None:
            return None
        name, expires, csrf = entry
        if time.time() > expires or name not in self.users:
            self._tokens.pop(token or "", None)
            return None
        return self.users[name], csrf

    def user(self, token: str | None) -> User | None:
        found = self.lookup(token)
        return found[0] if found else None

    def csrf(self, token: str | None) -> str | None:
        """The CSRF token of a live session (None: no such session)."""
        found = self.lookup(token)
        return found[1] if found else None

    def __len__(self) -> int:
        return len(self._tokens)

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
