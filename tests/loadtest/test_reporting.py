"""Unit tests for the load-test and benchmark reporting: no server, no engine, no locust run.

The fixtures under ``fixtures/`` are small hand-made copies of what locust's ``--json-file``,
the locustfile's ``--metrics-file``, locust's ``*_stats_history.csv`` and
``vllm.benchmarks.serve --save-result`` write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest import bench_report as br
from loadtest import reporting as rp

FIXTURES = Path(__file__).parent / "fixtures"


def _json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def entries() -> list[dict[str, Any]]:
    return _json("locust_stats.json")


@pytest.fixture
def client() -> dict[str, Any]:
    return _json("client_metrics.json")


@pytest.fixture
def results() -> dict[str, dict[int, dict[str, Any]]]:
    return {
        server: {level: _json(f"bench-{server}-c{level}.json") for level in (1, 8)}
        for server in ("vllm", "gateway")
    }


# -- locust JSON -> summary ----------------------------------------------------------------


def test_locust_percentile_walks_buckets_like_locust() -> None:
    """Percentiles use locust's bucket walk, so they match its HTML report. (Not checked
    against locust itself: importing locust monkey-patches the whole test process.)"""
    counts = {50: 1, 80: 2, 100: 2, 200: 2, 300: 1, 400: 1, 700: 1}
    assert rp.locust_percentile(counts, 0.50) == 200
    assert rp.locust_percentile(counts, 0.95) == 700
    assert rp.locust_percentile({}, 0.5) is None


def test_summary_counts_only_real_requests(entries: list[dict[str, Any]]) -> None:
    """TTFT and ITL entries are measurements, not requests: they stay out of the totals."""
    summary = rp.summarize(entries)
    assert summary.requests == 10
    assert summary.failures == 2
    assert summary.error_ratio == pytest.approx(0.2)


def test_summary_latency_merges_request_entries(entries: list[dict[str, Any]]) -> None:
    """Latency percentiles, mean and max come from the merged request buckets."""
    latency = rp.summarize(entries).latency_ms
    assert (latency.p50, latency.p95, latency.p99) == (200.0, 700.0, 700.0)
    assert latency.mean == pytest.approx(220.0)
    assert latency.max == 700.0


def test_summary_ttft_comes_from_ttft_entries(entries: list[dict[str, Any]]) -> None:
    """TTFT percentiles come from the TTFT entries only."""
    ttft = rp.summarize(entries).ttft_ms
    assert ttft is not None
    assert (ttft.count, ttft.p50, ttft.p95) == (3, 30.0, 40.0)


def test_summary_without_streams_has_no_ttft(entries: list[dict[str, Any]]) -> None:
    """A run with no streamed request reports no TTFT rather than zeros."""
    no_streams = [e for e in entries if e["method"] == "POST"]
    assert rp.summarize(no_streams).ttft_ms is None


def test_rates_use_the_client_run_duration(
    entries: list[dict[str, Any]], client: dict[str, Any]
) -> None:
    """QPS and tokens/s divide by the client's test start→stop span."""
    summary = rp.summarize(entries, client)
    assert summary.duration_s == pytest.approx(20.0)
    assert summary.qps == pytest.approx(0.5)
    assert summary.output_tokens_per_s == pytest.approx(20.0)
    assert summary.itl_ms["p99"] == 7.5


def test_duration_falls_back_to_locust_timestamps(entries: list[dict[str, Any]]) -> None:
    """Without client metrics the span of locust's request entries is used."""
    summary = rp.summarize(entries)
    assert summary.duration_s == pytest.approx(10.5)
    assert summary.output_tokens_per_s is None


# -- status codes --------------------------------------------------------------------------


def test_status_breakdown_prefers_client_buckets(
    entries: list[dict[str, Any]], client: dict[str, Any]
) -> None:
    """The client's exact buckets (including stream errors after a 200) are reported."""
    breakdown = rp.status_breakdown(rp.request_entries(entries), client)
    assert breakdown == {"200": 8, "200 then error": 1, "429": 1}


def test_status_breakdown_from_locust_alone(entries: list[dict[str, Any]]) -> None:
    """Without client metrics: successes as "200", the rest as "failed"."""
    assert rp.status_breakdown(rp.request_entries(entries), None) == {"200": 8, "failed": 2}


def test_status_breakdown_omits_empty_buckets() -> None:
    """A clean run shows no "failed" row."""
    entry = {"method": "POST", "name": "chat", "num_requests": 3, "num_failures": 0}
    assert rp.status_breakdown([entry], None) == {"200": 3}


# -- rendering and files -------------------------------------------------------------------


def test_render_summary_shows_every_section(
    entries: list[dict[str, Any]], client: dict[str, Any]
) -> None:
    """The console report has the headline, percentiles, endpoints and status codes."""
    text = rp.render_summary(rp.summarize(entries, client))
    assert "0.50 req/s, 20.0 output tokens/s" in text
    assert "error ratio 20.00%" in text
    assert "TTFT (streams)" in text and "inter-token gap" in text
    assert "POST chat stream" in text and "TTFT chat" in text
    assert "200 then error" in text and "10.0%" in text


def test_summary_files(tmp_path: Path, entries: list[dict[str, Any]], client: dict) -> None:
    """summary.json carries derived rates; summary.csv has one metric per row."""
    rp.write_summary_files(rp.summarize(entries, client), tmp_path)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["qps"] == pytest.approx(0.5) and data["status_codes"]["429"] == 1
    rows = dict(line.split(",", 1) for line in (tmp_path / "summary.csv").read_text().splitlines())
    assert rows["requests"] == "10" and rows["latency_p95_ms"] == "700.00"
    assert rows["status_429"] == "1"


def test_read_history_keys_and_missing_values() -> None:
    """History rows are keyed by type and name; N/A becomes None."""
    history = rp.read_history(FIXTURES / "stats_history.csv")
    assert set(history) == {"POST chat", "TTFT chat", "Aggregated"}
    assert [p["p50"] for p in history["POST chat"]] == [80.0, 90.0]
    assert history["TTFT chat"][0]["p50"] is None


def test_timeline_rates_between_samples(client: dict[str, Any]) -> None:
    """Rates are differences of the cumulative timeline over each interval."""
    assert rp.timeline_rates(client["timeline"]) == [(1.0, 4.0, 160.0), (3.0, 3.0, 120.0)]
    assert rp.timeline_rates([]) == []


# -- benchmark comparison ------------------------------------------------------------------


def test_ratio_is_gateway_over_vllm() -> None:
    """The ratio is candidate/baseline; missing or zero baselines give None."""
    assert br.ratio(150.0, 200.0) == pytest.approx(0.75)
    assert br.ratio(None, 200.0) is None
    assert br.ratio(1.0, 0.0) is None


def test_failed_run_has_no_metric_values(results: dict) -> None:
    """A level where nothing completed reports no values instead of zeros."""
    assert br.metric_value(results["gateway"][8], "output_throughput") is None
    assert br.metric_value(results["vllm"][8], "output_throughput") == 1024.0


def test_compare_rows_and_ratios(results: dict) -> None:
    """Every metric at every level, with the gateway/vLLM ratio."""
    rows = br.compare(results)
    assert len(rows) == 2 * len(br.METRICS)
    by_key = {(r.concurrency, r.metric.key): r for r in rows}
    assert by_key[(1, "output_throughput")].ratio == pytest.approx(0.8)
    assert by_key[(1, "p50_ttft_ms")].ratio == pytest.approx(1.5)
    assert by_key[(8, "request_throughput")].ratio is None


def test_ratio_table_rendering(results: dict) -> None:
    """The wide ratio table has one row per level and dashes where a side failed."""
    table = br.ratio_table(br.compare(results))
    lines = table.splitlines()
    assert lines[0].startswith("| concurrency | requests/s | output tokens/s | TTFT p50 (ms)")
    assert (
        lines[2] == "| 1 | 0.80× | 0.80× | 1.50× | 1.50× | 1.10× | 1.50× | 1.00× | 0.75× | 1.00× |"
    )
    assert lines[3] == "| 8 |" + " – |" * 9
    assert "client CPU" not in lines[0]  # no side has it anywhere: no column


def test_frontend_cpu_adds_the_client_to_the_api_processes() -> None:
    """The front-end CPU's load over a level: API processes plus the client, per second of
    the run; the client's CPU per 1k tokens; nothing when the client did not say."""
    from loadtest.bench import frontend_cpu

    result = {"client_cpu_s": 2.0, "duration": 10.0, "total_output_tokens": 4000}
    figures = frontend_cpu(result, api_s=6.0)
    assert figures == pytest.approx(
        {"client_cpu_ms_per_1k_tokens": 500.0, "frontend_cpu_share": 0.8}
    )
    assert frontend_cpu({"duration": 10.0, "total_output_tokens": 4000}, api_s=6.0) == {}


def test_no_ratio_below_a_metrics_floor() -> None:
    """Sub-floor values (ITL gaps of chunks read together) show but give no ratio."""
    itl = next(m for m in br.METRICS if m.key == "p50_itl_ms")
    assert br.ComparisonRow(1, itl, baseline=0.003, candidate=0.004).ratio is None
    assert br.ComparisonRow(1, itl, baseline=2.0, candidate=3.0).ratio == pytest.approx(1.5)


def test_comparison_table_has_both_servers(results: dict) -> None:
    """The long table shows both values and the ratio per metric."""
    table = br.comparison_table(br.compare(results))
    assert "| 1 | output tokens/s | 256.0 | 204.8 | 0.80× |" in table
    assert "| 8 | output tokens/s | 1,024.0 | – | – |" in table


def test_failures_table_counts(results: dict) -> None:
    """Completed/failed requests per server, and 'not run' for missing levels."""
    partial = {"vllm": results["vllm"], "gateway": {1: results["gateway"][1]}}
    table = br.failures_table(partial)
    assert "| 1 | 16 / 0 | 16 / 0 |" in table
    assert "| 8 | 32 / 0 | not run |" in table


def test_render_markdown_sections(results: dict) -> None:
    """The report has ratios, results, setup, machine, notes, plot and the command."""
    context = br.ReportContext(
        date="2026-11-24 21:00 UTC",
        command="python -m loadtest.bench --concurrency 1,8",
        machine=["CPU: test"],
        workload=["random prompts"],
        servers=["vLLM server: ..."],
        notes=["gateway c=8: 32 failed requests"],
        plot_name="benchmarks.png",
    )
    text = br.render_markdown(results, context)
    for heading in ("## Ratios", "## Results", "## Workload", "## Machine", "## Notes"):
        assert heading in text
    assert "![tokens/s and TTFT p50 by concurrency](benchmarks.png)" in text
    assert text.rstrip().endswith("```bash\npython -m loadtest.bench --concurrency 1,8\n```")


def test_load_result_rejects_non_objects(tmp_path: Path) -> None:
    """A result file that is not a JSON object is an error, not a silent empty run."""
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError):
        br.load_result(bad)


def test_combine_runs_takes_medians_and_sums_counts(results: dict) -> None:
    """Repeats merge into medians of the runs that completed, with counts summed."""
    first = results["vllm"][1]
    second = {**first, "output_throughput": 300.0}
    failed = results["gateway"][8]  # nothing completed: counts only
    combined = br.combine_runs([first, second, failed])
    assert combined["output_throughput"] == pytest.approx(278.0)
    assert combined["spread"]["output_throughput"] == [256.0, 300.0]
    assert (combined["completed"], combined["failed"], combined["runs"]) == (32, 32, 3)


def test_spread_shows_in_the_long_table(results: dict) -> None:
    """With repeated runs each value carries ± half its min–max range, relative."""
    vllm = br.combine_runs([results["vllm"][1], {**results["vllm"][1], "output_throughput": 300}])
    table = br.comparison_table(
        br.compare({"vllm": {1: vllm}, "gateway": {1: results["gateway"][1]}})
    )
    assert "| 1 | output tokens/s | 278.0 ±8% | 204.8 | 0.74× |" in table


def test_paired_ratios_pair_each_round_across_servers(results: dict) -> None:
    """Round i of vLLM pairs with round i of the gateway; a failed round drops its pair.
    The paired median can differ from the ratio of medians: here the machine slowed in
    round 2 for both, which the pairs cancel and the medians do not."""
    run = results["vllm"][1]
    slow = {**run, "output_throughput": 100.0, "p50_ttft_ms": 40.0}
    failed = results["gateway"][8]
    vllm = br.combine_runs([run, slow, run])
    gateway = br.combine_runs(
        [
            {**run, "output_throughput": 250.0, "p50_ttft_ms": run["p50_ttft_ms"] + 2},
            {**slow, "output_throughput": 99.0, "p50_ttft_ms": 41.0},
            failed,
        ]
    )
    paired = {"vllm": {1: vllm}, "gateway": {1: gateway}}
    ratios = br.paired_ratios(paired, "output_throughput", 1)
    assert ratios == pytest.approx([250.0 / 256.0, 0.99])
    table = br.paired_table(paired)
    assert "| 1 | 2 | 0.98× (0.98× to 0.99×) |" in table
    assert "| 2 of 2 | +1.5 (+1.0 to +2.0) |" in table


def test_paced_ratios_take_the_engines_speed_out_of_each_round(results: dict) -> None:
    """A round where the engine ran slower for the gateway (a longer gap between tokens)
    loses tokens/s the gateway did not cost: tokens/s x the engine's gap pairs the mean
    requests the engine was generating for. A round lacking the gap on a side is left out."""
    run = results["vllm"][1]
    vllm = br.combine_runs(
        [
            {**run, "output_throughput": 600.0, "engine_itl_ms": 1.6},
            {**run, "output_throughput": 480.0, "engine_itl_ms": 2.0},
            {**run, "output_throughput": 500.0},
        ]
    )
    gateway = br.combine_runs(
        [
            {**run, "output_throughput": 300.0, "engine_itl_ms": 3.2},  # engine 2x slower
            {**run, "output_throughput": 470.0, "engine_itl_ms": 2.0},
            {**run, "output_throughput": 490.0, "engine_itl_ms": 1.9},
        ]
    )
    paired = {"vllm": {1: vllm}, "gateway": {1: gateway}}
    assert br.paced_ratios(paired, 1) == pytest.approx([1.0, 470.0 / 480.0])
    assert br.paired_ratios(paired, "output_throughput", 1)[0] == pytest.approx(0.5)
    table = br.paired_table(paired)
    assert "| 0.990× (0.979× to 1.000×) | 2 of 2 |" in table
    assert "| 1.50× (1.00× to 2.00×) |" in table  # the engine's gap, gateway/vLLM


def test_the_paired_table_shows_no_paced_ratio_without_the_engines_gap(results: dict) -> None:
    combined = {s: {c: br.combine_runs([r]) for c, r in per.items()} for s, per in results.items()}
    row = next(line for line in br.paired_table(combined).splitlines() if line.startswith("| 1 |"))
    assert row.endswith("| – | – | – |")


def test_the_report_has_the_paired_table(results: dict) -> None:
    combined = {s: {c: br.combine_runs([r]) for c, r in per.items()} for s, per in results.items()}
    context = br.ReportContext("d", "cmd", [], [], [])
    text = br.render_markdown(combined, context)
    assert "### Paired by round" in text
    assert "rounds ≥ 0.95× tokens/s" in text


def test_the_proxy_report_describes_the_proxy_run(tmp_path: Path) -> None:
    """The proxy run's report says what ran: the gateway with a models file in front of the
    one vLLM server, both up, alternating at every level (not the engine run's blocks), and
    with the extra ``--gateway-env`` it was given."""
    from loadtest import bench

    config = bench.parse_config(
        ["--proxy", "--work-dir", str(tmp_path), "--gateway-env", "LOG_LEVEL=WARNING"]
    )
    servers = " ".join(bench.report_context(config, "cmd", [], None).servers)
    assert "MODELS_FILE=proxy-models.yaml" in servers and "LOG_LEVEL=WARNING" in servers
    assert "back to back" in servers
    assert "one server up at a time" not in servers


def test_the_report_hides_keys_but_shows_switches_named_after_them(tmp_path: Path) -> None:
    """The gateway's env in the report: the bench key (and any ``--gateway-env`` key) as
    ``<key>``; ADMIN_ROUTES_REQUIRE_KEY, which lets the bench read /metrics, as its value."""
    from loadtest import bench

    config = bench.parse_config(
        ["--work-dir", str(tmp_path), "--gateway-env", "UPSTREAM_API_KEY=s3cret"]
    )
    servers = " ".join(bench.report_context(config, "cmd", [], None).servers)
    assert "API_KEYS=<key>" in servers and "UPSTREAM_API_KEY=<key>" in servers
    assert "s3cret" not in servers and config.api_key not in servers
    assert "ADMIN_ROUTES_REQUIRE_KEY=false" in servers
