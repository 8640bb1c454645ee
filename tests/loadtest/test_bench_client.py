"""The bench client's CPU meter around vLLM's ``benchmark()``."""

from __future__ import annotations

import asyncio
from typing import Any

from loadtest.bench_client import _metered


def test_the_client_adds_its_cpu_seconds_over_the_benchmark_to_the_result() -> None:
    async def benchmark(spin: int) -> dict[str, Any]:
        total = sum(i * i for i in range(spin))  # CPU work the meter must see
        return {"completed": 1, "total": total}

    result = asyncio.run(_metered(benchmark)(spin=2_000_000))
    assert result["completed"] == 1 and result["total"] > 0
    assert 0 < result["client_cpu_s"] < 30
