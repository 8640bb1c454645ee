"""The /health/detailed builder: components, the overall verdict, device numbers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from app.engine.protocol import DeviceInfo
from app.observability.health import (
    HealthReporter,
    build_health_report,
    device_component,
    engine_component,
)


def report(**providers: Any) -> dict[str, Any]:
    return build_health_report(providers, version="1.2.3", model="m", uptime_s=12.34)


def test_all_ok() -> None:
    """Every component ok → ok; version, model and uptime are reported."""
    body = report(engine={"status": "ok"}, queue=lambda: {"status": "ok", "depth": 0})
    assert body == {
        "status": "ok",
        "version": "1.2.3",
        "model": "m",
        "uptime_s": 12.3,
        "components": {"engine": {"status": "ok"}, "queue": {"status": "ok", "depth": 0}},
    }


def test_non_critical_problem_degrades() -> None:
    """A non-critical component down or degraded makes the whole degraded, not down."""
    assert report(engine={"status": "ok"}, redis={"status": "down"})["status"] == "degraded"
    assert report(engine={}, breaker={"status": "degraded"})["status"] == "degraded"


def test_critical_component_down_is_down() -> None:
    """The engine down makes the whole report down."""
    assert report(engine={"status": "down"}, queue={"status": "ok"})["status"] == "down"


def test_raising_provider_is_down_with_its_error() -> None:
    """A provider that raises is reported down with the error, never propagated."""

    def broken() -> dict[str, Any]:
        raise ConnectionError("redis unreachable")

    body = report(engine={"status": "ok"}, ratelimit=broken)
    assert body["components"]["ratelimit"] == {
        "status": "down",
        "error": "ConnectionError: redis unreachable",
    }
    assert body["status"] == "degraded"


def test_unknown_status_is_down() -> None:
    """A status outside ok/degraded/down is a provider bug: shown as down with the reason."""
    component = report(engine={"status": "green"})["components"]["engine"]
    assert component["status"] == "down" and "green" in component["error"]


def test_reporter_measures_uptime_and_tolerates_an_unknown_model() -> None:
    """HealthReporter reports uptime from its clock and no model while it cannot be read."""
    now = [100.0]

    def loading() -> str:
        raise RuntimeError("still loading")

    reporter = HealthReporter(version="1", model=loading, clock=lambda: now[0])
    reporter.add("engine", {"status": "ok"})
    now[0] = 160.0
    body = reporter.report()
    assert (body["uptime_s"], body["model"], body["status"]) == (60.0, None, "ok")


class StubEngine:
    """The engine-status surface of an EngineClient; a real one needs a model load."""

    def __init__(self, ready: bool) -> None:
        self.is_ready = ready
        self.device_info = DeviceInfo("cpu", "x86_64", 1)

    def num_unfinished_requests(self) -> int:
        return 3


def test_engine_component() -> None:
    """The engine is down until ready, then ok with its load and device."""
    assert engine_component(StubEngine(False))() == {"status": "down", "ready": False}
    ready = engine_component(StubEngine(True))()
    assert ready["status"] == "ok" and ready["unfinished_requests"] == 3
    assert ready["device"] == {"kind": "cpu", "name": "x86_64", "count": 1}


def test_host_numbers_without_nvml() -> None:
    """On a host without NVML the device component reports CPU and RAM from psutil."""
    body = device_component()
    assert body["kind"] in {"cpu", "cuda"}
    if body["kind"] == "cpu":
        assert body["cpu_count"] >= 1 and body["memory_total_gib"] > 0


def fake_nvml(fail: bool = False) -> SimpleNamespace:
    """A stand-in for pynvml: NVML is the GPU boundary, absent on this machine."""
    gib = 1024**3

    def init() -> None:
        if fail:
            raise OSError("NVML Shared Library Not Found")

    return SimpleNamespace(
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(used=70 * gib, total=80 * gib),
        nvmlDeviceGetName=lambda handle: b"NVIDIA H100",
        nvmlDeviceGetUtilizationRates=lambda handle: SimpleNamespace(gpu=87),
    )


def test_gpu_numbers_with_nvml() -> None:
    """With NVML each GPU's name, memory and utilisation are reported."""
    body = device_component(fake_nvml())
    assert body["status"] == "ok" and body["kind"] == "cuda"
    assert body["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA H100",
            "memory_used_gib": 70.0,
            "memory_total_gib": 80.0,
            "utilization_pct": 87,
        }
    ]


def test_nvml_without_a_driver_falls_back_to_host_numbers() -> None:
    """NVML installed on a CPU host (no driver) reports the host with the NVML error."""
    body = device_component(fake_nvml(fail=True))
    assert body["kind"] == "cpu" and "NVML Shared Library" in body["nvml_error"]
