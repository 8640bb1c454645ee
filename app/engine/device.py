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
