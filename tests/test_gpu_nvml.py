"""The NVML backend against the fake NVML: readings, power limits, refusals, Xid, platform merge."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from node.board import BoardInfo, CommandResult, FakeBoard, LinkDown, LinkUp, SensorReading
from node.errors import ConfigError, LinkError
from node.gpu import (
    BoardPlatform,
    FixedPlatform,
    GpuConfig,
    NvmlBoard,
    NvmlUnavailable,
    PlatformProfile,
    PowerLimitRefused,
    check,
    make_board,
)
from node.gpu import nvml_api as api
from node.gpu.devices import NvmlDevices
from node.gpu.fake_nvml import FakeGpu, FakeNvml, FakeNVMLError
from node.link.messages import AckStatus, Sensor, SensorFlag, SetCaps, SetRail

SERIAL_INFO = BoardInfo(
    board_id="obc-1", fw_version="1.2", gpu_count=2, cap_min_w=200.0, cap_max_w=700.0,
    sensor_rate_hz=10.0, watchdog_s=3.0, protocol_version=1,
)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def platform_frame(t: float, *, flags: int = 0, rails: int = 0b11) -> SensorReading:
    # GPU fields of the board frame are ignored by the NVML backend; the platform ones count.
    s = Sensor(
        t_board=t, utc=1.7e9 + t, temp_c=(0.0, 0.0), power_w=(0.0, 0.0), cap_w=(0.0, 0.0),
        progress=(0.0, 0.0), rails=rails, solar_w=850.0, battery_soc=0.6, radiator_c=-5.0, flags=flags,
    )
    return SensorReading(s, 0.0)


async def next_of(board: NvmlBoard, kind: type, timeout: float = 2.0) -> object:
    async def wait() -> object:
        while True:
            event = await board.next_event()
            if isinstance(event, kind):
                return event

    return await asyncio.wait_for(wait(), timeout)


# --- the fake itself ---------------------------------------------------------------------------


def test_fake_temperature_follows_power_and_hardware_slows_down() -> None:
    clock = Clock()
    nvml = FakeNvml(gpus=[FakeGpu(demand_w=700.0)], clock=clock)
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    # Uncapped 700 W heads for 30 + 0.09·700 = 93 °C; the hardware slows down at 89 °C
    # and holds it there.
    temps, reasons = [], 0
    for t in range(300, 600):
        clock.t = float(t)
        temps.append(nvml.nvmlDeviceGetTemperature(h, api.NVML_TEMPERATURE_GPU))
        reasons |= nvml.nvmlDeviceGetCurrentClocksEventReasons(h)
    assert 88 <= min(temps) and max(temps) <= 90
    assert reasons & api.REASON_HW_THERMAL and reasons & api.REASON_HW_SLOWDOWN
    nvml.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    clock.t = 1200.0
    assert 50 <= nvml.nvmlDeviceGetTemperature(h, api.NVML_TEMPERATURE_GPU) <= 60
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(h) & api.REASON_SW_POWER_CAP
    assert nvml.set_limit_calls == [(0, 300_000)]


def test_fake_speaks_nvml_error_codes() -> None:
    nvml = FakeNvml(gpus=1)
    with pytest.raises(FakeNVMLError) as err:
        nvml.nvmlDeviceGetCount()
    assert err.value.value == api.NVML_ERROR_UNINITIALIZED
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.refuse_permission()
    with pytest.raises(FakeNVMLError) as err:
        nvml.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    assert err.value.value == nvml.NVML_ERROR_NO_PERMISSION == 4
    assert str(err.value) == "Insufficient Permissions"
    nvml.refuse_permission(False)
    with pytest.raises(FakeNVMLError) as err:
        nvml.nvmlDeviceSetPowerManagementLimit(h, 100_000)  # below the 200 W minimum
    assert err.value.value == api.NVML_ERROR_INVALID_ARGUMENT


def test_real_bindings_have_every_call_the_backend_uses() -> None:
    pynvml = pytest.importorskip("pynvml")
    wanted = [name for name in vars(api.NvmlLike) if name.startswith("nvml")]
    assert len(wanted) > 20
    assert [n for n in wanted if not hasattr(pynvml, n)] == []
    assert issubclass(pynvml.NVMLError, Exception)
    # The ABI constants we hard-code match NVIDIA's.
    for name in ("NVML_ERROR_NO_PERMISSION", "NVML_ERROR_GPU_IS_LOST", "NVML_FI_DEV_MEMORY_TEMP",
                 "NVML_FI_DEV_POWER_INSTANT", "NVML_FI_DEV_POWER_AVERAGE", "NVML_CLOCK_SM"):
        assert getattr(pynvml, name) == getattr(api, name), name
    assert pynvml.nvmlEventTypeXidCriticalError == api.EVENT_XID_CRITICAL
    assert pynvml.nvmlClocksEventReasonHwThermalSlowdown == api.REASON_HW_THERMAL


# --- reading and setting through NvmlDevices -------------------------------------------------


def test_devices_read_everything_nvml_offers_and_none_where_unsupported() -> None:
    nvml = FakeNvml(gpus=[FakeGpu(), FakeGpu(mem_offset_k=None, ecc_supported=False)])
    devices = NvmlDevices(nvml)
    snap = devices.snapshot(12.5)
    a, b = snap.gpus
    assert snap.driver_version == "550.54.15" and snap.t_board == 12.5
    assert a.temp_c == 30.0 and a.mem_temp_c == 35.0
    assert a.power_instant_w == 500.0 and a.power_avg_w == 500.0 and a.power_w == 500.0
    assert (a.cap_w, a.cap_min_w, a.cap_max_w, a.cap_default_w) == (700.0, 200.0, 700.0, 700.0)
    assert a.sm_clock_mhz == 1980 and a.mem_clock_mhz == 2619
    assert a.ecc_corrected == 0 and a.ecc_uncorrected_aggregate == 0
    assert a.persistence_mode == 1
    assert b.mem_temp_c is None and b.ecc_uncorrected is None
    assert snap.to_telemetry()["gpus"][1]["mem_temp_c"] is None
    devices.close()
    assert nvml.initialized == 0


def test_devices_set_limits_in_milliwatts_clamped_and_only_when_changed() -> None:
    nvml = FakeNvml(gpus=2)
    devices = NvmlDevices(nvml)
    assert devices.set_limits([350.4, 900.0]) == [350_400, 700_000]
    devices.set_limits([350.4, 150.0])
    assert nvml.set_limit_calls == [(0, 350_400), (1, 700_000), (1, 200_000)]


def test_permission_refusal_names_the_permission() -> None:
    nvml = FakeNvml(gpus=1, root=False)
    devices = NvmlDevices(nvml)
    with pytest.raises(PowerLimitRefused) as err:
        devices.set_limits([300.0])
    assert err.value.permission and err.value.code == api.NVML_ERROR_NO_PERMISSION
    assert "CAP_SYS_ADMIN" in str(err.value) and "root" in str(err.value)


def test_no_driver_is_a_clear_error() -> None:
    with pytest.raises(NvmlUnavailable, match="driver not loaded"):
        NvmlDevices(FakeNvml(driver_loaded=False))
    with pytest.raises(NvmlUnavailable, match="no GPU with NVML index"):
        NvmlDevices(FakeNvml(gpus=2), [0, 5])


# --- the board -----------------------------------------------------------------------------------


@pytest.fixture
async def rig():
    serial = FakeBoard()
    nvml = FakeNvml(gpus=2)
    board = NvmlBoard(nvml=nvml, platform=BoardPlatform(serial), config=GpuConfig(backend="nvml"))
    async with board:
        await serial.events.put(LinkUp(SERIAL_INFO))
        up = await next_of(board, LinkUp)
        yield serial, nvml, board, up


async def test_link_up_describes_the_nvml_gpus(rig) -> None:
    _, _, board, up = rig
    info = up.info
    assert (info.board_id, info.gpu_count, info.cap_min_w, info.cap_max_w) == ("nvml", 2, 200.0, 700.0)
    assert info.fw_version == "nvml 550.54.15"
    assert info.sensor_rate_hz == 10.0 and info.watchdog_s == 3.0  # from the serial board
    assert board.link_up and board.info == info


async def test_frames_merge_nvml_gpus_with_platform_values_on_board_time(rig) -> None:
    serial, nvml, board, _ = rig
    nvml.gpus[1].temp_c = 91.0  # in hardware slowdown
    await serial.events.put(platform_frame(42.0, flags=SensorFlag.ECLIPSE | SensorFlag.HW_SLOWDOWN))
    reading = await next_of(board, SensorReading)
    s = reading.sensor
    assert (s.t_board, s.utc) == (42.0, 1.7e9 + 42.0)
    assert (s.solar_w, s.battery_soc, s.radiator_c) == (850.0, 0.6, -5.0)
    assert s.temp_c[0] == pytest.approx(30.0, abs=1) and s.temp_c[1] == pytest.approx(91.0, abs=1)
    assert s.cap_w == (700.0, 700.0) and s.rails == 0b11
    # ECLIPSE comes from the platform; HW_SLOWDOWN is NVML's own verdict.
    assert s.flags == SensorFlag.ECLIPSE | SensorFlag.HW_SLOWDOWN
    assert board.snapshot is not None and board.snapshot.gpus[1].hw_slowdown


async def test_set_caps_sets_nvml_limits_and_answers(rig) -> None:
    _, nvml, board, _ = rig
    board.set_caps([300.0, 450.5])
    result = await next_of(board, CommandResult)
    assert result.status == AckStatus.OK and result.message == SetCaps(cap_w=(300.0, 450.5))
    assert nvml.set_limit_calls == [(0, 300_000), (1, 450_500)]
    assert board.stats()["caps_set"] == 1


async def test_permission_refusal_is_reported_once_and_explained(rig, caplog) -> None:
    serial, nvml, board, _ = rig
    nvml.refuse_permission()
    with caplog.at_level(logging.ERROR, logger="umbra.node.gpu"):
        board.set_caps([300.0, 300.0])
        result = await next_of(board, CommandResult)
    assert result.status == AckStatus.UNSUPPORTED
    assert "CAP_SYS_ADMIN" in caplog.text and "NVML_ERROR_NO_PERMISSION" in caplog.text
    board.set_caps([300.0, 300.0])  # the controller's resend: refused again, but quietly
    await serial.events.put(platform_frame(1.0))
    await next_of(board, SensorReading)
    assert board.stats()["caps_refused"] == 2
    assert board.snapshot is not None and "CAP_SYS_ADMIN" in (board.snapshot.caps_error or "")
    nvml.refuse_permission(False)
    board.set_caps([300.0, 300.0])
    assert (await next_of(board, CommandResult)).status == AckStatus.OK


async def test_xid_79_is_reported_and_the_lost_gpu_drops_out(rig, caplog) -> None:
    serial, nvml, board, _ = rig
    nvml.inject_xid(1, 79)
    with caplog.at_level(logging.ERROR, logger="umbra.node.gpu"):
        await serial.events.put(platform_frame(2.0))
        s = (await next_of(board, SensorReading)).sensor
    assert s.rails == 0b01 and math.isnan(s.temp_c[1]) and s.power_w[1] == 0.0
    assert not math.isnan(s.temp_c[0])
    snap = board.snapshot
    assert snap is not None and [(x.gpu, x.xid) for x in snap.xids] == [(1, 79)]
    assert "fallen off the bus" in caplog.text
    assert snap.to_telemetry()["xids"][0]["xid"] == 79
    assert board.stats()["xid_events"] == 1 and board.stats()["gpus_lost"] == 1


async def test_platform_link_loss_takes_the_board_down_and_back(rig) -> None:
    serial, _, board, _ = rig
    await serial.events.put(LinkDown("port lost"))
    down = await next_of(board, LinkDown)
    assert "platform board" in down.reason and not board.link_up
    with pytest.raises(LinkError):
        board.set_caps([300.0, 300.0])
    await serial.events.put(LinkUp(SERIAL_INFO))
    await next_of(board, LinkUp)


async def test_rails_go_to_the_platform_board(rig) -> None:
    serial, _, board, _ = rig
    board.set_rail(1, False)
    assert serial.sent == [SetRail(gpu=1, on=False)]


async def test_nvml_coming_up_late_is_picked_up(caplog) -> None:
    nvml = FakeNvml(gpus=1, driver_loaded=False)
    serial = FakeBoard()
    board = NvmlBoard(nvml=nvml, platform=BoardPlatform(serial), reopen_s=0.0)
    with caplog.at_level(logging.ERROR, logger="umbra.node.gpu"):
        async with board:
            await serial.events.put(LinkUp(SERIAL_INFO))
            await serial.events.put(platform_frame(1.0))
            await asyncio.sleep(0.05)
            assert not board.link_up and "driver not loaded" in caplog.text
            nvml.driver_loaded = True
            await serial.events.put(platform_frame(2.0))
            up = await next_of(board, LinkUp)
            assert up.info.gpu_count == 1
            assert (await next_of(board, SensorReading)).sensor.t_board == 2.0


async def test_fixed_profile_on_a_lab_machine() -> None:
    nvml = FakeNvml(gpus=1)
    profile = PlatformProfile(solar_w=0.0, battery_soc=0.5, radiator_c=15.0, eclipse=1)
    config = GpuConfig(backend="nvml", sample_rate_hz=50.0)
    board = NvmlBoard(nvml=nvml, platform=FixedPlatform(profile, rate_hz=50.0), config=config)
    async with board:
        up = await next_of(board, LinkUp)
        assert up.info.sensor_rate_hz == 50.0 and up.info.watchdog_s == 0.0
        first = (await next_of(board, SensorReading)).sensor
        second = (await next_of(board, SensorReading)).sensor
        assert (second.solar_w, second.battery_soc, second.radiator_c) == (0.0, 0.5, 15.0)
        assert second.flags & SensorFlag.ECLIPSE
        assert 0.0 <= first.t_board < second.t_board
        board.set_rail(0, False)  # nothing can switch a rail here
        assert (await next_of(board, CommandResult)).status == AckStatus.UNSUPPORTED


async def test_exit_leaves_minimum_limits_unless_told_otherwise() -> None:
    for on_exit, expected in (("min", 200.0), ("default", 700.0), ("keep", 400.0)):
        nvml = FakeNvml(gpus=1)
        config = GpuConfig(backend="nvml", sample_rate_hz=50.0, on_exit=on_exit)
        async with NvmlBoard(nvml=nvml, platform=FixedPlatform(PlatformProfile(), rate_hz=50.0),
                             config=config) as board:
            await next_of(board, LinkUp)
            board.set_caps([400.0])
            await next_of(board, CommandResult)
        assert nvml.gpus[0].cap_w == expected, on_exit
        assert nvml.initialized == 0


async def test_observe_mode_never_sets_limits() -> None:
    nvml = FakeNvml(gpus=1)
    config = GpuConfig(backend="nvml", sample_rate_hz=50.0, caps="observe")
    async with NvmlBoard(nvml=nvml, platform=FixedPlatform(PlatformProfile(), rate_hz=50.0),
                         config=config) as board:
        await next_of(board, LinkUp)
        board.set_caps([300.0])
        await next_of(board, SensorReading)
        assert board.stats()["caps_not_applied"] == 1
    assert nvml.set_limit_calls == []


async def test_controller_throttles_real_looking_gpus() -> None:
    from node.config import NodeConfig
    from node.controller import NodeController

    class Sink:
        def publish(self, payload: object) -> None:
            pass

    nvml = FakeNvml(gpus=2)
    nvml.gpus[1].temp_c = 95.0  # far above the 80 °C target: the controller must cut it
    serial = FakeBoard()
    board = NvmlBoard(nvml=nvml, platform=BoardPlatform(serial))
    config = NodeConfig.from_mapping({})
    async with board, NodeController(config=config, board=board, publisher=Sink()) as node:
        await serial.events.put(LinkUp(SERIAL_INFO))
        await serial.events.put(platform_frame(1.0))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if node.steps and nvml.set_limit_calls:
                break
    limits = dict(nvml.set_limit_calls)
    assert 200_000 <= limits[1] <= limits[0] <= 700_000


# --- configuration and wiring ----------------------------------------------------------------


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        GpuConfig(backend="cuda")
    assert err.value.key == "gpu.backend"
    with pytest.raises(ConfigError) as err:
        GpuConfig(gpus="0,x")
    assert err.value.key == "gpu.gpus"
    with pytest.raises(ConfigError) as err:
        PlatformProfile(battery_soc=1.5)
    assert err.value.key == "platform.battery_soc"
    assert GpuConfig(gpus="2, 0").gpu_indices() == (2, 0)


def test_sections_build_with_the_node_config_section_builder() -> None:
    from node.config import _build

    gpu = _build(GpuConfig, "gpu", {"backend": "nvml", "sample_rate_hz": 5, "caps": "observe"}, "n.toml")
    assert gpu == GpuConfig(backend="nvml", sample_rate_hz=5.0, caps="observe")
    profile = _build(PlatformProfile, "platform", {"solar_w": 0, "eclipse": 1}, "n.toml")
    assert profile.solar_w == 0.0 and profile.eclipse == 1


def test_make_board_picks_the_backend() -> None:
    from node.config import LinkConfig
    from node.link.serial_board import SerialBoard

    with pytest.raises(ConfigError):
        make_board(gpu=GpuConfig(), link=LinkConfig(), node_id="n1")
    assert isinstance(make_board(gpu=GpuConfig(), link=LinkConfig(serial="/dev/null"), node_id="n1"), SerialBoard)
    assert isinstance(make_board(gpu=GpuConfig(backend="fake-nvml"), link=LinkConfig(), node_id="n1"), NvmlBoard)


def test_check_script_reads_and_only_writes_when_told(capsys) -> None:
    assert check.main(["--fake"]) == 0
    out = capsys.readouterr().out
    assert "GPU 1: NVIDIA H100" in out and "power limit   700.0 W enforced, range 200-700 W" in out
    assert check.main(["--fake", "--json", "--set-power-limit", "0:350"]) == 0
    out = capsys.readouterr().out
    assert '"cap_w": 350.0' in out and "power limit set to 350.0 W" in out
    assert check.main(["--fake", "--gpus", "7"]) == 1


# --- per-frame cost, Xid counters, platform hooks ------------------------------------------------


class CountingNvml:
    """FakeNvml counting the per-device NVML reads the backend makes."""

    def __init__(self, nvml: FakeNvml) -> None:
        self._nvml = nvml
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> object:
        value = getattr(self._nvml, name)
        if name.startswith("nvmlDeviceGet") and callable(value):
            def counted(*args: object) -> object:
                self.calls.append(name)
                return value(*args)
            return counted
        return value


def test_frame_reads_only_what_control_needs_and_carries_the_detail() -> None:
    nvml = CountingNvml(FakeNvml(gpus=1))
    devices = NvmlDevices(nvml)  # type: ignore[arg-type]
    nvml.calls.clear()
    first = devices.snapshot(1.0, detail=False)  # no detail read yet: a full one
    assert first.gpus[0].sm_clock_mhz == 1980 and len(nvml.calls) > 4
    nvml._nvml.gpus[0].cap_w = 400.0
    nvml.calls.clear()
    fast = devices.snapshot(2.0, detail=False)
    assert sorted(nvml.calls) == sorted([
        "nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetCurrentClocksEventReasons",
    ])
    g = fast.gpus[0]
    assert g.cap_w == 400.0 and g.sm_clock_mhz == 1980 and g.persistence_mode == 1  # detail carried
    nvml.calls.clear()
    devices.snapshot(3.0)  # umbra-gpucheck's full read
    assert "nvmlDeviceGetTotalEccErrors" in nvml.calls
    devices.close()


async def test_board_reads_detail_at_the_slow_rate() -> None:
    nvml = CountingNvml(FakeNvml(gpus=2))
    serial = FakeBoard()
    clock = Clock()
    board = NvmlBoard(nvml=nvml, platform=BoardPlatform(serial), clock=clock, detail_s=10.0)  # type: ignore[arg-type]
    async with board:
        await serial.events.put(LinkUp(SERIAL_INFO))
        await next_of(board, LinkUp)
        ecc_reads = []
        for t in (1.0, 2.0, 3.0, 11.0):
            clock.t = t
            nvml.calls.clear()
            await serial.events.put(platform_frame(t))
            await next_of(board, SensorReading)
            ecc_reads.append(nvml.calls.count("nvmlDeviceGetTotalEccErrors"))
            assert board.snapshot is not None and board.snapshot.gpus[1].ecc_uncorrected == 0
    assert ecc_reads == [6, 0, 0, 6]  # three counters per GPU, every 10 s


async def test_nvml_xids_reach_the_sensor_frame_as_counters(rig) -> None:
    serial, nvml, board, _ = rig
    await serial.events.put(platform_frame(1.0))
    assert (await next_of(board, SensorReading)).sensor.xid == (0, 0)
    nvml.inject_xid(1, 13)
    nvml.inject_xid(1, 31)
    await serial.events.put(platform_frame(2.0))
    assert (await next_of(board, SensorReading)).sensor.xid == (0, 2)
    nvml.inject_xid(0, 48)  # a double-bit ECC: counted once
    await serial.events.put(platform_frame(3.0))
    assert (await next_of(board, SensorReading)).sensor.xid == (1, 2)


async def test_an_nvml_xid_makes_the_controller_cycle_the_rail() -> None:
    from node.config import NodeConfig
    from node.controller import NodeController

    class Sink:
        def __init__(self) -> None:
            self.items: list[object] = []

        def publish(self, payload: object) -> None:
            self.items.append(payload)

    nvml = FakeNvml(gpus=2)
    serial = FakeBoard()
    board = NvmlBoard(nvml=nvml, platform=BoardPlatform(serial))
    sink = Sink()
    async with board, NodeController(config=NodeConfig.from_mapping({}), board=board, publisher=sink) as node:
        await serial.events.put(LinkUp(SERIAL_INFO))
        await serial.events.put(platform_frame(1.0))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if node.steps:
                break
        nvml.inject_xid(1, 13)
        await serial.events.put(platform_frame(1.1))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if SetRail(gpu=1, on=False) in serial.sent:
                break
    assert SetRail(gpu=1, on=False) in serial.sent
    limits = [e for e in sink.items if getattr(e, "kind", None) == "limit"]
    assert any(e.data["monitor"] == "gpu_xid" and e.data["index"] == 1 for e in limits)  # type: ignore[attr-defined]


async def test_fixed_profile_has_no_board_to_reset_or_hold() -> None:
    from node.errors import CommandRejected, Reason

    config = GpuConfig(backend="nvml", sample_rate_hz=50.0)
    async with NvmlBoard(nvml=FakeNvml(gpus=1), platform=FixedPlatform(PlatformProfile(), rate_hz=50.0),
                         config=config) as board:
        await next_of(board, LinkUp)
        board.step_done(1.0)  # nothing to hold: a no-op
        with pytest.raises(CommandRejected) as err:
            board.reset_board()
        assert err.value.code == Reason.UNSUPPORTED
