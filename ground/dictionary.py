"""The one telemetry and command dictionary, for Umbra's own tools and everybody else's.

Built from the sources of truth — the housekeeping payload's declared fields (kind, unit,
range: node/bus/payloads.py), ground's limits (ground/limits.py), the enumerations the node
reports (modes, link states) and the command dictionary (node/bus/commands.py) — and
written as:

- JSON (``umbra-ground dictionary --format json``; what the console and its Open MCT plugin
  read): ``{"hash", "channels": [...], "commands": [...]}``;
- XTCE 1.2 (``--format xtce``), the OMG dictionary standard Yamcs, OpenC3/COSMOS and others
  read, written with Yamcs' PyMDB: one ``SpaceSystem`` ``Umbra`` with a parameter per
  channel (per-GPU channels as ``temp_c_0`` … for ``gpus`` GPUs), units, valid ranges,
  enumerations and limits as alarm ranges, and a ``MetaCommand`` per command with its typed,
  ranged arguments.  Umbra's bus carries msgpack maps, not binary packets, so the file has no
  containers: the encodings PyMDB requires describe the values' widths, not a packet layout.

:func:`read_xtce` reads such a file back into the JSON form, so every parameter and command
round-trips (tests/test_dictionary.py).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ground.limits import LIMITS, Limit
from node.bus.commands import COMMANDS, dictionary_hash
from node.bus.payloads import Housekeeping, Mode
from node.link.session import LinkState

XTCE_NS = "http://www.omg.org/spec/XTCE/20180204"
SYSTEM = "Umbra"

#: What each housekeeping channel is (the payload declares kind, unit and wire range).
_DESCRIPTIONS: dict[str, tuple[str, str, tuple[float | None, float | None] | None]] = {
    # name: (description, display format, engineering range (None: the wire range))
    "t_board": ("board time since boot", "%.1f", None),
    "mode": ("controller mode", "", None),
    "link_up": ("serial link to the board is up", "", None),
    "temp_c": ("GPU die temperature", "%.1f", (-60.0, 130.0)),
    "power_w": ("GPU power draw", "%.0f", (0.0, 2000.0)),
    "cap_w": ("GPU power cap", "%.0f", (0.0, 2000.0)),
    "progress": ("job progress on the GPU", "%.1f", (0.0, None)),
    "solar_w": ("solar array input", "%.0f", (0.0, 100_000.0)),
    "battery_soc": ("battery state of charge", "%.3f", (0.0, 1.0)),
    "radiator_c": ("radiator temperature", "%.1f", (-150.0, 150.0)),
    "board_flags": ("board flags: 1 watchdog safe, 2 eclipse, 4 hardware slowdown", "%d", None),
    "control_us": ("control step time", "%.0f", None),
    "link_state": ("serial link session state", "", None),
}
_ENUMS: dict[str, tuple[str, ...]] = {
    "mode": tuple(m.value for m in Mode),
    "link_state": tuple(s.value for s in LinkState),
}
_KIND = {"float": "float", "float or nil": "float", "int": "int", "bool": "bool", "str": "enum",
         "array of floats": "float", "array of floats or nils": "float"}


@dataclass(frozen=True, slots=True)
class Channel:
    """One housekeeping channel (per GPU when ``per_gpu``)."""

    name: str
    kind: str  # float | int | bool | enum
    unit: str
    description: str
    per_gpu: bool = False
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    format: str = ""
    #: Ground's limits: yellow and red thresholds, and whether high is bad (ground/limits.py).
    yellow: float | None = None
    red: float | None = None
    high: bool = True

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def keys(self, gpus: int) -> list[str]:
        """Its channel names as the archive spells them: ``temp_c[0]`` … or ``battery_soc``."""
        return [f"{self.name}[{i}]" for i in range(gpus)] if self.per_gpu else [self.name]


def channels() -> list[Channel]:
    out = []
    for name, (description, fmt, engineering) in _DESCRIPTIONS.items():
        kind = Housekeeping.TYPES[name]
        lo, hi = engineering if engineering is not None else Housekeeping.RANGES.get(name, (None, None))
        limit: Limit | None = LIMITS.get(name)
        choices = _ENUMS.get(name, ())
        out.append(Channel(
            name=name, kind="enum" if choices else _KIND[kind], unit=Housekeeping.UNITS.get(name, ""),
            description=description, per_gpu=kind.startswith("array"), lo=lo, hi=hi, choices=choices,
            format=fmt, yellow=limit.yellow if limit else None, red=limit.red if limit else None,
            high=limit.high if limit else True))
    return out


def commands() -> list[dict[str, Any]]:
    return [c.describe() for c in COMMANDS]


def as_json() -> dict[str, Any]:
    return {"hash": dictionary_hash(), "channels": [c.to_json() for c in channels()], "commands": commands()}


# -- XTCE -------------------------------------------------------------------------------------


def _xtce_name(key: str) -> str:
    """``temp_c[3]`` → ``temp_c_3`` (XTCE names are NameType: no brackets)."""
    return key.replace("[", "_").replace("]", "")


def _alarm(c: Channel) -> Any:
    from yamcs.pymdb import ThresholdAlarm

    if c.yellow is None or c.red is None:
        return None
    if c.high:
        return ThresholdAlarm(warning_high=c.yellow, critical_high=c.red)
    return ThresholdAlarm(warning_low=c.yellow, critical_low=c.red)


def as_xtce(*, gpus: int = 8) -> str:
    """XTCE 1.2 of the dictionary (per-GPU channels for ``gpus`` GPUs)."""
    from yamcs import pymdb as m

    system = m.System(SYSTEM, short_description=f"Umbra node dictionary {dictionary_hash()}",
                      long_description="Housekeeping channels and telecommands of an Umbra node (docs/ICD.md §5).")
    for c in channels():
        for key in c.keys(gpus):
            kw: dict[str, Any] = {"system": system, "name": _xtce_name(key), "short_description": c.description,
                                  "aliases": {"umbra": key}}
            if c.kind == "float":
                m.FloatParameter(**kw, bits=64, units=c.unit or None, minimum=c.lo, maximum=c.hi,
                                 encoding=m.FloatEncoding(bits=64), alarm=_alarm(c))
            elif c.kind == "int":
                m.IntegerParameter(**kw, signed=False, bits=64, units=c.unit or None,
                                   minimum=None if c.lo is None else int(c.lo),
                                   maximum=None if c.hi is None else int(c.hi), encoding=m.IntegerEncoding(bits=64))
            elif c.kind == "bool":
                m.BooleanParameter(**kw, encoding=m.uint8_t)
            else:
                m.EnumeratedParameter(**kw, choices=list(enumerate(c.choices)), encoding=m.uint8_t)
    for cmd in COMMANDS:
        args: list[Any] = []
        for a in cmd.args:
            common: dict[str, Any] = {"name": a.name, "short_description": a.description}
            if a.type == "int":
                args.append(m.IntegerArgument(**common, signed=True, bits=64, units=a.unit or None,
                                              minimum=None if a.lo is None else int(a.lo),
                                              maximum=None if a.hi is None else int(a.hi), encoding=m.IntegerEncoding(bits=64, scheme=m.IntegerEncodingScheme.TWOS_COMPLEMENT)))
            elif a.type == "float":
                args.append(m.FloatArgument(**common, bits=64, units=a.unit or None, minimum=a.lo, maximum=a.hi,
                                            encoding=m.FloatEncoding(bits=64)))
            elif a.type == "bool":
                args.append(m.BooleanArgument(**common, encoding=m.uint8_t))
            elif a.type == "enum":
                args.append(m.EnumeratedArgument(**common, choices=list(enumerate(a.choices)), encoding=m.uint8_t))
            else:
                args.append(m.StringArgument(**common, max_length=64, encoding=m.StringEncoding()))
        m.Command(system=system, name=cmd.name, short_description=cmd.description, arguments=args,
                  extra={"required": ",".join(a.name for a in cmd.args if a.required)})
    text: str = system.dumps()
    return text


def _q(tag: str) -> str:
    return f"{{{XTCE_NS}}}{tag}"


def _num(text: str | None) -> float | None:
    return None if text is None else float(text)


def read_xtce(text: str) -> dict[str, Any]:
    """An XTCE file of :func:`as_xtce` back into :func:`as_json`'s shape (``channels`` per key,
    i.e. ``temp_c[0]`` … expanded; ``commands`` as in the command dictionary)."""
    from lxml import etree

    root = etree.fromstring(text.encode())
    if root.tag != _q("SpaceSystem"):
        raise ValueError(f"not an XTCE 1.2 SpaceSystem: {root.tag}")
    types = {t.get("name"): t for t in root.iter(_q("ParameterTypeSet")) for t in t}
    chans: dict[str, dict[str, Any]] = {}
    for p in root.iter(_q("Parameter")):
        t = types[p.get("parameterTypeRef")]
        alias = next((a.get("alias") for a in p.iter(_q("Alias")) if a.get("nameSpace") == "umbra"), p.get("name"))
        kind = {"FloatParameterType": "float", "IntegerParameterType": "int", "BooleanParameterType": "bool",
                "EnumeratedParameterType": "enum"}[etree.QName(t).localname]
        unit = next((u.text or "" for u in t.iter(_q("Unit"))), "")
        vr = next(t.iter(_q("ValidRange")), None)
        lo = _num(vr.get("minInclusive")) if vr is not None else None
        hi = _num(vr.get("maxInclusive")) if vr is not None else None
        choices = tuple(e.get("label") for e in t.iter(_q("Enumeration")))
        warn, crit = next(t.iter(_q("WarningRange")), None), next(t.iter(_q("CriticalRange")), None)
        yellow = red = None
        high = True
        if warn is not None and crit is not None:
            if warn.get("maxInclusive") is not None:
                yellow, red = _num(warn.get("maxInclusive")), _num(crit.get("maxInclusive"))
            else:
                yellow, red, high = _num(warn.get("minInclusive")), _num(crit.get("minInclusive")), False
        chans[alias] = {"kind": kind, "unit": unit, "description": p.get("shortDescription") or "", "lo": lo,
                        "hi": hi, "choices": list(choices), "yellow": yellow, "red": red, "high": high}
    arg_types = {t.get("name"): t for t in root.iter(_q("ArgumentTypeSet")) for t in t}
    cmds = []
    for mc in root.iter(_q("MetaCommand")):
        required = next((a.text or "" for a in mc.iter(_q("AncillaryData")) if a.get("name") == "required"), "")
        args = []
        for a in mc.iter(_q("Argument")):
            t = arg_types[a.get("argumentTypeRef")]
            kind = {"IntegerArgumentType": "int", "FloatArgumentType": "float", "BooleanArgumentType": "bool",
                    "EnumeratedArgumentType": "enum", "StringArgumentType": "str"}[etree.QName(t).localname]
            vr = next(t.iter(_q("ValidRange")), None)
            args.append({"name": a.get("name"), "type": kind,
                         "unit": next((u.text or "" for u in t.iter(_q("Unit"))), ""),
                         "lo": _num(vr.get("minInclusive")) if vr is not None else None,
                         "hi": _num(vr.get("maxInclusive")) if vr is not None else None,
                         "choices": [e.get("label") for e in t.iter(_q("Enumeration"))],
                         "required": a.get("name") in required.split(","),
                         "description": a.get("shortDescription") or ""})
        cmds.append({"name": mc.get("name"), "description": mc.get("shortDescription") or "", "args": args})
    return {"system": root.get("name"), "channels": chans, "commands": cmds}


def expected_for_xtce(*, gpus: int = 8) -> dict[str, Any]:
    """What :func:`read_xtce` must give back for ``as_xtce(gpus=gpus)``: the source, in the
    same shape (the round trip's other side)."""
    chans: dict[str, dict[str, Any]] = {}
    for c in channels():
        for key in c.keys(gpus):
            lo, hi = c.lo, c.hi
            if c.kind == "int":
                lo, hi = (None if lo is None else float(int(lo))), (None if hi is None else float(int(hi)))
            if c.kind in ("bool", "enum"):
                lo = hi = None
            chans[key] = {"kind": c.kind, "unit": c.unit if c.kind in ("float", "int") else "",
                          "description": c.description, "lo": lo, "hi": hi, "choices": list(c.choices),
                          "yellow": c.yellow, "red": c.red, "high": c.high}
    cmds = []
    for cmd in COMMANDS:
        args = []
        for a in cmd.args:
            lo = None if a.lo is None else float(a.lo)
            hi = None if a.hi is None else float(a.hi)
            if a.type == "int":
                lo, hi = (None if lo is None else float(int(lo))), (None if hi is None else float(int(hi)))
            args.append({"name": a.name, "type": a.type,
                         "unit": a.unit if a.type in ("int", "float") else "",
                         "lo": lo if a.type in ("int", "float") else None,
                         "hi": hi if a.type in ("int", "float") else None,
                         "choices": list(a.choices), "required": a.required, "description": a.description})
        cmds.append({"name": cmd.name, "description": cmd.description, "args": args})
    return {"system": SYSTEM, "channels": chans, "commands": cmds}


def dumps(fmt: str, *, gpus: int = 8) -> str:
    if fmt == "json":
        return json.dumps(as_json(), indent=1, allow_nan=False) + "\n"
    if fmt == "xtce":
        return as_xtce(gpus=gpus)
    raise ValueError(f"unknown dictionary format {fmt!r}: json or xtce")


__all__ = ["Channel", "as_json", "as_xtce", "channels", "commands", "dumps", "expected_for_xtce", "read_xtce"]
