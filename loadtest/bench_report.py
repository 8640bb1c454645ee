"""Compare two servers' results from vLLM's serving benchmark and render the report.

Input: the JSON files ``vllm.benchmarks.serve`` saves (``--save-result``), one per server and
concurrency level. Output: gateway/vLLM ratios, the Markdown report and its plot. All but
:func:`plot_comparison` is pure and unit-tested.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASELINE, CANDIDATE = "vllm", "gateway"
SERVER_TITLES = {BASELINE: "vLLM server", CANDIDATE: "gateway"}


@dataclass(frozen=True)
class Metric:
    """One compared number: its key in the benchmark JSON and how to read it."""

    key: str
    label: str
    higher_is_better: bool
    digits: int = 1
    # Below this, a value is not a measurement of the server (e.g. a 3 µs "inter-token"
    # gap is two chunks read in one socket read) and no ratio is drawn from it.
    floor: float = 0.0


METRICS: tuple[Metric, ...] = (
    Metric("request_throughput", "requests/s", True, 2),
    Metric("output_throughput", "output tokens/s", True, 1),
    Metric("p50_ttft_ms", "TTFT p50 (ms)", False, 1),
    Metric("p99_ttft_ms", "TTFT p99 (ms)", False, 1),
    Metric("p50_itl_ms", "ITL p50 (ms)", False, 3, floor=0.05),
    Metric("p99_itl_ms", "ITL p99 (ms)", False, 3, floor=0.05),
    # Whole-request latency: unaffected by how chunks are grouped on the wire.
    Metric("p50_e2el_ms", "E2E latency p50 (ms)", False, 1),
    # CPU the server's API process (HTTP front end) spent per 1,000 output tokens: the
    # gateway's own per-token cost, read from the OS rather than a stopwatch.
    Metric("api_cpu_ms_per_1k_tokens", "API process CPU (ms / 1k tokens)", False, 1),
    # The engine core and its workers (the proxy run: vLLM's, behind either side).
    Metric("engine_cpu_ms_per_1k_tokens", "engine CPU (ms / 1k tokens)", False, 1),
    # The proxy run's proxied rounds: vLLM's API process behind the gateway, same tokens.
    Metric("upstream_api_cpu_ms_per_1k_tokens", "upstream API CPU (ms / 1k tokens)", False, 1),
    Metric("client_cpu_ms_per_1k_tokens", "client CPU (ms / 1k tokens)", False, 1),
    # API processes + client over the run, in CPUs: near 1.0 the shared front-end CPU is full.
    Metric("frontend_cpu_share", "front-end CPU busy (CPUs)", False, 2),
    # The engine core's own mean gap between a request's tokens, from vLLM's /metrics: how
    # fast the engine ran over the level (see loadtest/engine_pace.py).
    Metric("engine_itl_ms", "engine ITL mean (ms)", False, 3),
)

# Results keyed server -> concurrency -> the benchmark's result JSON.
Results = Mapping[str, Mapping[int, Mapping[str, Any]]]


def load_result(path: Path) -> dict[str, Any]:
    """One ``vllm.benchmarks.serve`` result file."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a benchmark result object")
    return data


def metric_value(result: Mapping[str, Any] | None, key: str) -> float | None:
    """A metric from a result; ``None`` when missing or when nothing completed (a run whose
    requests all failed reports zeros that must not look like measurements)."""
    if not result or not result.get("completed"):
        return None
    value = result.get(key)
    return float(value) if isinstance(value, int | float) else None


def combine_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge repeated runs of one server and level: the median of every compared metric over
    the runs that completed requests, summed ``completed``/``failed``, the number of ``runs``,
    each metric's ``spread`` as ``[min, max]`` and its ``per_run`` values in run order
    (``None`` for a run that failed), which :func:`paired_ratios` pairs across servers."""
    good = [run for run in runs if run.get("completed")]
    combined: dict[str, Any] = {
        "completed": sum(int(run.get("completed") or 0) for run in runs),
        "failed": sum(int(run.get("failed") or 0) for run in runs),
        "runs": len(runs),
        "spread": {},
        "per_run": {m.key: [metric_value(run, m.key) for run in runs] for m in METRICS},
    }
    for metric in METRICS:
        values = [v for v in (metric_value(run, metric.key) for run in good) if v is not None]
        if values:
            combined[metric.key] = statistics.median(values)
            combined["spread"][metric.key] = [min(values), max(values)]
    return combined


def ratio(candidate: float | None, baseline: float | None) -> float | None:
    """``candidate / baseline``, or ``None`` when either is missing or the baseline is 0."""
    if candidate is None or baseline is None or baseline == 0:
        return None
    return candidate / baseline


@dataclass(frozen=True)
class ComparisonRow:
    """One (concurrency, metric) line of the comparison."""

    concurrency: int
    metric: Metric
    baseline: float | None
    candidate: float | None
    baseline_spread: Sequence[float] | None = None
    candidate_spread: Sequence[float] | None = None

    @property
    def ratio(self) -> float | None:
        """gateway / vLLM; ``None`` when a side is missing or below the metric's floor."""
        floor = self.metric.floor
        if any(v is not None and v < floor for v in (self.candidate, self.baseline)):
            return None
        return ratio(self.candidate, self.baseline)


def compare(results: Results) -> list[ComparisonRow]:
    """Every metric at every concurrency level that either server ran."""
    levels = sorted({c for per_level in results.values() for c in per_level})
    rows = []
    for level in levels:
        base = results.get(BASELINE, {}).get(level)
        cand = results.get(CANDIDATE, {}).get(level)
        for metric in METRICS:
            rows.append(
                ComparisonRow(
                    level,
                    metric,
                    metric_value(base, metric.key),
                    metric_value(cand, metric.key),
                    _spread(base, metric.key),
                    _spread(cand, metric.key),
                )
            )
    return rows


def _spread(result: Mapping[str, Any] | None, key: str) -> Sequence[float] | None:
    if not result or int(result.get("runs") or 1) < 2:
        return None
    return (result.get("spread") or {}).get(key)


def _with_spread(value: float | None, spread: Sequence[float] | None, digits: int) -> str:
    """``1,234.5 ±3%``: the median and half the min–max range of the runs, relative."""
    text = _num(value, digits)
    if value and spread:
        text += f" ±{(spread[1] - spread[0]) / 2 / value:.0%}"
    return text


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _ratio_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (first column left, the others right-aligned)."""
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_table(rows: Sequence[ComparisonRow]) -> str:
    """Long form: one line per concurrency and metric, both servers and the ratio."""
    return markdown_table(
        [
            "concurrency",
            "metric",
            SERVER_TITLES[BASELINE],
            SERVER_TITLES[CANDIDATE],
            "gateway/vLLM",
        ],
        [
            [
                str(row.concurrency),
                row.metric.label,
                _with_spread(row.baseline, row.baseline_spread, row.metric.digits),
                _with_spread(row.candidate, row.candidate_spread, row.metric.digits),
                _ratio_text(row.ratio),
            ]
            for row in rows
        ],
    )


def ratio_table(rows: Sequence[ComparisonRow]) -> str:
    """Wide form: ratios only, one line per concurrency level."""
    levels = sorted({row.concurrency for row in rows})
    by_key = {(row.concurrency, row.metric.key): row.ratio for row in rows}
    shown = [  # a metric one side lacks everywhere (e.g. the upstream's CPU) has no column
        m for m in METRICS if any(by_key.get((level, m.key)) is not None for level in levels)
    ] or list(METRICS)
    return markdown_table(
        ["concurrency", *(m.label for m in shown)],
        [
            [str(level), *(_ratio_text(by_key.get((level, m.key))) for m in shown)]
            for level in levels
        ],
    )


# What the paired table shows: each round's gateway/vLLM ratio of a metric, or for TTFT at
# low concurrency the difference in ms (the proxy target is "+3 ms", not a ratio).
PAIRED_RATIOS = ("output_throughput", "p50_e2el_ms")
PAIRED_DIFFERENCES = ("p50_ttft_ms",)
TARGET_RATIO = 0.95  # the proxy target: >= 0.95x direct output tokens/s


def paired_values(results: Results, key: str, level: int) -> list[tuple[float, float]]:
    """(vLLM, gateway) per round at ``level``: the i-th run of each, where both completed.

    Rounds are run back to back (the proxy run alternates the two at every level; the
    engine run alternates whole blocks), so a pair shares the machine's load at that time,
    which a median over each server's runs alone does not: on a shared machine the load
    drifts by more than the differences measured."""
    return [(b, c) for b, c in _per_run(results, key, level) if b is not None and c is not None]


def paired_ratios(results: Results, key: str, level: int) -> list[float]:
    """Each round's gateway/vLLM ratio of ``key`` at ``level`` (see :func:`paired_values`)."""
    return [c / b for b, c in paired_values(results, key, level) if b]


def paced_ratios(results: Results, level: int) -> list[float]:
    """Each round's gateway/vLLM ratio of output tokens/s × the engine's mean inter-token
    gap: of the mean number of requests the engine was generating for (Little's law), the
    front end's cost with the engine's drifting speed taken out (see
    :mod:`loadtest.engine_pace`). Rounds where either side lacks the engine's gap are left
    out."""
    tokens = _per_run(results, "output_throughput", level)
    gaps = _per_run(results, "engine_itl_ms", level)
    paced = []
    for (b_tok, c_tok), (b_gap, c_gap) in zip(tokens, gaps, strict=False):
        if b_tok and b_gap and c_tok is not None and c_gap is not None:
            paced.append((c_tok * c_gap) / (b_tok * b_gap))
    return paced


def _per_run(results: Results, key: str, level: int) -> list[tuple[float | None, float | None]]:
    """(vLLM, gateway) of ``key`` for every round, ``None`` where a side lacks it."""
    base = (results.get(BASELINE, {}).get(level) or {}).get("per_run", {}).get(key) or []
    cand = (results.get(CANDIDATE, {}).get(level) or {}).get("per_run", {}).get(key) or []
    return list(zip(base, cand, strict=False))


def _median_range(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "–"
    text = fmt.format(statistics.median(values))
    if len(values) > 1:
        text += f" ({fmt.format(min(values))} to {fmt.format(max(values))})"
    return text


def paired_table(results: Results) -> str:
    """One line per level: the median of the per-round ratios (and differences), their
    range, and how many rounds reached :data:`TARGET_RATIO` in tokens/s."""
    levels = sorted({c for per_level in results.values() for c in per_level})
    labels = {m.key: m.label for m in METRICS}
    headers = [
        "concurrency",
        "rounds",
        *(f"{labels[k]}: gateway/vLLM" for k in PAIRED_RATIOS),
        f"rounds ≥ {TARGET_RATIO:.2f}× tokens/s",
        *(f"{labels[k]}: gateway − vLLM" for k in PAIRED_DIFFERENCES),
        f"{labels['engine_itl_ms']}: gateway/vLLM",
        "tokens/s at the engine's pace: gateway/vLLM",
        f"rounds ≥ {TARGET_RATIO:.2f}× at the engine's pace",
    ]
    rows = []
    for level in levels:
        tokens = paired_ratios(results, "output_throughput", level)
        paced = paced_ratios(results, level)
        rows.append(
            [
                str(level),
                str(len(tokens)),
                *(
                    _median_range(paired_ratios(results, k, level), "{:.2f}×")
                    for k in PAIRED_RATIOS
                ),
                _reached(tokens),
                *(
                    _median_range([c - b for b, c in paired_values(results, k, level)], "{:+.1f}")
                    for k in PAIRED_DIFFERENCES
                ),
                _median_range(paired_ratios(results, "engine_itl_ms", level), "{:.2f}×"),
                _median_range(paced, "{:.3f}×"),
                _reached(paced) if paced else "–",
            ]
        )
    return markdown_table(headers, rows)


def _reached(ratios: Sequence[float]) -> str:
    return f"{sum(r >= TARGET_RATIO for r in ratios)} of {len(ratios)}"


def failures_table(results: Results) -> str:
    """Completed/failed requests per server and level (a benchmark with failures is suspect)."""
    levels = sorted({c for per_level in results.values() for c in per_level})
    cells = []
    for level in levels:
        row = [str(level)]
        for server in (BASELINE, CANDIDATE):
            result = results.get(server, {}).get(level)
            row.append(
                "not run"
                if result is None
                else f"{result.get('completed', 0)} / {result.get('failed', 0)}"
            )
        cells.append(row)
    headers = [
        "concurrency",
        *(f"{SERVER_TITLES[s]} completed / failed" for s in (BASELINE, CANDIDATE)),
    ]
    return markdown_table(headers, cells)


@dataclass(frozen=True)
class ReportContext:
    """Everything the report states besides the numbers."""

    date: str
    command: str
    machine: Sequence[str]
    workload: Sequence[str]
    servers: Sequence[str]
    notes: Sequence[str] = ()
    plot_name: str | None = None


def render_markdown(results: Results, context: ReportContext) -> str:
    """The whole ``docs/benchmarks.md``."""
    rows = compare(results)
    parts = [
        "# Benchmark: the gateway vs vLLM's own OpenAI server",
        f"Generated {context.date} by `{context.command}` (`loadtest/bench.py`). "
        "Same model, same engine settings, same client, same workload, same machine; "
        "see Servers for how the runs were scheduled.",
        "## Ratios (gateway / vLLM)",
        "Throughput ratios below 1.00× and latency ratios above 1.00× are the gateway's cost.",
        ratio_table(rows),
        "### Paired by round",
        "Each round runs both servers back to back, so a round's ratio compares them under "
        "the same machine load; the median of those ratios, with their range (min to max), "
        "is less moved by a shared machine's drift than the ratio of the two medians above. "
        "The engine's own pace drifts too, within a round: its mean gap between a request's "
        "tokens (vLLM's `vllm:inter_token_latency_seconds`, timed in the engine core) is "
        "shown as a ratio. Tokens/s at the engine's pace is tokens/s × that gap, by Little's "
        "law the mean number of requests the engine was generating for: its ratio is the "
        "front end's cost with the engine's speed taken out.",
        paired_table(results),
        "## Results",
        comparison_table(rows),
        failures_table(results),
    ]
    if context.plot_name:
        parts.append(f"![tokens/s and TTFT p50 by concurrency]({context.plot_name})")
    parts += [
        "## Workload",
        _bullets(context.workload),
        "## Servers",
        _bullets(context.servers),
        "## Machine",
        _bullets(context.machine),
    ]
    if context.notes:
        parts += ["## Notes", _bullets(context.notes)]
    parts += ["## Reproduce", f"```bash\n{context.command}\n```"]
    return "\n\n".join(parts) + "\n"


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def plot_comparison(results: Results, out_png: Path) -> None:
    """Output tokens/s and TTFT p50 against concurrency, one line per server."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, (ax_tok, ax_ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server, marker in ((BASELINE, "o"), (CANDIDATE, "s")):
        per_level = results.get(server, {})
        levels = sorted(per_level)
        label = SERVER_TITLES[server]
        tokens = [metric_value(per_level[c], "output_throughput") for c in levels]
        ttft = [metric_value(per_level[c], "p50_ttft_ms") for c in levels]
        ax_tok.plot(levels, tokens, marker=marker, label=label)
        ax_ttft.plot(levels, ttft, marker=marker, label=label)
    all_levels = sorted({c for per_level in results.values() for c in per_level})
    for ax, ylabel in ((ax_tok, "output tokens/s"), (ax_ttft, "TTFT p50 (ms)")):
        ax.set_xscale("log", base=2)
        if all_levels:  # label the levels that ran (1, 8, 32...), not powers of two
            ax.set_xticks(all_levels, labels=[str(c) for c in all_levels])
            ax.minorticks_off()
        ax.set_xlabel("concurrency (max in-flight requests)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("gateway vs vLLM server, same model and workload")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
