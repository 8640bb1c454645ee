"""StartupForecast: Retry-After while an engine starts is the measured start-up time left."""

from __future__ import annotations

import pytest

from app.resilience.forecast import MAX_RETRY_AFTER_S, StartupForecast


def test_the_first_guess_stands_until_a_start_is_measured() -> None:
    """Before any start-up is measured the first guess is the expectation."""
    forecast = StartupForecast(first_guess_s=30)
    assert forecast.expected_s() == 30
    assert forecast.remaining_s(12) == 18


def test_measured_starts_replace_the_guess_as_an_ewma() -> None:
    """The first measurement replaces the guess; later ones move the average by alpha."""
    forecast = StartupForecast(first_guess_s=30, alpha=0.5)
    forecast.record(10)
    assert forecast.expected_s() == 10
    forecast.record(4)
    assert forecast.expected_s() == 7 and forecast.last_s == 4


def test_restarts_are_forecast_from_restarts_not_from_a_slow_first_start() -> None:
    """A first start on a new machine pays one-off work (37 s here against a 4 s restart):
    a restart is expected to take the first start's repeatable part until restarts are
    measured, then what they took."""
    forecast = StartupForecast(first_guess_s=30, alpha=0.5)
    forecast.record(37, repeatable_s=5)
    assert forecast.expected_s() == 37
    assert forecast.expected_s(restart=True) == 5
    assert forecast.remaining_s(2, restart=True) == 3
    forecast.record(4, restart=True)
    assert forecast.expected_s(restart=True) == 4 and forecast.expected_s() == 37


def test_without_a_repeatable_part_a_restart_is_expected_to_take_the_first_start() -> None:
    forecast = StartupForecast(first_guess_s=30)
    assert forecast.expected_s(restart=True) == 30
    forecast.record(12)
    assert forecast.expected_s(restart=True) == 12


def test_what_is_left_is_never_below_one_second_nor_above_what_the_sdk_honours() -> None:
    """Past the expectation a client is told 1 s, never 0; a long start is told at most the
    60 s the OpenAI SDK honours (a longer hint would make it give up or ignore it)."""
    forecast = StartupForecast(first_guess_s=5)
    assert forecast.remaining_s(4.5) == 1.0
    assert forecast.remaining_s(60) == 1.0
    assert StartupForecast(first_guess_s=300).remaining_s(0) == MAX_RETRY_AFTER_S == 60


def test_a_non_positive_guess_is_refused() -> None:
    with pytest.raises(ValueError):
        StartupForecast(first_guess_s=0)
