"""One Settings object: defaults, then the environment (``FASTWS_*``), then CLI flags.

Every limit fastws enforces is a field here, with its default; docs/protocol.md
and the README list them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .exceptions import ConfigError

__all__ = ["Settings", "Limits", "read_config_file"]

KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection and per-request bounds. At a bound: a documented error or close code."""

    #: reassembled WebSocket message, bytes (close 1009 above it)
    max_message_size: int = 64 * KIB
    #: HTTP request body, bytes (413 above it)
    max_body_size: int = 1 * MIB
    #: HTTP request line plus headers, bytes (431 above it)
    max_header_size: int = 16 * KIB
    #: channels one connection may be subscribed to (too_many_subscriptions)
    max_subscriptions: int = 256
    #: events in one REST batch publish (batch_too_large)
    max_batch: int = 1000
    #: bytes of events waiting for a slow connection; past it events are dropped by priority,
    #: and a connection that cannot take its critical events is closed (4008)
    max_send_buffer: int = 1 * MIB
    #: bytes waiting for all slow connections of a host (each worker takes its share); past it
    #: the connections holding the most are shed, then closed (4008). docs/security.md: why
    max_send_buffer_total: int = 128 * MIB
    #: distinct event types and sources remembered per tenant for GET /api/websocket
    max_tracked_names: int = 256
    #: publishes per second per connection (and burst): excess is rate_limited
    publish_rate: int = 20_000
    publish_burst: int = 20_000
    #: publishes per second per tenant, per worker, WebSocket and REST together
    tenant_publish_rate: int = 100_000
    tenant_publish_burst: int = 100_000
    #: new connections per second per client address, per worker (429 rate_limited)
    connect_rate: int = 5_000
    connect_burst: int = 5_000
    #: open WebSocket connections per client address and per tenant, over all workers (429)
    max_connections_per_address: int = 20_000
    max_connections_per_tenant: int = 100_000
    #: events kept per channel for recovery and GET /api/websocket/history
    history_size: int = 1000
    #: bytes of events kept per channel
    history_bytes: int = 1 * MIB
    #: bytes of history across all channels, each stream counted as its events plus a fixed
    #: overhead (fastws.history.STREAM_OVERHEAD); past it the least recently published channels
    #: lose their stream. It also bounds each worker's replicas of the shared log's streams
    history_total_bytes: int = 256 * MIB
    #: live streams (channels with history) per tenant: publishing to a new channel past it is
    #: refused (too_many_channels), so one tenant cannot fill the history of all the others
    max_channels_per_tenant: int = 25_000
    #: tenants without connections whose names and counts are remembered (oldest forgotten first)
    max_idle_tenants: int = 10_000

    def to_json(self) -> dict[str, int]:
        return {
            "maxMessageSize": self.max_message_size,
            "maxSubscriptions": self.max_subscriptions,
            "maxSendBuffer": self.max_send_buffer,
        }


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    #: URL of the legacy WebSocket system, reported by GET /api/websocket
    legacy_url: str = ""
    log_level: str = "info"
    #: how log records are written to stderr: "text" (one line each, for people) or "json"
    #: (one JSON object per line, for log pipelines); fastws.logs describes the fields
    log_format: str = "text"
    #: one INFO record per HTTP response (logger fastws.access): method, path, status, duration
    access_log: bool = True
    #: seconds an idle HTTP keep-alive connection stays open
    keepalive_timeout: float = 60.0
    #: seconds a new connection has to send its request / finish the WebSocket handshake
    handshake_timeout: float = 10.0
    #: seconds of silence before the server pings a WebSocket peer (0 disables)
    ping_interval: float = 20.0
    #: seconds to wait for the pong before closing with 1001
    ping_timeout: float = 20.0
    #: bytes a connection's transport buffers before it pushes back (then events wait in the backlog)
    write_buffer_high: int = 256 * 1024
    #: SO_SNDBUF of WebSocket sockets in bytes (0: the OS default)
    socket_send_buffer: int = 0
    #: HS256 key for tokens without a kid; empty (and no key file): open development mode
    jwt_secret: str = field(default="", repr=False)
    #: JSON file of {"kid": "secret"} for key rotation
    jwt_keys_file: str = ""
    #: comma-separated browser origins allowed to open WebSockets (empty: any)
    allowed_origins: str = ""
    #: CORS responses allow credentials (cookies, Authorization) for allowed origins
    cors_credentials: bool = False
    #: reverse proxies whose X-Forwarded-For is believed: addresses or networks, comma-separated
    trusted_proxies: str = ""
    #: basic status (GET /api/websocket/status without detailed) answers without a token, for health checks
    public_status: bool = False
    #: in open mode (no key), where admin operations (flags, DELETE, detailed status) are accepted
    #: from: "loopback" (the default) or "any" (as the seed did)
    open_admin: str = "loopback"
    #: seconds given to clients to close on shutdown before their sockets are dropped
    drain_timeout: float = 5.0
    #: Redis URLs (redis:// or rediss://, comma-separated: channels are sharded over them) for a
    #: cluster of hosts; empty: the embedded broker (one host, no Redis)
    broker: str = field(default="", repr=False)
    #: the namespace of this deployment's Redis keys and channels
    redis_prefix: str = "fastws"
    #: seconds a publish or a position read waits for Redis before it is refused (broker_unavailable)
    broker_timeout: float = 1.0
    #: seconds a channel's history is kept in Redis after its last use
    history_ttl: float = 86400.0
    #: a bearer token GET /metrics requires (Authorization: Bearer ...); empty: none, and then with
    #: JWT keys an admin token is required, in open mode nothing
    metrics_token: str = field(default="", repr=False)
    #: tenants with series of their own in /metrics (the most connected; the rest as "other"); 0: none
    metrics_tenants: int = 20
    limits: Limits = field(default_factory=Limits)

    # name -> environment variable
    _ENV = {
        "host": "FASTWS_HOST",
        "port": "FASTWS_PORT",
        "legacy_url": "FASTWS_LEGACY_URL",
        "log_level": "FASTWS_LOG_LEVEL",
        "log_format": "FASTWS_LOG_FORMAT",
        "access_log": "FASTWS_ACCESS_LOG",
        "keepalive_timeout": "FASTWS_KEEPALIVE_TIMEOUT",
        "handshake_timeout": "FASTWS_HANDSHAKE_TIMEOUT",
        "ping_interval": "FASTWS_PING_INTERVAL",
        "ping_timeout": "FASTWS_PING_TIMEOUT",
        "drain_timeout": "FASTWS_DRAIN_TIMEOUT",
        "broker": "FASTWS_BROKER",
        "redis_prefix": "FASTWS_REDIS_PREFIX",
        "broker_timeout": "FASTWS_BROKER_TIMEOUT",
        "history_ttl": "FASTWS_HISTORY_TTL",
        "write_buffer_high": "FASTWS_WRITE_BUFFER_HIGH",
        "socket_send_buffer": "FASTWS_SOCKET_SEND_BUFFER",
        "jwt_secret": "FASTWS_JWT_SECRET",
        "jwt_keys_file": "FASTWS_JWT_KEYS_FILE",
        "allowed_origins": "FASTWS_ALLOWED_ORIGINS",
        "trusted_proxies": "FASTWS_TRUSTED_PROXIES",
        "cors_credentials": "FASTWS_CORS_CREDENTIALS",
        "public_status": "FASTWS_PUBLIC_STATUS",
        "open_admin": "FASTWS_OPEN_ADMIN",
        "metrics_token": "FASTWS_METRICS_TOKEN",
        "metrics_tenants": "FASTWS_METRICS_TENANTS",
        "max_message_size": "FASTWS_MAX_MESSAGE_SIZE",
        "max_body_size": "FASTWS_MAX_BODY_SIZE",
        "max_header_size": "FASTWS_MAX_HEADER_SIZE",
        "max_subscriptions": "FASTWS_MAX_SUBSCRIPTIONS",
        "max_batch": "FASTWS_MAX_BATCH",
        "max_send_buffer": "FASTWS_MAX_SEND_BUFFER",
        "max_send_buffer_total": "FASTWS_MAX_SEND_BUFFER_TOTAL",
        "max_tracked_names": "FASTWS_MAX_TRACKED_NAMES",
        "max_idle_tenants": "FASTWS_MAX_IDLE_TENANTS",
        "history_size": "FASTWS_HISTORY_SIZE",
        "publish_rate": "FASTWS_PUBLISH_RATE",
        "publish_burst": "FASTWS_PUBLISH_BURST",
        "tenant_publish_rate": "FASTWS_TENANT_PUBLISH_RATE",
        "tenant_publish_burst": "FASTWS_TENANT_PUBLISH_BURST",
        "connect_rate": "FASTWS_CONNECT_RATE",
        "connect_burst": "FASTWS_CONNECT_BURST",
        "max_connections_per_address": "FASTWS_MAX_CONNECTIONS_PER_ADDRESS",
        "max_connections_per_tenant": "FASTWS_MAX_CONNECTIONS_PER_TENANT",
        "history_bytes": "FASTWS_HISTORY_BYTES",
        "history_total_bytes": "FASTWS_HISTORY_TOTAL_BYTES",
        "max_channels_per_tenant": "FASTWS_MAX_CHANNELS_PER_TENANT",
    }

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, config: str | None = None, **overrides: Any) -> "Settings":
        """Defaults, then the ``config`` file (TOML), then ``env`` (os.environ by default), then ``overrides`` (not None)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = read_config_file(config)[0] if config else {}
        for name, variable in cls._ENV.items():
            if variable in env and env[variable] != "":
                values[name] = env[variable]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Settings":
        top = {f.name: f for f in fields(cls)}
        limit_fields = {f.name: f for f in fields(Limits)}
        top_values: dict[str, Any] = {}
        limit_values: dict[str, Any] = {}
        for name, raw in values.items():
            if name in limit_fields:
                limit_values[name] = _coerce(name, raw, int)
            elif name in top and name != "limits":
                default = top[name].default
                top_values[name] = _coerce(name, raw, type(default))
            else:
                raise ConfigError(f"unknown setting {name!r}")
        limits = Limits(**limit_values)
        for f in fields(Limits):
            if getattr(limits, f.name) <= 0:
                raise ConfigError(f"{f.name} must be positive")
        settings = cls(limits=limits, **top_values)
        if not 0 <= settings.port <= 65535:
            raise ConfigError("port must be 0-65535")
        if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level must be debug, info, warning or error")
        if settings.log_format not in ("text", "json"):
            raise ConfigError("log_format must be 'text' or 'json'")
        if settings.open_admin not in ("loopback", "any"):
            raise ConfigError("open_admin must be 'loopback' or 'any'")
        for url in settings.broker_urls:
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError(f"broker: {url.split('@')[-1]!r} is not a redis://, rediss:// or unix:// URL")
        if not settings.redis_prefix or any(c in settings.redis_prefix for c in " \t\r\n{}"):
            raise ConfigError("redis_prefix must be a non-empty name without spaces or braces")
        if settings.metrics_tenants < 0:
            raise ConfigError("metrics_tenants must be 0 or more")
        if settings.broker_timeout <= 0 or settings.history_ttl <= 0:
            raise ConfigError("broker_timeout and history_ttl must be positive")
        return settings

    @property
    def broker_urls(self) -> list[str]:
        """The Redis URLs of ``broker`` (none: the embedded broker)."""
        return [url.strip() for url in self.broker.replace(" ", ",").split(",") if url.strip()]

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def read_config_file(path: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(settings, the [flags] table or None) of a TOML configuration file.

    Settings are top-level keys named as the Settings and Limits fields::

        port = 8765
        legacy_url = "wss://legacy.example/realtime"
        max_message_size = 65536

        [flags]
        websocket_v2 = true
        rollout_percent = 100
        existing = "keep"
        tenants = { acme = "off" }
    """
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    flags = data.pop("flags", None)
    if flags is not None and not isinstance(flags, dict):
        raise ConfigError("[flags] must be a table")
    return data, flags


def _coerce(name: str, raw: Any, kind: type) -> Any:
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    try:
        if kind is bool:
            return str(raw).lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot read {raw!r} as {kind.__name__}") from None
