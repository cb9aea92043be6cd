"""Shared fixtures: MQTT brokers for tests, each started and stopped by its own pid."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hil.broker import EmbeddedBroker, Mosquitto
from node.errors import LinkError


def pytest_configure(config: pytest.Config) -> None:
    # A shell without job control starts background commands with SIGINT ignored, and
    # children inherit an ignored signal: the tests that stop a process with Ctrl-C (SIGINT)
    # would then wait for nothing.  A handled signal is reset to default across exec.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _mosquitto_or_fail(workdir: Path) -> Mosquitto:
    try:
        return Mosquitto(workdir=workdir)
    except LinkError as exc:  # no binary: say what to install instead of failing obscurely
        pytest.fail(f"{exc} (make test installs it)", pytrace=False)  # never a silent skip


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One real mosquitto on a random loopback port for the whole session.

    Shared: use unique node ids (or topics) per test, since retained messages persist.
    """
    broker = _mosquitto_or_fail(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto of this test's own, free to be stopped and started again."""
    broker = _mosquitto_or_fail(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
async def embedded_broker() -> AsyncIterator[EmbeddedBroker]:
    """An amqtt broker inside the test's event loop."""
    async with EmbeddedBroker() as broker:
        yield broker
