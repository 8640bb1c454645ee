"""loadtest.profile (py-spy stacks into own and inclusive shares) and loadtest.step_cost."""

from __future__ import annotations

import pytest

from loadtest.profile import Profile

STACKS = [
    "main (app.py:1);serve (app.py:9);send (uvicorn.py:554) 6",
    "main (app.py:1);serve (app.py:10);events (svc.py:70);events (svc.py:71) 3",
    "main (app.py:1);idle (loop.py:3) 1",
    "",
    "garbage-without-a-count",
]


def test_samples_are_counted_per_function_not_per_line() -> None:
    profile = Profile.from_collapsed(STACKS)
    assert profile.total == 10
    assert profile.own["send (uvicorn.py)"] == 6
    assert profile.inclusive["serve (app.py)"] == 9  # lines 9 and 10 are one function
    assert profile.inclusive["events (svc.py)"] == 3  # recursion is not counted twice
    assert profile.inclusive["main (app.py)"] == 10


def test_top_gives_shares_and_render_lists_both_views() -> None:
    profile = Profile.from_collapsed(STACKS)
    assert profile.top("own", 2) == [
        ("send (uvicorn.py)", pytest.approx(0.6)),
        ("events (svc.py)", pytest.approx(0.3)),
    ]
    text = profile.render(3)
    assert text.startswith("10 samples")
    assert "-- top 3 by own time" in text and " 60.0%  send (uvicorn.py)" in text
    assert "-- top 3 by inclusive time" in text and "100.0%  main (app.py)" in text


def test_step_cost_reads_every_item_each_way() -> None:
    """The deadline micro-benchmark runs all three ways to the end and gives a figure each."""
    import asyncio

    from loadtest.step_cost import WAYS, measure

    figures = asyncio.run(measure(200, 1))
    assert set(figures) == set(WAYS) and all(value > 0 for value in figures.values())
