"""``umbra-hil demo``: a whole bench on one machine, with a live status line.

Starts an embedded MQTT broker on 127.0.0.1 (unless one is named), a simulated board on a
pty and the node, then prints the node's view once a second — board time, mode, per-GPU
temperature and cap, state of charge, eclipse — as it arrives over MQTT, the way ground
sees it, and serves the operator console.  Every job asks for full power through the
board's HIL port; the orbit decides how much of it the node can allow.
Stops on Ctrl-C or after ``--duration``; every process it started is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiomqtt

from hil.bench import LocalBench
from hil.broker import EmbeddedBroker
from hil.hilport import HilClient
from node.bus.payloads import Event, Housekeeping, Leaf, Severity, decode_message, topic
from node.errors import RemoteProtocolError

#: Every job asks for full power: the orbit (eclipses, a radiator too small for 8 × 700 W)
#: is what the node works against.
DEMAND_W = 700.0


@dataclass
class NodeView:
    """What ground knows of the node, from its telemetry."""

    hk: Housekeeping | None = None
    online: bool | None = None
    events: list[Event] = field(default_factory=list)


def format_status(view: NodeView, elapsed: float) -> str:
    hk = view.hk
    if hk is None:
        return f"[{elapsed:6.1f} s] waiting for the node's first housekeeping…"
    temps = " ".join("  —" if t is None else f"{t:3.0f}" for t in hk.temp_c)
    caps = " ".join(f"{c:3.0f}" for c in hk.cap_w)
    link = "link up" if hk.link_up else "LINK DOWN"
    return (
        f"[{elapsed:6.1f} s] board t={hk.t_board:8.1f} s  {hk.mode:<13} {link:<9} "
        f"GPU °C [{temps}]  cap W [{caps}]  SoC {hk.battery_soc:4.2f}{'  ECLIPSE' if hk.board_flags & 2 else ''}"
    )


def format_event(event: Event) -> str:
    return f"  event #{event.seq} {Severity(event.severity).name:<8} {event.kind}: {event.text}"


async def _listen(host: str, port: int, node_id: str, view: NodeView, out: TextIO) -> None:
    while True:
        try:
            async with aiomqtt.Client(host, port, identifier=f"umbra-demo-{time.monotonic_ns()}") as client:
                for leaf in (Leaf.STATE, Leaf.HK, Leaf.EVENT):
                    await client.subscribe(topic(node_id, leaf), qos=1)
                async for message in client.messages:
                    try:
                        _, payload = decode_message(str(message.topic), bytes(message.payload))
                    except RemoteProtocolError as exc:
                        print(f"  (skipped a malformed message: {exc})", file=out)
                        continue
                    if isinstance(payload, Housekeeping):
                        view.hk = payload
                    elif isinstance(payload, Event):
                        view.events.append(payload)
                        print(format_event(payload), file=out, flush=True)
                    else:
                        view.online = getattr(payload, "online", None)
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


async def _set_demand(hil: HilClient) -> None:
    """Ask the board for full demand; retry, since a missed HIL write must not end the demo."""
    while True:
        try:
            await hil.set("demand_w", DEMAND_W)
            return
        except Exception:  # any failure: try again in a second
            await asyncio.sleep(1.0)


async def run_demo(
    *,
    duration: float | None,
    mqtt: tuple[str, int] | None,
    gpus: int,
    speed: float,
    node_id: str = "node-1",
    out: TextIO = sys.stdout,
    console: tuple[str, int] | None = ("127.0.0.1", 8080),
    orbit: str = "beta0",
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    workdir = Path(tempfile.mkdtemp(prefix="umbra-demo-"))
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        if mqtt is None:
            broker = await stack.enter_async_context(EmbeddedBroker())
            host, port = broker.host, broker.port
            print(f"umbra-hil demo: embedded MQTT broker on {broker.url}", file=out, flush=True)
        else:
            host, port = mqtt
            print(f"umbra-hil demo: using MQTT broker mqtt://{host}:{port}", file=out, flush=True)
        node_args: tuple[str, ...] = ()
        if console is not None:  # the console signs commands with a key made for this run
            from node.bus import signing

            key_file = workdir / "tc-keys.json"
            signing.write_keys(key_file, {node_id: signing.new_key()})
            node_args = ("--tc-key-file", str(key_file))
        bench = LocalBench(
            workdir=workdir, mqtt_host=host, mqtt_port=port, node_id=node_id, gpus=gpus, speed=speed,
            node_args=node_args, board_args=("--orbit", orbit),
        )
        print(f"umbra-hil demo: starting board ({gpus} GPUs, {speed:g}x, orbit {orbit}) and node {node_id} …",
              file=out, flush=True)
        stack.callback(bench.stop)
        await asyncio.to_thread(bench.start)
        pids = f"board pid {bench.board.pid if bench.board else '?'}, node pid {bench.node.pid if bench.node else '?'}"
        print(f"umbra-hil demo: running ({pids}); logs in {bench.log_dir}; Ctrl-C to stop",
              file=out, flush=True)
        if console is not None:
            from ground.web.app import ConsoleConfig, open_console

            web = await open_console(stack, ConsoleConfig(
                mqtt_host=host, mqtt_port=port, http_host=console[0], http_port=console[1],
                archive=str(workdir / "archive.sqlite"), key_file=str(workdir / "tc-keys.json")))
            print(f"umbra-hil demo: operator console on {web.url}  (log in as demo / demo)",
                  file=out, flush=True)
        view = NodeView()
        hil = await stack.enter_async_context(HilClient(port=str(bench.hil_path)))
        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(_listen(host, port, node_id, view, out)),
                tg.create_task(_set_demand(hil)),
            ]
            while not stop.is_set():
                elapsed = time.monotonic() - started
                if duration is not None and elapsed >= duration:
                    break
                print(format_status(view, elapsed), file=out, flush=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
            for task in tasks:
                task.cancel()
        print("umbra-hil demo: stopping …", file=out, flush=True)
    print("umbra-hil demo: stopped", file=out, flush=True)
    return 0
