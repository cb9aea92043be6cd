"""Mosquitto with the production security files (deploy/mosquitto, `umbra-ground broker-files`)."""

from __future__ import annotations

import ssl

import aiomqtt
import pytest

from ground.brokerfiles import make_broker_files
from hil.broker import Mosquitto
from node.bus.payloads import Leaf, topic

# openssl and mosquitto_passwd (Debian's mosquitto package) are installed by `make test`;
# without them the fixture fails loudly rather than skipping.


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("broker-files")
    users = make_broker_files(out, ["node-a", "node-b"])
    broker = Mosquitto(workdir=out / "mq", password_file=out / "passwd", acl_file=out / "acl",
                       tls_files=(out / "ca.crt", out / "server.crt", out / "server.key"))
    broker.start()
    try:
        yield broker, users, out
    finally:
        broker.close()


def client(broker: Mosquitto, user: str | None, users: dict[str, str], **kw) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, kw.pop("port", broker.port), username=user,
                          password=users.get(user or "", None), timeout=5.0, **kw)


async def _delivered(broker, users, publisher: str, topic_name: str) -> bool:
    """Does a message ``publisher`` sends on ``topic_name`` reach ground?"""
    async with client(broker, "ground", users) as ground:
        await ground.subscribe("umbra/v1/#", qos=1)
        async with client(broker, publisher, users) as pub:
            await pub.publish(topic_name, b"probe", qos=1)
        try:
            async with __import__("asyncio").timeout(1.0):
                async for m in ground.messages:
                    if str(m.topic) == topic_name:
                        return True
        except TimeoutError:
            return False
    return False


async def test_anonymous_and_wrong_password_are_refused(secured) -> None:
    broker, users, _ = secured
    with pytest.raises(aiomqtt.MqttError):
        async with client(broker, None, users):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port, username="node-a", password="wrong", timeout=5):
            pass


async def test_node_publishes_its_own_topics_only(secured) -> None:
    broker, users, _ = secured
    assert await _delivered(broker, users, "node-a", topic("node-a", Leaf.HK))
    assert await _delivered(broker, users, "node-a", topic("node-a", Leaf.TC_REPORT))
    assert not await _delivered(broker, users, "node-a", topic("node-b", Leaf.HK))
    assert not await _delivered(broker, users, "node-a", topic("node-b", Leaf.STATE))


async def test_node_cannot_send_commands(secured) -> None:
    broker, users, _ = secured
    assert not await _delivered(broker, users, "node-a", topic("node-b", Leaf.TC))
    assert not await _delivered(broker, users, "node-a", topic("node-a", Leaf.TC))
    assert await _delivered(broker, users, "ground", topic("node-b", Leaf.TC))


async def test_node_reads_only_its_own_commands(secured) -> None:
    import asyncio

    broker, users, _ = secured
    async with client(broker, "node-a", users) as a:
        await a.subscribe("umbra/v1/+/tc", qos=1)
        async with client(broker, "ground", users) as g:
            await g.publish(topic("node-b", Leaf.TC), b"for b", qos=1)
            await g.publish(topic("node-a", Leaf.TC), b"for a", qos=1)
        got = []
        try:
            async with asyncio.timeout(1.0):
                async for m in a.messages:
                    got.append(str(m.topic))
        except TimeoutError:
            pass
    assert got == [topic("node-a", Leaf.TC)]


async def test_tls_listener(secured) -> None:
    broker, users, out = secured
    ctx = ssl.create_default_context(cafile=str(out / "ca.crt"))
    async with client(broker, "ground", users, port=broker.tls_port, tls_context=ctx) as c:
        await c.publish(topic("node-a", Leaf.TC), b"x", qos=1)
    with pytest.raises(aiomqtt.MqttError):  # a client that does not trust our CA
        async with client(broker, "ground", users, port=broker.tls_port,
                          tls_context=ssl.create_default_context()):
            pass


async def test_node_reports_over_tls_with_its_credentials(secured, tmp_path) -> None:
    """A real node with mqtt.tls_ca and its password: birth arrives through the TLS listener."""
    from hil.bench import LocalBench
    from node.bus.payloads import NodeState
    from node.errors import RemoteProtocolError

    broker, users, out = secured
    config = tmp_path / "node.toml"
    config.write_text(
        f'[mqtt]\nusername = "node-a"\npassword = "{users["node-a"]}"\ntls_ca = "{out / "ca.crt"}"\n'
    )
    bench = LocalBench(
        workdir=tmp_path, mqtt_host="127.0.0.1", mqtt_port=broker.tls_port, node_id="node-a", gpus=2,
        board_args=("--model", "first-order"), node_args=("--config", str(config)),
    )
    async with client(broker, "ground", users) as ground:
        await ground.subscribe(topic("node-a", Leaf.STATE), qos=1)
        try:
            bench.start()
            async with __import__("asyncio").timeout(30.0):
                async for m in ground.messages:
                    try:
                        state = NodeState.from_wire(bytes(m.payload))  # type: ignore[arg-type]
                    except RemoteProtocolError:
                        continue  # another test's probe on this topic
                    if state.online and state.boot_id:
                        break
        finally:
            bench.stop()
