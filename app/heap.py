"""The start-up heap, moved out of the cyclic garbage collector's way.

Importing the tokenizer's libraries (and, for a local engine, vLLM and torch) leaves a
large heap of objects that live as long as the process. Every full collection walks all
of them: measured here, one took 330 ms of a relay's CPU and held the event loop for as
long, in the middle of streams. Once a deployment has started, what is alive is moved to
the permanent generation (``gc.freeze``), as vLLM's own server does after start-up: later
collections walk only what requests create. Frozen objects are still freed by reference
counting; only a cycle among them would outlive its use, and start-up's garbage is
collected first.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_startup_heap(after: str) -> None:
    """Collect, then freeze what survives (``after``: what just started, for the log)."""
    began = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "start-up heap frozen",
        extra={
            "after": after,
            "frozen_objects": gc.get_freeze_count(),
            "took_ms": round((time.perf_counter() - began) * 1000, 1),
        },
    )
