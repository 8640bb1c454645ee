"""Logging set-up: JSON lines for every logger, request ids, and vLLM's processes too."""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from app.observability.context import RequestContext, bind, unbind
from app.observability.logging import (
    PROPAGATED_LOGGERS,
    RequestIdFilter,
    configure_logging,
    logging_config,
    make_formatter,
    route_vllm_logging,
    write_vllm_logging_config,
)
from app.observability.settings import ObservabilitySettings


def emit(logger_name: str, json_lines: bool = True, **extra: object) -> str:
    """Format one record the way the configured handler would, without touching root."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(json_lines))
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    try:
        logger.info("hello %s", "world", extra=extra)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_line_has_standard_fields_and_extras() -> None:
    """A record becomes one JSON object: time, level, logger, message and extra fields."""
    line = json.loads(emit("test.json", status=200, color_message="\x1b[1mhi"))
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "test.json", "hello world")
    assert line["status"] == 200 and "time" in line
    assert "request_id" not in line and "color_message" not in line


def test_records_inside_a_request_carry_its_id() -> None:
    """Any log line made while a request is bound carries that request's id."""
    token = bind(RequestContext("rid-42"))
    try:
        line = json.loads(emit("test.bound"))
    finally:
        unbind(token)
    assert line["request_id"] == "rid-42"


def test_text_format_shows_the_request_id() -> None:
    """With LOG_JSON=false the text line shows the id, '-' outside a request."""
    assert "[-] hello world" in emit("test.text", json_lines=False)


def test_config_routes_uvicorn_and_vllm_to_the_root_handler() -> None:
    """uvicorn's and vLLM's loggers get no handlers of their own and propagate to root."""
    config = logging_config(ObservabilitySettings(log_level="DEBUG"))
    assert config["root"] == {"level": "DEBUG", "handlers": ["console"]}
    assert set(PROPAGATED_LOGGERS) >= {"uvicorn", "uvicorn.error", "vllm"}
    for name in PROPAGATED_LOGGERS:
        assert config["loggers"][name] == {"handlers": [], "propagate": True}


def test_access_log_is_silenced_unless_asked_for() -> None:
    """uvicorn.access lines are dropped by default (the request line replaces them)."""
    quiet = logging_config(ObservabilitySettings())["loggers"]["uvicorn.access"]
    loud = logging_config(ObservabilitySettings(log_access=True))["loggers"]["uvicorn.access"]
    assert (quiet["propagate"], loud["propagate"]) == (False, True)


def test_vllm_file_leaves_uvicorn_alone() -> None:
    """The part vLLM re-applies at engine start configures root and vllm only."""
    config = logging_config(ObservabilitySettings(), vllm_only=True)
    assert set(config["loggers"]) == {"vllm"} and config["root"]["handlers"] == ["console"]


def test_vllm_config_file_is_stable_per_settings(tmp_path: Path) -> None:
    """Same settings write the same file once; other settings another file; both dictConfigs."""
    first = write_vllm_logging_config(ObservabilitySettings(), str(tmp_path))
    again = write_vllm_logging_config(ObservabilitySettings(), str(tmp_path))
    other = write_vllm_logging_config(ObservabilitySettings(log_json=False), str(tmp_path))
    assert first == again != other
    assert json.loads(first.read_text())["version"] == 1
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".json"]


@pytest.fixture
def vllm_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    monkeypatch.delenv("VLLM_CONFIGURE_LOGGING", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return monkeypatch


def test_vllm_is_pointed_at_our_config(vllm_env: pytest.MonkeyPatch) -> None:
    """By default vLLM is told to configure logging from our file."""
    route_vllm_logging(ObservabilitySettings())
    assert os.environ["VLLM_CONFIGURE_LOGGING"] == "1"
    assert Path(os.environ["VLLM_LOGGING_CONFIG_PATH"]).is_file()


def test_operator_vllm_logging_choices_are_kept(vllm_env: pytest.MonkeyPatch) -> None:
    """An operator's VLLM_LOGGING_CONFIG_PATH, or VLLM_CONFIGURE_LOGGING=0, is left alone."""
    vllm_env.setenv("VLLM_LOGGING_CONFIG_PATH", "/etc/vllm-logging.json")
    route_vllm_logging(ObservabilitySettings())
    assert os.environ["VLLM_LOGGING_CONFIG_PATH"] == "/etc/vllm-logging.json"
    vllm_env.delenv("VLLM_LOGGING_CONFIG_PATH")
    vllm_env.setenv("VLLM_CONFIGURE_LOGGING", "0")
    route_vllm_logging(ObservabilitySettings())
    assert "VLLM_LOGGING_CONFIG_PATH" not in os.environ


@pytest.fixture
def restore_logging(vllm_env: pytest.MonkeyPatch) -> Iterator[None]:
    """Put back the root handlers, the touched loggers and the record factory afterwards."""
    names = ["", *PROPAGATED_LOGGERS, "uvicorn.access", "vllm.engine"]
    saved = {name: _logger_state(logging.getLogger(name or None)) for name in names}
    factory = logging.getLogRecordFactory()
    try:
        yield
    finally:
        logging.setLogRecordFactory(factory)
        for name, state in saved.items():
            logger = logging.getLogger(name or None)
            logger.handlers[:], logger.level, logger.propagate = state


def _logger_state(logger: logging.Logger) -> tuple[list[logging.Handler], int, bool]:
    return list(logger.handlers), logger.level, logger.propagate


def test_every_line_is_json_after_vllm_and_uvicorn_configure_logging(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once configured, vLLM's own logging set-up and uvicorn's log_config=None keep JSON.

    vLLM runs ``configure_logging(LoggingConfig())`` when ``AsyncLLM`` is built and in its
    engine-core processes; with our env it applies our file instead of its text handler.
    """
    vllm_logger = pytest.importorskip("vllm.logger")
    from vllm.config.logging import LoggingConfig

    configure_logging(ObservabilitySettings(log_access=True))
    uvicorn.Config(lambda scope, receive, send: None, log_config=None, log_level="info")
    vllm_logger.configure_logging(LoggingConfig())
    vllm_logger.init_logger("vllm.engine").warning("from vllm")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 1)
    access = ('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/", "1.1", 200)
    logging.getLogger("uvicorn.access").info(*access)
    token = bind(RequestContext("rid-7"))
    logging.getLogger("app.x").info("inside a request")
    unbind(token)
    out = capsys.readouterr()
    lines = {line["message"]: line for line in map(json.loads, out.out.splitlines())}
    assert out.err == ""
    assert lines["from vllm"]["logger"] == "vllm.engine"
    assert lines["Started server process [1]"]["logger"] == "uvicorn.error"
    assert '127.0.0.1:1 - "GET / HTTP/1.1" 200' in lines
    assert lines["inside a request"]["request_id"] == "rid-7"
