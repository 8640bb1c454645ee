"""Unit tests for the locust workload helpers and the bench's pure command building."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from loadtest import workload as wl


def test_bundled_profiles_load() -> None:
    """Every profile in loadtest/profiles/ is valid, including the three documented ones."""
    names = wl.available_profiles()
    assert {"short-chat", "long-generation", "mixed"} <= set(names)
    for name in names:
        assert wl.load_profile(name).name == name


def test_unknown_profile_names_the_bundled_ones() -> None:
    """A typo gets a message listing what exists."""
    with pytest.raises(ValueError, match="short-chat"):
        wl.load_profile("no-such-profile")


def test_profile_overrides_skip_none() -> None:
    """CLI overrides win; unset (None) ones keep the profile's values."""
    profile = wl.load_profile("mixed").with_overrides(max_tokens=7, stream_ratio=None)
    assert profile.max_tokens == 7
    assert profile.stream_ratio == wl.load_profile("mixed").stream_ratio


def test_profile_validation() -> None:
    """Impossible profiles fail when built."""
    with pytest.raises(ValueError):
        wl.Profile(name="x", stream_ratio=1.5)
    with pytest.raises(ValueError):
        wl.Profile(name="x", chat_weight=0, completion_weight=0)


def test_pick_kind_follows_weights_and_ratio() -> None:
    """Completions-only, always-streaming profiles only draw streamed completions."""
    profile = wl.Profile(name="x", chat_weight=0, completion_weight=1, stream_ratio=1.0)
    rng = random.Random(0)
    assert {profile.pick_kind(rng) for _ in range(50)} == {("completion", True)}


def test_prompt_has_requested_word_count() -> None:
    """Prompts have one word per requested token."""
    assert len(wl.make_prompt(40, random.Random(1)).split()) == 40


def test_request_bodies() -> None:
    """Chat and completions bodies carry the OpenAI fields plus ignore_eos when asked."""
    profile = wl.Profile(name="x", max_tokens=9, ignore_eos=True)
    chat = wl.request_body("chat", "m", "hi", profile, stream=True)
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    assert chat["stream_options"] == {"include_usage": True} and chat["ignore_eos"] is True
    completion = wl.request_body(
        "completion", "m", "hi", profile.with_overrides(ignore_eos=False), False
    )
    assert completion["prompt"] == "hi" and "ignore_eos" not in completion
    assert "stream_options" not in completion and completion["max_tokens"] == 9
    assert wl.endpoint_path("chat") == "/v1/chat/completions"
    assert wl.endpoint_path("completion") == "/v1/completions"


def test_parse_sse_lines() -> None:
    """Data lines decode, [DONE] is recognised, other lines are ignored."""
    assert wl.parse_sse_line('data: {"a": 1}') == {"a": 1}
    assert wl.parse_sse_line("data: [DONE]") == wl.DONE_MARKER
    assert wl.parse_sse_line("") is None
    assert wl.parse_sse_line(": ping") is None
    with pytest.raises(ValueError):
        wl.parse_sse_line("data: [1]")


def test_chunk_text_for_chat_and_completions() -> None:
    """Text comes from delta.content (chat) or text (completions); role/usage chunks are empty."""
    assert wl.chunk_text({"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    assert wl.chunk_text({"choices": [{"delta": {"role": "assistant", "content": ""}}]}) == ""
    assert wl.chunk_text({"choices": [{"text": "yo"}]}) == "yo"
    assert wl.chunk_text({"choices": [], "usage": {"completion_tokens": 3}}) == ""


def test_stream_timer() -> None:
    """TTFT is the first text chunk; gaps are between later text chunks."""
    timer = wl.StreamTimer(started=10.0)
    assert timer.ttft_ms is None and timer.mean_gap_ms is None
    for now in (10.25, 10.26, 10.29):
        timer.on_text(now)
    assert timer.ttft_ms == pytest.approx(250.0)
    assert timer.gaps_ms == pytest.approx([10.0, 30.0])
    assert timer.mean_gap_ms == pytest.approx(20.0)


def test_classify_outcome() -> None:
    """Buckets: the HTTP status, a stream error after 200, or the transport exception."""
    assert wl.classify_outcome(200) == "200"
    assert wl.classify_outcome(429, RuntimeError("x")) == "429"
    assert wl.classify_outcome(200, RuntimeError("x")) == "200 then error"
    assert wl.classify_outcome(None, ConnectionError()) == "transport: ConnectionError"


def test_request_budget_completes_exactly_once() -> None:
    """N claims succeed, the N+1st fails, and only the Nth finish reports completion."""
    budget = wl.RequestBudget(3)
    assert [budget.claim() for _ in range(4)] == [True, True, True, False]
    assert [budget.finish() for _ in range(3)] == [False, False, True]
    unlimited = wl.RequestBudget(None)
    assert all(unlimited.claim() for _ in range(100)) and not unlimited.finish()
    with pytest.raises(ValueError):
        wl.RequestBudget(0)


def test_percentile_and_distribution() -> None:
    """Linear-interpolated percentiles, as numpy computes them by default."""
    values = [1.0, 2.0, 3.0, 4.0]
    assert wl.percentile(values, 50) == pytest.approx(2.5)
    assert wl.percentile([], 50) is None
    assert wl.distribution(values)["p99"] == pytest.approx(3.97)


def test_client_metrics_json() -> None:
    """The side file has status buckets, token totals and the ITL distribution."""
    metrics = wl.ClientMetrics(started_at=1.0)
    metrics.record("200", prompt_tokens=10, output_tokens=5)
    metrics.record("429", prompt_tokens=0, output_tokens=0)
    metrics.gaps_ms.extend([1.0, 3.0])
    data = metrics.to_json()
    assert data["statuses"] == {"200": 1, "429": 1} and data["completed"] == 2
    assert data["output_tokens"] == 5 and data["itl_ms"]["mean"] == pytest.approx(2.0)
    assert "gaps_ms" not in data


def test_bench_client_argv_is_the_fixed_workload(tmp_path: Path) -> None:
    """The vLLM client gets the fixed workload and never the API key on its command line."""
    from loadtest import bench

    config = bench.BenchConfig(
        levels=[1, 8], num_prompts=None, input_len=128, output_len=64,
        model_path=tmp_path, api_key="secret-key", gateway_env=dict(bench.GATEWAY_FEATURE_ENV),
        work_dir=tmp_path, servers=["vllm", "gateway"], warmup_prompts=4,
        startup_timeout_s=1, level_timeout_s=1, repeats=1, out=tmp_path / "b.md",
        plot=tmp_path / "b.png", command="python -m loadtest.bench",
    )  # fmt: skip
    argv = bench.client_argv(config, "http://127.0.0.1:1", 8, 32, tmp_path / "r.json")
    joined = " ".join(argv)
    for part in (
        "--ignore-eos",
        "--temperature 0",
        "--max-concurrency 8",
        "--num-prompts 32",
        "--random-input-len 128",
        "--random-output-len 64",
        "--backend openai",
    ):
        assert part in joined  # fmt: skip
    assert "secret-key" not in joined
    assert config.prompts_for(1) == 32 and config.prompts_for(64) == 512
    env = bench.gateway_env(config)
    assert env["API_KEYS"] == "secret-key" and env["MAX_MODEL_LEN"] == "2048"
    assert int(env["RATE_LIMIT_RPM"]) >= 10**6 and env["ENABLE_AUTH"] == "true"
    assert env["MODEL_NAME"] == str(tmp_path) and env["DTYPE"] == "float32"


def test_self_started_gateway_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway the runner starts gets auth with the runner's key and high limits; the
    caller's env and then --gateway-env win."""
    from loadtest import run

    monkeypatch.setenv("RATE_LIMIT_TPM", "5")
    env = run.gateway_env("k-123", ["RATE_LIMIT_RPM=600"])
    assert env["ENABLE_AUTH"] == "true" and env["API_KEYS"] == "k-123"
    assert env["RATE_LIMIT_TPM"] == "5" and env["RATE_LIMIT_RPM"] == "600"
    with pytest.raises(ValueError):
        run.gateway_env("k", ["no-equals-sign"])


def test_client_args_reach_the_benchmark_client(tmp_path: Path) -> None:
    """``--client-arg`` passes through to vLLM's client, after the fixed workload."""
    from loadtest import bench

    config = bench.parse_config(
        ["--work-dir", str(tmp_path), "--client-arg=--save-detailed", "--client-arg=--seed=7"]
    )
    argv = bench.client_argv(config, "http://127.0.0.1:1", 8, 32, tmp_path / "r.json")
    assert argv[-2:] == ["--save-detailed", "--seed=7"]
