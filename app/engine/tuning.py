"""How big the KV cache is, and how the CPU engine's processes are laid out and run.

On a GPU, vLLM's own rule stands: a fraction of device memory (``GPU_MEMORY_UTILIZATION``).
On CPU that rule sizes the cache from free RAM: 4.8 GiB (5 M tokens) for a 2-layer model
whose sequences hold at most 2,048 tokens, and ~12 s of start-up spent allocating it. Here
the cache holds what the engine can use at once — ``MAX_NUM_SEQS`` sequences of
``MAX_MODEL_LEN`` tokens — unless ``KV_CACHE_GB`` says otherwise.
"""

from __future__ import annotations

from typing import Any

GIB = 1024**3
# Below this, vLLM's block rounding and tiny models could leave no room for one sequence.
MIN_KV_CACHE_BYTES = 64 * 1024**2


def kv_bytes_per_token(model_config: Any, parallel_config: Any) -> int:
    """Bytes of K and V one token takes across every layer (vLLM's ``ModelConfig``)."""
    layers = model_config.get_num_layers(parallel_config)
    kv_heads = model_config.get_num_kv_heads(parallel_config)
    head_size = model_config.get_head_size()
    return 2 * layers * kv_heads * head_size * model_config.dtype.itemsize


def kv_cache_bytes(
    *,
    explicit_gb: float | None,
    device_kind: str,
    max_num_seqs: int,
    max_model_len: int,
    bytes_per_token: int,
) -> int | None:
    """The KV cache size to ask vLLM for; ``None`` leaves vLLM's own rule (GPU)."""
    if explicit_gb is not None:
        return int(explicit_gb * GIB)
    if device_kind != "cpu":
        return None
    return max(max_num_seqs * max_model_len * bytes_per_token, MIN_KV_CACHE_BYTES)


def cpu_engine_env(device_kind: str, world_size: int, eager: bool) -> dict[str, str]:
    """Environment for vLLM on CPU, set before its config is built (the core inherits it).

    - ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` with one worker: vLLM's CPU platform puts a lone
      worker in a process of its own (its "mp" executor), which costs one more interpreter
      start (~10 s here) and ~0.5 GiB; a GPU with one worker already shares the core's
      process, and this gives the CPU the same layout (``AsyncLLM`` still runs the core in
      its own process).
    - ``TORCH_COMPILE_DISABLE=1`` in eager mode: vLLM still ``torch.compile``s small sampler
      helpers, and the first request asking for logprobs waited ~2.7 s for inductor here
      (long enough to look like a stalled engine). Eager, those helpers cost nothing.
    """
    if device_kind != "cpu":
        return {}
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if world_size == 1 else {}
    if eager:
        env["TORCH_COMPILE_DISABLE"] = "1"
    return env
