"""NASA's Open MCT on Umbra's archive: the page, its package, and the API its plugin reads.

Open MCT (npm ``openmct``, pinned in ground/web/openmct/package-lock.json, installed by
``make openmct`` — never fetched at run time) is served from ``/openmct/dist/``; ``/openmct``
is a page that starts it with Umbra's plugin (static/umbra-openmct.js).  All of it sits
behind the console's login and roles (the console's middleware), so what a viewer may not
do in the console (command, acknowledge) it cannot do here either: Open MCT only reads.

The plugin's three providers read:

- ``GET /api/openmct/dictionary`` — the nodes the archive knows (with their GPU count) and
  the channels of the one dictionary (ground/dictionary.py): units, formats, ranges,
  enumerations and limits (Open MCT's limit evaluator colours values, its plots draw lines);
- ``GET /api/openmct/history?id=NODE.CHANNEL&start=MS&end=MS&size=N`` — archived samples of
  one channel, min/max-bucketed in SQL when the window holds more than ``size`` of them
  (``Archive.series``), so a week of 1 Hz plots quickly;
- ``GET /api/openmct/realtime`` (a websocket) — ``{"subscribe": ID}`` / ``{"unsubscribe": ID}``
  in, ``{"id", "utc", "value"}`` out for each new sample as ingest archives it (the archive is
  looked at every ``POLL_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from ground.archive import Archive, parse_channel
from ground.dictionary import channels

log = logging.getLogger("umbra.ground.openmct")

#: Where ``make openmct`` installs the package (ground/web/openmct/package.json).
PACKAGE = Path(__file__).with_name("openmct") / "node_modules" / "openmct" / "dist"
POLL_S = 1.0
MAX_POINTS = 5000
MAX_SUBSCRIPTIONS = 256
#: Open MCT builds its views with Vue at run time and themes itself with inline styles:
#: this page alone allows eval and inline styles (scripts still come from the console only).
CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0, shrink-to-fit=no">
<title>Umbra · Open MCT</title>
<link rel="icon" type="image/png" href="/openmct/dist/favicons/favicon-32x32.png" sizes="32x32">
<script src="/openmct/dist/openmct.js"></script>
<script src="/static/umbra-openmct.js"></script>
</head><body><div id="app"></div></body></html>
"""

MISSING = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Open MCT is not installed</title>
<link rel="stylesheet" href="/static/console.css"></head><body><main><h1>Open MCT is not installed</h1>
<p>Run <code>make openmct</code> (npm installs NASA's <code>openmct</code> 4.2.0 into
<code>ground/web/openmct/</code>), then reload. <a href="/">Back to the console</a>.</p></main></body></html>
"""

_BY_NAME = {c.name: c for c in channels()}


def installed() -> bool:
    return (PACKAGE / "openmct.js").is_file()


def split_id(ident: str) -> tuple[str, str]:
    """``node-1.temp_c[3]`` → (node-1, temp_c[3]); ValueError for anything else."""
    node, sep, channel = ident.partition(".")
    if not sep or not node or not channel:
        raise ValueError(f"telemetry id {ident!r}: expected NODE.CHANNEL")
    name = channel.split("[", 1)[0]
    if name not in _BY_NAME:
        raise ValueError(f"unknown channel {channel!r}")
    if _BY_NAME[name].kind in ("float", "int"):
        parse_channel(channel)
    elif "[" in channel:
        raise ValueError(f"channel {name!r} is not per GPU")
    return node, channel


def _number(value: Any, channel: str) -> float | None:
    """A channel's value as Open MCT plots it: numbers as they are, enumerations and flags by
    their index (the dictionary's ``choices``)."""
    if value is None:
        return None
    c = _BY_NAME[channel.split("[", 1)[0]]
    if c.kind == "enum":
        return float(c.choices.index(value)) if value in c.choices else None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    f = float(value)
    return f if math.isfinite(f) else None


def _value(row: dict[str, Any], channel: str) -> float | None:
    name, _, rest = channel.partition("[")
    v = row.get(name)
    if rest:
        arr = v if isinstance(v, list) else []
        i = int(rest[:-1])
        v = arr[i] if i < len(arr) else None
    return _number(v, channel)


class OpenMct:
    """The routes; ``archive`` is the console's."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/openmct", self.page)
        r.add_get("/openmct/dist/{tail:.+}", self.asset)
        r.add_get("/api/openmct/dictionary", self.dictionary)
        r.add_get("/api/openmct/history", self.history)
        r.add_get("/api/openmct/realtime", self.realtime)

    async def page(self, request: web.Request) -> web.Response:
        if not installed():
            return web.Response(text=MISSING, content_type="text/html", status=503)
        resp = web.Response(text=PAGE, content_type="text/html")
        resp.headers["X-Umbra-CSP"] = CSP  # the headers middleware puts it in place (see app.py)
        return resp

    async def asset(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        path = (PACKAGE / tail).resolve()
        if not installed() or not path.is_relative_to(PACKAGE.resolve()) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    def _nodes(self) -> list[dict[str, Any]]:
        out = []
        for n in self.archive.nodes():
            latest = self.archive.latest_hk(n["node"])
            gpus = len(latest["temp_c"]) if latest and isinstance(latest.get("temp_c"), list) else 0
            out.append({"id": n["node"], "gpus": gpus, "online": bool(n.get("online"))})
        return out

    async def dictionary(self, request: web.Request) -> web.Response:
        nodes = await asyncio.to_thread(self._nodes)
        return web.json_response({"nodes": nodes, "channels": [c.to_json() for c in channels()]})

    def _history(self, node: str, channel: str, start: float, end: float, size: int) -> list[dict[str, Any]]:
        c = _BY_NAME[channel.split("[", 1)[0]]
        if c.kind in ("float", "int"):
            return [{"id": f"{node}.{channel}", "utc": t * 1000.0, "value": v}
                    for t, v in self.archive.series(channel, node, start, end, size) if v is not None]
        rows = [(r["utc"], _value(r, channel)) for r in self.archive.iter_hk(node, start, end, columns=(c.name,))]
        every = max(1, len(rows) // max(size, 1))
        return [{"id": f"{node}.{channel}", "utc": t * 1000.0, "value": v} for t, v in rows[::every] if v is not None]

    async def history(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            node, channel = split_id(q.get("id", ""))
            start, end = float(q["start"]) / 1000.0, float(q["end"]) / 1000.0
            size = min(max(int(q.get("size", "1000")), 1), MAX_POINTS)
            if not (math.isfinite(start) and math.isfinite(end) and start <= end):
                raise ValueError("start and end: milliseconds, start <= end")
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        rows = await asyncio.to_thread(self._history, node, channel, start, end, size)
        return web.json_response(rows)

    def _new_rows(self, node: str, since: float, columns: tuple[str, ...]) -> list[dict[str, Any]]:
        return list(self.archive.iter_hk(node, since, None, columns=columns))

    async def realtime(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
        await ws.prepare(request)
        wanted: dict[str, set[str]] = {}  # node → channels
        since: dict[str, float] = {}

        async def push() -> None:
            while not ws.closed:
                await asyncio.sleep(POLL_S)
                for node, chans in list(wanted.items()):
                    if not chans:
                        continue
                    cols = tuple({c.split("[", 1)[0] for c in chans})
                    rows = await asyncio.to_thread(self._new_rows, node, since[node], cols)
                    for row in rows:
                        if row["utc"] <= since[node]:
                            continue
                        since[node] = row["utc"]
                        for ch in list(chans):
                            v = _value(row, ch)
                            if v is not None:
                                await ws.send_str(json.dumps({"id": f"{node}.{ch}", "utc": row["utc"] * 1000.0,
                                                              "value": v}))

        pusher = asyncio.create_task(push())
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    body = json.loads(msg.data)
                    subscribe, ident = ("subscribe" in body), str(body.get("subscribe") or body.get("unsubscribe"))
                    node, channel = split_id(ident)
                except (ValueError, TypeError, AttributeError) as exc:
                    await ws.send_str(json.dumps({"error": str(exc)}))
                    continue
                if subscribe:
                    if sum(len(v) for v in wanted.values()) >= MAX_SUBSCRIPTIONS:
                        await ws.send_str(json.dumps({"error": f"at most {MAX_SUBSCRIPTIONS} subscriptions"}))
                        continue
                    if node not in wanted:
                        latest = await asyncio.to_thread(self.archive.latest_hk, node)
                        since[node] = latest["utc"] if latest else 0.0
                    wanted.setdefault(node, set()).add(channel)
                else:
                    wanted.get(node, set()).discard(channel)
        finally:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pusher
        return ws


__all__ = ["OpenMct", "installed", "split_id"]
