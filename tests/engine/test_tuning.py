"""KV cache sizing and the CPU engine's environment (app/engine/tuning.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.tuning import (
    GIB,
    MIN_KV_CACHE_BYTES,
    cpu_engine_env,
    kv_bytes_per_token,
    kv_cache_bytes,
)


@dataclass
class _ModelConfig:
    """The four numbers vLLM's ModelConfig gives for a model (stands in for vLLM's class)."""

    layers: int
    kv_heads: int
    head_size: int
    dtype: torch.dtype

    def get_num_layers(self, parallel_config: object) -> int:
        return self.layers

    def get_num_kv_heads(self, parallel_config: object) -> int:
        return self.kv_heads

    def get_head_size(self) -> int:
        return self.head_size


def test_bytes_per_token_counts_k_and_v_in_every_layer() -> None:
    """The embedded model (2 layers, 2 KV heads of 64, bfloat16) takes 1 KiB a token."""
    config = _ModelConfig(layers=2, kv_heads=2, head_size=64, dtype=torch.bfloat16)
    assert kv_bytes_per_token(config, None) == 2 * 2 * 2 * 64 * 2 == 1024


def test_cpu_cache_holds_max_num_seqs_full_sequences() -> None:
    """On CPU the cache is MAX_NUM_SEQS x MAX_MODEL_LEN tokens: 256 x 2048 x 1 KiB = 0.5 GiB
    for the embedded model, not a fraction of RAM."""
    size = kv_cache_bytes(
        explicit_gb=None,
        device_kind="cpu",
        max_num_seqs=256,
        max_model_len=2048,
        bytes_per_token=1024,
    )
    assert size == GIB // 2


def test_tiny_needs_get_a_floor() -> None:
    """One short sequence still gets the floor, so vLLM's block rounding always fits one."""
    size = kv_cache_bytes(
        explicit_gb=None, device_kind="cpu", max_num_seqs=1, max_model_len=16, bytes_per_token=8
    )
    assert size == MIN_KV_CACHE_BYTES


def test_explicit_size_wins_on_any_device_and_gpu_keeps_vllms_rule() -> None:
    """KV_CACHE_GB is taken as given (CPU or GPU); without it a GPU keeps vLLM's own rule."""
    common = {"max_num_seqs": 256, "max_model_len": 2048, "bytes_per_token": 1024}
    assert kv_cache_bytes(explicit_gb=1.5, device_kind="cuda", **common) == int(1.5 * GIB)
    assert kv_cache_bytes(explicit_gb=0.25, device_kind="cpu", **common) == GIB // 4
    assert kv_cache_bytes(explicit_gb=None, device_kind="cuda", **common) is None


def test_cpu_engine_env_keeps_one_worker_in_the_core_and_no_inductor_when_eager() -> None:
    """One CPU worker runs in the engine-core process and eager mode compiles nothing;
    several workers keep vLLM's layout; a GPU gets no change at all."""
    assert cpu_engine_env("cpu", 1, eager=True) == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TORCH_COMPILE_DISABLE": "1",
    }
    assert cpu_engine_env("cpu", 2, eager=False) == {}
    assert cpu_engine_env("cuda", 1, eager=True) == {}
