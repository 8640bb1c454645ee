"""``RequestRecorder``: what the generation service records about one request.

Built once per request with :meth:`GatewayMetrics.recorder`, which resolves every
``.labels(...)`` up front so the per-step path is one clock read and one histogram observe.
Per request::

    rec = metrics.recorder(model)              # after the model name is validated
    rec.admitted(slot_wait_s, priority)        # once a queue slot is granted
    async for step in engine.generate(...):
        rec.token(sum(d.num_tokens for d in step.choices))   # once per engine step
    rec.finish(prompt_tokens=len(prompt_ids))  # or finish(status=.., error_code=.., ...)

Request counts and end-to-end latency are the middleware's (it sees every response,
including those refused before the service runs); the recorder fills the shared
:class:`RequestContext` so the middleware's log line and status carry the outcome.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from app.observability.context import RequestContext, current_request, valid_request_id

if TYPE_CHECKING:
    from app.observability.metrics import GatewayMetrics


class RequestRecorder:
    """Per-request recording; methods are cheap and never raise on repeated calls."""

    __slots__ = ("_completion", "_itl", "_last", "_prompt", "_queue", "_tokens", "_ttft", "ctx")

    def __init__(
        self, metrics: GatewayMetrics, model: str, context: RequestContext | None = None
    ) -> None:
        ctx = context or current_request() or RequestContext(valid_request_id(None))
        ctx.model = model
        route = ctx.route
        self.ctx = ctx
        self._ttft = metrics.ttft.labels(route, model)
        self._itl = metrics.itl.labels(route, model)
        self._prompt = metrics.prompt_tokens.labels(model)
        self._completion = metrics.completion_tokens.labels(model)
        self._queue = metrics.queue_wait
        self._last: float | None = None
        self._tokens = 0

    def admitted(self, wait_s: float, priority: int | None = None) -> None:
        """The request left the admission queue after ``wait_s`` seconds."""
        self._queue.observe(wait_s)
        self.ctx.queue_wait_s = wait_s
        self.ctx.priority = priority

    def first_token(self) -> None:
        """Observe time to first token (from request arrival); later calls do nothing."""
        if self._last is None:
            self._last = now = time.perf_counter()
            ttft = now - self.ctx.started
            self._ttft.observe(ttft)
            self.ctx.ttft_s = ttft

    def token(self, n: int = 1) -> None:
        """An engine step produced ``n`` tokens (summed over choices); call once per step.

        The first step observes TTFT; each later one observes the time since the previous
        step as one inter-token latency. Steps with no tokens are ignored.
        """
        if n <= 0:
            return
        if self._last is None:
            self.first_token()
        else:
            now = time.perf_counter()
            self._itl.observe(now - self._last)
            self._last = now
        self._tokens += n

    def content(self, prompt: Any = None, completion: str | None = None) -> None:
        """Keep prompt/completion for the log line, only when ``LOG_PROMPTS`` is on."""
        if self.ctx.log_prompts:
            self.ctx.prompt = prompt if prompt is not None else self.ctx.prompt
            self.ctx.completion = completion if completion is not None else self.ctx.completion

    def finish(
        self,
        status: int | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int | None = None,
        error_code: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Count tokens and note the outcome; a second call does nothing.

        ``completion_tokens`` defaults to the sum passed to :meth:`token`. A ``status`` of
        400 or more, or an ``error_code``, marks the request failed — also after a streamed
        200, so a broken stream counts with the error's status.
        """
        if self.ctx.completion_tokens is not None:
            return
        completion = self._tokens if completion_tokens is None else completion_tokens
        self._prompt.inc(prompt_tokens)
        self._completion.inc(completion)
        self.ctx.prompt_tokens, self.ctx.completion_tokens = prompt_tokens, completion
        if error_code is not None or (status is not None and status >= 400):
            self.ctx.fail(status or 500, error_code, reason)
