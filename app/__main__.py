"""``python -m app [--host H] [--port P]``: serve the gateway (one uvicorn worker per engine)."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from app.config import ConfigError, load_settings
from app.main import create_app


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--host", default=settings.server.host)
    parser.add_argument("--port", type=int, default=settings.server.port)
    args = parser.parse_args(argv)
    fatal: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", workers=1)
    server = uvicorn.Server(config)
    server.run()
    if fatal:
        print(f"error: the engine could not start: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
