"""What the browser tests share: Debian's headless Chromium driven by Playwright, against
``umbra-ground serve`` started as a child process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.broker import Mosquitto, free_port
from hil.procs import ManagedProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
DOCS = Path(__file__).resolve().parent.parent / "docs"


def need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not found: `make test` installs Debian's chromium", pytrace=False)


@contextlib.contextmanager
def ground_console(mosquitto: Mosquitto, tmp_path: Path, key_file: Path) -> Iterator[str]:
    """``umbra-ground serve`` on a free port, its archive in ``tmp_path``: the console's URL
    once it says it is on (its ingest subscribed)."""
    port = free_port()
    serve = ManagedProcess(
        [sys.executable, "-m", "ground.cli", "serve", "--mqtt", f"{mosquitto.host}:{mosquitto.port}",
         "--http", f"127.0.0.1:{port}", "--archive", str(tmp_path / "archive.sqlite"), "--key-file", str(key_file)],
        name="serve", log_dir=tmp_path / "logs")
    serve.start()
    try:
        serve.wait_for_line(r"console on http://", 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.stop()


def chromium(pw: Any, tmp_path: Path, **options: Any) -> Any:
    """A fresh browser context with its own profile under ``tmp_path``."""
    return pw.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=ARGS, **options)


def login(page: Any, url: str, user: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.fill("#user", user)
    page.fill("#password", password)
    page.click("#login")
    page.wait_for_url(f"{url}/")


def screenshot(page: Any, tmp_path: Path, name: str, *, full_page: bool = False) -> Path:
    """The page as a PNG in ``tmp_path``; with ``UMBRA_UPDATE_DOCS=1`` also docs/``name``
    (so an ordinary run leaves the checkout clean)."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=full_page)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("UMBRA_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, DOCS / name)
    return shot
