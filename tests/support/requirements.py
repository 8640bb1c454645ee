"""Tests that need a program of the machine (redis-server, promtool, terraform, ...).

``python dev.py test`` and ``.ci/run`` install what the suite needs, so under CI (env ``CI``
true) a missing program is a set-up failure; on a developer's machine the test is skipped.
Every message says what installs the program, which is what lifts the skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(message: str) -> NoReturn:
    """Fail under CI, skip elsewhere; ``message`` names the program and how to install it."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
