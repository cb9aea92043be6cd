"""Both bench brokers carry what Umbra relies on: pub/sub, retained birth, Last Will."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import uuid
from pathlib import Path

import aiomqtt
import pytest

import hil.broker
from hil.broker import EmbeddedBroker, Mosquitto, free_port, port_open
from node.errors import LinkError

TIMEOUT = 5.0


@pytest.fixture(params=["mosquitto", "embedded_broker"])
def broker(request: pytest.FixtureRequest) -> Mosquitto | EmbeddedBroker:
    """Each test below runs once against mosquitto and once against amqtt."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def unique(prefix: str) -> str:
    return f"test/{prefix}/{uuid.uuid4().hex[:8]}"


async def next_message(client: aiomqtt.Client, within: float = TIMEOUT) -> aiomqtt.Message:
    async with asyncio.timeout(within):
        async for message in client.messages:
            return message
    raise AssertionError("message stream ended")


def _mqtt_str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _connect_with_will(client_id: str, topic: str, payload: bytes, *, retain: bool) -> bytes:
    """A raw MQTT 3.1.1 CONNECT carrying a Last Will (clean session, QoS 1 will)."""
    flags = 0x02 | 0x04 | (1 << 3) | (0x20 if retain else 0)
    body = _mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
    body += _mqtt_str(client_id) + _mqtt_str(topic) + struct.pack("!H", len(payload)) + payload
    assert len(body) < 128  # one-byte remaining length keeps this helper simple
    return bytes([0x10, len(body)]) + body


async def connect_then_vanish(
    host: str, port: int, topic: str, will: bytes, *, retain: bool
) -> None:
    """Connect with a will, then drop the socket without DISCONNECT, as a crashed node would."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(_connect_with_will(f"doomed-{uuid.uuid4().hex[:6]}", topic, will, retain=retain))
    await writer.drain()
    connack = await asyncio.wait_for(reader.readexactly(4), TIMEOUT)
    assert connack == b"\x20\x02\x00\x00", connack
    # SO_LINGER 0 makes close() send RST: the abrupt end a broker sees when a node dies.
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_publish_subscribe(broker: Mosquitto | EmbeddedBroker) -> None:
    topic = unique("pubsub")
    async with aiomqtt.Client(broker.host, broker.port) as sub:
        await sub.subscribe(topic + "/#", qos=1)
        async with aiomqtt.Client(broker.host, broker.port) as pub:
            await pub.publish(topic + "/a", b"\x81\xa1k\x01", qos=1)
            await pub.publish(topic + "/b", b"zero", qos=0)
        first = await next_message(sub)
        second = await next_message(sub)
    assert (first.topic.value, first.payload) == (topic + "/a", b"\x81\xa1k\x01")
    assert (second.topic.value, second.payload) == (topic + "/b", b"zero")


async def test_retained_message_reaches_late_subscriber(
    broker: Mosquitto | EmbeddedBroker,
) -> None:
    topic = unique("retained")
    async with aiomqtt.Client(broker.host, broker.port) as pub:
        await pub.publish(topic, b"birth", qos=1, retain=True)
    async with aiomqtt.Client(broker.host, broker.port) as late:
        await late.subscribe(topic, qos=1)
        message = await next_message(late)
    assert message.payload == b"birth"
    assert message.retain


@pytest.mark.parametrize("retain", [False, True])
async def test_last_will_published_when_socket_dies(
    broker: Mosquitto | EmbeddedBroker, retain: bool
) -> None:
    topic = unique("will")
    async with aiomqtt.Client(broker.host, broker.port) as watcher:
        await watcher.subscribe(topic, qos=1)
        await connect_then_vanish(broker.host, broker.port, topic, b"offline", retain=retain)
        message = await next_message(watcher)
    assert message.payload == b"offline"
    if retain:  # a node's death stays visible to whoever subscribes later
        async with aiomqtt.Client(broker.host, broker.port) as late:
            await late.subscribe(topic, qos=1)
            assert (await next_message(late)).payload == b"offline"


async def test_no_will_after_clean_disconnect(broker: Mosquitto | EmbeddedBroker) -> None:
    topic = unique("nowill")
    async with aiomqtt.Client(broker.host, broker.port) as watcher:
        await watcher.subscribe(topic + "/#", qos=1)
        will = aiomqtt.Will(topic + "/will", b"offline", qos=1)
        async with aiomqtt.Client(broker.host, broker.port, will=will) as leaver:
            await leaver.publish(topic + "/bye", b"bye", qos=1)
        message = await next_message(watcher)
        assert message.topic.value == topic + "/bye"
        with pytest.raises(TimeoutError):
            await next_message(watcher, within=0.5)


async def test_mosquitto_stop_start_same_port(fresh_mosquitto: Mosquitto) -> None:
    broker = fresh_mosquitto
    port, first_pid = broker.port, broker.pid
    async with aiomqtt.Client(broker.host, port) as client:
        await client.subscribe("x", qos=1)
        await broker.stop_async()
        assert not broker.running and not port_open(broker.host, port)
        with pytest.raises(aiomqtt.MqttError):
            await next_message(client)
    await broker.start_async()
    assert broker.port == port and broker.pid != first_pid
    topic = unique("again")
    async with aiomqtt.Client(broker.host, port) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"back", qos=1)
        assert (await next_message(client)).payload == b"back"
    # And once more through the sync API a fixture would use.
    broker.stop()
    broker.start()
    assert port_open(broker.host, port)


def test_mosquitto_stop_is_idempotent_and_close_removes_temp_dir() -> None:
    broker = Mosquitto()
    workdir = broker.workdir
    with broker:
        pid = broker.pid
        assert pid is not None and broker.running
        assert "allow_anonymous true" in broker.conf_path.read_text()
    broker.stop()
    assert not broker.running and not workdir.exists()


def test_missing_mosquitto_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(hil.broker, "_MOSQUITTO_FALLBACK", "/nonexistent/mosquitto")
    with pytest.raises(LinkError, match="apt-get install mosquitto"):
        Mosquitto()


def test_mosquitto_failure_includes_log_tail(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = Mosquitto(port=port, workdir=tmp_path, ready_timeout=5.0)
        with pytest.raises(LinkError, match=r"(?s)exited.*Address already in use"):
            broker.start()
    assert not broker.running


async def test_embedded_broker_on_busy_port_is_link_error() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        with pytest.raises(LinkError):
            async with EmbeddedBroker(port=squatter.getsockname()[1]):
                pass


async def test_embedded_broker_restarts_on_same_port() -> None:
    port = free_port()
    for _ in range(2):
        async with EmbeddedBroker(port=port) as broker:
            assert broker.url == f"mqtt://127.0.0.1:{port}"
            async with aiomqtt.Client(broker.host, broker.port) as client:
                await client.publish("t", b"x", qos=1)
        assert not port_open("127.0.0.1", port)
