"""The command processor in-process: verification stages, rejections, exactly-once, schedule."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.bus import signing
from node.bus.payloads import MAX_TC_BYTES, Event, TcReport, Telecommand
from node.bus.processor import CommandProcessor, FakeTarget
from node.errors import Reason

NODE = "n-1"
KEY = bytes(range(32))
NOW = 1_800_000_000.0


class Sink:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def publish(self, payload: Any) -> None:
        self.items.append(payload)

    @property
    def reports(self) -> list[TcReport]:
        return [p for p in self.items if isinstance(p, TcReport)]

    @property
    def events(self) -> list[Event]:
        return [p for p in self.items if isinstance(p, Event)]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make(path: Any = ":memory:", clock: Clock | None = None, target: FakeTarget | None = None,
         **kw: Any):
    sink, target = Sink(), target or FakeTarget()
    proc = CommandProcessor(node_id=NODE, key=KEY, target=target, sink=sink, path=path,
                            clock=clock or Clock(), **kw)
    return proc, target, sink


def tc(name: str = "ping", args: dict[str, Any] | None = None, *, counter: int = 1, cid: str = "c1",
       expires: float = NOW + 60, exec_at: float | None = None, node: str = NODE, key: bytes = KEY) -> bytes:
    t = Telecommand(node_id=node, id=cid, counter=counter, name=name, args=args or {},
                    expires=expires, exec_at=exec_at)
    return signing.sign(key, t).to_wire()


def stages(sink: Sink, cid: str) -> list[str]:
    return [r.stage for r in sink.reports if r.id == cid]


def test_ping_goes_accepted_started_completed() -> None:
    proc, _, sink = make()
    proc.handle(tc())
    assert stages(sink, "c1") == ["accepted", "started", "completed"]
    assert sink.reports[-1].data["utc"] == NOW


def test_commands_reach_the_target() -> None:
    proc, target, sink = make()
    proc.handle(tc("set_mode", {"mode": "SAFE"}, counter=1, cid="a"))
    proc.handle(tc("set_rail", {"gpu": 1, "on": False}, counter=2, cid="b"))
    proc.handle(tc("set_cap_limit", {"gpu": 0, "max_w": 300.0}, counter=3, cid="c"))
    proc.handle(tc("set_cap_limit", {"gpu": 0}, counter=4, cid="d"))
    proc.handle(tc("set_param", {"name": "control.target_c", "value": 75}, counter=5, cid="e"))
    proc.handle(tc("get_param", {"name": "control.target_c"}, counter=6, cid="f"))
    proc.handle(tc("set_hk_rate", {"hz": 2.0}, counter=7, cid="g"))
    assert target.calls == [
        ("command_safe", ()), ("set_rail", (1, False)), ("set_gpu_cap_limit", (0, 300.0)),
        ("set_gpu_cap_limit", (0, None)), ("set_param", ("control.target_c", 75.0)),
        ("set_hk_rate", (2.0,)),
    ]
    assert sink.reports[-4].data == {"name": "control.target_c", "value": 75.0}
    assert all(stages(sink, c)[-1] == "completed" for c in "abcdefg")


def test_target_refusal_fails_at_start_with_its_code() -> None:
    proc, target, sink = make(target=FakeTarget(link_up=False))
    proc.handle(tc("set_rail", {"gpu": 0, "on": True}))
    last = sink.reports[-1]
    assert (last.stage, last.at, last.code) == ("failed", "start", Reason.LINK_DOWN)
    assert target.calls == []


def test_job_and_board_commands_behave_as_the_controller_does() -> None:
    proc, target, sink = make()
    for i, (name, args, outcome) in enumerate([
        ("job_cancel", {"job": "j1"}, Reason.NOT_FOUND),  # not submitted yet
        ("job_submit", {"job": "j1", "gpus": 3}, 0),
        ("job_checkpoint", {"job": "j1"}, 0),
        ("job_pause", {"job": "gpu-2"}, 0),  # every GPU runs a job of its own
        ("job_cancel", {"job": "gpu-2"}, Reason.NOT_ALLOWED),
        ("job_cancel", {"job": "j1"}, 0),
        ("job_submit", {"job": "j2", "gpus": 1 << 4}, Reason.OUT_OF_RANGE),  # the board has 4 GPUs
        ("reboot_board", {}, 0),
    ]):
        proc.handle(tc(name, args, counter=i + 1, cid=f"u{i}"))
        assert sink.reports[-1].code == outcome, (name, args)
    assert [c[0] for c in target.calls] == ["submit_job", "checkpoint_job", "pause_job", "cancel_job", "reboot_board"]


def test_the_fake_target_the_controller_and_the_protocol_offer_the_same_commands() -> None:
    """FakeTarget is what the processor's tests run against: it must be the controller's twin."""
    import inspect

    from node.bus.processor import CommandTarget, ControllerTarget
    from node.controller.commands import NodeCommands

    def methods(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(fn)
            for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_") and name != "bind"
        }

    def shape(sigs: dict[str, inspect.Signature]) -> dict[str, list[tuple[str, str]]]:
        # Parameter names and annotations; the defaults' texts may differ (protocol: `...`).
        return {n: [(p.name, str(p.annotation)) for p in s.parameters.values()] for n, s in sigs.items()}

    protocol = shape(methods(CommandTarget))
    assert shape(methods(NodeCommands)) == protocol
    assert shape(methods(FakeTarget)) == protocol
    assert shape(methods(ControllerTarget)) == protocol


def test_the_fake_target_knows_the_controllers_parameters() -> None:
    from node.control.law import PARAM_SPECS

    target = FakeTarget()
    assert target.param_names() == [f"control.{name}" for name in PARAM_SPECS]


def test_rejections_carry_reason_event_and_no_effect() -> None:
    clock = Clock()
    proc, target, sink = make(clock=clock)
    cases = [
        (b"\x93garbage", Reason.MALFORMED),
        (b"x" * (MAX_TC_BYTES + 1), Reason.MALFORMED),
        (tc(node="other"), Reason.WRONG_NODE),
        (tc(key=b"k" * 32), Reason.BAD_TAG),
        (Telecommand(node_id=NODE, id="u", counter=9, name="ping", args={}, expires=NOW + 9).to_wire(),
         Reason.BAD_TAG),
        (tc(cid="x1", counter=5, expires=NOW - 1), Reason.EXPIRED),
        (tc("nope", cid="x2", counter=6), Reason.UNKNOWN_COMMAND),
        (tc("set_rail", {"gpu": "0", "on": True}, cid="x3", counter=7), Reason.BAD_ARGUMENT),
        (tc("set_rail", {"gpu": 0}, cid="x4", counter=8), Reason.BAD_ARGUMENT),
        (tc("set_rail", {"gpu": 99, "on": True}, cid="x5", counter=9), Reason.OUT_OF_RANGE),
        (tc("set_hk_rate", {"hz": float("nan")}, cid="x6", counter=10), Reason.OUT_OF_RANGE),
        (tc(cid="x7", counter=3), Reason.REPLAYED),
    ]
    for data, reason in cases:
        before = len(sink.reports)
        proc.handle(data)
        new = sink.reports[before:]
        assert [(r.stage, r.code) for r in new] == [("failed", reason)], (data[:40], reason, new)
        assert new[0].at == "acceptance"
        assert sink.events[-1].kind == "tc_rejected" and sink.events[-1].data["code"] == reason
    assert target.calls == []


def test_a_command_id_seen_twice_is_answered_not_executed() -> None:
    proc, target, sink = make()
    data = tc("set_mode", {"mode": "SAFE"})
    proc.handle(data)
    proc.handle(data)
    assert target.calls == [("command_safe", ())]
    assert sink.reports[-1].duplicate and sink.reports[-1].stage == "completed"
    # A new signature over the same id (ground retrying with a new counter): still answered.
    proc.handle(tc("set_mode", {"mode": "SAFE"}, counter=2))
    assert target.calls == [("command_safe", ())]


def test_counter_and_ids_survive_a_restart(tmp_path) -> None:
    path = tmp_path / "commands.sqlite"
    proc, target, _ = make(path)
    proc.handle(tc("set_mode", {"mode": "SAFE"}, counter=10))
    proc.close()
    proc, target, sink = make(path)
    proc.handle(tc("set_mode", {"mode": "SAFE"}, counter=10))  # same id: answered
    proc.handle(tc(cid="other", counter=9))  # older counter: replayed
    assert target.calls == []
    assert sink.reports[0].duplicate
    assert sink.reports[1].code == Reason.REPLAYED


def test_interrupted_command_is_reported_failed_after_restart(tmp_path) -> None:
    path = tmp_path / "commands.sqlite"
    proc, _, _ = make(path)
    proc._db.execute("INSERT INTO commands VALUES ('dead', 5, 'set_rail', 'started', NULL, 0)")
    proc.close()
    proc, _, sink = make(path)
    proc.recover()
    assert sink.reports[-1].code == Reason.INTERRUPTED


def test_time_tagged_commands_persist_list_delete_and_run(tmp_path) -> None:
    path = tmp_path / "commands.sqlite"
    clock = Clock()
    proc, target, sink = make(path, clock)
    proc.handle(tc("set_mode", {"mode": "SAFE"}, cid="t1", counter=1, exec_at=NOW + 100))
    proc.handle(tc("set_rail", {"gpu": 0, "on": False}, cid="t2", counter=2, exec_at=NOW + 50))
    proc.handle(tc("set_hk_rate", {"hz": 3.0}, cid="t3", counter=3, exec_at=NOW + 70))
    assert stages(sink, "t1") == ["accepted"] and sink.reports[0].data["exec_at"] == NOW + 100
    proc.handle(tc("schedule_list", cid="l", counter=4))
    assert [e["id"] for e in sink.reports[-1].data["schedule"]] == ["t2", "t3", "t1"]
    proc.handle(tc("schedule_delete", {"id": "t3"}, cid="d", counter=5))
    assert stages(sink, "t3") == ["accepted", "failed"] and stages(sink, "d")[-1] == "completed"
    proc.close()
    # Restart: the schedule is still there and runs at its time, once.
    proc, target, sink = make(path, clock)
    proc.recover()
    clock.now = NOW + 60
    assert proc.run_due() == 1
    assert target.calls == [("set_rail", (0, False))]
    clock.now = NOW + 101
    proc.run_due()
    proc.run_due()
    assert target.calls == [("set_rail", (0, False)), ("command_safe", ())]
    assert stages(sink, "t1") == ["started", "completed"]  # accepted went before the restart
    assert proc.schedule_list() == []


def test_schedule_full_is_refused() -> None:
    sink, target = Sink(), FakeTarget()
    proc = CommandProcessor(node_id=NODE, key=KEY, target=target, sink=sink, clock=Clock(),
                            schedule_limit=2)
    for i in range(3):
        proc.handle(tc(cid=f"s{i}", counter=i + 1, exec_at=NOW + 10))
    assert sink.reports[-1].code == Reason.SCHEDULE_FULL


def test_missing_key_refuses_everything() -> None:
    sink, target = Sink(), FakeTarget()
    proc = CommandProcessor(node_id=NODE, key=None, target=target, sink=sink, clock=Clock())
    proc.handle(tc())
    assert sink.reports[-1].code == Reason.BAD_TAG


# -- Hypothesis: nothing bad gets executed, and everything is answered ------------------------

_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=80), st.binary(max_size=40))
_args = st.dictionaries(st.text(max_size=12), _values, max_size=5)
_names = st.one_of(st.sampled_from(["ping", "set_mode", "set_rail", "set_cap_limit", "set_param",
                                    "set_hk_rate", "reboot_board", "job_submit", "schedule_delete"]),
                   st.text(max_size=70))


@st.composite
def bad_telecommands(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["bytes", "map", "oversized", "badargs", "unsigned", "badtag",
                                 "replayed", "expired", "wrongnode"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), kind
    if kind == "map":
        m = draw(st.dictionaries(st.sampled_from(["node_id", "id", "counter", "name", "args",
                                                  "expires", "exec_at", "tag", "zz"]), _values))
        return msgpack.packb(m, use_bin_type=True), kind
    if kind == "oversized":
        return tc(args={"pad": "x" * (MAX_TC_BYTES + draw(st.integers(0, 100)))}), kind
    counter = draw(st.integers(1000, 2**62))
    cid = "h" + draw(st.text("abcdef0123456789", min_size=1, max_size=20))
    name = draw(_names)
    args = draw(_args)
    if kind == "badargs":  # correctly signed but never a valid set of arguments
        name = draw(st.sampled_from(["set_rail", "set_cap_limit", "set_hk_rate", "set_param"]))
        args = draw(st.one_of(
            st.just({}),
            st.fixed_dictionaries({"gpu": st.one_of(st.text(), st.floats(), st.integers(32, 2**40),
                                                    st.integers(-(2**63), -1), st.booleans())}),
            st.fixed_dictionaries({"hz": st.one_of(st.floats(max_value=0.0099), st.floats(min_value=100.01),
                                                   st.text(), st.none())}),
            st.fixed_dictionaries({"extra": _values, "gpu": st.just(0), "on": st.just(True)}),
        ))
        if name == "set_param":
            args = {"value": 1.0}
        return tc(name, args, counter=counter, cid=cid), kind
    try:
        t = Telecommand(node_id=NODE, id=cid, counter=counter, name=name or "x", args=args,
                        expires=NOW + 60)
    except Exception:
        return msgpack.packb({"name": name, "args": 1}), "map"
    if kind == "unsigned":
        return t.to_wire(), kind
    if kind == "badtag":
        return dataclasses.replace(t, tag=draw(st.binary(min_size=32, max_size=32))).to_wire(), kind
    if kind == "replayed":
        return signing.sign(KEY, dataclasses.replace(t, counter=draw(st.integers(1, 999)))).to_wire(), kind
    if kind == "expired":
        return signing.sign(KEY, dataclasses.replace(t, expires=NOW - draw(st.floats(0.001, 1e6)))).to_wire(), kind
    return signing.sign(KEY, dataclasses.replace(t, node_id="n-2")).to_wire(), kind


# Every rejection reported one by one: the rate limit has its own tests.
_shared = make(reject_burst=10**9, duplicate_answers=10**9)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(bad_telecommands())
def test_bad_telecommands_are_rejected_with_a_report_and_do_nothing(case: tuple[bytes, str]) -> None:
    data, kind = case
    proc, target, sink = _shared
    if proc.last_counter < 999:
        proc.handle(tc(cid="seed", counter=999))  # so counters 1-999 are replays
    before = len(sink.reports)
    proc.handle(data)
    new = sink.reports[before:]
    assert len(new) == 1, (kind, new)
    assert new[0].stage == "failed" and new[0].code > 0, (kind, new[0])
    assert target.calls == []


def test_job_catalogue_answers_with_the_targets_catalogue() -> None:
    proc, target, sink = make()
    target.catalogue = [{"job": "train", "checkpoints": [{"seq": 3, "size": 10, "hash": "blake3",
                                                          "digest": "ab" * 32, "progress": 9.0,
                                                          "age_s": 1.5}], "truncated": False}]
    proc.handle(tc("job_catalogue", {}, counter=1, cid="all"))
    proc.handle(tc("job_catalogue", {"job": "nope"}, counter=2, cid="nope"))
    (done,) = [r for r in sink.reports if r.id == "all" and r.stage == "completed"]
    assert done.data == {"jobs": target.catalogue, "truncated": False}
    (failed,) = [r for r in sink.reports if r.id == "nope" and r.stage == "failed"]
    assert failed.code == Reason.NOT_FOUND
