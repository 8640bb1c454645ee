"""Process-wide logging: one format (JSON by default) for the gateway, uvicorn and vLLM.

Call :func:`configure_logging` once per process, from the entry point, before ``vllm`` is
imported (vLLM logs warnings at import, e.g. about Triton, which would otherwise print as
plain text) and after — or instead of — uvicorn's own logging set-up:

- it installs one stdout handler on the root logger and makes ``uvicorn``,
  ``uvicorn.error`` and ``vllm`` propagate to it (no handlers of their own), so nothing
  prints in another format. ``uvicorn.access`` is silenced unless ``LOG_ACCESS=true``:
  the request line of :class:`~app.observability.middleware.RequestContextMiddleware`
  says more (request id, model, tokens) and repeating it doubles log volume;
- it writes the root and ``vllm`` part of that ``dictConfig`` to a file and points
  ``VLLM_LOGGING_CONFIG_PATH`` at it (with ``VLLM_CONFIGURE_LOGGING=1``). vLLM applies that
  file instead of its text handler whenever it configures logging: when ``AsyncLLM`` is
  built, and in its engine-core processes, which may be *spawned* (on a GPU) and then
  inherit nothing from this process. An operator's own ``VLLM_LOGGING_CONFIG_PATH``, or
  ``VLLM_CONFIGURE_LOGGING=0``, is kept.

Build ``uvicorn.Config`` with ``log_config=None``, or call this after it: uvicorn's default
``log_config`` re-installs its text handlers. Do not call it from ``create_app``: tests
build many apps and pytest's log capture lives on the root logger.
Every record made inside a request carries its ``request_id`` (:class:`RequestIdFilter`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.config
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from app.observability.context import current_request_id
from app.observability.settings import ObservabilitySettings

PROPAGATED_LOGGERS = ("uvicorn", "uvicorn.error", "vllm")
ACCESS_LOGGER = "uvicorn.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# uvicorn adds an ANSI-coloured copy of each message; vLLM tags records with its process name.
_DROPPED_ATTRS = ("color_message", "vllm_process_name", "taskName")
_OUR_VLLM_CONFIG_PREFIX = "gateway-vllm-logging-"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records made inside a request (``"-"`` outside, for text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id() or "-"
        return True


class GatewayJsonFormatter(JsonFormatter):
    """JSON lines: ``time``, ``level``, ``logger``, ``message``, then any ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, *_DROPPED_ATTRS],
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # Outside a request the filter leaves "-" for the text format; JSON omits it.
        if log_data.get("request_id") == "-":
            del log_data["request_id"]
        return log_data


def make_formatter(json_lines: bool = True) -> logging.Formatter:
    """The one formatter every handler uses (referenced by name from the vLLM config file)."""
    return GatewayJsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT)


def logging_config(
    settings: ObservabilitySettings,
    stream: IO[str] | str = "ext://sys.stdout",
    vllm_only: bool = False,
) -> dict[str, Any]:
    """The ``dictConfig`` applied here; ``vllm_only``: the root-and-``vllm`` part for vLLM."""
    names = ("vllm",) if vllm_only else PROPAGATED_LOGGERS
    named: dict[str, Any] = {name: {"handlers": [], "propagate": True} for name in names}
    if not vllm_only:
        named[ACCESS_LOGGER] = {"handlers": [], "propagate": settings.log_access}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {
            "gateway": {"()": f"{__name__}.make_formatter", "json_lines": settings.log_json}
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "gateway",
                "filters": ["request_id"],
                "stream": stream,
            }
        },
        "root": {"level": settings.log_level, "handlers": ["console"]},
        "loggers": named,
    }


def configure_logging(settings: ObservabilitySettings, stream: IO[str] | None = None) -> None:
    """Configure this process's logging and vLLM's (see the module docstring).

    Idempotent; replaces every handler on the root logger. ``stream`` (default stdout) is
    for this process only: vLLM's processes always log to stdout.
    """
    logging.config.dictConfig(logging_config(settings, stream or "ext://sys.stdout"))
    route_vllm_logging(settings)


def route_vllm_logging(settings: ObservabilitySettings) -> None:
    """Point vLLM at our config file unless the operator configured vLLM logging."""
    configured = os.environ.get("VLLM_LOGGING_CONFIG_PATH")
    if configured and not Path(configured).name.startswith(_OUR_VLLM_CONFIG_PREFIX):
        return  # the operator's own vLLM logging config wins
    if os.environ.get("VLLM_CONFIGURE_LOGGING") == "0":
        return  # vLLM leaves its logger alone; it propagates to our root handler
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(write_vllm_logging_config(settings))
    os.environ["VLLM_CONFIGURE_LOGGING"] = "1"


def write_vllm_logging_config(
    settings: ObservabilitySettings, directory: str | None = None
) -> Path:
    """Write :func:`logging_config` as JSON for vLLM; the name is the content's hash.

    Same settings → same file, so repeated calls (tests, restarts) do not pile files up.
    """
    # Only root and vllm: re-applied in this process when the engine starts, it must not
    # undo what uvicorn or the operator did to other loggers meanwhile.
    text = json.dumps(logging_config(settings, vllm_only=True), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    folder = Path(directory or tempfile.gettempdir())
    path = folder / f"{_OUR_VLLM_CONFIG_PREFIX}{digest}.json"
    if not path.exists():
        # Write then rename, so a process starting meanwhile never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_OUR_VLLM_CONFIG_PREFIX, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    return path
