"""``umbra-gpucheck``: print what the NVML backend sees on this machine; change nothing.

Read-only unless ``--set-power-limit GPU:WATTS`` is given, which sets that one limit (needs
root or CAP_SYS_ADMIN) and reads it back.  ``--fake`` runs against the fake NVML, so the
output can be seen on a machine without GPUs.  Exit status: 0 all well, 1 NVML unusable,
2 usage error, 3 a power limit was refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from node.gpu import nvml_api as api
from node.gpu.devices import GpuSnapshot, NvmlDevices, NvmlUnavailable, PowerLimitRefused


def _limit(value: str) -> tuple[int, float]:
    gpu, sep, watts = value.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(gpu), float(watts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU:WATTS such as 0:350, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="umbra-gpucheck",
        description="Show what Umbra's NVML backend reads from this machine's GPUs. Read-only "
        "unless --set-power-limit is given.",
    )
    p.add_argument("--gpus", default="", metavar="0,1", help="NVML indices to show (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--events", type=float, default=0.0, metavar="SECONDS",
                   help="also wait this long for Xid / ECC events")
    p.add_argument("--set-power-limit", type=_limit, action="append", default=[], metavar="GPU:WATTS",
                   help="set one GPU's power limit (needs root or CAP_SYS_ADMIN); may repeat")
    p.add_argument("--fake", action="store_true", help="use the fake NVML (no GPU needed)")
    return p


def _fmt(value: float | int | None, unit: str, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f} {unit}".rstrip()
    return f"{value} {unit}".rstrip()


def print_gpu(g: GpuSnapshot, out: TextIO) -> None:
    print(f"GPU {g.index}: {g.name}  {g.uuid}", file=out)
    if not g.ok:
        print(f"  NOT ANSWERING: {g.error}", file=out)
        return
    pm = {None: "n/a", 0: "off (enable it: nvidia-smi -pm 1, or nvidia-persistenced)", 1: "on"}
    reasons = ", ".join(api.reason_names(g.clock_event_reasons)) or "none"
    rows = [
        ("temperature", f"{_fmt(g.temp_c, '°C', 0)}   memory {_fmt(g.mem_temp_c, '°C', 0)}"),
        ("power", f"{_fmt(g.power_w, 'W')}   instant {_fmt(g.power_instant_w, 'W')}"
                  f"   average {_fmt(g.power_avg_w, 'W')}"),
        ("power limit", f"{_fmt(g.cap_w, 'W')} enforced, range {g.cap_min_w:.0f}-{g.cap_max_w:.0f} W,"
                        f" default {_fmt(g.cap_default_w, 'W', 0)}"),
        ("clocks", f"SM {_fmt(g.sm_clock_mhz, 'MHz')}   graphics {_fmt(g.graphics_clock_mhz, 'MHz')}"
                   f"   memory {_fmt(g.mem_clock_mhz, 'MHz')}"),
        ("clock events", f"0x{g.clock_event_reasons:x} ({reasons})"),
        ("ECC", f"volatile corrected {_fmt(g.ecc_corrected, '')}, uncorrected {_fmt(g.ecc_uncorrected, '')};"
                f" lifetime uncorrected {_fmt(g.ecc_uncorrected_aggregate, '')}"),
        ("persistence", pm.get(g.persistence_mode, str(g.persistence_mode))),
    ]
    for name, text in rows:
        print(f"  {name:<13} {text}", file=out)


def run(args: argparse.Namespace, out: TextIO) -> int:
    if args.fake:
        from node.gpu.fake_nvml import FakeNvml

        nvml: api.NvmlLike = FakeNvml()
    else:
        try:
            nvml = api.load_nvml()
        except ImportError:
            print("umbra-gpucheck: NVIDIA's bindings are missing: pip install nvidia-ml-py", file=sys.stderr)
            return 1
    try:
        indices = tuple(int(i) for i in args.gpus.split(",")) if args.gpus.strip() else None
    except ValueError:
        print(f"umbra-gpucheck: --gpus {args.gpus!r}: expected indices such as 0,1", file=sys.stderr)
        return 2
    try:
        devices = NvmlDevices(nvml, indices)
    except NvmlUnavailable as exc:
        print(f"umbra-gpucheck: {exc}", file=sys.stderr)
        return 1
    status = 0
    try:
        root = os.geteuid() == 0
        for gpu, watts in args.set_power_limit:
            try:
                devices.set_limit(gpu, round(watts * 1000))
                print(f"GPU {gpu}: power limit set to {watts:.1f} W", file=out)
            except KeyError:
                print(f"umbra-gpucheck: GPU {gpu} is not among those opened", file=sys.stderr)
                status = 2
            except PowerLimitRefused as exc:
                print(f"umbra-gpucheck: {exc}", file=sys.stderr)
                status = 3
        xids = []
        if args.events > 0:
            deadline = time.monotonic() + args.events
            while time.monotonic() < deadline:
                xids.extend(devices.drain_events())
                time.sleep(0.1)
        snap = devices.snapshot(0.0)
        xids.extend(snap.xids)
        if args.json:
            doc = snap.to_telemetry()
            doc["xids"] = [{"gpu": x.gpu, "xid": x.xid, "text": x.description} for x in xids]
            doc["root"] = root
            json.dump(doc, out, indent=2)
            print(file=out)
        else:
            print(f"NVML driver {snap.driver_version}, {len(snap.gpus)} GPU(s)", file=out)
            for g in snap.gpus:
                print_gpu(g, out)
            for x in xids:
                print(f"Xid {x.xid} on GPU {x.gpu}: {x.description}", file=out)
            if not root:
                print("note: not root: reading works, setting power limits needs root or "
                      "CAP_SYS_ADMIN", file=out)
    except NvmlUnavailable as exc:
        print(f"umbra-gpucheck: {exc}", file=sys.stderr)
        status = 1
    finally:
        devices.close()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv), sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main())
