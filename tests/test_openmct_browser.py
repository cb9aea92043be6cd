"""NASA Open MCT on Umbra's archive, in a real browser (Debian's headless Chromium, Playwright).

``umbra-ground serve`` with the Open MCT package ``make openmct`` installs; a node's
housekeeping comes over a real mosquitto: two minutes of it first (archived before the page
opens), then live packets, one of them 95 °C.  As an operator would: log in, open a GPU's
temperature in Open MCT — the plot is drawn from the archive (the history request answers
with the archived points) and then takes live ones (over the websocket); in the telemetry
table the 95 °C value is coloured red by the limit evaluator; a viewer opens Open MCT but
cannot command.  ``UMBRA_UPDATE_DOCS=1`` saves the plot's screenshot as docs/openmct-node.png.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from browser import chromium, ground_console, login, need_chromium, screenshot

from ground.web.openmct import installed
from hil.broker import Mosquitto
from node.bus import signing
from node.bus.payloads import Housekeeping, Leaf, NodeState, topic

pytestmark = [pytest.mark.e2e]

NODE = "mct-1"


class Publisher:
    """The node's side of the bus, reduced to what the test needs: housekeeping at QoS 1."""

    def __init__(self, mq: Mosquitto) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"umbra-node-{NODE}")
        self.client.connect(mq.host, mq.port)
        self.client.loop_start()
        self.seq = 0

    def state(self) -> None:
        self.client.publish(topic(NODE, Leaf.STATE), NodeState(node_id=NODE, online=True, utc=time.time()).to_wire(),
                            qos=1, retain=True).wait_for_publish(5)

    def hk(self, utc: float, temp: float, *, historical: bool = False) -> None:
        self.seq += 1
        n = 4
        packet = Housekeeping(
            node_id=NODE, seq=self.seq, utc=utc, t_board=float(self.seq), mode="NOMINAL", link_up=True,
            temp_c=(temp, 60.0, 61.0, 62.0)[:n], power_w=(500.0,) * n, cap_w=(600.0,) * n, progress=(1.0,) * n,
            solar_w=2400.0, battery_soc=0.8, radiator_c=30.0, board_flags=0, historical=historical)
        self.client.publish(topic(NODE, Leaf.HK), packet.to_wire(), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def console(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[tuple[str, Publisher]]:
    need_chromium()
    if not installed():
        pytest.fail("Open MCT is not installed: `make test` runs `make openmct`", pytrace=False)
    key_file = tmp_path / "tc-keys.json"
    signing.write_keys(key_file, {NODE: signing.new_key()})
    with ground_console(mosquitto, tmp_path, key_file) as url:
        publisher = Publisher(mosquitto)
        try:
            publisher.state()
            yield url, publisher
        finally:
            publisher.close()


@pytest.mark.timeout(180)
def test_open_mct_shows_archived_then_live_telemetry_with_limits(console: tuple[str, Publisher],
                                                                tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, node = console
    now = time.time()
    for i in range(120, 0, -1):  # two minutes of history, 1 Hz, 60…71 °C
        node.hk(now - i, 60.0 + (i % 12), historical=True)
    channel = "temp_c[0]"
    path = f"#/browse/umbra:fleet/umbra:node:{NODE}/umbra:{NODE}.{channel}"
    with sync_playwright() as pw:
        ctx = chromium(pw, tmp_path, viewport={"width": 1400, "height": 860})
        try:
            page = ctx.new_page()
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # Behind the console's login: Open MCT itself redirects a stranger to it.
            page.goto(f"{url}/openmct")
            assert page.url == f"{url}/login"
            login(page, url, "demo", "demo")
            # the archive has the history before the page asks for it
            deadline = time.monotonic() + 20
            while len(json.loads(page.request.get(
                    f"{url}/api/openmct/history?id={NODE}.{channel}&start={int((now - 300) * 1000)}"
                    f"&end={int(now * 1000)}&size=1000").text())) < 120:
                assert time.monotonic() < deadline, "the archive never got the history"
                time.sleep(0.3)

            history: list[Any] = []
            live: list[dict[str, Any]] = []
            page.on("response", lambda r: history.append(r) if "/api/openmct/history" in r.url else None)

            def on_ws(ws: Any) -> None:
                ws.on("framereceived", lambda frame: live.append(json.loads(frame)))

            page.on("websocket", on_ws)
            page.goto(f"{url}/openmct{path}")
            expect(page.locator(".c-plot, .gl-plot").first).to_be_visible()
            deadline = time.monotonic() + 20
            while not any(r.ok for r in history):
                assert time.monotonic() < deadline, "the plot never asked for history"
                page.wait_for_timeout(200)
            archived = next(r for r in history if r.ok).json()
            assert len(archived) >= 100 and all(p["id"] == f"{NODE}.{channel}" for p in archived)
            assert min(p["value"] for p in archived) >= 60.0
            # then live points: the plot subscribed, and what the node sends now arrives
            for k in range(6):
                node.hk(time.time(), {1: 85.0, 3: 95.0}.get(k, 80.0))  # yellow from 83 °C, red from 87
                page.wait_for_timeout(500)
            deadline = time.monotonic() + 20
            while len([d for d in live if d.get("id") == f"{NODE}.{channel}"]) < 6:
                assert time.monotonic() < deadline, f"live points did not arrive: {live}"
                page.wait_for_timeout(250)
            assert 95.0 in [d["value"] for d in live]
            # the tree as an operator would open it: the fleet, the node, its channels
            for name in ("Umbra fleet", f"Node {NODE}"):
                item = page.locator(".c-tree__item", has_text=name).first
                item.locator(".c-disclosure-triangle").click()
            expect(page.locator(".c-tree__item", has_text="power_w[3]").first).to_be_visible()
            page.wait_for_timeout(1500)
            screenshot(page, tmp_path, "openmct-node.png")

            # The telemetry table of the same channel: the 95 °C row is red (limit evaluator).
            page.goto(f"{url}/openmct{path}?view=table")
            red = page.locator(".is-limit--red").first
            expect(red).to_be_visible(timeout=30_000)
            expect(red).to_contain_text("95")
            expect(page.locator(".is-limit--yellow").first).to_contain_text("85")
            assert not errors, errors
        finally:
            ctx.close()


@pytest.mark.timeout(120)
def test_a_viewer_opens_open_mct_but_cannot_command(console: tuple[str, Publisher], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, node = console
    node.hk(time.time(), 70.0)
    with sync_playwright() as pw:
        ctx = chromium(pw, tmp_path)
        try:
            page = ctx.new_page()
            login(page, url, "viewer", "viewer")
            page.goto(f"{url}/openmct#/browse/umbra:fleet")
            expect(page.get_by_text(f"Node {NODE}").first).to_be_visible(timeout=30_000)
            page.goto(f"{url}/node/{NODE}")
            token = page.locator('meta[name="csrf-token"]').get_attribute("content")
            resp = page.request.post(f"{url}/api/node/{NODE}/commands", data={"name": "ping", "args": {}},
                                     headers={"X-CSRF-Token": token or ""})
            assert resp.status == 403 and "viewer" in resp.json()["error"]
        finally:
            ctx.close()
