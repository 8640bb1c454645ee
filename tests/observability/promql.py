"""Test helpers for PromQL: find promtool, list the metric names an expression reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.support.requirements import missing

INSTALL = "apt-get install -y --no-install-recommends prometheus"
GRAFANA_RANGES = ("$__rate_interval", "$__interval", "$__range")

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_CLAUSES = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAMES = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}


def promtool() -> str:
    """promtool's path; skipped locally without it, but a failure in CI (env CI set)."""
    path = shutil.which("promtool")
    if path is None:
        missing(f"promtool not installed; `{INSTALL}` or `python dev.py test` lifts this")
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's range macros with a fixed range so promtool can parse the expr."""
    for macro in GRAFANA_RANGES:
        expr = expr.replace(macro, "1m")
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: not functions, keywords, labels or numbers."""
    rest = _STRINGS.sub('""', expr)
    rest = _MATCHERS.sub(" ", rest)
    rest = _RANGES.sub(" ", rest)
    rest = _CLAUSES.sub(" ", rest)
    return {name for name in _NAMES.findall(rest) if name.lower() not in _KEYWORDS}
