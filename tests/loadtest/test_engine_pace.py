"""Reading the engine's pace from a Prometheus exposition (loadtest/engine_pace.py); against
vLLM's real server in tests/e2e/test_routing.py."""

from __future__ import annotations

import pytest

from loadtest.engine_pace import EnginePace, engine_itl_ms, parse_pace, read_pace

EXPOSITION = """\
# HELP vllm:inter_token_latency_seconds Histogram of inter-token latency in seconds.
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.01",model_name="tiny-llama"} 9.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="tiny-llama"} 10.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="tiny-llama"} 10.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="tiny-llama"} 0.025
vllm:inter_token_latency_seconds_count{engine="1",model_name="tiny-llama"} 30.0
vllm:inter_token_latency_seconds_sum{engine="1",model_name="tiny-llama"} 0.055
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny-llama"} 9.5
gateway_inter_token_latency_seconds_sum 7.0
"""


def test_the_pace_sums_every_engines_gaps_and_nothing_else() -> None:
    pace = parse_pace(EXPOSITION)
    assert pace is not None
    assert (pace.seconds, pace.gaps) == pytest.approx((0.08, 40.0))


def test_an_exposition_without_the_engines_histogram_has_no_pace() -> None:
    assert parse_pace("gateway_requests_total 3.0\n") is None


def test_the_mean_gap_is_taken_between_two_readings() -> None:
    before, after = EnginePace(0.08, 40.0), EnginePace(0.38, 140.0)
    assert engine_itl_ms(before, after) == pytest.approx(3.0)
    assert engine_itl_ms(before, before) is None  # no token between them
    assert engine_itl_ms(None, after) is None


def test_a_server_that_does_not_answer_has_no_pace() -> None:
    from loadtest.servers import free_port

    assert read_pace(f"http://127.0.0.1:{free_port()}", "key", timeout_s=1.0) is None
