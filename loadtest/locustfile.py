"""Locust users for the gateway's OpenAI-compatible API.

Run headless (``python -m loadtest.run`` does this for you)::

    locust -f loadtest/locustfile.py --headless -u 20 -r 20 --host http://127.0.0.1:8000 \\
        --workload short-chat --request-cap 1000 --max-tokens 64

Each user loops without think time, sending chat or completions requests (streamed or not)
as the workload profile (``loadtest/profiles/*.json``) draws them. Events reported to locust:

* ``POST chat`` / ``chat stream`` / ``completion`` / ``completion stream``: the whole request,
  stream included; a non-200, a transport error or an SSE error event is a failure.
* ``TTFT chat`` / ``TTFT completion`` (type ``TTFT``): time to the first chunk carrying text.
* ``ITL chat`` / ``ITL completion`` (type ``ITL``): the mean inter-token gap of one stream.

Every individual gap, exact status buckets and token counts go to ``--metrics-file`` (JSON,
written when locust quits), which the runner merges with locust's ``--json-file``.
``--request-cap N`` stops the runner once N requests completed (locust has no total cap).
Single-process only: the metrics file and the cap are per process.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import User, constant, events, task
from locust.env import Environment

# locust imports this file by path: make the repo root importable for ``loadtest.*``.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from loadtest.workload import (  # noqa: E402
    DEFAULT_PROFILE,
    DONE_MARKER,
    ClientMetrics,
    Profile,
    RequestBudget,
    StreamTimer,
    chunk_text,
    classify_outcome,
    endpoint_path,
    load_profile,
    make_prompt,
    parse_sse_line,
    request_body,
)

log = logging.getLogger("loadtest")


class HttpStatusError(Exception):
    """A non-200 answer; its text (``HTTP 429 rate_limit_exceeded``) groups failures."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status} {detail}".strip())
        self.status = status


class StreamError(Exception):
    """An SSE error event (or an unreadable chunk) after the 200 was sent."""


@dataclass
class _RunState:
    """Per-process state shared by all users (greenlets; no locking needed)."""

    profile: Profile = field(default_factory=lambda: Profile(name="unset"))
    model: str | None = None
    api_key: str = "loadtest"
    timeout_s: float = 300.0
    budget: RequestBudget = field(default_factory=lambda: RequestBudget(None))
    metrics: ClientMetrics = field(default_factory=ClientMetrics)
    metrics_file: str | None = None
    progress_interval_s: float = 0.0
    sampler: Any = None


STATE = _RunState()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("gateway workload (loadtest/locustfile.py)")
    group.add_argument(
        "--workload",
        default=DEFAULT_PROFILE,
        env_var="LOADTEST_WORKLOAD",
        help="profile name in loadtest/profiles/ or a JSON file path",
    )
    group.add_argument(
        "--prompt-tokens",
        type=int,
        default=None,
        env_var="LOADTEST_PROMPT_TOKENS",
        help="prompt length in tokens (about; overrides the profile)",
    )
    group.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        env_var="LOADTEST_MAX_TOKENS",
        help="max_tokens per request (overrides the profile)",
    )
    group.add_argument(
        "--stream-ratio",
        type=float,
        default=None,
        env_var="LOADTEST_STREAM_RATIO",
        help="share of streamed requests, 0..1 (overrides the profile)",
    )
    group.add_argument(
        "--ignore-eos",
        choices=("true", "false"),
        default=None,
        env_var="LOADTEST_IGNORE_EOS",
        help="send ignore_eos so outputs have exactly max_tokens tokens",
    )
    group.add_argument(
        "--model",
        default=None,
        env_var="LOADTEST_MODEL",
        help="model id; default: the first id from GET /v1/models",
    )
    # is_secret (hidden in the web UI) exists only on locust's parser, not on groups.
    parser.add_argument(
        "--api-key",
        default="loadtest",
        env_var="LOADTEST_API_KEY",
        is_secret=True,
        help="sent as 'Authorization: Bearer <key>'",
    )
    group.add_argument(
        "--request-cap",
        type=int,
        default=0,
        env_var="LOADTEST_REQUEST_CAP",
        help="stop after this many completed requests (0: no cap)",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=300.0,
        env_var="LOADTEST_REQUEST_TIMEOUT",
        help="per-request timeout, seconds",
    )
    group.add_argument(
        "--metrics-file",
        default=None,
        env_var="LOADTEST_METRICS_FILE",
        help="write client-side metrics (JSON) here when locust quits",
    )
    group.add_argument(
        "--progress-interval",
        type=float,
        default=0.0,
        env_var="LOADTEST_PROGRESS_INTERVAL",
        help="print a 'progress:' line every N seconds (0: off)",
    )


@events.init.add_listener
def _configure(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library without locust's CLI: keep defaults
        return
    ignore_eos = None if options.ignore_eos is None else options.ignore_eos == "true"
    STATE.profile = load_profile(options.workload).with_overrides(
        prompt_tokens=options.prompt_tokens,
        max_tokens=options.max_tokens,
        stream_ratio=options.stream_ratio,
        ignore_eos=ignore_eos,
    )
    STATE.model = options.model
    STATE.api_key = options.api_key
    STATE.timeout_s = options.request_timeout
    STATE.budget = RequestBudget(options.request_cap or None)
    STATE.metrics_file = options.metrics_file
    STATE.progress_interval_s = options.progress_interval
    log.info("workload %s", STATE.profile)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    STATE.metrics = ClientMetrics(started_at=time.time())
    STATE.metrics.sample(STATE.metrics.started_at or 0.0)  # the timeline starts at zero
    if STATE.model is None:
        try:
            STATE.model = fetch_model_id(environment.host or "", STATE.api_key, STATE.timeout_s)
        except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
            log.error("cannot read the model id from %s/v1/models: %s", environment.host, exc)
            environment.process_exit_code = 2
            gevent.spawn(_quit, environment)
            return
        log.info("model from /v1/models: %s", STATE.model)
    STATE.sampler = gevent.spawn(_sample_forever)


@events.test_stop.add_listener
def _on_test_stop(**_: Any) -> None:
    if STATE.sampler is not None:
        STATE.sampler.kill(block=False)
        STATE.sampler = None
    now = time.time()
    # The request cap already stamped the end when its last request finished; keep that.
    if STATE.metrics.stopped_at is None:
        STATE.metrics.stopped_at = now
    STATE.metrics.sample(now)


@events.quitting.add_listener
def _on_quitting(**_: Any) -> None:
    if STATE.metrics_file:
        path = Path(STATE.metrics_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = STATE.metrics.to_json()
        data.update(model=STATE.model, profile=asdict(STATE.profile))
        path.write_text(json.dumps(data, indent=2))


def fetch_model_id(host: str, api_key: str, timeout_s: float) -> str:
    """The first model id served at ``host`` (``GET /v1/models``)."""
    response = requests.get(
        f"{host.rstrip('/')}/v1/models", headers=_headers(api_key), timeout=timeout_s
    )
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def _quit(environment: Environment) -> None:
    if environment.runner is not None:
        environment.runner.quit()


def _sample_forever() -> None:
    """Every second: a timeline point; every ``--progress-interval``: a progress line."""
    last_print = time.time()
    while True:
        gevent.sleep(1.0)
        now = time.time()
        STATE.metrics.sample(now)
        if STATE.progress_interval_s > 0 and now - last_print >= STATE.progress_interval_s:
            last_print = now
            print(_progress_line(now), flush=True)


def _progress_line(now: float) -> str:
    metrics = STATE.metrics
    elapsed = max(now - (metrics.started_at or now), 1e-9)
    failed = metrics.completed - metrics.statuses.get("200", 0)
    cap = STATE.budget.total or "-"
    return (
        f"progress: {elapsed:6.0f}s  {metrics.completed}/{cap} requests  {failed} failed  "
        f"{metrics.completed / elapsed:6.2f} req/s  "
        f"{metrics.output_tokens / elapsed:8.1f} output tok/s"
    )


class GatewayUser(User):
    """One closed-loop client: sends a request, waits for it to finish, sends the next."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.session = requests.Session()
        self.session.headers.update(_headers(STATE.api_key))
        self.rng = random.Random()

    def on_stop(self) -> None:
        self.session.close()

    @task
    def one_request(self) -> None:
        if STATE.model is None or not STATE.budget.claim():
            gevent.sleep(0.5)  # cap reached (or no model): idle until the runner quits
            return
        try:
            kind, stream = STATE.profile.pick_kind(self.rng)
            self._send(kind, stream)
        finally:
            if STATE.budget.finish():
                STATE.metrics.stopped_at = time.time()
                gevent.spawn(_quit, self.environment)

    def _send(self, kind: str, stream: bool) -> None:
        profile = STATE.profile
        prompt = make_prompt(profile.prompt_tokens, self.rng)
        body = request_body(kind, str(STATE.model), prompt, profile, stream)
        url = f"{(self.host or '').rstrip('/')}{endpoint_path(kind)}"
        timer = StreamTimer(started=time.perf_counter())
        status: int | None = None
        error: BaseException | None = None
        usage: dict[str, Any] = {}
        size = 0
        try:
            with self.session.post(url, json=body, stream=stream, timeout=STATE.timeout_s) as resp:
                status = resp.status_code
                if status != 200:
                    error = HttpStatusError(status, _error_detail(resp))
                elif stream:
                    usage, size, error = _consume_stream(resp, timer)
                else:
                    size = len(resp.content)
                    usage = resp.json().get("usage") or {}
        except (requests.RequestException, ValueError) as exc:
            error = exc
        elapsed_ms = (time.perf_counter() - timer.started) * 1000.0
        output_tokens = int(usage.get("completion_tokens") or timer.text_chunks)
        STATE.metrics.record(
            classify_outcome(status, error), int(usage.get("prompt_tokens") or 0), output_tokens
        )
        self._fire("POST", f"{kind} stream" if stream else kind, elapsed_ms, size, error)
        if error is None and stream:
            self._fire_stream_events(kind, timer)

    def _fire_stream_events(self, kind: str, timer: StreamTimer) -> None:
        if timer.ttft_ms is not None:
            self._fire("TTFT", f"TTFT {kind}", timer.ttft_ms, 0, None)
        if timer.mean_gap_ms is not None:
            STATE.metrics.gaps_ms.extend(timer.gaps_ms)
            self._fire("ITL", f"ITL {kind}", timer.mean_gap_ms, 0, None)

    def _fire(
        self, kind: str, name: str, ms: float, size: int, error: BaseException | None
    ) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=ms,
            response_length=size,
            exception=error,
            context={},
        )


def _consume_stream(
    resp: requests.Response, timer: StreamTimer
) -> tuple[dict[str, Any], int, BaseException | None]:
    """Read an SSE body to ``[DONE]``, timing text chunks; returns (usage, bytes, error)."""
    usage: dict[str, Any] = {}
    size = 0
    # chunk_size=None yields data as it arrives, so chunk times are not delayed by buffering.
    # (requests accepts None at runtime; its type stubs only list int.)
    for raw in resp.iter_lines(chunk_size=None):  # type: ignore[call-overload]
        size += len(raw) + 1
        try:
            event = parse_sse_line(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return usage, size, StreamError(f"bad SSE chunk: {exc}")
        if event == DONE_MARKER:
            return usage, size, None
        if not isinstance(event, dict):
            continue
        if "error" in event:
            return usage, size, StreamError(_describe_error(event["error"]))
        if chunk_text(event):
            timer.on_text(time.perf_counter())
        if event.get("usage"):
            usage = event["usage"]
    return usage, size, StreamError("stream ended without [DONE]")


def _error_detail(resp: requests.Response) -> str:
    try:
        return _describe_error(resp.json().get("error") or {})
    except ValueError:
        return ""


def _describe_error(error: Any) -> str:
    """``code`` or ``type`` of an OpenAI error envelope: few distinct values, so failures
    group into a handful of rows instead of one per message."""
    if not isinstance(error, dict):
        return str(error)[:80]
    return str(error.get("code") or error.get("type") or "")[:80]
