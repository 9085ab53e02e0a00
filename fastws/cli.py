"""Command line: ``fastws serve``, ``flag``, ``publish``, ``selftest``.

Settings come from defaults, then ``FASTWS_*`` environment variables, then flags.
``DEBUG=websocket:*`` (as the seed used) or ``--log-level debug`` turns on debug logs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Sequence

from . import __version__, logs
from .auth import Authenticator
from .config import Settings
from .exceptions import ConfigError

__all__ = ["main"]


def _debug_from_env(env: dict[str, str] | os._Environ[str]) -> bool:
    value = env.get("DEBUG", "")
    return any(part.strip() in ("websocket:*", "websocket", "fastws:*", "*") for part in value.split(","))


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``7d`` or a number of seconds."""
    unit = _UNITS.get(text[-1:].lower())
    try:
        value = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 90s, 30m, 1h, 7d)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the lifetime must be positive")
    return value


def _token(args: argparse.Namespace) -> int:
    try:
        authenticator = Authenticator.from_settings(Settings.load(config=args.config))
        if authenticator is None:
            raise ConfigError("no signing key: set FASTWS_JWT_SECRET or FASTWS_JWT_KEYS_FILE (or jwt_secret in --config)")
        print(authenticator.mint(args.tenant, args.user, args.admin, args.ttl, args.kid))
    except ConfigError as exc:
        print(f"fastws: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        "host": args.host,
        "port": args.port,
        "legacy_url": args.legacy_url,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "access_log": args.access_log,
        "max_message_size": args.max_message_size,
        "broker": ",".join(args.broker) if args.broker else None,
        "redis_prefix": args.redis_prefix,
        "trusted_proxies": args.trusted_proxies,
    }
    overrides = {name: value for name, value in overrides.items() if value is not None}
    try:
        settings = Settings.load(config=args.config, **overrides)
        workers = (os.cpu_count() or 1) if args.workers is None else args.workers
        if workers < 0:
            raise ConfigError("--workers must be 0 (no supervisor) or more")
        if settings.broker:
            try:
                import redis.asyncio  # noqa: F401
            except ImportError:
                raise ConfigError("--broker needs redis-py: pip install 'fastws[redis]' "
                                  "(from a clone: pip install '.[redis]')") from None
    except ConfigError as exc:
        print(f"fastws: {exc}", file=sys.stderr)
        return 2
    level = "debug" if _debug_from_env(os.environ) else settings.log_level
    logs.configure(level, settings.log_format, None, logs.secrets_of(settings))
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


def _http(method: str, url: str, body: object = None, token: str | None = None) -> tuple[int, dict]:
    """One JSON request to a running server (urllib: no dependency for a CLI call)."""
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _flag(args: argparse.Namespace) -> int:
    """fastws flag NAME [VALUE]: read or change the running server's flags."""
    base = args.base_url.rstrip("/")
    if args.name == "show":
        status, body = _http("GET", f"{base}/api/websocket/status?detailed=true", token=args.token)
        if status != 200:
            print(f"fastws: {status} {body}", file=sys.stderr)
            return 1
        print(_dumps(body["websocket"]["flags"]))
        return 0
    if args.name == "websocket_v2":
        change: dict[str, object] = {"websocket_v2": args.value == "on"}
    elif args.name == "rollout":
        change = {"rollout_percent": int(args.value)}
    elif args.name == "existing":
        change = {"existing": args.value}
    else:  # tenant
        change = {"tenants": {args.tenant: None if args.value == "default" else args.value}}
    status, body = _http("PUT", f"{base}/api/websocket", {"flags": change}, token=args.token)
    if status != 200:
        print(f"fastws: {status} {body.get('error', body)}", file=sys.stderr)
        return 1
    print(_dumps(body["flags"]))
    return 0


def _publish(args: argparse.Namespace) -> int:
    """fastws publish: one event over the REST API."""
    import json

    from .publisher import PublishError, publish

    try:
        data = json.loads(args.data) if args.data is not None else None
    except ValueError as exc:
        print(f"fastws: --data is not JSON: {exc}", file=sys.stderr)
        return 2
    try:
        result = publish(
            args.base_url, args.tenant, args.user, args.event, data, channel=args.channel, source=args.source,
            priority=args.priority, target_user_id=args.target_user, token=args.token,
        )
    except PublishError as exc:
        print(f"fastws: {exc.status} {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fastws: cannot reach {args.base_url}: {exc}", file=sys.stderr)
        return 1
    print(_dumps(result))
    return 0


def _listen(args: argparse.Namespace) -> int:
    """fastws listen: print the welcome and every event a connection receives, one JSON per line,
    reconnecting and recovering as fastws.Client does (Ctrl-C ends it)."""
    import json

    from .client import AuthenticationError, Client, ClientError

    filters = {}
    for key, value in (("eventTypes", args.event_types), ("sources", args.sources), ("priority", args.priority)):
        if value:
            filters[key] = [item for item in value.split(",") if item]

    async def listen() -> int:
        client = Client(args.ws_url, args.tenant, args.user, token=args.token, filters=filters or None,
                        on_error=lambda error: print(f"fastws: {error}", file=sys.stderr))
        try:
            print(json.dumps(await client.connect(), ensure_ascii=False, separators=(",", ":")), flush=True)
            for channel in args.channel or ():
                print(json.dumps(await client.subscribe(channel), ensure_ascii=False, separators=(",", ":")), flush=True)
            async for event in client:
                print(json.dumps(event, ensure_ascii=False, separators=(",", ":")), flush=True)
        except AuthenticationError as exc:
            print(f"fastws: {exc}", file=sys.stderr)
            return 1
        except (ClientError, OSError) as exc:
            print(f"fastws: cannot listen at {args.ws_url}: {exc}", file=sys.stderr)
            return 1
        finally:
            await client.disconnect()
        return 0

    try:
        return asyncio.run(listen())
    except KeyboardInterrupt:
        return 0


def _selftest(args: argparse.Namespace) -> int:
    from .selftest import default_urls, run_selftest

    base, ws = default_urls(args.base_url, args.ws_url)
    print(f"fastws selftest: {base} and {ws}")
    return _run_result(run_selftest(base, ws, args.token))


def _run_result(coro: object) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def _dumps(value: object) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=True)


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
    serve.add_argument(
        "--log-format", choices=["text", "json"],
        help="text lines, or one JSON object per line (FASTWS_LOG_FORMAT, default text)",
    )
    serve.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=None,
        help="one line per HTTP response, logger fastws.access (FASTWS_ACCESS_LOG, default on)",
    )
    serve.add_argument("--max-message-size", type=int, help="largest WebSocket message in bytes (FASTWS_MAX_MESSAGE_SIZE)")
    serve.add_argument(
        "--workers", type=int,
        help="worker processes sharing the port (default: the number of CPUs; 0: one in-process worker, no supervisor)",
    )
    serve.add_argument("--config", help="TOML configuration file (settings and [flags]); SIGHUP reloads it")
    serve.add_argument(
        "--broker", action="append", metavar="URL",
        help="Redis of a cluster of hosts: redis://[:PASSWORD@]HOST:PORT/DB or rediss://...; repeat (or "
             "comma-separate) to shard channels over several (FASTWS_BROKER; default: embedded, no Redis)",
    )
    serve.add_argument(
        "--trusted-proxies", metavar="ADDRESSES",
        help="reverse proxies whose X-Forwarded-For is believed: addresses or networks, comma-separated "
             "(FASTWS_TRUSTED_PROXIES)",
    )
    serve.add_argument("--redis-prefix", help="namespace of this deployment's Redis keys (FASTWS_REDIS_PREFIX, default fastws)")
    serve.set_defaults(handler=_serve)

    default_base = os.environ.get("BASE_URL", "http://127.0.0.1:8765")
    flag = commands.add_parser(
        "flag",
        help="show or change the running server's flags (websocket_v2 rollback)",
        description="fastws flag websocket_v2 on|off; rollout PERCENT; existing keep|close; tenant T on|off|default; show",
    )
    flag_commands = flag.add_subparsers(dest="name", required=True)
    for name, choices, help_text in (
        ("websocket_v2", ["on", "off"], "serve with fastws (on) or roll back to the legacy system (off)"),
        ("existing", ["keep", "close"], "what happens to open connections of tenants rolled back"),
    ):
        sub = flag_commands.add_parser(name, help=help_text)
        sub.add_argument("value", choices=choices)
    rollout = flag_commands.add_parser("rollout", help="percentage of tenants served by fastws (stable per tenant)")
    rollout.add_argument("value", type=int, choices=range(0, 101), metavar="PERCENT")
    tenant = flag_commands.add_parser("tenant", help="override one tenant: on, off, or default (follow the rollout)")
    tenant.add_argument("tenant")
    tenant.add_argument("value", choices=["on", "off", "default"])
    flag_commands.add_parser("show", help="print the flags")
    for sub in flag_commands.choices.values():
        sub.add_argument("--base-url", default=default_base, help="the server's HTTP base URL (BASE_URL)")
        sub.add_argument("--token", default=os.environ.get("FASTWS_TOKEN"), help="an admin token (FASTWS_TOKEN)")
    flag.set_defaults(handler=_flag)

    publish = commands.add_parser("publish", help="publish one event over the REST API")
    publish.add_argument("--tenant", required=True)
    publish.add_argument("--user", required=True)
    publish.add_argument("--event", required=True)
    publish.add_argument("--data", help="the payload, as JSON")
    publish.add_argument("--channel")
    publish.add_argument("--source")
    publish.add_argument("--priority", choices=["low", "normal", "high", "critical"])
    publish.add_argument("--target-user")
    publish.add_argument("--base-url", default=default_base, help="the server's HTTP base URL (BASE_URL)")
    publish.add_argument("--token", default=os.environ.get("FASTWS_TOKEN"), help="a token (FASTWS_TOKEN)")
    publish.set_defaults(handler=_publish)

    listen = commands.add_parser("listen", help="print the events a connection receives, one JSON per line")
    listen.add_argument("--tenant", required=True)
    listen.add_argument("--user", required=True)
    listen.add_argument("--channel", action="append", help="also subscribe to this channel (repeatable)")
    listen.add_argument("--event-types", help="filter: event types, comma-separated")
    listen.add_argument("--sources", help="filter: sources, comma-separated")
    listen.add_argument("--priority", help="filter: priorities, comma-separated")
    listen.add_argument("--ws-url", default=os.environ.get("WS_URL", "ws://127.0.0.1:8765/ws"),
                        help="the server's WebSocket URL (WS_URL)")
    listen.add_argument("--token", default=os.environ.get("FASTWS_TOKEN"), help="a token (FASTWS_TOKEN)")
    listen.set_defaults(handler=_listen)

    token = commands.add_parser(
        "token", help="print a token signed with the configured key (FASTWS_JWT_SECRET or the key file)",
        description="fastws token --tenant T --user U [--admin] [--ttl 1h] [--kid K] [--config FILE]",
    )
    token.add_argument("--tenant", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--admin", action="store_true", help="an admin token (flags, DELETE, detailed status)")
    token.add_argument("--ttl", default="1h", type=_duration, help="lifetime: 90s, 30m, 1h, 7d or seconds (default 1h)")
    token.add_argument("--kid", help="sign with this key of the key file (FASTWS_JWT_KEYS_FILE)")
    token.add_argument("--config", help="TOML configuration file holding the keys' settings")
    token.set_defaults(handler=_token)

    selftest = commands.add_parser("selftest", help="check a running server end to end")
    selftest.add_argument("--base-url", help="HTTP base URL (BASE_URL, default http://127.0.0.1:8765)")
    selftest.add_argument("--ws-url", help="WebSocket URL (WS_URL, default from the base URL)")
    selftest.add_argument("--token", default=os.environ.get("FASTWS_TOKEN"), help="an admin token (FASTWS_TOKEN)")
    selftest.set_defaults(handler=_selftest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
