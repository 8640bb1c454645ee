"""Liveness and readiness probes."""

from __future__ import annotations

import httpx


def test_healthz(http: httpx.Client) -> None:
    """/healthz answers 200 while the process runs."""
    assert http.get("/healthz").json() == {"status": "ok"}


def test_readyz_when_engine_loaded(http: httpx.Client) -> None:
    """/readyz is 200 once the engine is loaded."""
    assert http.get("/readyz").status_code == 200
