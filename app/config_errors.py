"""``ConfigError``: a bad setting found at start-up, told in one human-readable line.

A leaf module (it imports nothing of the app) so that every settings group and loader can
raise it without importing the others.
"""

from __future__ import annotations


class ConfigError(SystemExit):
    """Raised with one human-readable line when the environment holds a bad value."""
