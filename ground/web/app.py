"""The console's HTTP side: pages, a JSON API, login, and commanding.

Pages are small HTML shells; ``static/console.js`` fills them by polling the JSON API
(once a second on the node page), so there is no JavaScript build and nothing to install
beyond aiohttp.  Everything shown comes from the archive, which the console's own ingest
(or a fleet of ingest workers) keeps filling.

``async with Console(config) as console:`` starts the ingest (unless disabled) and the
HTTP server; ``console.url`` is where to point a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import logging
import math
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web

from ground.archive import Archive
from ground.files import DEFAULT_FILES_DIR, FileGround, FilesBusy
from ground.ingest import FUTURE_SLACK_S, Ingestor
from ground.jsonsafe import dumps
from ground.limits import describe as describe_limits
from ground.web.auth import LoginRefused, Sessions, User, demo_users, load_users
from ground.web.openmct import OpenMct
from node.bus.commands import BY_NAME, dictionary, dictionary_hash, validate
from node.errors import CommandRejected, ConfigError, LocalProtocolError
from node.files.store import reading as transfers_db

log = logging.getLogger("umbra.ground.web")

STATIC = Path(__file__).with_name("static")
COOKIE = "umbra_session"
MAX_POINTS = 600
USER: Any = web.RequestKey("user", object) if hasattr(web, "RequestKey") else "user"
CSRF: Any = web.RequestKey("csrf", str) if hasattr(web, "RequestKey") else "csrf"
WINDOWS = (60, 300, 900, 3600, 21600)
COMMAND_TIMEOUT_S = 30.0
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
#: Sent with every response: no framing, no inline or foreign scripts, no MIME sniffing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
#: The largest request body accepted (a command's arguments are ≤ 4 KiB on the bus).
MAX_BODY = 64 * 1024


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class ConsoleConfig:
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    archive: str | None = None
    users_file: str | None = None
    key_file: str | None = None
    #: Ingest into the archive from this process; off when separate workers do it.
    ingest: bool = True
    #: MQTT v5 shared-subscription group for this process's ingest (None: plain MQTT 3.1.1).
    shared: str | None = None
    #: Online nodes silent for this long are shown as stale.
    stale_after_s: float = 10.0
    #: Without a users file the demo users exist only on loopback, unless this is set.
    demo_users: bool = False
    #: Mark session cookies Secure (behind a TLS proxy; on by itself for https requests).
    secure_cookies: bool = False
    #: Origins besides the console's own that may post (a TLS proxy's https://host).
    allowed_origins: tuple[str, ...] = ()
    #: Broker credentials and TLS for the console's ingest and its commands.
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls_ca: str | None = None
    #: Ground's file store (ground/files.py); the console runs the file service there when it
    #: has telecommand keys (None: var/ground-files).
    files_dir: str | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.mqtt_tls_ca) if self.mqtt_tls_ca else None


def files_dir_for(config: ConsoleConfig) -> Path:
    """Where the console's file service keeps files: as configured, else beside a SQLite
    archive, else var/ground-files."""
    if config.files_dir:
        return Path(config.files_dir)
    if config.archive and "://" not in config.archive:
        return Path(config.archive).parent / "ground-files"
    return DEFAULT_FILES_DIR


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type="application/json")


class Console:
    def __init__(self, config: ConsoleConfig) -> None:
        self.config = config
        if config.users_file:
            self.users = load_users(config.users_file)
            self.demo_users = False
        else:
            if not (is_loopback(config.http_host) or config.demo_users):
                raise ConfigError(
                    f"the console on {config.http_host} (not loopback) needs a users file "
                    "(--users FILE; make hashes with `python -m ground.web.auth`); the demo "
                    "users only with --demo-users", key="users")
            self.users = demo_users()
            self.demo_users = True
        self.sessions = Sessions(self.users)
        self.archive = Archive(config.archive, worker="console")
        self.ingestor: Ingestor | None = None
        self.files: FileGround | None = None
        self.files_dir = files_dir_for(config)
        self.ground_hash = dictionary_hash()
        self._runner: web.AppRunner | None = None
        self._stack = contextlib.AsyncExitStack()
        self._send_tasks: set[asyncio.Task[None]] = set()
        self.port = config.http_port

    @property
    def url(self) -> str:
        return f"http://{self.config.http_host}:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            if self.config.ingest:
                self.ingestor = await self._stack.enter_async_context(Ingestor(
                    archive=self.archive, host=self.config.mqtt_host, port=self.config.mqtt_port,
                    shared=self.config.shared, username=self.config.mqtt_username,
                    password=self.config.mqtt_password, tls_context=self.config.tls_context(),
                ))
            if self.config.key_file:
                await self._start_files()
            self._runner = web.AppRunner(self.make_app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.config.http_host, self.config.http_port)
            await site.start()
            server = getattr(site, "_server", None)
            if server is not None and server.sockets:
                self.port = server.sockets[0].getsockname()[1]
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _start_files(self) -> None:
        """The file service on ``files_dir``, unless another process runs it there already
        (then the console only shows what that one does)."""
        from node.bus.signing import load_keys

        assert self.config.key_file is not None
        files = FileGround(self.files_dir, host=self.config.mqtt_host, port=self.config.mqtt_port,
                           keys=load_keys(Path(self.config.key_file)), username=self.config.mqtt_username,
                           password=self.config.mqtt_password, tls_context=self.config.tls_context())
        try:
            self.files = await self._stack.enter_async_context(files)
        except FilesBusy as exc:
            log.warning("%s: showing its transfers without running it", exc)

    async def _close(self) -> None:
        for task in list(self._send_tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._stack.aclose()
        self.archive.close()

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers_middleware, self._origin_middleware,
                                           self._auth_middleware], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login_post)
        r.add_post("/logout", self.logout)
        r.add_get("/", self.fleet_page)
        r.add_get("/node/{node}", self.node_page)
        r.add_get("/alarms", self.alarms_page)
        r.add_get("/api/me", self.api_me)
        r.add_get("/api/fleet", self.api_fleet)
        r.add_get("/api/dictionary", self.api_dictionary)
        r.add_get("/api/node/{node}/hk", self.api_hk)
        r.add_get("/api/node/{node}/events", self.api_events)
        r.add_get("/api/node/{node}/commands", self.api_commands)
        r.add_get("/api/node/{node}/catalogue", self.api_catalogue)
        r.add_get("/api/node/{node}/files", self.api_files)
        r.add_get("/api/files/{xfer}/data", self.api_file_data)
        r.add_post("/api/node/{node}/commands", self.api_send)
        r.add_get("/api/alarms", self.api_alarms)
        r.add_post("/api/alarms/ack", self.api_ack)
        OpenMct(self.archive).add_routes(app)
        r.add_static("/static", STATIC)
        return app

    # -- auth -----------------------------------------------------------------------------

    @web.middleware
    async def _headers_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:  # redirects and errors carry the headers too
            exc.headers.update(SECURITY_HEADERS)
            raise
        csp = resp.headers.pop("X-Umbra-CSP", None)  # a page that needs its own (Open MCT's)
        resp.headers.update(SECURITY_HEADERS)
        if csp:
            resp.headers["Content-Security-Policy"] = csp
        return resp

    def _same_origin(self, request: web.Request) -> bool:
        """A state-changing request must come from the console's own pages.

        Browsers send ``Origin`` with every cross-origin POST (and with same-origin ones);
        ``Referer`` is the fallback. SameSite=Strict alone is not enough: another port of
        the same host is the same *site*.
        """
        own = {f"{request.scheme}://{request.host}", *self.config.allowed_origins}
        origin = request.headers.get("Origin")
        if origin is not None:
            return origin in own  # "null" (a sandboxed frame, a data: page) is never ours
        referer = request.headers.get("Referer")
        if referer is not None:
            return any(referer == o or referer.startswith(o + "/") for o in own)
        # Neither: not a browser (which always names the origin of a cross-origin POST), or
        # one that hides both; the session's CSRF token still has to be right.
        return True

    @web.middleware
    async def _origin_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD", "OPTIONS") and not self._same_origin(request):
            log.warning("refused a cross-origin %s %s (Origin %r, Referer %r)", request.method,
                        request.path, request.headers.get("Origin"), request.headers.get("Referer"))
            return _json({"error": "cross-origin request refused"}, 403)
        resp: web.StreamResponse = await handler(request)
        return resp

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in ("/login",) or request.path.startswith("/static/"):
            resp: web.StreamResponse = await handler(request)
            return resp
        session = self.sessions.lookup(request.cookies.get(COOKIE))
        if session is None:
            if request.path.startswith("/api/"):
                return _json({"error": "log in first"}, 401)
            raise web.HTTPFound("/login")
        user, csrf = session
        if request.method == "POST":
            sent = request.headers.get(CSRF_HEADER)
            if not sent and request.content_type == "application/x-www-form-urlencoded":
                sent = str((await request.post()).get(CSRF_FIELD, ""))
            if not sent or not secrets.compare_digest(csrf, sent):
                log.warning("refused %s %s from %s: missing or wrong CSRF token", request.method,
                            request.path, user.name)
                return _json({"error": "missing or wrong CSRF token (reload the page)"}, 403)
            if request.path.startswith("/api/") and request.content_type != "application/json":
                return _json({"error": "send application/json"}, 415)
        request[USER] = user
        request[CSRF] = csrf
        resp = await handler(request)
        return resp

    async def login_page(self, request: web.Request) -> web.Response:
        error = request.query.get("error", "")
        message = ""
        if error == "locked":
            message = '<p class="error" id="locked">Too many failed logins: wait and try again.</p>'
        elif error:
            message = '<p class="error">Wrong user name or password.</p>'
        hint = ""
        if self.demo_users:
            hint = ('<p class="hint">Demo users: <b>demo</b> / <b>demo</b> (commander), '
                    '<b>viewer</b> / <b>viewer</b> (viewer).</p>')
        body = f"""
<form class="login" method="post" action="/login">
  <h1>Umbra ground console</h1>
  {message}
  <label>User <input name="user" id="user" autocomplete="username" autofocus></label>
  <label>Password <input name="password" id="password" type="password" autocomplete="current-password"></label>
  <button type="submit" id="login">Log in</button>
  {hint}
</form>"""
        return self._page("Log in", body, None)

    async def login_post(self, request: web.Request) -> web.Response:
        form = await request.post()
        address = request.remote or ""
        try:
            token = await asyncio.to_thread(
                self.sessions.login, str(form.get("user", ""))[:200],
                str(form.get("password", ""))[:1000], address)
        except LoginRefused:
            raise web.HTTPFound("/login?error=locked") from None
        if token is None:
            raise web.HTTPFound("/login?error=1")
        resp = web.HTTPFound("/")
        resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/",
                        max_age=int(self.sessions.ttl),
                        secure=self.config.secure_cookies or request.secure)
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.logout(request.cookies.get(COOKIE))
        resp = web.HTTPFound("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    # -- pages ----------------------------------------------------------------------------

    def _page(self, title: str, body: str, user: User | None, page: str = "", *, csrf: str = "",
              **data: str) -> web.Response:
        nav = ""
        if user is not None:
            nav = f"""
<nav><a href="/" class="brand">Umbra ground</a><a href="/">Fleet</a><a href="/alarms">Alarms <span id="alarm-count" class="badge"></span></a><a href="/openmct" id="openmct-link" title="NASA Open MCT on this archive">Open MCT</a>
<span class="spacer"></span><span class="who" id="who">{html.escape(user.name)} ({user.role})</span>
<form method="post" action="/logout"><input type="hidden" name="{CSRF_FIELD}" value="{html.escape(csrf)}">
<button id="logout">Log out</button></form></nav>"""
        attrs = " ".join(f'data-{k}="{html.escape(v)}"' for k, v in data.items())
        text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} · Umbra</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{html.escape(csrf)}">
<link rel="stylesheet" href="/static/console.css"></head>
<body data-page="{page}" {attrs}>{nav}<main>{body}</main>
<script src="/static/console.js"></script></body></html>"""
        return web.Response(text=text, content_type="text/html")

    async def fleet_page(self, request: web.Request) -> web.Response:
        body = f"""
<h1>Fleet</h1>
<p class="muted">Ground dictionary <code>{self.ground_hash}</code>. Online/offline from each
node's birth and death messages; last contact is the last packet received.</p>
<table id="fleet" class="grid"><thead><tr><th>Node</th><th>State</th><th>Mode</th>
<th>Worst alarm</th><th>Last contact</th><th>Packets</th><th>Gaps</th><th>Dictionary</th></tr></thead>
<tbody><tr><td colspan="8" class="muted">waiting for nodes…</td></tr></tbody></table>"""
        return self._page("Fleet", body, request[USER], "fleet", csrf=request[CSRF])

    async def node_page(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        user: User = request[USER]
        windows = "".join(
            f'<option value="{w}"{" selected" if w == 300 else ""}>{w // 60 if w < 3600 else w // 3600}'
            f' {"min" if w < 3600 else "h"}</option>' for w in WINDOWS)
        can = "" if user.can_command else (
            '<p class="refused" id="viewer-note">Your role is <b>viewer</b>: you can watch, '
            'but sending commands needs the <b>commander</b> role.</p>')
        body = f"""
<h1>Node <span id="node-name">{html.escape(node)}</span> <span id="node-state" class="badge">…</span>
<span id="node-mode" class="badge"></span></h1>
<div id="dict-warning"></div>
<section class="row"><div class="card wide"><h2>Now</h2><div id="now" class="now muted">waiting for housekeeping…</div></div></section>
<section><h2>Telemetry <label class="inline">window <select id="window">{windows}</select></label>
<span class="timenav"><button type="button" id="t-back" title="half a window earlier">◀</button>
<button type="button" id="t-fwd" title="half a window later">▶</button>
<button type="button" id="t-live" class="on" title="follow the newest packet">live</button>
<span id="t-range" class="muted"></span></span>
<span class="muted" id="last-update"></span></h2>
<p class="muted small">Hover a plot for the values at that time; dashed lines are the yellow and red limits.</p>
<div class="charts">
<figure><figcaption>GPU temperature (°C)</figcaption><canvas id="chart-temp" width="560" height="220"></canvas></figure>
<figure><figcaption>GPU power (solid) and cap (dashed) (W)</figcaption><canvas id="chart-power" width="560" height="220"></canvas></figure>
<figure><figcaption>Battery state of charge (%)</figcaption><canvas id="chart-soc" width="560" height="220"></canvas></figure>
<figure><figcaption>Solar input (W)</figcaption><canvas id="chart-solar" width="560" height="220"></canvas></figure>
<figure><figcaption>Radiator temperature (°C)</figcaption><canvas id="chart-radiator" width="560" height="220"></canvas></figure>
</div></section>
<section class="row">
<div class="card"><h2>Jobs</h2><div id="jobs" class="muted">…</div>
<h3>Checkpoint catalogue <button type="button" id="catalogue-refresh"{'' if user.can_command else ' disabled'}>Ask the node</button></h3>
<p class="muted small" id="catalogue-when">The node's answer to <code>job_catalogue</code>, as last received.</p>
<table class="grid" id="catalogue"><thead><tr><th>Job</th><th>Seq</th><th>Size</th><th>Progress</th>
<th>Age</th><th>Hash</th><th></th></tr></thead><tbody></tbody></table>
<h3>Files</h3><p class="muted small" id="files-note">Transfers to and from this node (ICD §5.9); a checkpoint's
<b>down</b> button asks the node for it.</p>
<table class="grid" id="files"><thead><tr><th>Started</th><th>Dir</th><th>Name</th><th>Size</th>
<th>Progress</th><th>State</th></tr></thead><tbody></tbody></table></div>
<div class="card"><h2>Commanding</h2>{can}
<form id="command-form" autocomplete="off" novalidate><label>Command <select id="cmd-name"></select></label>
<p id="cmd-description" class="muted small"></p><div id="cmd-args"></div>
<button type="submit" id="cmd-send"{'' if user.can_command else ' disabled'}>Sign and send</button>
<span id="cmd-result"></span></form>
<h3>History</h3><table class="grid" id="commands"><thead><tr><th>Sent</th><th>Command</th>
<th>Operator</th><th>Stages</th></tr></thead><tbody></tbody></table></div>
</section>
<section><h2>Events <label class="inline">severity ≥ <select id="ev-severity">
<option value="0">DEBUG</option><option value="1" selected>INFO</option><option value="2">WARNING</option>
<option value="3">ERROR</option><option value="4">CRITICAL</option></select></label>
<label class="inline">search <input id="ev-search" type="search" placeholder="text or kind"></label></h2>
<table class="grid" id="events"><thead><tr><th>UTC</th><th>#</th><th>Severity</th><th>Kind</th><th>Text</th></tr></thead><tbody></tbody></table>
</section>"""
        return self._page(f"Node {node}", body, user, "node", csrf=request[CSRF], node=node,
                          role=str(user.role))

    async def alarms_page(self, request: web.Request) -> web.Response:
        body = """
<h1>Alarms</h1>
<p class="muted">A limit violation stays here until acknowledged, even after the value is back
in the green. Limits: <span id="limits"></span></p>
<label class="inline"><input type="checkbox" id="show-acked"> show acknowledged</label>
<table class="grid" id="alarms"><thead><tr><th>Node</th><th>Channel</th><th>Now</th><th>Worst</th>
<th>Value</th><th>First</th><th>Last</th><th>Acknowledged</th></tr></thead><tbody></tbody></table>"""
        return self._page("Alarms", body, request[USER], "alarms", csrf=request[CSRF],
                          role=str(request[USER].role))

    # -- API ------------------------------------------------------------------------------

    async def api_me(self, request: web.Request) -> web.Response:
        user: User = request[USER]
        return _json({"name": user.name, "role": user.role, "can_command": user.can_command})

    async def api_dictionary(self, request: web.Request) -> web.Response:
        d = dictionary()
        status = {c.name: c.status for c in BY_NAME.values()}
        for c in d["commands"]:
            c["status"] = status.get(c["name"], "v1")
        return _json({"hash": self.ground_hash, "dictionary": d, "limits": describe_limits()})

    def _fleet(self) -> tuple[list[dict[str, Any]], int]:
        """The fleet table and the count of unacknowledged alarms (one alarms query)."""
        now = time.time()
        alarms = self.archive.alarms()
        worst: dict[str, int] = {}
        for a in alarms:
            worst[a["node"]] = max(worst.get(a["node"], 0), int(a["worst"]))
        gaps: dict[str, int] = {}
        for g in self.archive.gaps():
            gaps[g["node"]] = gaps.get(g["node"], 0) + int(g["last_seq"]) - int(g["first_seq"]) + 1
        out = []
        for n in self.archive.nodes():
            last = n["last_contact"]
            out.append({
                "node": n["node"],
                "online": None if n["online"] is None else bool(n["online"]),
                "mode": n["mode"],
                "worst_alarm": worst.get(n["node"], 0),
                "last_contact": last,
                "age_s": None if last is None else max(0.0, now - last),
                "stale": last is None or now - last > self.config.stale_after_s,
                "packets": n["packets"],
                "duplicates": n["duplicates"],
                "missing": gaps.get(n["node"], 0),
                "dict_hash": n["dict_hash"],
                "dict_mismatch": bool(n["dict_hash"]) and n["dict_hash"] != self.ground_hash,
                "boot_id": n["boot_id"],
                "version": n["version"],
            })
        return out, sum(1 for a in alarms if a["acked_at"] is None)

    async def api_fleet(self, request: web.Request) -> web.Response:
        fleet, unacked = await asyncio.to_thread(self._fleet)
        return _json({"ground_hash": self.ground_hash, "nodes": fleet, "unacked_alarms": unacked,
                      "now": time.time()})

    def _hk(self, node: str, window: float, until: float | None = None) -> dict[str, Any]:
        now = time.time()
        info = self.archive.node(node)
        latest = self.archive.latest_hk(node)
        # The window ends at the newest packet, so a replayed or stale node still shows; never
        # further ahead than ingest accepts, so a claimed future cannot freeze the page.
        end = min(max(now, latest["utc"]), now + FUTURE_SLACK_S) if latest else now
        if latest and latest["utc"] < now - window:
            end = latest["utc"]
        if until is not None:  # the operator went back in time
            end = min(until, end)
        # Thinned in SQL over the whole window (newest included); polled every second, so
        # the window's rows are never all read and decoded here.
        rows = self.archive.hk_thinned(node, end - window, end + 1, MAX_POINTS)
        alarms = self.archive.alarms(node)
        return {
            "node": node, "info": info, "latest": latest, "now": now, "window": window, "end": end,
            "ground_hash": self.ground_hash, "limits": describe_limits(), "alarms": alarms,
            "series": {
                "utc": [r["utc"] for r in rows], "seq": [r["seq"] for r in rows],
                "temp_c": [r["temp_c"] for r in rows], "power_w": [r["power_w"] for r in rows],
                "cap_w": [r["cap_w"] for r in rows], "progress": [r["progress"] for r in rows],
                "battery_soc": [r["battery_soc"] for r in rows],
                "solar_w": [r["solar_w"] for r in rows],
                "radiator_c": [r["radiator_c"] for r in rows],
            },
        }

    async def api_hk(self, request: web.Request) -> web.Response:
        try:
            window = float(request.query.get("window", "300"))
        except ValueError:
            window = 300.0
        window = min(max(window, 10.0), 7 * 86400.0)
        until = None
        if "end" in request.query:
            try:
                until = float(request.query["end"])
            except ValueError:
                return _json({"error": "end: UTC seconds"}, 400)
            if not math.isfinite(until):
                return _json({"error": "end: UTC seconds"}, 400)
        return _json(await asyncio.to_thread(self._hk, request.match_info["node"], window, until))

    async def api_events(self, request: web.Request) -> web.Response:
        try:
            severity = int(request.query.get("severity", "0"))
        except ValueError:
            severity = 0
        rows = await asyncio.to_thread(
            self.archive.events, request.match_info["node"], min_severity=severity,
            search=request.query.get("q", "")[:100], limit=200)
        return _json({"events": rows})

    async def api_commands(self, request: web.Request) -> web.Response:
        rows = await asyncio.to_thread(self.archive.commands, request.match_info["node"], 30)
        return _json({"commands": rows})

    async def api_catalogue(self, request: web.Request) -> web.Response:
        """The node's checkpoint catalogue: its newest completed ``job_catalogue`` report."""
        row = await asyncio.to_thread(self.archive.latest_report, request.match_info["node"],
                                      "job_catalogue")
        if row is None:
            return _json({"utc": None, "jobs": [], "truncated": False})
        return _json({"utc": row["utc"], "jobs": row["data"].get("jobs", []),
                      "truncated": bool(row["data"].get("truncated"))})

    def _transfers(self, node: str) -> list[dict[str, Any]]:
        with transfers_db(self.files_dir / "transfers.sqlite") as db:
            return [] if db is None else [r.to_dict() for r in db.recent(50, node)]

    async def api_files(self, request: web.Request) -> web.Response:
        """The node's file transfers, newest first, with their progress (ICD §5.9)."""
        rows = await asyncio.to_thread(self._transfers, request.match_info["node"])
        for r in rows:
            r["download"] = f"/api/files/{r['xfer']}/data" if r["state"] == "done" and r["final_path"] else ""
            r.pop("final_path", None)
        return _json({"service": self.files is not None, "transfers": rows})

    def _received_file(self, xfer: str) -> Path | None:
        """The stored file of a finished downlink, if it is in the file store."""
        with transfers_db(self.files_dir / "transfers.sqlite") as db:
            row = None if db is None else db.get(xfer)
        if row is None or row.state != "done" or not row.final_path:
            return None
        final = Path(row.final_path).resolve()
        if not final.is_relative_to(self.files_dir.resolve()) or not final.is_file():
            return None
        return final

    async def api_file_data(self, request: web.Request) -> web.StreamResponse:
        """A received file, for download (only files the service stored under its directory)."""
        xfer = request.match_info["xfer"]
        final = await asyncio.to_thread(self._received_file, xfer)
        if final is None:
            return _json({"error": f"no received file {xfer!r} in ground's file store"}, 404)
        return web.FileResponse(final, headers={
            "Content-Disposition": f'attachment; filename="{final.name}"', "Content-Type": "application/octet-stream"})

    async def api_alarms(self, request: web.Request) -> web.Response:
        rows = await asyncio.to_thread(
            self.archive.alarms, include_acked=request.query.get("acked") == "1")
        return _json({"alarms": rows, "limits": describe_limits()})

    async def api_ack(self, request: web.Request) -> web.Response:
        user: User = request[USER]
        if not user.can_command:
            return _json({"error": "acknowledging alarms needs the commander role"}, 403)
        try:
            body = await request.json()
            node, channel = str(body["node"]), str(body["channel"])
        except (ValueError, TypeError, KeyError, AttributeError):
            return _json({"error": "expected a JSON object with node and channel"}, 400)
        ok = await asyncio.to_thread(self.archive.ack_alarm, node, channel, user.name)
        return _json({"acknowledged": ok})

    # -- commanding -----------------------------------------------------------------------

    @staticmethod
    def typed_args(name: str, raw: dict[str, Any]) -> dict[str, Any]:
        """Form values (strings, or already typed) → typed args; ValueError/CommandRejected."""
        cmd = BY_NAME.get(name)
        if cmd is None:
            raise ValueError(f"unknown command {name!r}")
        out: dict[str, Any] = {}
        for key, value in raw.items():
            arg = cmd.arg_index.get(key)
            if arg is None:
                raise ValueError(f"{name} has no argument {key!r}")
            if isinstance(value, str):
                if value.strip() == "":
                    if arg.required:
                        raise ValueError(f"{key} is required")
                    continue  # an empty optional field is omitted
                value = arg.parse(value.strip())
            out[key] = value
        validate(name, out)
        return out

    async def api_send(self, request: web.Request) -> web.Response:
        user: User = request[USER]
        node = request.match_info["node"]
        if not user.can_command:
            log.warning("refused a command from %s (role %s)", user.name, user.role)
            return _json({"error": f"{user.name} is a viewer: sending commands needs the commander role"}, 403)
        try:
            body = await request.json()
            name = str(body.get("name", ""))
            args = self.typed_args(name, dict(body.get("args") or {}))
        except CommandRejected as exc:
            return _json({"error": str(exc)}, 400)
        except (ValueError, TypeError, AttributeError) as exc:
            return _json({"error": str(exc)}, 400)
        try:
            tc = await asyncio.to_thread(self._build, node, name, args)
        except ConfigError as exc:
            return _json({"error": str(exc)}, 409)
        except (ValueError, LocalProtocolError) as exc:  # a counter ground must not send, …
            return _json({"error": str(exc)}, 400)
        await asyncio.to_thread(self.archive.record_command, tc, user.name, "sending")
        task = asyncio.create_task(self._send(tc), name=f"send {tc.id}")
        self._send_tasks.add(task)
        task.add_done_callback(self._send_tasks.discard)
        log.info("%s sent %s %s to %s (id %s)", user.name, name, args, node, tc.id)
        return _json({"id": tc.id, "counter": tc.counter, "name": name, "args": args})

    def _build(self, node: str, name: str, args: dict[str, Any]) -> Any:
        from ground.keys import DEFAULT_KEY_FILE, CounterStore, counter_path
        from ground.send import build_telecommand
        from node.bus.signing import load_keys

        key_file = Path(self.config.key_file) if self.config.key_file else DEFAULT_KEY_FILE
        key = load_keys(key_file).get(node)
        if key is None:
            raise ConfigError(f"no telecommand key for {node} in {key_file}", key=node,
                              source=str(key_file))
        counter = CounterStore(counter_path(key_file)).next(node)
        return build_telecommand(node_id=node, name=name, args=args, key=key, counter=counter)

    async def _send(self, tc: Any) -> None:
        from ground.send import send_command

        status = "sent"
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                async for report in send_command(
                        self.config.mqtt_host, self.config.mqtt_port, tc,
                        username=self.config.mqtt_username, password=self.config.mqtt_password,
                        tls_context=self.config.tls_context()):
                    status = report.stage
                    await asyncio.to_thread(self.archive.set_command_status, tc.node_id, tc.id, status)
            return
        except TimeoutError:
            status = f"no final report within {COMMAND_TIMEOUT_S:g} s (last: {status})"
        except aiomqtt_errors() as exc:
            status = f"broker error: {exc}"
        await asyncio.to_thread(self.archive.set_command_status, tc.node_id, tc.id, status)


#: How long ``serve`` waits for the ingest's subscription before it announces the console.
INGEST_READY_S = 10.0


def aiomqtt_errors() -> tuple[type[BaseException], ...]:
    import aiomqtt

    return (aiomqtt.MqttError, OSError, aiohttp.ClientError)


async def serve(config: ConsoleConfig, *, ready: asyncio.Event | None = None,
                announce: Any = print) -> None:
    """Run the console until cancelled."""
    async with Console(config) as console:
        ingest = ""
        if console.ingestor is not None:
            # "console on" should mean packets published from now on are archived: wait (a
            # little) for the ingest's subscription; a dead broker must not keep the console down.
            try:
                await asyncio.wait_for(console.ingestor.subscribed.wait(), INGEST_READY_S)
                ingest = "; ingest subscribed"
            except TimeoutError:
                ingest = f"; ingest not subscribed yet ({console.ingestor.stats.last_error or 'no broker'}), retrying"
        announce(f"umbra-ground serve: console on {console.url} (archive {console.archive.url}; "
                 f"MQTT {config.mqtt_host}:{config.mqtt_port}{ingest})")
        if console.demo_users:
            announce("umbra-ground serve: no --users file: demo users demo/demo (commander) and "
                     "viewer/viewer (viewer)")
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()


async def open_console(stack: contextlib.AsyncExitStack, config: ConsoleConfig) -> Console:
    """Enter a console on ``stack``; if its port is taken, on any free port instead."""
    import dataclasses

    try:
        return await stack.enter_async_context(Console(config))
    except OSError as exc:
        log.warning("console port %s unavailable (%s); using a free port", config.http_port, exc)
        return await stack.enter_async_context(Console(dataclasses.replace(config, http_port=0)))
