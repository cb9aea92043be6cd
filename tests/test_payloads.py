"""MQTT topics and payloads (docs/ICD.md §5)."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.bus.payloads import (
    PAYLOAD_FOR_LEAF,
    TOPIC_ROOT,
    Event,
    Housekeeping,
    Leaf,
    Mode,
    NodeState,
    Severity,
    TcReport,
    decode_message,
    parse_topic,
    topic,
    topic_filter,
)
from node.errors import LocalProtocolError, RemoteProtocolError

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

node_ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,32}\Z")
finite = st.floats(allow_nan=False, allow_infinity=False)
utcs = st.floats(0.0, 1e11)  # the declared ranges (ICD §5.4)
board_times = st.floats(0.0, 1e10)
u32 = st.integers(0, 2**32 - 1)
counters = st.dictionaries(st.text(min_size=1, max_size=16), u32, max_size=8)
# Values an Event's data map may carry: anything msgpack round-trips to an equal value.
data_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | finite | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def housekeepings(draw: st.DrawFn) -> Housekeeping:
    n = draw(st.integers(1, 16))

    def array(elements: st.SearchStrategy[Any]) -> tuple[Any, ...]:
        return tuple(draw(st.lists(elements, min_size=n, max_size=n)))

    return Housekeeping(
        node_id=draw(node_ids),
        seq=draw(st.integers(0, 2**63 - 1)),
        utc=draw(utcs),
        t_board=draw(board_times),
        mode=draw(st.sampled_from(list(Mode))).value,
        link_up=draw(st.booleans()),
        temp_c=array(st.none() | finite),
        power_w=array(finite),
        cap_w=array(finite),
        progress=array(finite),
        solar_w=draw(finite),
        battery_soc=draw(st.floats(0.0, 1.0)),
        radiator_c=draw(st.none() | finite),
        board_flags=draw(u32),
        link=draw(counters),
        control_us=draw(st.floats(0.0, 1e6)),
    )


events = st.builds(
    Event,
    node_id=node_ids,
    seq=st.integers(0, 2**63 - 1),
    utc=utcs,
    t_board=board_times,
    kind=st.text(min_size=1, max_size=64),
    severity=st.sampled_from(list(Severity)).map(int),
    text=st.text(max_size=200),
    data=st.dictionaries(st.text(max_size=12), data_values, max_size=5),
)
states = st.builds(
    NodeState,
    node_id=node_ids,
    online=st.booleans(),
    boot_id=st.text(max_size=40),
    version=st.text(max_size=20),
    utc=utcs,
)
payloads = st.one_of(housekeepings(), events, states)


def _example_hk(**overrides: Any) -> Housekeeping:
    fields: dict[str, Any] = {
        "node_id": "umbra-01",
        "seq": 42,
        "utc": 1767225600.0,
        "t_board": 5025.5,
        "mode": "NOMINAL",
        "link_up": True,
        "temp_c": (61.25, None),
        "power_w": (650.0, 640.0),
        "cap_w": (700.0, 700.0),
        "progress": (1000.0, 990.0),
        "solar_w": 4800.0,
        "battery_soc": 0.9,
        "radiator_c": 21.5,
        "board_flags": 0,
        "link": {"lost": 0, "crc_errors": 1},
        "control_us": 85.5,
    }
    fields.update(overrides)
    return Housekeeping(**fields)


def _example_event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "node_id": "umbra-01",
        "seq": 43,
        "utc": 1767225600.5,
        "t_board": 5026.0,
        "kind": "mode",
        "severity": int(Severity.WARNING),
        "text": "NOMINAL -> POWER_SAVE",
        "data": {"from": "NOMINAL", "to": "POWER_SAVE"},
    }
    fields.update(overrides)
    return Event(**fields)


# --- topics -------------------------------------------------------------------------------------


def test_topic_tree() -> None:
    assert TOPIC_ROOT == "umbra/v1"
    assert {leaf: topic("n-1", leaf) for leaf in Leaf} == {
        Leaf.STATE: "umbra/v1/n-1/state",
        Leaf.HK: "umbra/v1/n-1/tm/hk",
        Leaf.EVENT: "umbra/v1/n-1/tm/event",
        Leaf.TC: "umbra/v1/n-1/tc",
        Leaf.TC_REPORT: "umbra/v1/n-1/tc/report",
        Leaf.FILE_TM: "umbra/v1/n-1/file/tm",
        Leaf.FILE_TC: "umbra/v1/n-1/file/tc",
    }


def test_topic_filters() -> None:
    assert topic_filter(Leaf.HK) == "umbra/v1/+/tm/hk"
    assert topic_filter(Leaf.EVENT, "n-1") == "umbra/v1/n-1/tm/event"


@PROPS
@given(node_id=node_ids, leaf=st.sampled_from(list(Leaf)))
def test_parse_topic_inverts_topic(node_id: str, leaf: Leaf) -> None:
    assert parse_topic(topic(node_id, leaf)) == (node_id, leaf)


@pytest.mark.parametrize(
    "name",
    [
        "umbra/v2/n-1/state",
        "umbra/v1/n-1",
        "umbra/v1/n-1/",
        "umbra/v1//state",
        "umbra/v1/+/state",
        "umbra/v1/n.1/state",
        "umbra/v1/" + "x" * 33 + "/state",
        "umbra/v1/n-1/tm",
        "umbra/v1/n-1/tm/hk/extra",
        "umbra/v1/n-1/state/",
        "/umbra/v1/n-1/state",
        "",
    ],
)
def test_parse_topic_rejects(name: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_topic(name)


@pytest.mark.parametrize("node_id", ["", "a/b", "+", "#", "ä", "x" * 33, "a b"])
def test_bad_node_ids_are_refused_locally(node_id: str) -> None:
    with pytest.raises(LocalProtocolError):
        topic(node_id, Leaf.STATE)
    with pytest.raises(LocalProtocolError):
        NodeState(node_id=node_id, online=True)


# --- round trips --------------------------------------------------------------------------------


@PROPS
@given(payloads)
def test_round_trip(payload: Any) -> None:
    wire = payload.to_wire()
    back = type(payload).from_wire(wire)
    assert back == payload
    assert back.to_wire() == wire


@PROPS
@given(payloads)
def test_decode_message_by_topic(payload: Any) -> None:
    node_id, decoded = decode_message(topic(payload.node_id, payload.LEAF), payload.to_wire())
    assert node_id == payload.node_id
    assert decoded == payload


def test_examples_round_trip() -> None:
    for payload in (
        _example_hk(),
        _example_event(),
        NodeState("umbra-01", True, "b00t", "0.1.0", 1767225600.0),
        NodeState("umbra-01", False),  # the Last Will
    ):
        assert type(payload).from_wire(payload.to_wire()) == payload


def test_payloads_are_msgpack_maps_with_the_field_names() -> None:
    mapping = msgpack.unpackb(_example_hk().to_wire())
    assert list(mapping) == [
        "node_id",
        "seq",
        "utc",
        "t_board",
        "mode",
        "link_up",
        "temp_c",
        "power_w",
        "cap_w",
        "progress",
        "solar_w",
        "battery_soc",
        "radiator_c",
        "board_flags",
        "link",
        "control_us",
        "historical",
        "jobs",
        "link_state",
    ]
    assert list(msgpack.unpackb(_example_event().to_wire())) == [
        "node_id",
        "seq",
        "utc",
        "t_board",
        "kind",
        "severity",
        "text",
        "data",
        "historical",
    ]
    assert msgpack.unpackb(NodeState("n", False).to_wire()) == {
        "node_id": "n",
        "online": False,
        "boot_id": "",
        "version": "",
        "utc": 0.0,
        "dict_hash": "",
    }


def test_missing_temperature_travels_as_nil() -> None:
    temps = Housekeeping.temps_for_wire((60.0, math.nan, 61.0))
    assert temps == (60.0, None, 61.0)
    hk = _example_hk(temp_c=temps, power_w=(1.0,) * 3, cap_w=(1.0,) * 3, progress=(0.0,) * 3)
    assert msgpack.unpackb(hk.to_wire())["temp_c"] == [60.0, None, 61.0]


def test_unknown_keys_are_ignored_and_defaults_fill_in() -> None:
    mapping = msgpack.unpackb(_example_event().to_wire())
    mapping["added_in_a_later_minor_version"] = [1, 2, 3]
    del mapping["data"]
    event = Event.from_wire(msgpack.packb(mapping))
    assert event == _example_event(data={})
    state = NodeState.from_wire(msgpack.packb({"node_id": "n", "online": True, "x": 1}))
    assert state == NodeState("n", True)


def test_payload_for_leaf() -> None:
    assert PAYLOAD_FOR_LEAF == {Leaf.STATE: NodeState, Leaf.HK: Housekeeping, Leaf.EVENT: Event,
                                Leaf.TC_REPORT: TcReport}
    for leaf, cls in PAYLOAD_FOR_LEAF.items():
        assert cls.LEAF is leaf


def test_reserved_topics_have_no_decoder_yet() -> None:
    for leaf in (Leaf.TC, Leaf.TC_REPORT):
        with pytest.raises(RemoteProtocolError):
            decode_message(topic("n-1", leaf), msgpack.packb({}))


# --- malformed payloads -------------------------------------------------------------------------


def _hk_map(**changes: Any) -> dict[str, Any]:
    mapping: dict[str, Any] = msgpack.unpackb(_example_hk().to_wire())
    for key, value in changes.items():
        if value is _DELETE:
            del mapping[key]
        else:
            mapping[key] = value
    return mapping


def _event_map(**changes: Any) -> dict[str, Any]:
    mapping: dict[str, Any] = msgpack.unpackb(_example_event().to_wire())
    mapping.update(changes)
    return mapping


_DELETE = object()


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        (Housekeeping, b""),
        (Housekeeping, b"\xc1"),
        (Housekeeping, msgpack.packb([1, 2, 3])),
        (Housekeeping, msgpack.packb("map")),
        (Housekeeping, msgpack.packb(_hk_map()) + b"\x00"),  # trailing bytes
        (Housekeeping, msgpack.packb({1: 2})),
        (Housekeeping, msgpack.packb(_hk_map(seq=_DELETE))),
        (Housekeeping, msgpack.packb(_hk_map(temp_c=_DELETE))),
        (Housekeeping, msgpack.packb(_hk_map(node_id="a/b"))),
        (Housekeeping, msgpack.packb(_hk_map(mode="PANIC"))),
        (Housekeeping, msgpack.packb(_hk_map(seq=-1))),
        (Housekeeping, msgpack.packb(_hk_map(temp_c=[1.0]))),
        (Housekeeping, msgpack.packb(_hk_map(power_w=5.0))),
        (Event, msgpack.packb(_event_map(severity=9))),
        (Event, msgpack.packb(_event_map(kind=""))),
        (Event, msgpack.packb(_event_map(kind="k" * 65))),
        (Event, msgpack.packb(_event_map(node_id=7))),
        (NodeState, msgpack.packb({"online": True})),
        (NodeState, msgpack.packb({"node_id": "", "online": True})),
    ],
)
def test_malformed_payloads_are_rejected(cls: Any, data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        cls.from_wire(data)


@pytest.mark.parametrize(
    ("cls", "mapping"),
    [
        (NodeState, {"node_id": "n", "online": "yes"}),
        (NodeState, {"node_id": "n", "online": True, "utc": "noon"}),
        (Housekeeping, _hk_map(utc="noon")),
        (Housekeeping, _hk_map(temp_c=["hot", None])),
        (Housekeeping, _hk_map(link_up="yes")),
        (Event, _event_map(text=5)),
        (Event, _event_map(data=[1, 2])),
    ],
    ids=[
        "state-online-str",
        "state-utc-str",
        "hk-utc-str",
        "hk-temp-str",
        "hk-link_up-str",
        "event-text-int",
        "event-data-array",
    ],
)
def test_wrongly_typed_fields_are_rejected(cls: Any, mapping: dict[str, Any]) -> None:
    """Each field has the msgpack type the ICD gives it (§5.3); others are the peer's error.

    Finds a bug: payloads check node_id, mode, seq sign, severity and array lengths, but
    not the types of the other fields, so a bad packet is accepted at the edge and fails
    later in ground code.
    """
    with pytest.raises(RemoteProtocolError):
        cls.from_wire(msgpack.packb(mapping))


@PROPS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    for cls in (NodeState, Housekeeping, Event):
        try:
            cls.from_wire(data)
        except RemoteProtocolError:
            pass


any_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


@PROPS
@given(payload=payloads, data=st.data())
def test_valid_map_with_one_field_replaced_raises_only_remote_protocol_error(
    payload: Any, data: st.DataObject
) -> None:
    mapping = msgpack.unpackb(payload.to_wire())
    key = data.draw(st.sampled_from(sorted(mapping)))
    mapping[key] = data.draw(any_values)
    try:
        type(payload).from_wire(msgpack.packb(mapping))
    except RemoteProtocolError:
        pass


@PROPS
@given(topic_name=st.text(max_size=60), data=st.binary(max_size=100))
def test_decode_message_raises_only_remote_protocol_error(topic_name: str, data: bytes) -> None:
    try:
        decode_message(topic_name, data)
    except RemoteProtocolError:
        pass


@pytest.mark.parametrize(("field", "value"), [
    ("seq", 2**64 - 1), ("seq", 2**63), ("seq", -1), ("utc", float("nan")), ("utc", -1.0),
    ("t_board", float("inf")), ("board_flags", 2**64 - 1),
])
def test_values_outside_the_declared_ranges_are_refused(field: str, value: Any) -> None:
    """A seq or a count no signed 64-bit column can hold, a NaN time: refused at the edge."""
    mapping = msgpack.unpackb(_example_hk().to_wire())
    mapping[field] = value
    with pytest.raises(RemoteProtocolError, match=field):
        Housekeeping.from_wire(msgpack.packb(mapping))
