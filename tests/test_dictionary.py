"""The dictionary for other tools (ground/dictionary.py): JSON and XTCE 1.2 from one source.

The XTCE file is checked three ways: it is well-formed XTCE 1.2 (the namespace, the root,
every type a parameter or argument refers to defined once); an XTCE reader that is not ours
(LASP's space_packet_parser) reads its parameter types and parameters with their units and
enumerations; and our own reader gives back every parameter and command exactly as the
source defines them.  It also validates against OMG's XTCE 1.2 schema (SpaceSystem.xsd,
which space_packet_parser ships for offline use).  Its structural check is not used: it
reports every parameter as unused, because Umbra's packets are msgpack maps on MQTT, not
binary containers, so the dictionary declares no SequenceContainer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from ground.archive import HK_ARRAYS, HK_SCALARS
from ground.dictionary import XTCE_NS, as_json, as_xtce, channels, expected_for_xtce, read_xtce
from ground.limits import LIMITS
from node.bus.commands import COMMANDS, dictionary_hash


def test_json_has_every_archived_channel_with_its_unit_range_and_limits() -> None:
    d = as_json()
    assert d["hash"] == dictionary_hash()
    by_name = {c["name"]: c for c in d["channels"]}
    assert set(HK_SCALARS + HK_ARRAYS) <= set(by_name)  # everything the archive can be asked for
    for name in HK_ARRAYS:
        assert by_name[name]["per_gpu"]
    for name, limit in LIMITS.items():
        assert (by_name[name]["yellow"], by_name[name]["red"], by_name[name]["high"]) == (
            limit.yellow, limit.red, limit.high)
    assert by_name["temp_c"]["unit"] == "°C" and by_name["battery_soc"]["hi"] == 1.0
    assert by_name["mode"]["kind"] == "enum" and "SAFE" in by_name["mode"]["choices"]
    assert [c["name"] for c in d["commands"]] == [c.name for c in COMMANDS]
    json.dumps(d, allow_nan=False)  # plain JSON, no NaN


@pytest.mark.parametrize("gpus", [1, 8])
def test_xtce_is_well_formed_xtce_1_2(gpus: int) -> None:
    root = etree.fromstring(as_xtce(gpus=gpus).encode())
    assert root.tag == f"{{{XTCE_NS}}}SpaceSystem" and root.get("name") == "Umbra"
    q = lambda tag: f"{{{XTCE_NS}}}{tag}"  # noqa: E731
    type_names = [t.get("name") for s in root.iter(q("ParameterTypeSet")) for t in s]
    assert len(type_names) == len(set(type_names))
    refs = [p.get("parameterTypeRef") for p in root.iter(q("Parameter"))]
    assert set(refs) <= set(type_names)
    arg_types = {t.get("name") for s in root.iter(q("ArgumentTypeSet")) for t in s}
    assert {a.get("argumentTypeRef") for a in root.iter(q("Argument"))} <= arg_types
    per_gpu = sum(c.per_gpu for c in channels())
    assert len(refs) == len(channels()) - per_gpu + per_gpu * gpus
    assert len(list(root.iter(q("MetaCommand")))) == len(COMMANDS)
    assert dictionary_hash() in (root.get("shortDescription") or "")


def _schema_check(xml: bytes) -> tuple[bool, str]:
    """OMG's XTCE 1.2 schema (SpaceSystem.xsd, as space_packet_parser ships it, offline)."""
    import space_packet_parser
    from space_packet_parser.xtce.validation import validate_xtce

    xsd = Path(space_packet_parser.__file__).parent / "xtce" / "schemas" / "SpaceSystem.xsd"
    assert xsd.is_file(), "space_packet_parser no longer ships the XTCE 1.2 schema"
    result = validate_xtce(etree.ElementTree(etree.fromstring(xml)), level="schema", local_xsd=xsd,
                           allow_schema_download=False, print_results=False, raise_on_error=False)
    return bool(result), str(result)


@pytest.mark.parametrize("gpus", [1, 8])
def test_xtce_validates_against_the_xtce_1_2_schema(gpus: int) -> None:
    valid, report = _schema_check(as_xtce(gpus=gpus).encode())
    assert valid, report
    # the check can fail: an element the schema does not know, where it does not belong
    broken = as_xtce(gpus=gpus).replace("<ParameterSet>", "<ParameterSet><Bogus/>", 1)
    assert broken != as_xtce(gpus=gpus)
    valid, report = _schema_check(broken.encode())
    assert not valid and "Bogus" in report


def test_every_parameter_and_command_round_trips() -> None:
    back = read_xtce(as_xtce(gpus=3))
    want = expected_for_xtce(gpus=3)
    assert back["system"] == want["system"]
    assert back["channels"] == want["channels"]
    assert {c["name"]: c for c in back["commands"]} == {c["name"]: c for c in want["commands"]}
    # the limits are alarm ranges: the red band of a GPU temperature survives the trip
    assert back["channels"]["temp_c[2]"]["red"] == LIMITS["temp_c"].red
    assert back["channels"]["battery_soc"]["high"] is False


def test_another_xtce_reader_reads_the_parameters(tmp_path) -> None:
    """LASP's space_packet_parser parses our parameter types and parameters (its reader of
    ParameterTypeSet and ParameterSet; the file has no packet containers, see the module)."""
    from lxml import etree as ElementTree
    from space_packet_parser import common
    from space_packet_parser.xtce.definitions import XtcePacketDefinition

    path = tmp_path / "umbra.xtce.xml"
    path.write_text(as_xtce(gpus=2))
    element = common.NamespaceAwareElement
    parser = ElementTree.XMLParser()
    parser.set_element_class_lookup(ElementTree.ElementDefaultClassLookup(element=element))
    tree = ElementTree.parse(str(path), parser=parser)
    ns = tree.getroot().nsmap
    element.set_ns_prefix(next(p for p, uri in ns.items() if "xtce" in uri.lower()))
    element.set_nsmap(ns)
    types = XtcePacketDefinition._parse_parameter_type_set(tree)
    params = XtcePacketDefinition._parse_parameter_set(tree, types)
    assert {"temp_c_0", "temp_c_1", "battery_soc", "mode", "link_up"} <= set(params)
    assert params["temp_c_1"].parameter_type.unit == "°C"
    mode = params["mode"].parameter_type
    assert "THERMAL_LIMIT" in mode.enumeration.values()


def test_the_command_line_writes_both(tmp_path) -> None:
    out = tmp_path / "d.xml"
    done = subprocess.run([sys.executable, "-m", "ground.cli", "dictionary", "--format", "xtce", "--gpus", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert read_xtce(out.read_text())["channels"]["power_w[1]"]["unit"] == "W"
    done = subprocess.run([sys.executable, "-m", "ground.cli", "dictionary", "--format", "json"],
                          capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["hash"] == dictionary_hash()
