"""Benches as data: which board, broker, node and ground a run uses, and how time runs.

A bench file (TOML; every table and key optional, defaults shown)::

    [board]
    kind = "sim"                  # "sim": start firmware_sim; "port": attach to a real board;
                                  # "firmware": start the C firmware (firmware/, `make firmware`);
                                  # "labgrid": a board another machine exports (hil/labgrid.py)
    target = "qemu"               # kind = "firmware": "qemu" (mps2-an385 in QEMU) or "host"
    external_plant = false        # the plant on the bench (hil/plantbench.py): the harness runs
                                  # firmware_sim's plant for the board; true for kind = "firmware"
    port = ""                     # kind = "port": the node's serial port, a path or pyserial URL;
                                  # kind = "labgrid": the place's serial port for it (default "main")
    hil = ""                      # kind = "port": the board's HIL port; "labgrid": default "hil"
    place = ""                    # kind = "labgrid": the labgrid place to acquire
    coordinator = ""              # kind = "labgrid": HOST:PORT (default $LG_COORDINATOR, 127.0.0.1:20408)
    labgrid_client = ""           # kind = "labgrid": the labgrid-client to run (default: PATH, .venv-labgrid)
    args = []                     # kind = "sim": extra umbra-board arguments
    [board.plant]                 # the plant's physics (umbra-board --set KEY=VALUE) for every run
    # sink_c = -60

    [broker]
    kind = "mosquitto"            # "mosquitto" (started per run), "embedded" (amqtt, in process),
                                  # or "external" (attach to host:port; never started or stopped)
    host = "127.0.0.1"
    port = 0                      # external: required; otherwise 0 = a free port per run
    username = ""
    password = ""

    [node]
    start = true                  # false: a node is already running against this board and broker
    node_id = "hil-node"
    config = ""                   # umbra-node --config FILE.toml
    hk_rate_hz = 10.0             # housekeeping, Hz of wall time
    args = []

    [ground]
    archive = "archive.sqlite"    # ground archive per run (relative: in the run directory)

    [time]
    lockstep = true               # board waits for the node's STEP_DONE (as fast as the node)
    speed = 1.0                   # without lockstep: board seconds per wall second
    lockstep_timeout_s = 0.25       # wall s the board waits for STEP_DONE (a lost frame costs this)

``BenchRun`` starts what the bench says to start, attaches to what is there and stops only
what it started (each child by its own pid / process group).  Each run gets its own run
directory, ptys and broker port, so runs can go in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from hil.bench import BOARD_READY, NODE_READY, board_command, node_command
from hil.broker import EmbeddedBroker, Mosquitto, find_mosquitto, free_port
from hil.cboard import TARGETS, FirmwareBoard
from hil.labgrid import LabgridPlace
from hil.procs import ManagedProcess
from hil.scenario import config_error as _err
from node.errors import ConfigError, LinkError

if TYPE_CHECKING:
    from firmware_sim.plant import Plant


@dataclass(frozen=True, slots=True, kw_only=True)
class BoardSpec:
    kind: str = "sim"
    target: str = "qemu"
    external_plant: bool = False
    port: str = ""
    hil: str = ""
    place: str = ""
    coordinator: str = ""
    labgrid_client: str = ""
    args: tuple[str, ...] = ()
    plant: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSpec:
    kind: str = "mosquitto"
    host: str = "127.0.0.1"
    port: int = 0
    username: str = ""
    password: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    start: bool = True
    node_id: str = "hil-node"
    config: str = ""
    hk_rate_hz: float = 10.0
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GroundSpec:
    archive: str = "archive.sqlite"


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeSpec:
    lockstep: bool = True
    speed: float = 1.0
    lockstep_timeout_s: float = 0.25


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchSpec:
    name: str = "local-sim"
    board: BoardSpec = field(default_factory=BoardSpec)
    broker: BrokerSpec = field(default_factory=BrokerSpec)
    node: NodeSpec = field(default_factory=NodeSpec)
    ground: GroundSpec = field(default_factory=GroundSpec)
    time: TimeSpec = field(default_factory=TimeSpec)
    source: str = "(default bench)"

    def to_dict(self) -> dict[str, Any]:
        def dc(obj: Any) -> dict[str, Any]:
            return {k: getattr(obj, k) for k in obj.__slots__}
        out: dict[str, Any] = {"name": self.name, "source": self.source}
        for part in ("board", "broker", "node", "ground", "time"):
            d = dc(getattr(self, part))
            if d.get("password"):
                d["password"] = "***"
            out[part] = d
        return out


def default_bench() -> BenchSpec:
    """A simulated board in lockstep and mosquitto (the embedded broker when it is missing)."""
    try:
        find_mosquitto()
        broker = BrokerSpec()
    except LinkError:
        broker = BrokerSpec(kind="embedded")
    return BenchSpec(broker=broker)


def parse_bench(data: dict[str, Any], source: str = "bench") -> BenchSpec:
    known = {"name", "board", "broker", "node", "ground", "time"}
    for key in data:
        if key not in known:
            raise _err(source, key, f"unknown table (known: {', '.join(sorted(known))})")

    def table(name: str, keys: set[str]) -> dict[str, Any]:
        t = data.get(name, {})
        if not isinstance(t, dict):
            raise _err(source, name, "expected a table")
        for k in t:
            if k not in keys:
                raise _err(source, f"{name}.{k}", f"unknown key (known: {', '.join(sorted(keys))})")
        return t

    b = table("board", {"kind", "target", "external_plant", "port", "hil", "place", "coordinator",
                        "labgrid_client", "args", "plant"})
    kind = b.get("kind", "sim")
    if kind not in ("sim", "port", "firmware", "labgrid"):
        raise _err(source, "board.kind", f"{kind!r}: use sim, port, firmware or labgrid")
    target = b.get("target", "qemu")
    if target not in TARGETS:
        raise _err(source, "board.target", f"{target!r}: use {' or '.join(TARGETS)}")
    external = b.get("external_plant", kind == "firmware")
    if not isinstance(external, bool):
        raise _err(source, "board.external_plant", f"expected true or false, got {external!r}")
    if external and kind == "sim":
        raise _err(source, "board.external_plant", "the simulated board runs its own plant")
    if kind == "port" and not (b.get("port") and b.get("hil")):
        raise _err(source, "board.port", "a real board needs both port and hil")
    if kind == "labgrid":
        if not b.get("place"):
            raise _err(source, "board.place", "a labgrid board needs the place to acquire")
        b = {"port": "main", "hil": "hil", **b}
        coordinator = str(b.get("coordinator", ""))
        if coordinator and not re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}", coordinator):
            raise _err(source, "board.coordinator", f"{coordinator!r}: expected HOST:PORT")
    for key in ("place", "coordinator", "labgrid_client"):
        if key in b and kind != "labgrid":
            raise _err(source, f"board.{key}", "only for kind = \"labgrid\"")
    plant = b.get("plant", {})
    for k, v in plant.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _err(source, f"board.plant.{k}", f"expected a number, got {v!r}")
    board = BoardSpec(kind=kind, target=str(target), external_plant=external, port=str(b.get("port", "")),
                      hil=str(b.get("hil", "")), place=str(b.get("place", "")),
                      coordinator=str(b.get("coordinator", "")), labgrid_client=str(b.get("labgrid_client", "")),
                      args=tuple(str(a) for a in b.get("args", [])),
                      plant=tuple((str(k), float(v)) for k, v in plant.items()))

    m = table("broker", {"kind", "host", "port", "username", "password"})
    bkind = m.get("kind", "mosquitto")
    if bkind not in ("mosquitto", "embedded", "external"):
        raise _err(source, "broker.kind", f"{bkind!r}: use mosquitto, embedded or external")
    port = m.get("port", 0)
    if not isinstance(port, int) or not 0 <= port < 65536:
        raise _err(source, "broker.port", f"{port!r} is not a TCP port")
    if bkind == "external" and not port:
        raise _err(source, "broker.port", "an external broker needs its port")
    broker = BrokerSpec(kind=bkind, host=str(m.get("host", "127.0.0.1")), port=port,
                        username=str(m.get("username", "")), password=str(m.get("password", "")))

    n = table("node", {"start", "node_id", "config", "hk_rate_hz", "args"})
    hk = n.get("hk_rate_hz", 10.0)
    if isinstance(hk, bool) or not isinstance(hk, int | float) or not 0.01 <= hk <= 100:
        raise _err(source, "node.hk_rate_hz", f"{hk!r} outside [0.01, 100]")
    node = NodeSpec(start=bool(n.get("start", True)), node_id=str(n.get("node_id", "hil-node")),
                    config=str(n.get("config", "")), hk_rate_hz=float(hk),
                    args=tuple(str(a) for a in n.get("args", [])))
    if broker.username and node.config and node.start:
        # The harness hands the node its broker credentials in a config file of its own;
        # with a node config given, they belong in that file's [mqtt] table instead.
        raise _err(source, "broker.username", "with node.config set, put username and password in "
                   "that file's [mqtt] table")

    g = table("ground", {"archive"})
    ground = GroundSpec(archive=str(g.get("archive", "archive.sqlite")))

    t = table("time", {"lockstep", "speed", "lockstep_timeout_s"})
    speed = t.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0 < speed <= 1e4:
        raise _err(source, "time.speed", f"{speed!r} outside (0, 10000]")
    lt = t.get("lockstep_timeout_s", 0.25)
    if isinstance(lt, bool) or not isinstance(lt, int | float) or not 0.001 <= lt <= 3600:
        raise _err(source, "time.lockstep_timeout_s", f"{lt!r} outside [0.001, 3600]")
    time_ = TimeSpec(lockstep=bool(t.get("lockstep", True)), speed=float(speed), lockstep_timeout_s=float(lt))
    return BenchSpec(name=str(data.get("name", Path(source).stem)), board=board, broker=broker,
                     node=node, ground=ground, time=time_, source=source)


def load_bench(path: str | os.PathLike[str] | None) -> BenchSpec:
    if path is None:
        return default_bench()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"bench {path}: {exc}", key="bench", source=str(path)) from None
    return parse_bench(data, str(path))


@dataclass(frozen=True, slots=True, kw_only=True)
class RunParams:
    """What one run asks of the bench (from the scenario and the command line)."""

    policy: str = "umbra"
    orbit: str = "beta0"
    gpus: int = 8
    rate_hz: float = 1.0
    seed: int = 1
    plant: tuple[tuple[str, float], ...] = ()
    persistent_broker: bool = False
    tc_keys: bool = False
    #: The scenario's process jobs (the node's ``[[jobs]]`` tables).
    jobs: tuple[dict[str, Any], ...] = ()
    #: Process jobs' checkpoint intervals on the board clock (a board paced faster than wall time).
    board_clock: bool = False


def toml_value(value: Any) -> str:
    """One TOML value (the shapes a node config holds: scalars, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + "".join(c if " " <= c != "\x7f" else f"\\u{ord(c):04x}" for c in escaped) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def toml_dumps(config: dict[str, Any]) -> str:
    """A node config as TOML: top-level tables, and arrays of tables (``[[jobs]]``)."""
    out = []
    for name, body in config.items():
        if isinstance(body, dict):
            out.append(f"[{name}]")
            out += [f"{toml_value(str(k))} = {toml_value(v)}" for k, v in body.items()]
        elif isinstance(body, list) and all(isinstance(t, dict) for t in body):
            for table in body:
                out.append(f"[[{name}]]")
                out += [f"{toml_value(str(k))} = {toml_value(v)}" for k, v in table.items()]
        else:
            raise TypeError(f"{name}: only tables and arrays of tables at the top level")
        out.append("")
    return "\n".join(out)


#: In a scenario job's command: the file holding simulated GPU N's speed (docs/hil.md).
_GPU_SPEED = re.compile(r"\{gpu_speed:(\d{1,2})\}")


class BenchRun:
    """One run's parts.  ``async with BenchRun(spec, params, workdir) as run:`` starts the
    broker and the board (the node is started by ``start_node``, after the harness has set
    the initial conditions), and stops everything it started on exit."""

    def __init__(self, spec: BenchSpec, params: RunParams, workdir: Path, *, python: str = sys.executable) -> None:
        self.spec = spec
        self.params = params
        self.workdir = workdir
        self.python = python
        self.board: ManagedProcess | None = None
        self.firmware: FirmwareBoard | None = None
        self.labgrid: LabgridPlace | None = None
        self.node: ManagedProcess | None = None
        self.mosquitto: Mosquitto | None = None
        self.embedded: EmbeddedBroker | None = None
        self.mqtt_host = spec.broker.host
        self.mqtt_port = spec.broker.port
        self.key_file: Path | None = None
        self.node_starts = 0

    # -- paths ------------------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def link_port(self) -> str:
        """The node's serial port: the board's own, or a pty the harness makes for it."""
        return self.spec.board.port if self.spec.board.kind == "port" else str(self.workdir / "board.tty")

    @property
    def hil_port(self) -> str:
        return self.spec.board.hil if self.spec.board.kind == "port" else str(self.workdir / "board-hil.tty")

    @property
    def node_id(self) -> str:
        return self.spec.node.node_id

    # -- broker -----------------------------------------------------------------------------

    async def start_broker(self) -> None:
        kind = self.spec.broker.kind
        if kind == "external":
            return
        if kind == "embedded":
            if self.embedded is None:
                self.embedded = EmbeddedBroker(port=self.mqtt_port or None)
            await self.embedded.start()
            self.mqtt_host, self.mqtt_port = self.embedded.host, self.embedded.port
            return
        if self.mosquitto is None:
            self.mosquitto = Mosquitto(workdir=self.workdir / "mosquitto", port=self.mqtt_port or None,
                                       persistence=self.params.persistent_broker)
        await asyncio.to_thread(self.mosquitto.start)
        self.mqtt_host, self.mqtt_port = self.mosquitto.host, self.mosquitto.port

    async def stop_broker(self) -> None:
        if self.mosquitto is not None:
            await asyncio.to_thread(self.mosquitto.stop)
        elif self.embedded is not None:
            await self.embedded.stop()

    # -- board ------------------------------------------------------------------------------

    def board_argv(self) -> list[str]:
        p, t = self.params, self.spec.time
        extra = ["--orbit", p.orbit, "--seed", str(p.seed), "--lockstep-timeout", str(t.lockstep_timeout_s)]
        if t.lockstep:
            extra.append("--lockstep")
        for k, v in (*self.spec.board.plant, *p.plant):
            extra += ["--set", f"{k}={v:g}"]
        return board_command(self.python, self.link_port, self.hil_port, gpus=p.gpus, rate_hz=p.rate_hz,
                             speed=t.speed, extra=[*extra, *self.spec.board.args])

    async def start_board(self) -> None:
        if self.spec.board.kind == "labgrid":  # acquired, not started: ptys relay its ports
            b = self.spec.board
            self.labgrid = LabgridPlace(b.place, link=Path(self.link_port), hil=Path(self.hil_port),
                                        coordinator=b.coordinator, client=b.labgrid_client, main_name=b.port,
                                        hil_name=b.hil, log_dir=self.log_dir)
            await self.labgrid.__aenter__()
            return
        if self.spec.board.kind == "firmware":
            self.firmware = FirmwareBoard(self.spec.board.target, Path(self.link_port), Path(self.hil_port),
                                          log_dir=self.log_dir, gpus=self.params.gpus, rate_hz=self.params.rate_hz)
            await asyncio.to_thread(self.firmware.start)
            self.board = self.firmware.proc
            return
        if self.spec.board.kind != "sim":
            return
        self.board = ManagedProcess(self.board_argv(), name="board", log_dir=self.log_dir)
        self.board.start()
        await self.board.wait_for_line_async(BOARD_READY, 60)

    @property
    def external_plant(self) -> bool:
        return self.spec.board.external_plant

    def make_plant(self) -> Plant:
        """The plant a simulated board would run for these parameters (orbit, GPUs, seed and
        physics overrides), for the plant on the bench."""
        from firmware_sim.config import BoardConfig
        from firmware_sim.spaceplant import SpacePlant

        p = self.params
        config = BoardConfig(link=Path(self.link_port), gpus=p.gpus, rate_hz=p.rate_hz, seed=p.seed, orbit=p.orbit,
                             plant_overrides=(*self.spec.board.plant, *p.plant))
        return SpacePlant(config=config.space_config(), seed=p.seed)

    # -- node -------------------------------------------------------------------------------

    def node_argv(self) -> list[str]:
        n = self.spec.node
        extra = ["--policy", self.params.policy]
        if n.config:
            extra += ["--config", n.config]
        if self.key_file is not None:
            extra += ["--tc-key-file", str(self.key_file)]
        return node_command(self.python, self.link_port, f"{self.mqtt_host}:{self.mqtt_port}", n.node_id,
                            self.workdir / "node-data", n.hk_rate_hz, [*extra, *n.args])

    async def start_node(self) -> None:
        if not self.spec.node.start:
            return
        if self.node is None:
            overlay = self.node_config_overlay()
            if overlay:  # credentials and jobs go in the node's config, not argv
                cfg = self.workdir / "node.toml"
                cfg.write_text(toml_dumps(self.merged_node_config(overlay)))
                cfg.chmod(0o600)
                self.spec = replace(self.spec, node=replace(self.spec.node, config=str(cfg)))
            self.node = ManagedProcess(self.node_argv(), name="node", log_dir=self.log_dir)
        since = self.node.mark()
        self.node.start()
        self.node_starts += 1
        await self.node.wait_for_line_async(NODE_READY, 90, since=since)

    def node_config_overlay(self) -> dict[str, Any]:
        """What this run adds to the bench's node config: broker credentials, process jobs."""
        overlay: dict[str, Any] = {}
        if self.spec.broker.username:
            overlay["mqtt"] = {"username": self.spec.broker.username, "password": self.spec.broker.password}
        if self.params.jobs:
            overlay["jobs"] = [{**j, "command": [self._placeholder(a) for a in j.get("command", [])]}
                               for j in self.params.jobs]
            if self.params.board_clock:
                overlay["checkpoints"] = {"clock": "board"}
        return overlay

    def gpu_speed_path(self, gpu: int) -> Path:
        """Where the harness keeps simulated GPU ``gpu``'s speed for a process job to pace by."""
        return self.workdir / "gpu-speed" / str(gpu)

    def speed_gpus(self) -> list[int]:
        """The GPUs whose speed some job's command reads (``{gpu_speed:N}``)."""
        found = {int(m.group(1)) for j in self.params.jobs for a in j.get("command", [])
                 if isinstance(a, str) for m in _GPU_SPEED.finditer(a)}
        return sorted(found)

    def _placeholder(self, arg: Any) -> Any:
        if not isinstance(arg, str):
            return arg
        return _GPU_SPEED.sub(lambda m: str(self.gpu_speed_path(int(m.group(1)))), arg)

    def merged_node_config(self, overlay: dict[str, Any]) -> dict[str, Any]:
        """The bench's node config file with ``overlay`` on top (tables merged key by key,
        jobs appended)."""
        base: dict[str, Any] = {}
        if self.spec.node.config:
            try:
                with open(self.spec.node.config, "rb") as f:
                    base = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"node.config = {self.spec.node.config}: {exc}", key="node.config") from None
        for name, body in overlay.items():
            if isinstance(body, list):
                base[name] = [*base.get(name, []), *body]
            else:
                base[name] = {**base.get(name, {}), **body}
        return base

    async def kill_node(self) -> None:
        if self.node is not None:
            await asyncio.to_thread(self.node.kill)

    # -- keys -------------------------------------------------------------------------------

    def make_keys(self) -> Path:
        from node.bus import signing

        self.key_file = self.workdir / "tc-keys.json"
        signing.write_keys(self.key_file, {self.node_id: signing.new_key()})
        return self.key_file

    # -- life -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            await self.start_broker()
            await self.start_board()
            if self.params.tc_keys:
                self.make_keys()
        except BaseException:
            await self.close()
            raise
        return self

    @contextlib.asynccontextmanager
    async def board_only(self) -> AsyncIterator[tuple[str, str]]:
        """Just the board, started or attached as the bench says (no broker, no node): its
        main and HIL ports, for ``umbra-hil conformance --bench``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            await self.start_board()
            yield self.link_port, self.hil_port
        finally:
            await self.close()

    async def close(self) -> None:
        # The node first, so it says goodbye on the bus rather than seeing its board vanish.
        for proc in (self.node, self.board):
            if proc is not None:
                with contextlib.suppress(Exception):
                    await proc.stop_async(timeout=2.0)
        if self.firmware is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.firmware.stop)
        if self.labgrid is not None:
            with contextlib.suppress(Exception):
                await self.labgrid.close()
        if self.mosquitto is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.mosquitto.close)
        if self.embedded is not None:
            with contextlib.suppress(Exception):
                await self.embedded.stop()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


__all__ = ["BenchRun", "BenchSpec", "RunParams", "default_bench", "free_port", "load_bench", "parse_bench"]
