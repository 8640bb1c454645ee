"""ObservabilitySettings: flat env names, safe defaults, one clear error per bad value."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.observability.settings import ObservabilitySettings


def test_defaults_are_production_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON logs on, prompts off, metrics on, INFO level."""
    for name in ("LOG_LEVEL", "LOG_JSON", "LOG_PROMPTS", "METRICS_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    settings = ObservabilitySettings()
    assert (settings.log_json, settings.log_prompts, settings.metrics_enabled) == (
        True,
        False,
        True,
    )
    assert settings.log_level == "INFO" and settings.alert_error_ratio == 0.05


def test_flat_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOG_*, METRICS_ENABLED and ALERT_* are read from the environment as is."""
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("LOG_JSON", "false")
    monkeypatch.setenv("LOG_PROMPTS", "true")
    monkeypatch.setenv("METRICS_ENABLED", "0")
    monkeypatch.setenv("ALERT_P95_TTFT_S", "1.5")
    settings = ObservabilitySettings()
    assert (settings.log_level, settings.log_json, settings.log_prompts) == ("DEBUG", False, True)
    assert settings.metrics_enabled is False and settings.alert_p95_ttft_s == 1.5


@pytest.mark.parametrize(
    ("name", "value"),
    [("LOG_LEVEL", "LOUD"), ("ALERT_ERROR_RATIO", "1.5"), ("ALERT_HISTORY_SIZE", "0")],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Out-of-range thresholds and unknown levels fail validation, naming the field."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.lower()):
        ObservabilitySettings()
