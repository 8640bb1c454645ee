"""The body of ``GET /health/detailed``: every component's status and numbers, one verdict.

Components are *providers*: a callable returning a mapping (or a fixed mapping) with a
``status`` of ``ok``, ``degraded`` or ``down`` plus any numbers worth showing. A provider
that raises is reported ``down`` with the error, never propagated. The overall status is
``down`` when a *critical* component (by default the engine) is down, ``degraded`` when any
component is not ``ok``, else ``ok``::

    health = HealthReporter(version=app.version, model=lambda: engine.model_info.served_name)
    health.add("engine", engine_component(engine))
    health.add("device", device_component)
    health.add("breaker", lambda: {"status": "ok" if breaker.closed else "degraded", ...})
    app.state.health = health
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict
from typing import Any, Literal, Protocol

import psutil

Status = Literal["ok", "degraded", "down"]
STATUSES: tuple[Status, ...] = ("ok", "degraded", "down")
Provider = Callable[[], Mapping[str, Any]] | Mapping[str, Any]
GIB = 1024**3


class EngineStatus(Protocol):
    """The part of :class:`~app.engine.protocol.EngineClient` the engine component reads."""

    @property
    def is_ready(self) -> bool: ...

    @property
    def device_info(self) -> Any: ...

    def num_unfinished_requests(self) -> int: ...


def run_provider(provider: Provider) -> dict[str, Any]:
    """Call one provider; an exception or an unknown status becomes ``down``."""
    try:
        component = dict(provider() if callable(provider) else provider)
    except Exception as exc:  # a broken component must not break the health page
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"}
    component.setdefault("status", "ok")
    if component["status"] not in STATUSES:
        component["error"] = f"unknown status {component['status']!r}"
        component["status"] = "down"
    return component


def overall_status(
    components: Mapping[str, Mapping[str, Any]], critical: Collection[str]
) -> Status:
    """``down`` if a critical component is down, ``degraded`` if any is not ok, else ``ok``."""
    if any(components.get(name, {}).get("status") == "down" for name in critical):
        return "down"
    if any(component["status"] != "ok" for component in components.values()):
        return "degraded"
    return "ok"


def build_health_report(
    providers: Mapping[str, Provider],
    *,
    version: str,
    model: str | None,
    uptime_s: float,
    critical: Collection[str] = ("engine",),
) -> dict[str, Any]:
    """The whole report: ``status``, ``version``, ``model``, ``uptime_s``, ``components``."""
    components = {name: run_provider(provider) for name, provider in providers.items()}
    return {
        "status": overall_status(components, critical),
        "version": version,
        "model": model,
        "uptime_s": round(uptime_s, 1),
        "components": components,
    }


class HealthReporter:
    """Holds the providers (added as components land) and the start time."""

    def __init__(
        self,
        *,
        version: str,
        model: Callable[[], str | None] | str | None = None,
        critical: Collection[str] = ("engine",),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.version, self.model, self.critical, self.clock = version, model, critical, clock
        self.started = clock()
        self.providers: dict[str, Provider] = {}

    def add(self, name: str, provider: Provider) -> None:
        self.providers[name] = provider

    def report(self) -> dict[str, Any]:
        return build_health_report(
            self.providers,
            version=self.version,
            model=self._model(),
            uptime_s=self.clock() - self.started,
            critical=self.critical,
        )

    def _model(self) -> str | None:
        if not callable(self.model):
            return self.model
        try:
            return self.model()
        except Exception:  # the engine is still loading: the model is not known yet
            return None


def engine_component(engine: EngineStatus) -> Callable[[], dict[str, Any]]:
    """A provider for the engine: ``down`` until it is ready, with its load and device."""

    def provide() -> dict[str, Any]:
        if not engine.is_ready:
            return {"status": "down", "ready": False}
        return {
            "status": "ok",
            "ready": True,
            "unfinished_requests": engine.num_unfinished_requests(),
            "device": asdict(engine.device_info),
        }

    return provide


def device_component(nvml: Any = None) -> dict[str, Any]:
    """GPU memory and utilisation via NVML when it works, else the host's CPU and RAM.

    ``nvml`` is the ``pynvml`` module (from ``nvidia-ml-py``); ``None`` imports it if
    installed. An NVML without a driver (a CPU host) falls back to the host numbers.
    """
    nvml = nvml if nvml is not None else _import_nvml()
    if nvml is not None:
        try:
            return _gpu_stats(nvml)
        except Exception as exc:  # NVMLError_LibraryNotFound and kin: no usable GPU here
            return {**_host_stats(), "nvml_error": f"{type(exc).__name__}: {exc}"}
    return _host_stats()


def _import_nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _gpu_stats(nvml: Any) -> dict[str, Any]:
    nvml.nvmlInit()
    try:
        gpus = [_one_gpu(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
    finally:
        nvml.nvmlShutdown()
    return {"status": "ok" if gpus else "down", "kind": "cuda", "gpus": gpus}


def _one_gpu(nvml: Any, index: int) -> dict[str, Any]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    name = nvml.nvmlDeviceGetName(handle)
    return {
        "index": index,
        "name": name.decode() if isinstance(name, bytes) else name,
        "memory_used_gib": round(memory.used / GIB, 2),
        "memory_total_gib": round(memory.total / GIB, 2),
        "utilization_pct": nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
    }


def _host_stats() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        # Above 95% RAM the CPU engine's KV cache and the OS start to fight.
        "status": "degraded" if memory.percent > 95 else "ok",
        "kind": "cpu",
        "cpu_count": psutil.cpu_count(),
        # cpu_percent compares with the previous call (0.0 the first time); load is absolute.
        "cpu_percent": psutil.cpu_percent(interval=None),
        "load_1m": round(psutil.getloadavg()[0], 2),
        "memory_used_gib": round((memory.total - memory.available) / GIB, 2),
        "memory_total_gib": round(memory.total / GIB, 2),
        "memory_percent": memory.percent,
    }
