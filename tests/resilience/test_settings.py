"""ResilienceSettings: flat env names, defaults, validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.resilience.settings import ResilienceSettings


def test_defaults_match_the_documented_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without env vars the documented defaults apply."""
    for name in ResilienceSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = ResilienceSettings()
    assert (settings.concurrency_limit, settings.max_queue_size) == (20, 200)
    assert (settings.queue_timeout_s, settings.request_timeout_s) == (30.0, 300.0)
    assert (settings.breaker_fail_max, settings.breaker_reset_timeout_s) == (5, 30.0)
    assert settings.default_priority == 5 and settings.load_shedding


def test_flat_env_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONCURRENCY_LIMIT, BREAKER_FAIL_MAX... are read without a prefix."""
    monkeypatch.setenv("CONCURRENCY_LIMIT", "7")
    monkeypatch.setenv("BREAKER_FAIL_MAX", "2")
    monkeypatch.setenv("AGING_RATE", "0")
    settings = ResilienceSettings()
    assert settings.concurrency_limit == 7 and settings.breaker_fail_max == 2
    assert settings.aging_rate == 0.0


@pytest.mark.parametrize(
    ("name", "value"),
    [("concurrency_limit", 0), ("queue_timeout_s", 0), ("default_priority", 11)],
)
def test_out_of_range_values_are_refused(name: str, value: float) -> None:
    """Values that cannot work fail validation at start-up."""
    with pytest.raises(ValidationError):
        ResilienceSettings(**{name: value})  # type: ignore[arg-type]
