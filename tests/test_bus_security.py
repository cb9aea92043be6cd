"""Mosquitto run with exactly the configuration `umbra-ground broker-files` writes
(passwords, ACL, TLS, per-listener client ids), as root starts it in production."""

from __future__ import annotations

import asyncio
import os
import pwd
import ssl
import tempfile
from pathlib import Path

import aiomqtt
import pytest

from ground.brokerfiles import MESSAGE_SIZE_LIMIT, make_broker_files
from hil.broker import Mosquitto, free_port
from node.bus.payloads import Leaf, topic, topic_filter

# openssl and mosquitto_passwd (Debian's mosquitto package) are installed by `make test`;
# without them the fixture fails loudly rather than skipping.


def generated_broker(out: Path, nodes: list[str]) -> tuple[Mosquitto, dict[str, str]]:
    ports = [free_port() for _ in range(4)]
    users = make_broker_files(out, nodes, port=ports[0], tls_port=ports[1], ground_port=ports[2],
                              ground_tls_port=ports[3])
    broker = Mosquitto(config_file=out / "mosquitto.conf", port=ports[0], tls_port=ports[1],
                       workdir=out / "mq")
    broker.ground_port, broker.ground_tls_port = ports[2], ports[3]  # type: ignore[attr-defined]
    return broker, users


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("broker-files")
    broker, users = generated_broker(out, ["node-a", "node-b"])
    broker.start()
    try:
        yield broker, users, out
    finally:
        broker.close()


def client(broker: Mosquitto, user: str | None, users: dict[str, str], **kw) -> aiomqtt.Client:
    """A client on the listener its user belongs to: ground's, or the nodes'."""
    port = kw.pop("port", broker.ground_port if user == "ground" else broker.port)  # type: ignore[attr-defined]
    return aiomqtt.Client(broker.host, port, username=user,
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


async def _wildcard_reads(broker, users, leaf: Leaf) -> list[str]:
    """What node-a receives on a ``+`` subscription to ``leaf`` when ground writes it for
    node-b and then for node-a."""
    import asyncio

    async with client(broker, "node-a", users) as a:
        await a.subscribe(topic_filter(leaf), qos=1)
        async with client(broker, "ground", users) as g:
            await g.publish(topic("node-b", leaf), b"for b", qos=1)
            await g.publish(topic("node-a", leaf), b"for a", qos=1)
        got = []
        try:
            async with asyncio.timeout(1.0):
                async for m in a.messages:
                    got.append(str(m.topic))
        except TimeoutError:
            pass
    return got


async def test_node_reads_only_its_own_commands(secured) -> None:
    broker, users, _ = secured
    assert await _wildcard_reads(broker, users, Leaf.TC) == [topic("node-a", Leaf.TC)]


async def test_file_topics_follow_the_same_rules(secured) -> None:
    """A node writes its own file/tm and reads only its own file/tc; only ground writes file/tc."""
    broker, users, _ = secured
    assert await _delivered(broker, users, "node-a", topic("node-a", Leaf.FILE_TM))
    assert not await _delivered(broker, users, "node-a", topic("node-b", Leaf.FILE_TM))
    assert not await _delivered(broker, users, "node-a", topic("node-a", Leaf.FILE_TC))
    assert not await _delivered(broker, users, "node-a", topic("node-b", Leaf.FILE_TC))
    assert await _delivered(broker, users, "ground", topic("node-b", Leaf.FILE_TC))
    assert await _wildcard_reads(broker, users, Leaf.FILE_TC) == [topic("node-a", Leaf.FILE_TC)]


async def test_tls_listener(secured) -> None:
    broker, users, out = secured
    ctx = ssl.create_default_context(cafile=str(out / "ca.crt"))
    async with client(broker, "ground", users, port=broker.ground_tls_port, tls_context=ctx) as c:
        await c.publish(topic("node-a", Leaf.TC), b"x", qos=1)
    async with client(broker, "node-a", users, port=broker.tls_port, tls_context=ctx) as c:
        await c.publish(topic("node-a", Leaf.HK), b"x", qos=1)
    with pytest.raises(aiomqtt.MqttError):  # a client that does not trust our CA
        async with client(broker, "ground", users, port=broker.ground_tls_port,
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


# -- takeovers, sizes, root (issue #14 rows 5, 10, 12) ------------------------------------


async def _still_connected(c: aiomqtt.Client, user_topic: str, publisher: aiomqtt.Client) -> bool:
    """Does ``c`` still receive? (A client kicked off by a takeover does not.)"""
    await publisher.publish(user_topic, b"still there?", qos=1)
    try:
        async with asyncio.timeout(2.0):
            async for m in c.messages:
                if str(m.topic) == user_topic:
                    return True
    except (TimeoutError, aiomqtt.MqttError):
        return False
    return False


async def test_node_credentials_cannot_take_another_clients_id(secured) -> None:
    """node-a connecting with node-b's (or the ingest's) client id gets its own id: nobody is
    kicked off. With a plain config, the broker would drop node-b and send its Last Will."""
    broker, users, _ = secured
    async with client(broker, "ground", users, identifier="umbra-ingest-0123456789abcdef0123") as ground, \
            client(broker, "node-b", users, identifier="node-b") as b:
        await b.subscribe(topic("node-b", Leaf.TC), qos=1)
        await ground.subscribe(topic("node-a", Leaf.HK), qos=1)
        for stolen in ("node-b", "umbra-ingest-0123456789abcdef0123"):
            async with client(broker, "node-a", users, identifier=stolen) as a:
                await a.publish(topic("node-a", Leaf.HK), b"hello", qos=1)
                assert await _still_connected(b, topic("node-b", Leaf.TC), ground), stolen
        # Ground is still subscribed too: node-a's packets reach it.
        async with client(broker, "node-a", users) as a:
            await a.publish(topic("node-a", Leaf.HK), b"again", qos=1)
        async with asyncio.timeout(3.0):
            async for m in ground.messages:
                if m.payload == b"again":
                    break


async def test_node_credentials_do_not_open_the_ground_listener(secured) -> None:
    broker, users, _ = secured
    with pytest.raises(aiomqtt.MqttError):
        async with client(broker, "node-a", users, port=broker.ground_port):
            pass
    with pytest.raises(aiomqtt.MqttError):  # nor ground's the node listener
        async with client(broker, "ground", users, port=broker.port):
            pass


async def test_oversize_messages_are_not_forwarded(secured) -> None:
    broker, users, _ = secured
    async with client(broker, "ground", users) as ground:
        await ground.subscribe(topic("node-a", Leaf.EVENT), qos=1)
        async with client(broker, "node-a", users) as a:
            await a.publish(topic("node-a", Leaf.EVENT), b"x" * (MESSAGE_SIZE_LIMIT + 1), qos=1)
            await a.publish(topic("node-a", Leaf.EVENT), b"small", qos=1)
        got = []
        async with asyncio.timeout(3.0):
            async for m in ground.messages:
                got.append(len(m.payload))  # type: ignore[arg-type]
                if m.payload == b"small":
                    break
    assert got == [5]


async def test_generated_config_runs_when_root_starts_it_with_a_reachable_directory() -> None:
    """Root-started mosquitto drops to its own user: the generated files must be readable
    by that user (or the config keeps root, where it cannot reach them)."""
    base = Path(tempfile.mkdtemp(prefix="umbra-broker-files-", dir="/tmp"))
    try:
        os.chmod(base, 0o711)  # traversable, as /etc/mosquitto/umbra would be
        broker, users = generated_broker(base / "umbra", ["node-a"])
        conf = (base / "umbra" / "mosquitto.conf").read_text()
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("mosquitto")
                expected = "user mosquitto"
            except KeyError:
                expected = "user root"
            assert expected in conf.splitlines()
            if expected == "user mosquitto":
                owner = pwd.getpwuid((base / "umbra" / "passwd").stat().st_uid).pw_name
                assert owner == "mosquitto"
                assert (base / "umbra" / "passwd").stat().st_mode & 0o077 == 0  # still private
        with broker:
            async with client(broker, "node-a", users) as a:
                await a.publish(topic("node-a", Leaf.HK), b"x", qos=1)
            async with client(broker, "ground", users):
                pass
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_broker_files_refuse_reserved_node_ids(tmp_path) -> None:
    with pytest.raises(ValueError, match="ground"):
        make_broker_files(tmp_path, ["ground"], certs=False)
    with pytest.raises(ValueError, match="umbra-"):
        make_broker_files(tmp_path, ["umbra-ingest-1"], certs=False)
