"""The console in a real browser: Debian's headless Chromium driven by Playwright.

A real mosquitto, a LocalBench (simulated board + node processes) and ``umbra-ground
serve`` as a child process; then, as an operator would: log in, see the node online,
see a plot update, send a command from the form and see it completed, and as a viewer
be refused.  Takes the screenshot of the node page; ``UMBRA_UPDATE_DOCS=1`` saves it as
docs/console-node.png (the README's), so an ordinary run leaves the checkout clean.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chromium, ground_console, login, need_chromium, screenshot

from hil.bench import LocalBench
from hil.broker import Mosquitto
from node.bus import signing

pytestmark = [pytest.mark.e2e]

@pytest.fixture
def stack(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(console URL, node id) with a bench running behind it."""
    need_chromium()
    node_id = "web-1"
    key_file = tmp_path / "tc-keys.json"
    signing.write_keys(key_file, {node_id: signing.new_key()})
    bench = LocalBench(workdir=tmp_path / "bench", mqtt_host=mosquitto.host, mqtt_port=mosquitto.port,
                       node_id=node_id, gpus=4, hk_rate_hz=2.0, demand_w=650.0,
                       node_args=("--tc-key-file", str(key_file)))
    with ground_console(mosquitto, tmp_path, key_file) as url:
        try:
            bench.start()
            yield url, node_id
        finally:
            bench.stop()


@pytest.mark.timeout(150)
def test_operator_session_in_chromium(stack: tuple[str, str], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, node_id = stack
    with sync_playwright() as pw:
        ctx = chromium(pw, tmp_path, viewport={"width": 1280, "height": 1400})
        try:
            page = ctx.new_page()
            page.set_default_timeout(30_000)
            # Not logged in: every page leads to the login form; a wrong password is refused.
            page.goto(url)
            expect(page).to_have_url(f"{url}/login")
            page.fill("#user", "demo")
            page.fill("#password", "wrong")
            page.click("#login")
            expect(page.locator(".error")).to_be_visible()

            login(page, url, "demo", "demo")
            row = page.locator(f'#fleet tr[data-node="{node_id}"]')
            expect(row.locator(".node-state")).to_have_text("online", timeout=40_000)

            row.locator("a").click()
            expect(page.locator("#node-state")).to_have_text("online")
            chart = page.locator("#chart-temp")
            expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]"))
            first = chart.get_attribute("data-last-t")
            deadline = time.monotonic() + 15
            while chart.get_attribute("data-last-t") == first:
                assert time.monotonic() < deadline, "the temperature plot did not update"
                page.wait_for_timeout(250)
            expect(page.locator('.value[data-channel="temp_c[0]"]')).to_have_class(
                re.compile(r"value (ok|warn|crit)"))
            # One colour per GPU, named in the legend; hovering shows the values at that time.
            items = page.locator("#chart-temp ~ .legend .legend-item")
            expect(items).to_have_count(4)
            colours = {items.nth(i).get_attribute("data-color") for i in range(4)}
            assert len(colours) == 4, colours
            box = chart.bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
            expect(page.locator("#chart-temp ~ .legend .legend-time")).to_contain_text("at ")
            assert chart.get_attribute("data-cursor-t")
            expect(items.first).to_contain_text(re.compile(r"GPU0 \d+\.\d"))
            page.mouse.move(0, 0)
            # Time navigation: back half a window (no longer live), then live again.
            live_range = page.locator("#t-range").get_attribute("data-end")
            page.click("#t-back")
            expect(page.locator("#t-live")).not_to_have_class(re.compile("on"))
            back_end = float(page.locator("#t-range").get_attribute("data-end") or 0)
            assert back_end < float(live_range or 0) - 100, (back_end, live_range)
            page.click("#t-live")
            expect(page.locator("#t-live")).to_have_class(re.compile("on"))
            expect(page.locator("#t-range")).to_contain_text("live")

            # Command from the form: a ping, then a set_cap_limit with a bad value first.
            page.select_option("#cmd-name", "set_cap_limit")
            page.fill("#arg-gpu", "1")
            page.fill("#arg-max_w", "5000")  # over the dictionary's 2000 W: the form refuses
            page.click("#cmd-send")
            expect(page.locator("#cmd-result")).to_have_text("fix the highlighted fields")
            page.fill("#arg-max_w", "450")
            page.click("#cmd-send")
            expect(page.locator("#cmd-result")).to_contain_text("sent set_cap_limit")
            history = page.locator("#commands tbody tr").first
            expect(history.locator(".stage.completed")).to_be_visible(timeout=30_000)
            expect(history.locator(".stage.accepted")).to_be_visible()
            expect(history.locator(".stage.started")).to_be_visible()
            # The checkpoint catalogue: ask the node, its answer fills the table.
            expect(page.locator("#catalogue-when")).to_contain_text("No catalogue received yet")
            page.click("#catalogue-refresh")
            expect(page.locator("#catalogue-when")).to_contain_text("As the node reported it",
                                                                    timeout=30_000)
            expect(page.locator("#catalogue tbody tr").first).to_be_visible()
            page.select_option("#window", "60")
            page.wait_for_timeout(4000)  # a few more points on the plots
            screenshot(page, tmp_path, "console-node.png", full_page=True)

            # Alarms page renders for the commander.
            page.goto(f"{url}/alarms")
            expect(page.locator("#limits")).to_contain_text("temp_c")

            # A viewer sees the node but cannot command: the button is disabled and the
            # server refuses the request itself.
            page.click("#logout")
            login(page, url, "viewer", "viewer")
            page.goto(f"{url}/node/{node_id}")
            expect(page.locator("#viewer-note")).to_be_visible()
            expect(page.locator("#cmd-send")).to_be_disabled()
            token = page.locator('meta[name="csrf-token"]').get_attribute("content")
            resp = page.request.post(f"{url}/api/node/{node_id}/commands",
                                     data={"name": "ping", "args": {}},
                                     headers={"X-CSRF-Token": token or ""})
            assert resp.status == 403, resp.text()
            assert "viewer" in resp.json()["error"]
        finally:
            ctx.close()
