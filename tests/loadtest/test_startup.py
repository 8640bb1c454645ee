"""loadtest.startup (profile-startup): phase tables, --env parsing, the printed report."""

from __future__ import annotations

import pytest

from loadtest.startup import Timeline, parse_env, render


def test_phases_are_listed_in_time_order_with_the_step_from_the_one_before() -> None:
    timeline = Timeline(100.0)
    timeline.mark("ready", 124.0)
    timeline.mark("gateway listening", 101.5)
    timeline.mark("ready", 130.0)  # the first time a phase ends is the one kept
    assert timeline.rows() == [("gateway listening", 1.5, 1.5), ("ready", 24.0, 22.5)]


def test_env_pairs_are_parsed_and_a_malformed_one_stops_the_run() -> None:
    assert parse_env(["STANDBY_ENGINE=true", "A=b=c"]) == {"STANDBY_ENGINE": "true", "A": "b=c"}
    with pytest.raises(SystemExit):
        parse_env(["NOVALUE"])


def test_the_report_shows_start_up_restart_memory_and_shutdown() -> None:
    report = {
        "env": {"LOG_JSON": "false"},
        "start": {"gateway listening": 1.3, "ready": 24.2},
        "restarts": [{"not ready (noticed)": 0.1, "ready": 4.7}],
        "memory_ready": {"rss_mib": 1704, "children_rss_mib": 1055, "uss_mib": 1164},
        "shutdown": {"seconds": 4.2, "exit_code": 0, "left_behind": []},
    }
    text = render(report)
    assert "ready                    24.20  (+22.90)" in text
    assert "restart 1 after SIGKILL" in text and "4.70" in text
    assert "RSS 1704 MiB" in text and "USS 1164 MiB" in text
    assert "SIGTERM: exit 0 after 4.2 s, processes left behind: none" in text
