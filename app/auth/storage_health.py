"""The rate-limit storage's recent failures, as a ``/health/detailed`` component."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class StorageErrors:
    """The last storage failure; the component reads ``degraded`` for ``window_s`` after."""

    backend: str
    window_s: float = 60.0
    last_at: float | None = None
    last_error: str | None = None

    def note(self, operation: str, error: Exception) -> None:
        self.last_at, self.last_error = time.monotonic(), f"{operation}: {error!r}"

    def report(self) -> dict[str, Any]:
        recent = self.last_at is not None and time.monotonic() - self.last_at < self.window_s
        status = "degraded" if recent else "ok"
        return {"status": status, "backend": self.backend, "last_error": self.last_error}
