"""The REST API, sans I/O: a parsed Request in, a Response out.

Routes (all JSON)::

    GET    /api/websocket                 connection info for X-Tenant-ID
    POST   /api/websocket                 publish one event, or a batch (a JSON array)
    GET    /api/websocket/status          status and metrics (?detailed=true for more)
    PUT    /api/websocket                 change flags: {"flags": {"websocket_v2": false, ...}}
    DELETE /api/websocket                 disconnect ?tenant_id=T[&user_id=U][&connection_id=C]
    GET    /api/websocket/history         a channel's recent events (?channel=&since=&limit=)
    GET    /metrics                       the host's metrics for Prometheus (docs/metrics.md)
    GET    /healthz                       liveness
    GET    /readyz                        readiness (503 while draining)
    GET    /ws                            426 (or why an upgrade would be refused): the upgrade is the only use
    GET    /api/openapi.json              the OpenAPI 3.1 description of all of these (fastws.openapi)
    GET    /dashboard, /static/...        the dashboard and its files (fastws.assets), without a token

HEAD is served wherever GET is, without the body.

Every error is ``{"success":false,"error":{"code","message"}}`` with the
status :mod:`fastws.codes` gives its code. An unexpected exception is logged
and answered 500 ``internal_error``; its text never reaches the client.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Protocol

import orjson

from . import __version__, codes
from .channels import resolve_channel, tenant_channel, validate_tenant_id, validate_user_id
from .config import Settings
from .control import Flags, WorkerStats
from .core import IMPLEMENTATION
from .exceptions import ProtocolError
from .history import payload_of
from .auth import OriginPolicy, bearer_token
from .proxies import is_loopback
from .hub import Event, Hub
from .messages import decimal, decode_publish, iso_timestamp

__all__ = ["Request", "Response", "RestAPI", "OPENAPI_PATH", "WEBSOCKET_PATH", "error_response"]

log = logging.getLogger("fastws.rest")

JSON_TYPE = b"application/json"


@dataclass(slots=True)
class Request:
    method: str
    path: str
    #: first value of each query parameter
    query: dict[str, str]
    #: lower-case names; the last value of a repeated header
    headers: dict[str, str]
    body: bytes = b""
    #: the client's address (for per-address limits); "" when unknown
    client: str = ""
    #: the client spoke https to a trusted proxy (X-Forwarded-Proto): its WebSocket URL is wss
    secure: bool = False


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = JSON_TYPE


MAX_HISTORY_LIMIT = 1000
#: the path of WebSocket upgrades
WEBSOCKET_PATH = "/ws"
#: Prometheus' scrape path (its own token: RestAPI._authorize_metrics)
METRICS_PATH = "/metrics"
#: the path of the API's OpenAPI description
OPENAPI_PATH = "/api/openapi.json"
#: answered without a token (an upgrade on WEBSOCKET_PATH checks its own)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", WEBSOCKET_PATH, OPENAPI_PATH})


def _allow(methods: Iterable[str]) -> bytes:
    """An Allow header's value: the methods, and HEAD after GET."""
    return ", ".join(m for method in methods for m in (("GET", "HEAD") if method == "GET" else (method,))).encode()


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes")


def _error_of(exc: ProtocolError) -> Response:
    headers = [(b"Retry-After", str(exc.retry_after).encode())] if exc.retry_after is not None else None
    return error_response(exc.code, exc.message, headers)


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    value = query.get(name)
    if value is None or value == "":
        return default
    number = decimal(value)
    if number is None or not low <= number <= high:
        raise ProtocolError(codes.INVALID_FIELD, f"'{name}' must be an integer from {low} to {high}")
    return number


def _same_origin(origin: str, host: str | None) -> bool:
    """The Origin names the host (and port) the request was sent to: not a cross-origin request."""
    if not host:
        return False
    return origin.partition("://")[2].rstrip("/").lower() == host.strip().lower()


def _needs_admin(request: Request) -> bool:
    """Changing flags, disconnecting, and detailed status are admin operations."""
    return request.method in ("PUT", "DELETE") or (
        request.path == "/api/websocket/status" and _truthy(request.query.get("detailed"))
    )


def error_response(
    code: str,
    message: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    status, meaning = codes.ERRORS[code]
    body = orjson.dumps({"success": False, "error": {"code": code, "message": message or meaning}, **(extra or {})})
    return Response(status, body, headers or [])


class Static(Protocol):
    """What the REST API needs of the dashboard's files (fastws.assets.StaticFiles)."""

    def serves(self, path: str) -> bool: ...
    def handle(self, request: Request) -> Response: ...


class Control(Protocol):
    """What the REST API needs of its worker's control (fastws.server.control.WorkerControl)."""

    worker: int
    flags: Flags

    def v2_enabled(self, tenant_id: str) -> bool: ...
    def set_flags(self, body: object) -> Flags | Awaitable[Flags]: ...
    def totals(self) -> dict[str, Any]: ...
    def rows(self) -> dict[int, WorkerStats]: ...
    async def disconnect(self, tenant_id: str, user_id: str | None, connection_id: str | None) -> int: ...
    def cluster_status(self) -> dict[str, Any] | None: ...
    def metrics(self, accept: str) -> tuple[bytes, str]: ...


def _history_response(channel: str, user_id: str | None, epoch: str, offset: int, records: list) -> Response:
    # Splice the stored event JSON: nothing is decoded and encoded again.
    events = b",".join(payload_of(frame) for *_, target, frame in records if target is None or target == user_id)
    head = orjson.dumps({"success": True, "channel": channel, "epoch": epoch, "offset": offset})
    return Response(200, head[:-1] + b',"events":[' + events + b"]}")


def _ok(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(status, orjson.dumps({"success": True, **payload}))


def _iso(unix_time: float) -> str | None:
    if not unix_time:
        return None
    return iso_timestamp(unix_time)


class RestAPI:
    """Routes and handlers of the REST API of one worker."""

    def __init__(
        self,
        hub: Hub,
        settings: Settings,
        state: Callable[[], str] = lambda: "running",
        control: Control | None = None,
        static: Static | None = None,
        describe: Callable[[Settings], dict[str, Any]] | None = None,
    ) -> None:
        self.hub = hub
        #: the dashboard's files; None: not served
        self.static = static
        #: the OpenAPI document of a server with some settings (fastws.openapi.document, which reads
        #: this module: handed in, not imported); None: OPENAPI_PATH is not served
        self.describe = describe
        self.settings = settings
        #: the browser origins allowed cross-origin (CORS): the allow-list, listed explicitly
        self.origins = OriginPolicy.from_settings(settings)
        #: flags, host-wide counters and commands (fastws.server.control); None: this hub alone
        self.control = control
        #: "running" or "draining"
        self.state = state
        self.started_at = time.time()
        #: the URL reported when a request has no usable Host header; the server sets it once bound
        self.fallback_ws_url = f"ws://{settings.host}:{settings.port}/ws"
        self._routes: dict[str, dict[str, Callable[[Request], Response | Awaitable[Response]]]] = {
            "/api/websocket": {
                "GET": self.get_info,
                "POST": self.post_publish,
                "PUT": self.put_flags,
                "DELETE": self.delete_connections,
            },
            "/api/websocket/status": {"GET": self.get_status},
            "/api/websocket/history": {"GET": self.get_history},
            METRICS_PATH: {"GET": self.get_metrics},
            "/healthz": {"GET": self.get_health},
            "/readyz": {"GET": self.get_ready},
            # a GET that asks for a WebSocket is upgraded before it gets here (fastws.server.http)
            WEBSOCKET_PATH: {"GET": self.get_websocket},
        }
        if describe is not None:
            self._routes[OPENAPI_PATH] = {"GET": self.get_openapi}
        #: (the settings it describes, the encoded document), built on first request and after a reload
        self._openapi: tuple[Settings, bytes] | None = None
        #: every method some route serves, for the Allow header of a request no route could serve
        self.allow = _allow({method: None for methods in self._routes.values() for method in methods})

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        """The response, or (for commands that involve other workers) an awaitable of it."""
        methods = self._routes.get(request.path)
        if methods is None:
            if self.static is not None and self.static.serves(request.path):
                # public: the page asks for tokens itself
                return self.static.handle(request)
            return error_response(codes.NOT_FOUND, f"no route for {request.path[:100]}")
        cors = self._cors(request)
        if cors is None:
            return error_response(codes.ORIGIN_NOT_ALLOWED, "this origin may not call this API from a browser")
        if request.method == "OPTIONS":
            return self._options(request, methods, cors)
        response = self._handle(request, methods)
        if cors:
            if isinstance(response, Response):
                response.headers.extend(cors)
            else:
                return self._with_headers(response, cors)
        return response

    # -- CORS -------------------------------------------------------------------------
    #
    # A browser request from another origin (its Origin header names another host than
    # its Host header) is served with Access-Control-Allow-Origin only when the origin is
    # listed in allowed_origins (an empty list lists none: same origin only). From an
    # origin not listed, a request that changes something or would have been preflighted
    # (anything but GET and HEAD) is refused with 403 origin_not_allowed and not acted
    # on; a GET is answered without CORS headers, so the browser keeps it from the page.

    def _cors(self, request: Request) -> list[tuple[bytes, bytes]] | None:
        """CORS headers for the response ([] when none are due), or None to refuse the request."""
        origin = request.headers.get("origin")
        if origin is None or _same_origin(origin, request.headers.get("host")):
            return []
        if self.origins.patterns and self.origins.allows(origin):
            headers = [(b"Access-Control-Allow-Origin", origin.encode("latin-1")), (b"Vary", b"Origin")]
            if self.settings.cors_credentials:
                headers.append((b"Access-Control-Allow-Credentials", b"true"))
            return headers
        if request.method in ("GET", "HEAD"):
            return []
        return None

    def _options(self, request: Request, methods: dict, cors: list[tuple[bytes, bytes]]) -> Response:
        """A preflight (from an allowed origin: the methods and headers allowed), or a plain OPTIONS."""
        allow = _allow(methods)
        headers = [(b"Allow", allow + b", OPTIONS"), *cors]
        if cors and request.headers.get("access-control-request-method"):
            headers += [
                (b"Access-Control-Allow-Methods", allow),
                (b"Access-Control-Allow-Headers", b"Authorization, Content-Type, X-Tenant-ID, X-User-ID"),
                (b"Access-Control-Max-Age", b"600"),
            ]
        return Response(204, b"", headers)

    @staticmethod
    async def _with_headers(pending: Awaitable[Response], headers: list[tuple[bytes, bytes]]) -> Response:
        response = await pending
        response.headers.extend(headers)
        return response

    def _handle(self, request: Request, methods: dict) -> Response | Awaitable[Response]:
        # HEAD is GET without the body (the HTTP front leaves it out)
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            message = f"{request.method[:16]} is not allowed here"
            return error_response(codes.METHOD_NOT_ALLOWED, message, [(b"Allow", _allow(methods))])
        try:
            if request.path == METRICS_PATH:
                self._authorize_metrics(request)
            elif request.path not in PUBLIC_PATHS:
                if self.hub.authenticator is not None:
                    if not (self.settings.public_status and request.path == "/api/websocket/status"
                            and not _needs_admin(request)):
                        self._authorize(request)
                elif (_needs_admin(request) and self.settings.open_admin == "loopback"
                      and not is_loopback(request.client)):
                    raise ProtocolError(
                        codes.FORBIDDEN, "in open mode admin operations are accepted from loopback only "
                        "(set a JWT secret and use an admin token: fastws token --admin)")
            response = handler(request)
        except ProtocolError as exc:
            return _error_of(exc)
        except Exception:
            log.exception("error handling %s %s", request.method, request.path)
            return error_response(codes.INTERNAL)
        if isinstance(response, Response):
            return response
        return self._finish(request, response)

    def _authorize_metrics(self, request: Request) -> None:
        """GET /metrics: the metrics token when one is set (or, with JWT keys, an admin token); else
        with JWT keys an admin token; in open mode, nothing."""
        token = bearer_token(request.headers.get("authorization"), None)
        expected = self.settings.metrics_token
        if expected and token is not None and hmac.compare_digest(token.encode(), expected.encode()):
            return
        if self.hub.authenticator is None:
            if expected:
                raise ProtocolError(codes.UNAUTHORIZED, "GET /metrics needs the metrics token (Authorization: Bearer)")
            return
        if token is None:
            raise ProtocolError(codes.UNAUTHORIZED, "GET /metrics needs the metrics token or an admin token")
        if not self.hub.authenticator.verify(token).admin:
            raise ProtocolError(codes.FORBIDDEN, "GET /metrics needs the metrics token or an admin token")

    def _authorize(self, request: Request) -> None:
        """Check the request's token; fill in (or check) X-Tenant-ID and X-User-ID from its claims.

        Admin tokens may name any tenant and user in the headers, and are
        required to change flags, disconnect, and see detailed status.
        """
        token = bearer_token(request.headers.get("authorization"), request.query.get("token"))
        if token is None:
            raise ProtocolError(codes.UNAUTHORIZED)
        identity = self.hub.authenticator.verify(token)  # type: ignore[union-attr]
        if _needs_admin(request):
            if not identity.admin:
                raise ProtocolError(codes.FORBIDDEN, "an admin token is required")
            # an admin operation acts on the tenant and user it names, never as the token's own
            # (a DELETE naming a tenant would otherwise close only the token's user's connections)
            return
        headers = request.headers
        for name, value in (("x-tenant-id", identity.tenant_id), ("x-user-id", identity.user_id)):
            given = headers.get(name)
            if not given:
                headers[name] = value
            elif given != value and not identity.admin:
                raise ProtocolError(codes.FORBIDDEN, f"{name} disagrees with the token")

    async def _finish(self, request: Request, pending: Awaitable[Response]) -> Response:
        try:
            return await pending
        except ProtocolError as exc:
            return _error_of(exc)
        except Exception:
            log.exception("error handling %s %s", request.method, request.path)
            return error_response(codes.INTERNAL)

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _header(request: Request, name: str, validate: Callable[[object], str]) -> str:
        value = request.headers.get(name.lower())
        if value is None or value == "":
            raise ProtocolError(codes.MISSING_HEADER, f"the {name} header is required")
        return validate(value)

    def _metrics(self) -> dict[str, Any]:
        metrics = self.hub.metrics
        if self.control is not None:
            totals = self.control.totals()
        else:
            totals = {
                "total_connections": metrics.total_connections,
                "connections": metrics.active_connections,
                "events_sent": metrics.events_sent,
                "events_published": metrics.events_published,
                "messages_in": metrics.messages_received,
                "bytes_in": metrics.bytes_received,
                "bytes_out": metrics.bytes_sent,
                "errors": metrics.errors,
                "workers": 1,
            }
        return {
            "total_connections": totals["total_connections"],
            "active_connections": totals["connections"],
            "events_sent": totals["events_sent"],
            "events_published": totals["events_published"],
            "messages_received": totals["messages_in"],
            "bytes_received": totals["bytes_in"],
            "bytes_sent": totals["bytes_out"],
            "errors": totals["errors"],
            "workers": totals["workers"],
            **({"hosts": totals["hosts"]} if "hosts" in totals else {}),
            "last_activity": _iso(metrics.last_activity),
            "event_history_size": len(self.hub.broker),
            "client_count": totals["connections"],
        }

    def _ws_url(self, request: Request) -> str:
        host = request.headers.get("host", "")
        if not host or any(c in host for c in "/?#@ \\") or len(host) > 255:
            return self.fallback_ws_url
        return f"{'wss' if request.secure else 'ws'}://{host}/ws"

    # -- handlers ---------------------------------------------------------------------

    def get_info(self, request: Request) -> Response:
        tenant_id = self._header(request, "X-Tenant-ID", validate_tenant_id)
        tenant = self.hub.tenant(tenant_id)
        home = tenant_channel(tenant_id)
        channels = [home]
        event_types = ["connection"]
        sources = ["system"]
        if tenant is not None:
            channels += sorted(c for c in tenant.channels if c != home)
            event_types += [e for e in tenant.event_types if e != "connection"]
            sources += [s for s in tenant.sources if s != "system"]
        running = self.state() == "running"
        v2 = self.control.v2_enabled(tenant_id) if self.control is not None else True
        primary = {
            "url": self._ws_url(request),
            "status": ("active" if running else "draining") if v2 else "disabled",
            "enabled": v2,
            "metrics": self._metrics(),
        }
        legacy_url = self.settings.legacy_url or None
        legacy = {"url": legacy_url, "enabled": legacy_url is not None, "status": "standby" if v2 else "active"}
        return _ok(
            {
                "websocket": {
                    "nextjs": primary,
                    "primary": primary,
                    "supabase": legacy,
                    "legacy": legacy,
                    "tenant_id": tenant_id,
                    "channels": channels,
                    "event_types": event_types,
                    "sources": sources,
                    "flags": self._flags().to_json(),
                }
            }
        )

    def _flags(self) -> Flags:
        return self.control.flags if self.control is not None else Flags()

    def put_flags(self, request: Request) -> Response | Awaitable[Response]:
        body = self._json_body(request)
        if type(body) is not dict or "flags" not in body:
            raise ProtocolError(codes.MISSING_FIELD, "the body must be {\"flags\": {...}}")
        if self.control is None:
            raise ProtocolError(codes.SERVICE_UNAVAILABLE, "flags need a running server")
        flags = self.control.set_flags(body["flags"])
        if not isinstance(flags, Flags):
            return self._flags_set(flags)
        return _ok({"flags": flags.to_json()})

    @staticmethod
    async def _flags_set(pending: Awaitable[Flags]) -> Response:
        return _ok({"flags": (await pending).to_json()})

    def delete_connections(self, request: Request) -> Response | Awaitable[Response]:
        """Disconnect a tenant's connections (and a user's, and one connection): the tenant and user
        from the query (``tenant_id``, ``user_id``) or, as the seed's apps send them, from the
        X-Tenant-ID and X-User-ID headers; the query wins where both are given."""
        tenant_id = self._query_or_header(request, "tenant_id", "x-tenant-id", validate_tenant_id)
        if tenant_id is None:
            raise ProtocolError(codes.MISSING_FIELD, "the tenant is required: ?tenant_id= or the X-Tenant-ID header")
        user_id = self._query_or_header(request, "user_id", "x-user-id", validate_user_id)
        connection_id = request.query.get("connection_id")
        if connection_id is not None and not 0 < len(connection_id) <= 64:
            raise ProtocolError(codes.INVALID_FIELD, "'connection_id' is not a connection id")
        if self.control is None:
            raise ProtocolError(codes.SERVICE_UNAVAILABLE, "disconnecting needs a running server")
        return self._disconnect(tenant_id, user_id, connection_id)

    @staticmethod
    def _query_or_header(request: Request, name: str, header: str, validate: Callable[[object], str]) -> str | None:
        """An id from the query or, failing that, the header (empty counts as absent); each one given
        is checked, so a malformed header is refused even where the query's value wins."""
        from_query = request.query.get(name) or None
        from_header = request.headers.get(header) or None
        for value in (from_query, from_header):
            if value is not None:
                validate(value)
        return from_query or from_header

    async def _disconnect(self, tenant_id: str, user_id: str | None, connection_id: str | None) -> Response:
        count = await self.control.disconnect(tenant_id, user_id, connection_id)  # type: ignore[union-attr]
        return _ok({"disconnected": count})

    @staticmethod
    def _json_body(request: Request) -> Any:
        content_type = request.headers.get("content-type")
        if content_type is not None and content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise ProtocolError(
                codes.UNSUPPORTED_MEDIA_TYPE,
                f"send the body as JSON with 'Content-Type: application/json' (got {content_type!r:.60}; "
                f"with curl: -H 'Content-Type: application/json')",
            )
        try:
            return orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise ProtocolError(codes.INVALID_JSON) from None

    def post_publish(self, request: Request) -> Response | Awaitable[Response]:
        tenant_id = self._header(request, "X-Tenant-ID", validate_tenant_id)
        user_id = self._header(request, "X-User-ID", validate_user_id)
        body = self._json_body(request)
        hub = self.hub
        if type(body) is list:
            if len(body) > self.settings.limits.max_batch:
                raise ProtocolError(codes.BATCH_TOO_LARGE, f"at most {self.settings.limits.max_batch} events per batch")
            if not body:
                raise ProtocolError(codes.INVALID_FIELD, "the batch is empty")
            # Prepare (check and encode) every item before delivering any.
            events = [self._prepare(tenant_id, user_id, item, index) for index, item in enumerate(body)]
            hub.admit(tenant_id, events)
            hub.take_tenant_publishes(tenant_id, len(events))
            offsets = hub.deliver_all(events)
            if type(offsets) is not list:
                return self._published(events, offsets, batch=True)
            return _ok({"ids": [event.id for event in events], "offsets": offsets})
        event = self._prepare(tenant_id, user_id, body, None)
        hub.admit(tenant_id, [event])
        hub.take_tenant_publishes(tenant_id, 1)
        offsets = hub.deliver_all([event])
        if type(offsets) is not list:
            return self._published([event], offsets, batch=False)
        return _ok({"id": event.id, "offset": offsets[0]})

    @staticmethod
    async def _published(events: list[Event], pending: Awaitable[list[int]], batch: bool) -> Response:
        """The answer to a publish through a remote broker, once it has numbered the events."""
        offsets = await pending
        if batch:
            return _ok({"ids": [event.id for event in events], "offsets": offsets})
        return _ok({"id": events[0].id, "offset": offsets[0]})

    def _prepare(self, tenant_id: str, user_id: str, item: object, index: int | None) -> Event:
        where = "" if index is None else f"item {index}: "
        if type(item) is not dict:
            raise ProtocolError(codes.INVALID_MESSAGE, f"{where}an event must be a JSON object")
        try:
            return self.hub.prepare(tenant_id, user_id, decode_publish(item, "api"))
        except ProtocolError as exc:
            raise ProtocolError(exc.code, where + exc.message) from None

    def get_history(self, request: Request) -> Response | Awaitable[Response]:
        tenant_id = self._header(request, "X-Tenant-ID", validate_tenant_id)
        user_id = request.headers.get("x-user-id") or None
        if user_id is not None:
            validate_user_id(user_id)
        query = request.query
        channel = resolve_channel(query.get("channel") or tenant_channel(tenant_id), tenant_id)
        since = _int_param(query, "since", 0, 0, 2**63 - 1)
        limit = _int_param(query, "limit", 100, 1, MAX_HISTORY_LIMIT)
        if self.hub.remote:
            return self._history(channel, user_id, self.hub.broker.read(channel, since, limit))  # type: ignore[arg-type]
        return _history_response(channel, user_id, *self.hub.broker.read(channel, since, limit))

    @staticmethod
    async def _history(channel: str, user_id: str | None, pending: Awaitable[tuple[str, int, list]]) -> Response:
        return _history_response(channel, user_id, *await pending)

    def get_status(self, request: Request) -> Response:
        running = self.state() == "running"
        websocket: dict[str, Any] = {
            "server_running": True,
            "status": "active" if running else "draining",
            "health": "healthy" if running else "degraded",
            "metrics": self._metrics(),
        }
        websocket["auth"] = "open" if self.hub.authenticator is None else "jwt"
        if _truthy(request.query.get("detailed")):
            websocket["version"] = __version__
            websocket["implementation"] = IMPLEMENTATION
            websocket["uptime_seconds"] = round(time.time() - self.started_at, 3)
            websocket["tenants"] = {
                tenant_id: {
                    "connections": tenant.connections,
                    "events_published": tenant.events_published,
                    "channels": dict(tenant.channels),
                }
                for tenant_id, tenant in self.hub.tenants().items()
            }
            websocket["limits"] = self.settings.limits.to_json()
            websocket["flags"] = self._flags().to_json()
            if self.control is not None:
                websocket["worker"] = self.control.worker
                websocket["workers"] = {str(i): row.to_json() for i, row in self.control.rows().items()}
                cluster = self.control.cluster_status()
                if cluster is not None:
                    websocket["cluster"] = cluster
        return _ok({"websocket": websocket})

    def get_websocket(self, request: Request) -> Response:
        return error_response(codes.UPGRADE_REQUIRED, "connect with a WebSocket client", [(b"Upgrade", b"websocket")])

    def get_metrics(self, request: Request) -> Response:
        """The host's metrics in Prometheus' text format (OpenMetrics when the Accept header asks)."""
        if self.control is None:
            raise ProtocolError(codes.SERVICE_UNAVAILABLE, "metrics need a running server")
        body, content_type = self.control.metrics(request.headers.get("accept", ""))
        return Response(200, body, content_type=content_type.encode())

    def get_openapi(self, request: Request) -> Response:
        described = self._openapi
        if described is None or described[0] is not self.settings:
            assert self.describe is not None  # the route exists only with it
            described = self._openapi = (self.settings, orjson.dumps(self.describe(self.settings)))
        return Response(200, described[1])

    def get_health(self, request: Request) -> Response:
        return _ok({"status": "ok"})

    def get_ready(self, request: Request) -> Response:
        if self.state() != "running":
            return error_response(codes.SERVICE_UNAVAILABLE)
        return _ok({"status": "ready"})
