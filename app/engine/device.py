"""Which accelerator the engine runs on, and the engine defaults that follow from it."""

from __future__ import annotations

import functools
import platform

from app.engine.protocol import DeviceInfo

GPU_MEMORY_UTILIZATION_CUDA = 0.90
# On CPU vLLM sizes the KV cache from what it reads as free RAM; 0.92 fails there, 0.3 works.
GPU_MEMORY_UTILIZATION_CPU = 0.30


@functools.cache
def detect_device() -> DeviceInfo:
    """CUDA when torch sees a GPU, otherwise the CPU (cached: torch's probe is slow)."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return DeviceInfo(kind="cuda", name=torch.cuda.get_device_name(0), count=count)
    return DeviceInfo(kind="cpu", name=platform.processor() or platform.machine(), count=1)


def default_gpu_memory_utilization(device: DeviceInfo) -> float:
    return GPU_MEMORY_UTILIZATION_CUDA if device.kind == "cuda" else GPU_MEMORY_UTILIZATION_CPU


def allow_amx_tiles() -> bool:
    """Ask Linux for the AMX tile state for this process, so an engine core it forks may
    run AMX instructions; True when granted.

    On CPUs with AMX, vLLM picks its AMX attention kernel for bf16 (what ``dtype: auto``
    becomes there), and Linux kills a process that runs AMX instructions without having
    asked (``arch_prctl(ARCH_REQ_XCOMP_PERM)``) with SIGILL. vLLM's own worker process
    asks through the libraries it loads first; a core forked from the gateway, with the
    worker inside it, ran the attention kernel first and died on its first request. A
    forked child inherits the permission, so asking once here, before any fork, is enough.
    """
    import torch

    if platform.machine() not in ("x86_64", "AMD64") or not torch.cpu._is_amx_tile_supported():
        return False
    return bool(torch._C._cpu._init_amx())
