"""Command line: ``fastws serve``.

Settings come from defaults, then ``FASTWS_*`` environment variables, then flags.
``DEBUG=websocket:*`` (as the seed used) or ``--log-level debug`` turns on debug logs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Sequence

from . import __version__
from .config import Settings
from .exceptions import ConfigError

__all__ = ["main"]


def _debug_from_env(env: dict[str, str] | os._Environ[str]) -> bool:
    value = env.get("DEBUG", "")
    return any(part.strip() in ("websocket:*", "websocket", "fastws:*", "*") for part in value.split(","))


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # picows logs every connection at INFO; keep it quiet unless debugging.
    if level.lower() != "debug":
        logging.getLogger("fastws.picows").setLevel(logging.WARNING)


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        "host": args.host,
        "port": args.port,
        "legacy_url": args.legacy_url,
        "log_level": args.log_level,
        "max_message_size": args.max_message_size,
    }
    overrides = {name: value for name, value in overrides.items() if value is not None}
    try:
        settings = Settings.load(config=args.config, **overrides)
        workers = (os.cpu_count() or 1) if args.workers is None else args.workers
        if workers < 0:
            raise ConfigError("--workers must be 0 (no supervisor) or more")
    except ConfigError as exc:
        print(f"fastws: {exc}", file=sys.stderr)
        return 2
    level = "debug" if _debug_from_env(os.environ) else settings.log_level
    _configure_logging(level)
    if workers == 0:
        from .server.app import serve

        _run(serve(settings))
        return 0
    from .server.supervisor import Supervisor

    if settings.port == 0:
        # every worker must serve the one port the supervisor bound
        overrides.pop("port", None)
    supervisor = Supervisor(settings, workers, args.config, overrides, level)
    _run(supervisor.run())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastws", description="fastws: multi-tenant WebSocket pub/sub server")
    parser.add_argument("--version", action="version", version=f"fastws {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to bind (FASTWS_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (FASTWS_PORT, default 8765)")
    serve.add_argument("--legacy-url", help="URL of the legacy WebSocket system (FASTWS_LEGACY_URL)")
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level (FASTWS_LOG_LEVEL, default info; DEBUG=websocket:* means debug)",
    )
    serve.add_argument("--max-message-size", type=int, help="largest WebSocket message in bytes (FASTWS_MAX_MESSAGE_SIZE)")
    serve.add_argument(
        "--workers", type=int,
        help="worker processes sharing the port (default: the number of CPUs; 0: one in-process worker, no supervisor)",
    )
    serve.add_argument("--config", help="TOML configuration file (settings and [flags]); SIGHUP reloads it")
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
