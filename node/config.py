"""The node's configuration: one frozen dataclass per part, read from TOML, validated by key.

A config file looks like (every key optional; defaults below)::

    [node]
    node_id = "node-1"
    data_dir = "./var/node-1"
    policy = "umbra"                 # or "baseline"

    [link]
    serial = "/tmp/umbra-board"      # a path or a pyserial URL such as socket://127.0.0.1:5000
    timeout_s = 0.5                  # no frame from the board this long (wall time): link down
    hello_interval_s = 0.5
    heartbeat_s = 0.5
    retry_timeout_s = 0.25
    max_tries = 5

    [mqtt]
    host = "127.0.0.1"
    port = 1883
    hk_rate_hz = 1.0
    keepalive_s = 10
    username = ""
    password = ""
    tls_ca = ""                      # the broker's CA certificate (PEM) for its TLS listener

    [control]                        # the parameter table: node/control/law.py PARAM_SPECS
    limit_c = 85.0                   # predicted die temperature stays below this
    target_c = 82.0
    battery_floor_frac = 0.3

    [fdir.gpu_temp]                  # any monitor field, by monitor name (node/fdir.py)
    red_hi = 88.5
    red_action = "throttle"

Command-line flags override the file.  Errors name the key (``mqtt.port``) and the file.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from node.bus.payloads import NODE_ID_RE
from node.control.law import ControlParams
from node.errors import ConfigError
from node.fdir import DEFAULT_MONITORS, MonitorSpec, monitors_from_mapping
from node.files.config import FilesConfig
from node.gpu.config import GpuConfig, PlatformProfile
from node.jobs.manager import SimJobConfig
from node.jobs.model import CheckpointConfig, Job, parse_jobs
from node.link.session import SessionTimes
from node.policy import policy_named

_T = TypeVar("_T")


def _check_range(section: str, name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi) or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{section}.{name} = {value!r} is outside [{lo}, {hi}]", key=f"{section}.{name}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkConfig:
    """The serial link: the port and the wall-time rules of its session (ICD §4.2, §4.3)."""

    serial: str = ""
    timeout_s: float = 0.5
    hello_interval_s: float = 0.5
    heartbeat_s: float = 0.5
    retry_timeout_s: float = 0.25
    max_tries: int = 5
    reconnect_s: float = 0.2
    #: No usable SENSOR this long (at least 2.5 sensor periods): blind → minimum caps, starve.
    blind_s: float = 1.0
    #: No SET_CAPS acknowledged OK this long: uncommandable → rails off, starve.
    command_timeout_s: float = 1.0
    #: While uncommandable: how often a minimum SET_CAPS tests whether the board obeys again.
    probe_s: float = 5.0
    #: Fastest board clock believed, board seconds per wall second (a real board: ~1).
    max_board_speed: float = 1e4

    def __post_init__(self) -> None:
        _check_range("link", "timeout_s", self.timeout_s, 0.05, 60.0)
        _check_range("link", "hello_interval_s", self.hello_interval_s, 0.05, 60.0)
        _check_range("link", "heartbeat_s", self.heartbeat_s, 0.05, 60.0)
        _check_range("link", "retry_timeout_s", self.retry_timeout_s, 0.01, 60.0)
        _check_range("link", "max_tries", self.max_tries, 1, 100)
        _check_range("link", "reconnect_s", self.reconnect_s, 0.01, 60.0)
        _check_range("link", "blind_s", self.blind_s, 0.05, 60.0)
        _check_range("link", "command_timeout_s", self.command_timeout_s, 0.05, 60.0)
        _check_range("link", "probe_s", self.probe_s, 0.1, 3600.0)
        _check_range("link", "max_board_speed", self.max_board_speed, 0.1, 1e6)

    def session_times(self) -> SessionTimes:
        return SessionTimes(
            hello_interval_s=self.hello_interval_s, heartbeat_s=self.heartbeat_s, timeout_s=self.timeout_s,
            blind_s=self.blind_s, command_timeout_s=self.command_timeout_s, probe_s=self.probe_s,
            retry_timeout_s=self.retry_timeout_s, max_tries=self.max_tries, max_board_speed=self.max_board_speed,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    hk_rate_hz: float = 1.0
    keepalive_s: int = 10
    username: str = ""
    password: str = ""
    #: Events and housekeeping queued while the broker is away (oldest dropped beyond).
    queue_limit: int = 10_000
    #: CA certificate (PEM) of the broker's TLS listener; empty: plain TCP.
    tls_ca: str = ""

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("mqtt.host must not be empty", key="mqtt.host")
        if self.tls_ca and not Path(self.tls_ca).is_file():
            raise ConfigError(f"mqtt.tls_ca = {self.tls_ca!r} is not a readable file", key="mqtt.tls_ca")
        _check_range("mqtt", "port", self.port, 1, 65535)
        _check_range("mqtt", "hk_rate_hz", self.hk_rate_hz, 0.01, 100.0)
        _check_range("mqtt", "keepalive_s", self.keepalive_s, 1, 3600)
        _check_range("mqtt", "queue_limit", self.queue_limit, 10, 10_000_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    node_id: str = "node-1"
    data_dir: Path = Path("./var/node-1")
    #: A name in node.policy.POLICIES: ``umbra`` (the controller) or ``baseline`` (max caps,
    #: hardware protection only).
    policy: str = "umbra"
    link: LinkConfig = field(default_factory=LinkConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    control: ControlParams = field(default_factory=ControlParams)
    fdir: tuple[MonitorSpec, ...] = DEFAULT_MONITORS
    gpu: GpuConfig = field(default_factory=GpuConfig)
    platform: PlatformProfile = field(default_factory=PlatformProfile)
    sim_jobs: SimJobConfig = field(default_factory=SimJobConfig)
    #: ``[checkpoints]``: the store, staging and the interval policy (docs/jobs.md).
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    #: ``[[jobs]]``: the node's own jobs; those with a ``command`` run as processes.
    jobs: tuple[Job, ...] = ()
    #: ``[files]``: the file service (downlinks, bundle uplinks; node/files/config.py).
    files: FilesConfig = field(default_factory=FilesConfig)

    def __post_init__(self) -> None:
        policy_named(self.policy)  # ConfigError naming node.policy for an unknown one
        if not NODE_ID_RE.fullmatch(self.node_id):
            raise ConfigError(
                f"node.node_id = {self.node_id!r}: use 1-32 letters, digits, '-' or '_'",
                key="node.node_id",
            )

    @classmethod
    def from_toml(cls, path: Path | str, **overrides: Any) -> Self:
        """Read ``path``; ``overrides`` are ``section.key`` → value (None means not given)."""
        source = str(path)
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist", source=source) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source} is not valid TOML: {exc}", source=source) from None
        return cls.from_mapping(raw, source=source, **overrides)

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], *, source: str = "<defaults>", **overrides: Any) -> Self:
        sections: dict[str, dict[str, Any]] = {"node": {}, "link": {}, "mqtt": {}, "control": {}, "fdir": {}, "gpu": {}, "platform": {}, "sim_jobs": {}, "checkpoints": {}, "files": {}}
        raw = dict(raw)
        jobs_raw = raw.pop("jobs", None)  # an array of tables, not a table
        for section, values in raw.items():
            if section not in sections:
                raise ConfigError(f"{source}: unknown section [{section}]", key=section, source=source)
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: {section} must be a table", key=section, source=source)
            sections[section].update(values)
        for dotted, value in overrides.items():
            if value is not None:
                section, _, key = dotted.partition(".")
                sections[section][key] = value
        try:
            node = sections["node"]
            for key in node:
                if key not in _NODE_KEYS:
                    raise ConfigError(f"{source}: unknown key node.{key}", key=f"node.{key}", source=source)
            return cls(
                node_id=_typed(node, "node", "node_id", str, "node-1", source),
                data_dir=Path(_typed(node, "node", "data_dir", str, "./var/node-1", source)),
                policy=_typed(node, "node", "policy", str, "umbra", source),
                link=_build(LinkConfig, "link", sections["link"], source),
                mqtt=_build(MqttConfig, "mqtt", sections["mqtt"], source),
                control=_build(ControlParams, "control", sections["control"], source),
                fdir=monitors_from_mapping(sections["fdir"], source=source),
                gpu=_build(GpuConfig, "gpu", sections["gpu"], source),
                platform=_build(PlatformProfile, "platform", sections["platform"], source),
                sim_jobs=_build(SimJobConfig, "sim_jobs", sections["sim_jobs"], source),
                checkpoints=CheckpointConfig.from_mapping(sections["checkpoints"], source=source),
                files=FilesConfig.from_mapping(sections["files"], source=source),
                jobs=parse_jobs(jobs_raw, source=source),
            )
        except ConfigError as exc:
            if exc.source is None:
                exc.source = source
                exc.args = (f"{source}: {exc.args[0]}",)
            raise


#: The keys of ``[node]`` (the other sections are their dataclasses' fields).
_NODE_KEYS = ("node_id", "data_dir", "policy")


def _typed(values: dict[str, Any], section: str, key: str, kind: type, default: Any, source: str) -> Any:
    value = values.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(
            f"{source}: {section}.{key} must be {kind.__name__}, got {type(value).__name__}",
            key=f"{section}.{key}",
            source=source,
        )
    return value


def _build(cls: type[_T], section: str, values: dict[str, Any], source: str) -> _T:
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in values:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {section}.{key}", key=f"{section}.{key}", source=source)
    kwargs = {}
    for name, f in known.items():
        if name in values:
            kind = {"float": float, "int": int, "str": str}[str(f.type)]
            kwargs[name] = _typed(values, section, name, kind, None, source)
    return cls(**kwargs)
