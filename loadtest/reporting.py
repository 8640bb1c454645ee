"""Turn a locust run into a summary, CSV rows and a plot.

Inputs are the files one run leaves behind:

* locust's ``--json-file`` (a list of stats entries: exact totals, written at shutdown; the
  final ``*_stats.csv`` is a snapshot taken about half a second earlier, so never use it);
* the locustfile's ``--metrics-file`` (:class:`loadtest.workload.ClientMetrics` as JSON:
  status buckets, token counts, inter-token gaps, run start/stop, a per-second timeline);
* locust's ``*_stats_history.csv`` (``--csv-full-history``), only for the latency-over-time plot.

Everything but :func:`plot_run` is pure and unit-tested.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

# Request types the locustfile fires for real HTTP requests; "TTFT" and "ITL" entries are
# measurements of streams, not extra requests, and must not count toward QPS or errors.
REQUEST_TYPES = frozenset({"POST", "GET"})
TTFT_TYPE = "TTFT"


@dataclass(frozen=True)
class LatencyStats:
    """Count, mean, percentiles and max of a set of response times (milliseconds)."""

    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True)
class EndpointStats:
    """One locust entry (e.g. ``POST chat stream``) with its latency percentiles."""

    method: str
    name: str
    requests: int
    failures: int
    latency_ms: LatencyStats


@dataclass
class LoadSummary:
    """The headline numbers of one load-test run."""

    requests: int
    failures: int
    duration_s: float
    latency_ms: LatencyStats
    ttft_ms: LatencyStats | None
    itl_ms: dict[str, Any] = field(default_factory=dict)
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    status_codes: dict[str, int] = field(default_factory=dict)
    endpoints: list[EndpointStats] = field(default_factory=list)

    @property
    def error_ratio(self) -> float:
        """Failed share of requests (0.0 for an empty run)."""
        return self.failures / self.requests if self.requests else 0.0

    @property
    def qps(self) -> float:
        """Completed requests per second over the run's wall-clock duration."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def output_tokens_per_s(self) -> float | None:
        """Generated tokens per second, when the client counted them."""
        if self.output_tokens is None or self.duration_s <= 0:
            return None
        return self.output_tokens / self.duration_s

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict including the derived rates."""
        data = asdict(self)
        data.update(
            error_ratio=self.error_ratio, qps=self.qps, output_tokens_per_s=self.output_tokens_per_s
        )
        return data


def load_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text())


def response_time_counts(entries: Iterable[Mapping[str, Any]]) -> Counter[int]:
    """Merge the bucketed ``response_times`` of entries (JSON turns their keys into strings)."""
    merged: Counter[int] = Counter()
    for entry in entries:
        for bucket, count in (entry.get("response_times") or {}).items():
            merged[int(float(bucket))] += int(count)
    return merged


def locust_percentile(counts: Mapping[int, int], fraction: float) -> int | None:
    """The response time at ``fraction`` (0..1), computed the way locust's reports do, so the
    numbers match its HTML report: walk buckets from the slowest down until no more than
    ``int(total * fraction)`` requests remain below."""
    total = sum(counts.values())
    if total == 0:
        return None
    wanted = int(total * fraction)
    processed = 0
    for bucket in sorted(counts, reverse=True):
        processed += counts[bucket]
        if total - processed <= wanted:
            return bucket
    return min(counts)


def latency_stats(entries: Sequence[Mapping[str, Any]]) -> LatencyStats:
    """Latency statistics over locust entries (merged)."""
    counts = response_time_counts(entries)
    timed = sum(counts.values())
    total_ms = sum(float(e.get("total_response_time") or 0) for e in entries)
    maxima = [float(e["max_response_time"]) for e in entries if e.get("max_response_time")]
    return LatencyStats(
        count=sum(int(e.get("num_requests") or 0) for e in entries),
        mean=total_ms / timed if timed else None,
        p50=_as_float(locust_percentile(counts, 0.50)),
        p95=_as_float(locust_percentile(counts, 0.95)),
        p99=_as_float(locust_percentile(counts, 0.99)),
        max=max(maxima) if maxima else None,
    )


def _as_float(value: int | None) -> float | None:
    return None if value is None else float(value)


def request_entries(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Entries for real HTTP requests (not the TTFT/ITL measurement entries)."""
    return [e for e in entries if e.get("method") in REQUEST_TYPES]


def status_breakdown(
    entries: Sequence[Mapping[str, Any]], client: Mapping[str, Any] | None
) -> dict[str, int]:
    """Requests per status bucket. The client's exact buckets when it wrote them; else what
    locust's JSON allows: successes as ``"200"`` and failures as ``"failed"``."""
    if client and client.get("statuses"):
        return {str(k): int(v) for k, v in sorted(client["statuses"].items())}
    requests = sum(int(e.get("num_requests") or 0) for e in entries)
    failures = sum(int(e.get("num_failures") or 0) for e in entries)
    breakdown = {"200": requests - failures, "failed": failures}
    return {k: v for k, v in breakdown.items() if v}


def run_duration(entries: Sequence[Mapping[str, Any]], client: Mapping[str, Any] | None) -> float:
    """Wall-clock seconds of the run: the client's test start→stop when known, else the span
    of locust's entries (which start at each entry's first completed request, so shorter)."""
    if client and client.get("started_at") and client.get("stopped_at"):
        return max(float(client["stopped_at"]) - float(client["started_at"]), 0.0)
    starts = [float(e["start_time"]) for e in entries if e.get("start_time")]
    ends = [float(e["last_request_timestamp"]) for e in entries if e.get("last_request_timestamp")]
    return max(ends) - min(starts) if starts and ends else 0.0


def summarize(
    locust_entries: Sequence[Mapping[str, Any]], client: Mapping[str, Any] | None = None
) -> LoadSummary:
    """Build the run summary from locust's JSON entries and the client metrics file."""
    requests = request_entries(locust_entries)
    ttft = [e for e in locust_entries if e.get("method") == TTFT_TYPE]
    return LoadSummary(
        requests=sum(int(e.get("num_requests") or 0) for e in requests),
        failures=sum(int(e.get("num_failures") or 0) for e in requests),
        duration_s=run_duration(requests, client),
        latency_ms=latency_stats(requests),
        ttft_ms=latency_stats(ttft) if ttft else None,
        itl_ms=dict((client or {}).get("itl_ms") or {}),
        output_tokens=_optional_int(client, "output_tokens"),
        prompt_tokens=_optional_int(client, "prompt_tokens"),
        status_codes=status_breakdown(requests, client),
        endpoints=[_endpoint(e) for e in sorted(locust_entries, key=_entry_order)],
    )


def _optional_int(data: Mapping[str, Any] | None, key: str) -> int | None:
    return int(data[key]) if data and data.get(key) is not None else None


def _entry_order(entry: Mapping[str, Any]) -> tuple[int, str]:
    return (0 if entry.get("method") in REQUEST_TYPES else 1, str(entry.get("name")))


def _endpoint(entry: Mapping[str, Any]) -> EndpointStats:
    return EndpointStats(
        method=str(entry.get("method")),
        name=str(entry.get("name")),
        requests=int(entry.get("num_requests") or 0),
        failures=int(entry.get("num_failures") or 0),
        latency_ms=latency_stats([entry]),
    )


# -- rendering -----------------------------------------------------------------------------


def _fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with right-aligned columns (first column left-aligned)."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in [headers, ["-" * w for w in widths], *rows]:
        cells = [
            str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_summary(summary: LoadSummary) -> str:
    """The console report: headline numbers, latency/TTFT/ITL percentiles, per-endpoint
    rows and the status-code breakdown."""
    tok_s = summary.output_tokens_per_s
    head = [
        f"requests      {summary.requests}  ({summary.failures} failed, "
        f"error ratio {summary.error_ratio:.2%})",
        f"duration      {summary.duration_s:.1f} s",
        f"throughput    {summary.qps:.2f} req/s"
        + (f", {tok_s:.1f} output tokens/s" if tok_s is not None else ""),
    ]
    latency_rows = [_latency_row("latency (all requests)", summary.latency_ms)]
    if summary.ttft_ms is not None:
        latency_rows.append(_latency_row("TTFT (streams)", summary.ttft_ms))
    if summary.itl_ms.get("count"):
        itl = summary.itl_ms
        latency_rows.append(
            [
                "inter-token gap",
                str(itl["count"]),
                _fmt(itl.get("mean")),
                _fmt(itl.get("p50")),
                _fmt(itl.get("p95")),
                _fmt(itl.get("p99")),
                "-",
            ]
        )
    metrics = render_table(["ms", "count", "mean", "p50", "p95", "p99", "max"], latency_rows)
    endpoints = render_table(
        ["endpoint", "requests", "failures", "p50 ms", "p95 ms", "p99 ms"],
        [
            [
                _endpoint_label(e),
                str(e.requests),
                str(e.failures),
                _fmt(e.latency_ms.p50),
                _fmt(e.latency_ms.p95),
                _fmt(e.latency_ms.p99),
            ]
            for e in summary.endpoints
        ],
    )
    statuses = render_table(
        ["status", "requests", "share"],
        [
            [code, str(n), f"{n / summary.requests:.1%}" if summary.requests else "-"]
            for code, n in summary.status_codes.items()
        ],
    )
    return "\n\n".join(["\n".join(head), metrics, endpoints, statuses])


def _endpoint_label(entry: EndpointStats) -> str:
    # TTFT/ITL names already say what they are; requests read as "POST chat stream".
    return f"{entry.method} {entry.name}" if entry.method in REQUEST_TYPES else entry.name


def _latency_row(label: str, stats: LatencyStats) -> list[str]:
    return [
        label,
        str(stats.count),
        _fmt(stats.mean),
        _fmt(stats.p50, 0),
        _fmt(stats.p95, 0),
        _fmt(stats.p99, 0),
        _fmt(stats.max, 0),
    ]


def summary_rows(summary: LoadSummary) -> list[tuple[str, str]]:
    """``(metric, value)`` rows for ``summary.csv``."""
    rows: list[tuple[str, str]] = [
        ("requests", str(summary.requests)),
        ("failures", str(summary.failures)),
        ("error_ratio", f"{summary.error_ratio:.6f}"),
        ("duration_s", f"{summary.duration_s:.3f}"),
        ("qps", f"{summary.qps:.4f}"),
        ("output_tokens", _fmt(summary.output_tokens)),
        ("output_tokens_per_s", _fmt(summary.output_tokens_per_s, 2)),
    ]
    stats_groups = {"latency": summary.latency_ms, "ttft": summary.ttft_ms}
    for prefix, stats in stats_groups.items():
        for key in ("p50", "p95", "p99", "mean", "max"):
            rows.append((f"{prefix}_{key}_ms", _fmt(getattr(stats, key) if stats else None, 2)))
    for key in ("p50", "p95", "p99", "mean"):
        rows.append((f"itl_{key}_ms", _fmt(summary.itl_ms.get(key), 3)))
    rows.extend((f"status_{code}", str(n)) for code, n in summary.status_codes.items())
    return rows


def write_summary_files(summary: LoadSummary, out_dir: Path) -> None:
    """``summary.json`` and ``summary.csv`` (metric,value) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    with (out_dir / "summary.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "value"])
        writer.writerows(summary_rows(summary))


# -- over time -----------------------------------------------------------------------------


def read_history(path: Path) -> dict[str, list[dict[str, float | None]]]:
    """Locust's ``*_stats_history.csv`` as ``{"POST chat": [{t, rps, p50, p95}, ...]}``:
    requests keyed "<method> <name>", TTFT/ITL and "Aggregated" rows by name alone;
    ``N/A`` becomes ``None``."""
    series: dict[str, list[dict[str, float | None]]] = {}
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            kind, name = row["Type"], row["Name"]
            key = f"{kind} {name}" if kind in REQUEST_TYPES else name
            series.setdefault(key, []).append(
                {
                    "t": float(row["Timestamp"]),
                    "rps": _number(row.get("Requests/s")),
                    "p50": _number(row.get("50%")),
                    "p95": _number(row.get("95%")),
                }
            )
    return series


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def timeline_rates(timeline: Sequence[Mapping[str, float]]) -> list[tuple[float, float, float]]:
    """``(seconds since start, requests/s, output tokens/s)`` between consecutive samples of
    the client's cumulative timeline."""
    if not timeline:
        return []
    origin = timeline[0]["t"]
    rates = []
    for before, after in pairwise(timeline):
        span = after["t"] - before["t"]
        if span <= 0:
            continue
        rates.append(
            (
                after["t"] - origin,
                (after["completed"] - before["completed"]) / span,
                (after["output_tokens"] - before["output_tokens"]) / span,
            )
        )
    return rates


def plot_run(
    history: Mapping[str, Sequence[Mapping[str, float | None]]],
    timeline: Sequence[Mapping[str, float]],
    out_png: Path,
    title: str,
) -> None:
    """Latency percentiles (locust history, per endpoint) and throughput (client timeline)
    over time, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_rps) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    origin = timeline[0]["t"] if timeline else _first_time(history)
    for key, points in sorted(history.items()):
        if key == "Aggregated" or key.startswith("ITL"):
            continue
        quantiles = ("p50",) if key.startswith(TTFT_TYPE) else ("p50", "p95")
        for quantile in quantiles:
            # Locust writes 0 while its rolling window is still empty: not a measurement.
            shown = [p for p in points if p[quantile]]
            ax_lat.plot(
                [float(p["t"] or 0) - origin for p in shown],
                [p[quantile] for p in shown],
                linestyle="-" if quantile == "p50" else "--",
                marker=".",
                label=f"{key} {quantile}",
            )
    ax_lat.set_ylabel("latency (ms, rolling window)")
    if ax_lat.get_legend_handles_labels()[0]:
        ax_lat.legend(fontsize="small", loc="upper left")
    ax_lat.grid(alpha=0.3)
    rates = timeline_rates(timeline)
    # Markers keep short runs (one or two samples) visible.
    ax_rps.plot([r[0] for r in rates], [r[1] for r in rates], color="tab:blue", marker=".")
    ax_rps.set_ylabel("completed requests/s", color="tab:blue")
    ax_tok = ax_rps.twinx()
    ax_tok.plot([r[0] for r in rates], [r[2] for r in rates], color="tab:orange", marker=".")
    ax_tok.set_ylabel("output tokens/s", color="tab:orange")
    ax_rps.set_xlabel("seconds since start")
    ax_rps.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _first_time(history: Mapping[str, Sequence[Mapping[str, float | None]]]) -> float:
    times = [float(p["t"]) for points in history.values() for p in points if p["t"] is not None]
    return min(times) if times else 0.0
