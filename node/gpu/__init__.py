"""GPU backends: real NVIDIA GPUs through NVML, and a fake NVML for machines without them.

``make_board`` picks the board the controller talks to from ``gpu.backend``:

- ``serial``: the serial board owns (or simulates) the GPUs — :class:`~node.link.serial_board.SerialBoard`;
- ``nvml``: :class:`NvmlBoard` over NVIDIA's bindings, with the platform from the serial
  board when a port is configured, else from the fixed ``[platform]`` profile;
- ``fake-nvml``: the same with :class:`~node.gpu.fake_nvml.FakeNvml` (demos, CI).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from node.board import Board
from node.gpu.board import NvmlBoard
from node.gpu.config import BACKENDS, GpuConfig, PlatformProfile
from node.gpu.devices import GpuSnapshot, NvmlSnapshot, NvmlUnavailable, PowerLimitRefused, XidEvent
from node.gpu.nvml_api import NvmlLike, load_nvml
from node.gpu.platform import BoardPlatform, FixedPlatform, PlatformSample, PlatformSource

if TYPE_CHECKING:  # node.config will import node.gpu.config: no import cycle at run time
    from node.config import LinkConfig

__all__ = [
    "BACKENDS",
    "BoardPlatform",
    "FixedPlatform",
    "GpuConfig",
    "GpuSnapshot",
    "NvmlBoard",
    "NvmlLike",
    "NvmlSnapshot",
    "NvmlUnavailable",
    "PlatformProfile",
    "PlatformSample",
    "PlatformSource",
    "PowerLimitRefused",
    "XidEvent",
    "load_nvml",
    "make_board",
]


def make_board(
    *,
    gpu: GpuConfig,
    link: LinkConfig,
    node_id: str,
    platform: PlatformProfile | None = None,
    nvml: NvmlLike | None = None,
    on_snapshot: Callable[[NvmlSnapshot], None] | None = None,
) -> Board:
    """The board for ``gpu.backend``; ``nvml`` overrides the bindings (tests, demos)."""
    from node.link.serial_board import SerialBoard

    serial = SerialBoard(port=link.serial, node_id=node_id, config=link) if link.serial else None
    if gpu.backend == "serial":
        if serial is None:
            from node.errors import ConfigError

            raise ConfigError("no serial port: give --serial or link.serial", key="link.serial")
        return serial
    if nvml is None:
        if gpu.backend == "fake-nvml":
            from node.gpu.fake_nvml import FakeNvml

            nvml = FakeNvml()
        else:
            nvml = load_nvml()
    source: PlatformSource = (
        BoardPlatform(serial)
        if serial is not None
        else FixedPlatform(platform or PlatformProfile(), rate_hz=gpu.sample_rate_hz)
    )
    return NvmlBoard(nvml=nvml, platform=source, config=gpu, on_snapshot=on_snapshot)
