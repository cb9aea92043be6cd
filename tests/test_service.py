"""The systemd notify protocol against a datagram socket the test owns."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.service import Notifier, notify_address, watchdog_seconds

WATCHDOG_S = 0.4  # pets every 0.2 s while healthy


class Steps:
    def __init__(self) -> None:
        self.steps = 0


class Listener:
    """Plays systemd: receives notifications on a unix datagram socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(notify_address(address))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(fields)

    def count(self, key: str) -> int:
        return sum(1 for m in self.drain() if key in m)

    async def wait_for(self, key: str, timeout: float = 2.0) -> dict[str, str]:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for m in self.drain():
                if key in m:
                    return m
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {key} in {self.messages}")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:  # AF_UNIX path limit
        pytest.skip("temporary path too long for a unix socket")
    lst = Listener(str(path))
    yield lst
    lst.sock.close()


async def stepping(health: Steps, period: float = 0.02) -> None:
    while True:
        health.steps += 1
        await asyncio.sleep(period)


async def test_ready_after_the_first_step_then_pets_while_steps_advance_and_none_when_stalled(listener):
    health = Steps()
    notifier = Notifier(health=health, notify_socket=listener.address, watchdog_s=WATCHDOG_S)
    async with notifier:
        await asyncio.sleep(0.3)
        assert listener.count("READY") == 0  # no control step yet: not ready
        assert "starting" in listener.drain()[0]["STATUS"]
        loop = asyncio.create_task(stepping(health))
        ready = await listener.wait_for("READY")
        assert ready["READY"] == "1" and "STATUS" in ready
        await asyncio.sleep(1.0)
        pets_while_healthy = listener.count("WATCHDOG")
        assert pets_while_healthy >= 3  # ~every 0.2 s
        assert all(m["WATCHDOG"] == "1" for m in listener.messages if "WATCHDOG" in m)
        loop.cancel()  # the control loop stalls
        await asyncio.sleep(0.6)  # at most one more pet: the step was at most 0.2 s ago
        pets_after_stall = listener.count("WATCHDOG")
        assert pets_after_stall - pets_while_healthy <= 2
        await asyncio.sleep(1.0)
        assert listener.count("WATCHDOG") == pets_after_stall  # no pets at all once stalled
        assert notifier.stalled
        assert any("stalled" in m.get("STATUS", "") for m in listener.messages)
        loop = asyncio.create_task(stepping(health))  # it recovers: pets resume
        await asyncio.sleep(0.6)
        assert listener.count("WATCHDOG") > pets_after_stall and not notifier.stalled
        loop.cancel()
    stopping = await listener.wait_for("STOPPING")
    assert stopping["STOPPING"] == "1"


async def test_pets_continue_while_the_board_link_is_down(listener):
    health = Steps()
    link = {"up": True}
    notifier = Notifier(
        health=health, notify_socket=listener.address, watchdog_s=WATCHDOG_S, link_up=lambda: link["up"]
    )
    async with notifier:
        health.steps = 1
        await listener.wait_for("READY")
        link["up"] = False  # no frames, so no steps: waiting for the board, not stuck
        await asyncio.sleep(1.0)
        waiting = [m for m in listener.drain() if "WATCHDOG" in m]
        assert len(waiting) >= 3 and "waiting for the board link" in waiting[-1]["STATUS"]
        assert not notifier.stalled


async def test_abstract_namespace_address():
    name = f"@umbra-test-{uuid.uuid4().hex}"
    lst = Listener(name)
    try:
        health = Steps()
        async with Notifier(health=health, notify_socket=name, status=lambda: "mode NOMINAL"):
            health.steps = 5
            ready = await lst.wait_for("READY")
            assert ready["STATUS"] == "mode NOMINAL"
    finally:
        lst.sock.close()


async def test_without_notify_socket_nothing_happens():
    notifier = Notifier.from_environ(health=Steps(), environ={})
    async with notifier:
        assert not notifier.enabled
        assert notifier.send("READY=1") is False


async def test_a_missing_socket_is_not_fatal(tmp_path):
    health = Steps()
    async with Notifier(health=health, notify_socket=str(tmp_path / "gone.sock"), watchdog_s=0.2):
        health.steps = 1
        await asyncio.sleep(0.3)


async def test_ready_comes_from_the_real_controller_once_it_controls_the_board(listener):
    from node.board import BoardInfo, FakeBoard, LinkUp, SensorReading
    from node.config import NodeConfig
    from node.controller import NodeController
    from node.link.messages import Sensor

    class Sink:
        def publish(self, payload: object) -> None:
            pass

    info = BoardInfo(board_id="b", fw_version="0", gpu_count=1, cap_min_w=200.0, cap_max_w=700.0,
                     sensor_rate_hz=10.0, watchdog_s=3.0, protocol_version=1)
    board = FakeBoard()
    async with NodeController(config=NodeConfig.from_mapping({}), board=board, publisher=Sink()) as node:
        notifier = Notifier(health=node, notify_socket=listener.address, watchdog_s=WATCHDOG_S,
                            link_up=lambda: board.link_up)
        async with notifier:
            await board.events.put(LinkUp(info))
            await asyncio.sleep(0.3)
            assert listener.count("READY") == 0  # link up, but no control step yet
            s = Sensor(t_board=1.0, utc=1.7e9, temp_c=(50.0,), power_w=(300.0,), cap_w=(700.0,),
                       progress=(0.0,), rails=1, solar_w=1000.0, battery_soc=0.8, radiator_c=20.0)
            await board.events.put(SensorReading(s, 0.0))
            await listener.wait_for("READY")


def test_environment_parsing():
    assert notify_address("@abc") == b"\0abc"
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert watchdog_seconds({"WATCHDOG_USEC": "10000000"}) == 10.0
    assert watchdog_seconds({}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0
