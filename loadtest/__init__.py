"""Load testing (locust) and the side-by-side benchmark against vLLM's own server.

``python -m loadtest.run`` drives locust against the gateway; ``python -m loadtest.bench``
compares the gateway with ``vllm.entrypoints.openai.api_server`` using vLLM's serving benchmark.
Pure helpers live in :mod:`loadtest.workload`, :mod:`loadtest.reporting` and
:mod:`loadtest.bench_report` so they can be unit-tested without a server or locust.
"""
