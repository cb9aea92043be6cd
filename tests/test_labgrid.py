"""Benches on labgrid places (hil/labgrid.py): a board another machine exports.

A real labgrid coordinator and exporter (labgrid 26, installed by ``make labgrid`` in
.venv-labgrid) on loopback export the ports of the C firmware running in QEMU; a place
holds them; ``umbra-hil conformance --bench`` acquires the place, reaches the ports
through the exporter's ser2net (RFC 2217), passes every check and releases the place.
The exporter's ser2net is bound to 127.0.0.1 by tests/labgrid/ser2net.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.broker import free_port
from hil.cboard import FirmwareBoard
from hil.labgrid import (
    BINARY,
    DEFAULT_VENV,
    DO,
    DONT,
    IAC,
    SB,
    SE,
    WILL,
    WONT,
    NetworkSerialPort,
    TelnetCodec,
    find_client,
    parse_show,
    pick,
)
from hil.procs import ManagedProcess
from node.errors import ConfigError, LinkError

pytestmark = [pytest.mark.hil]

HERE = Path(__file__).resolve().parent
LABGRID_BIN = DEFAULT_VENV / "bin"
PLACE = "umbra-qemu"
SIM_PLACE = "umbra-sim"

# What `labgrid-client -p umbra-qemu show` printed with labgrid 26.0.1 (trimmed of dates).
SHOW = """\
Place 'umbra-qemu':
  matches:
    umbra-test/umbra-qemu/*
  acquired: vm/root
  acquired resources:
    umbra-test/umbra-qemu/NetworkSerialPort/hil
    umbra-test/umbra-qemu/NetworkSerialPort/main
Acquired resource 'hil' (umbra-test/umbra-qemu/NetworkSerialPort/hil):
  {'acquired': 'umbra-qemu',
   'avail': True,
   'cls': 'NetworkSerialPort',
   'params': {'extra': {'path': '/dev/pts/7',
                        'proxy': 'localhost',
                        'proxy_required': False},
              'host': '127.0.0.1',
              'port': 40111,
              'speed': 115200}}
Acquired resource 'main' (umbra-test/umbra-qemu/NetworkSerialPort/main):
  {'acquired': 'umbra-qemu',
   'avail': True,
   'cls': 'NetworkSerialPort',
   'params': {'extra': {'path': '/dev/pts/6',
                        'proxy': 'localhost',
                        'proxy_required': False},
              'host': '127.0.0.1',
              'port': 40112,
              'speed': 115200}}
Acquired resource 'power' (umbra-test/umbra-qemu/NetworkPowerPort/power):
  {'acquired': 'umbra-qemu', 'avail': True, 'cls': 'NetworkPowerPort', 'params': {'model': 'gude', 'host': 'x'}}
"""


def test_show_output_gives_the_places_serial_ports() -> None:
    ports = parse_show(SHOW)
    assert [p.name for p in ports] == ["hil", "main"]  # the power switch is not a serial port
    main = pick(ports, "main")
    assert (main.host, main.port, main.speed, main.protocol) == ("127.0.0.1", 40112, 115200, "rfc2217")
    # for a user's own pyserial: ser2net does not answer SET_CONTROL, so do not wait for it
    assert main.url == "rfc2217://127.0.0.1:40112?ign_set_control"
    assert NetworkSerialPort("x", "e/g/NetworkSerialPort/x", "h", 1, protocol="raw").url == "socket://h:1"
    # by the exporter group's name too, when the resources are not named main/hil
    assert pick([NetworkSerialPort("NetworkSerialPort", "e/board-main/NetworkSerialPort/RawSerialPort", "h", 2)],
                "board-main").port == 2
    with pytest.raises(ConfigError, match=r"no serial port named .console.*hil \(umbra-test"):
        pick(ports, "console")


def test_a_resource_without_its_address_is_an_error_that_names_it() -> None:
    text = "Acquired resource 'main' (e/g/NetworkSerialPort/main):\n  {'cls': 'NetworkSerialPort', 'params': {}}\n"
    with pytest.raises(LinkError, match="e/g/NetworkSerialPort/main has no host and port"):
        parse_show(text)


def test_a_missing_client_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="not an executable"):
        find_client("/nonexistent/labgrid-client")
    monkeypatch.setenv("UMBRA_LABGRID_CLIENT", "/nonexistent/labgrid-client")
    with pytest.raises(ConfigError, match="not an executable"):
        find_client()


@dataclass
class Lab:
    coordinator: str
    client: str
    tmp: Path
    exporter_pid: int = 0

    def client_run(self, *args: str, user: str | None = None, place: str = PLACE) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **({"LG_USERNAME": user} if user else {})}
        return subprocess.run([self.client, "-x", self.coordinator, "-p", place, *args], env=env,
                              capture_output=True, text=True, timeout=60)

    def board(self, place: str = PLACE, **board: str) -> dict[str, str]:
        return {"kind": "labgrid", "place": place, "coordinator": self.coordinator, "labgrid_client": self.client,
                **board}

    def bench(self, **board: str) -> Path:
        path = self.tmp / f"lab-{len(list(self.tmp.glob('lab-*.toml')))}.toml"
        lines = ["[board]", *(f'{k} = "{v}"' for k, v in self.board(**board).items())]
        path.write_text("\n".join(lines) + "\n")
        return path


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A coordinator and an exporter on loopback exporting the QEMU board's two UARTs, and a
    place that holds them."""
    if not (LABGRID_BIN / "labgrid-coordinator").exists():
        pytest.fail("labgrid is not installed: run `make labgrid`")
    if shutil.which("ser2net") is None and not Path("/usr/sbin/ser2net").exists():
        pytest.fail("ser2net is not installed: run `make labgrid`")
    tmp = tmp_path_factory.mktemp("lab")
    coordinator = f"127.0.0.1:{free_port()}"
    procs: list[ManagedProcess] = []
    board = FirmwareBoard("qemu", tmp / "board.tty", tmp / "board-hil.tty", log_dir=tmp)
    try:
        coord = ManagedProcess([str(LABGRID_BIN / "labgrid-coordinator"), "-l", coordinator],
                               name="labgrid-coordinator", log_dir=tmp, cwd=tmp)
        coord.start()
        procs.append(coord)
        board.start()
        # a second board: the simulator, for a scenario run through labgrid
        sim = ManagedProcess([sys.executable, "-m", "firmware_sim.cli", "--link", str(tmp / "sim.tty"), "--hil",
                              str(tmp / "sim-hil.tty"), "--rate", "1", "--seed", "1", "--orbit", "sso-dawn-dusk"],
                             name="sim-board", log_dir=tmp)
        sim.start()
        procs.append(sim)
        sim.wait_for_line(r"umbra-board: board ", 60)
        # labgrid exports device paths (/dev/…), not our symlinks to them
        exported = ""
        for group, link, hil in ((PLACE, "board.tty", "board-hil.tty"), (SIM_PLACE, "sim.tty", "sim-hil.tty")):
            exported += (f"{group}:\n"
                         f"  main:\n    cls: RawSerialPort\n    port: {os.path.realpath(tmp / link)}\n"
                         f"  hil:\n    cls: RawSerialPort\n    port: {os.path.realpath(tmp / hil)}\n")
        (tmp / "exporter.yaml").write_text(exported)
        lab = Lab(coordinator, find_client(str(LABGRID_BIN / "labgrid-client")), tmp)
        # the exporter gives up on a coordinator that is not listening yet: the places first
        _wait_for(lambda: lab.client_run("create").returncode == 0, 60, "the coordinator")
        assert lab.client_run("add-match", f"umbra-test/{PLACE}/*").returncode == 0
        assert lab.client_run("create", place=SIM_PLACE).returncode == 0
        assert lab.client_run("add-match", f"umbra-test/{SIM_PLACE}/*", place=SIM_PLACE).returncode == 0
        exporter = ManagedProcess(
            [str(LABGRID_BIN / "labgrid-exporter"), "-c", coordinator, "--hostname", "127.0.0.1", "-n", "umbra-test",
             str(tmp / "exporter.yaml")],
            name="labgrid-exporter", log_dir=tmp, env={"PATH": f"{HERE / 'labgrid'}:{os.environ['PATH']}"})
        exporter.start()
        procs.append(exporter)
        lab.exporter_pid = exporter.pid or 0
        _wait_for(lambda: subprocess.run(  # one line per exported port: main and hil
            [lab.client, "-x", coordinator, "resources"], capture_output=True, text=True, timeout=60,
        ).stdout.count("NetworkSerialPort") == 4, 60, "the exporter's resources")
        yield lab
    finally:
        for proc in reversed(procs):
            proc.stop()
        board.stop()


def _conformance(bench: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil.cli", "conformance", "--bench", str(bench), *args],
                          capture_output=True, text=True, timeout=600, cwd=tmp)


@pytest.mark.timeout(600)
def test_conformance_passes_on_a_board_exported_through_labgrid(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "conformance.json"
    done = _conformance(lab.bench(), tmp_path, "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert results and all(r["ok"] for r in results) and not any(r.get("skipped") for r in results)
    assert "checks passed" in done.stdout
    # released at the end: another user can have it now
    shown = lab.client_run("show").stdout
    assert "acquired: None" in shown, shown
    # the bytes went through the exporter's ser2net: it had a client for each port
    log = (lab.tmp / "labgrid-exporter.stderr.log").read_text()
    assert log.count("Starting ser2net") >= 2, log
    # the exporter runs ser2net while the place is acquired; here it listens on loopback only
    assert lab.client_run("acquire").returncode == 0
    try:
        def listening() -> list[tuple[str, int]]:
            return [(c.laddr.ip, c.laddr.port) for child in psutil.Process(lab.exporter_pid).children(recursive=True)
                    for c in child.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
        _wait_for(lambda: len(listening()) == 2, 30, "ser2net")
        assert all(ip == "127.0.0.1" for ip, _ in listening()), listening()
    finally:
        assert lab.client_run("release").returncode == 0


@pytest.mark.timeout(120)
def test_a_place_someone_else_holds_is_refused_with_their_name(lab: Lab, tmp_path: Path) -> None:
    assert lab.client_run("acquire", user="alice").returncode == 0
    try:
        done = _conformance(lab.bench(), tmp_path, "--only", "sessions")
    finally:
        assert lab.client_run("release", "--kick", user="bob").returncode == 0
    assert done.returncode == 1
    assert "already acquired by" in done.stderr and "alice" in done.stderr, done.stderr


@pytest.mark.timeout(120)
def test_a_place_without_the_named_port_is_refused_and_released(lab: Lab, tmp_path: Path) -> None:
    done = _conformance(lab.bench(port="console"), tmp_path, "--only", "sessions")
    assert done.returncode == 2
    assert "no serial port named 'console'" in done.stderr, done.stderr
    assert "acquired: None" in lab.client_run("show").stdout  # not left holding it


@pytest.mark.timeout(300)
async def test_a_scenario_runs_on_a_board_acquired_from_a_labgrid_place(lab: Lab, tmp_path: Path) -> None:
    from hil.benchfile import parse_bench
    from hil.runner import run_scenario
    from hil.scenario import library

    bench = parse_bench({"board": lab.board(SIM_PLACE)}, "labgrid-bench")
    result = await run_scenario(library()["nominal-sso"], bench, run_dir=tmp_path / "run", quick=True)
    assert not result.error, result.error
    assert result.verdict == "pass", [(o.metric, o.value) for o in result.failed()]
    assert result.metrics["board_time_s"] >= 0.95 * result.duration_s
    assert result.metrics["telemetry_packets"] > 0
    assert "NetworkSerialPort/main" in (tmp_path / "run" / "logs" / "labgrid-place.txt").read_text()
    assert "acquired: None" in lab.client_run("show", place=SIM_PLACE).stdout


def test_conformance_takes_a_port_or_a_bench_not_both(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "hil.cli", "conformance", "/dev/null", "--bench", "x.toml"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and "PORT or --bench" in done.stderr


@pytest.mark.parametrize(("board", "text"), [
    ({"kind": "labgrid"}, "board.place: a labgrid board needs the place"),
    ({"kind": "labgrid", "place": "p", "coordinator": "nowhere"}, "board.coordinator: 'nowhere': expected HOST:PORT"),
    ({"kind": "sim", "place": "p"}, "board.place: only for kind"),
])  # fmt: skip
def test_labgrid_bench_keys_are_checked(board: dict[str, str], text: str) -> None:
    from hil.benchfile import parse_bench

    with pytest.raises(ConfigError, match=text.replace("(", "\\(")):
        parse_bench({"board": board}, "b")


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_telnet_carries_any_bytes_split_anywhere(data: bytes, cuts: list[int]) -> None:
    wire = TelnetCodec.encode(data)
    codec = TelnetCodec()
    got = bytearray()
    edges = sorted({0, len(wire), *(c for c in cuts if c <= len(wire))})
    for a, b in itertools.pairwise(edges):
        out, replies = codec.feed(wire[a:b])
        got += out
        assert replies == b""
    assert bytes(got) == data


def test_telnet_answers_each_option_once_and_drops_subnegotiation() -> None:
    codec = TelnetCodec()
    # the server: WILL BINARY, DO BINARY, DO TERMINAL-TYPE (24), a COM-PORT subnegotiation, data
    data, replies = codec.feed(bytes([IAC, WILL, BINARY, IAC, DO, BINARY, IAC, DO, 24,
                                      IAC, SB, 44, 101, 0, 1, 0xFF, 0xFF, IAC, SE]) + b"\x00ok\xff\xff")
    assert data == b"\x00ok\xff"
    assert replies == bytes([IAC, DO, BINARY, IAC, WILL, BINARY, IAC, WONT, 24])
    # the same offers again change nothing, so nothing is answered (no negotiation loops)
    assert codec.feed(bytes([IAC, WILL, BINARY, IAC, DO, BINARY])) == (b"", b"")
    # a split command is still a command
    assert codec.feed(bytes([IAC])) == (b"", b"")
    assert codec.feed(bytes([WONT, BINARY, 7])) == (b"\x07", bytes([IAC, DONT, BINARY]))
