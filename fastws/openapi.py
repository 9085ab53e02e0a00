"""The OpenAPI 3.1 description of the HTTP API, sans I/O: a dict built from the code's own facts.

``document(settings)`` describes every HTTP endpoint a server with those
settings answers: the REST API (fastws.rest), the refusals of a WebSocket
upgrade on ``/ws`` (fastws.server.app, fastws.server.http) and the
dashboard's files (fastws.assets). ``RestAPI`` serves it, encoded once, at
``GET /api/openapi.json`` (OPENAPI_PATH), without a token.

Nothing in it is typed twice:

1. the error codes each operation answers are fastws.codes constants
   (OPERATION_ERRORS), and each one's status is the one ``codes.ERRORS``
   gives it, so an error body's ``code`` is an enum per operation and status;
2. the id and name grammars are fastws.channels', the priorities and reserved
   names fastws.messages', the flag policies fastws.control.flags';
3. the bounds are the settings' limits (``max_batch``, ``max_body_size``,
   ...) and fastws.rest's (``MAX_HISTORY_LIMIT``); the version is
   ``fastws.__version__``.

What depends on the settings beyond the limits: with a JWT key, operations
ask for a token (bearer, or ``?token=``), basic status without one under
``public_status``; in open mode none does and the identity headers are
required instead. The codes are those of every configuration (401 only
happens with a key, ``broker_unavailable`` only with Redis): the
descriptions say when.

tests/unit/test_openapi.py checks the document against the routes and the
handlers; tests/integration/test_openapi_live.py runs schemathesis against
live servers with it.

The module is longer than most (the document is mostly data): one place for
all of it, as codes.py is for the codes.
"""

from __future__ import annotations

from typing import Any, Final, Iterable

from . import __version__, codes
from .assets import CONTENT_TYPES, DASHBOARD_PATHS, STATIC_PREFIX
from .channels import CONTROL_CHARACTERS, ID_PATTERN, MAX_NAME_BYTES
from .config import Settings
from .control.flags import EXISTING_POLICIES
from .control.layout import LATENCY_BUCKETS
from .messages import FILTER_KEYS, PRIORITY_NAMES, RESERVED_TYPES
from .rest import MAX_HISTORY_LIMIT, METRICS_PATH, OPENAPI_PATH, WEBSOCKET_PATH

__all__ = ["OPENAPI_VERSION", "OPERATION_ERRORS", "document"]

OPENAPI_VERSION: Final = "3.1.0"
JSON: Final = "application/json"
#: the media types of GET /metrics: Prometheus' text format, OpenMetrics when Accept asks for it
PROMETHEUS_TEXT: Final = "text/plain"
OPENMETRICS_TEXT: Final = "application/openmetrics-text"
#: an operation's security requirements: any one of them will do ([]: none needed)
Security = list[dict[str, list[str]]]

# -- the codes each operation answers ----------------------------------------------------------

#: any request, before or around its route: an unparsable request, a body or head over its
#: limit (fastws.server.http), an unexpected exception (fastws.rest)
FRONT_ERRORS: Final = (codes.BAD_REQUEST, codes.PAYLOAD_TOO_LARGE, codes.HEADERS_TOO_LARGE, codes.INTERNAL)
#: a request that needs a token (RestAPI._authorize): none or a bad one, an expired one, one that
#: does not allow this (identity headers of another tenant or user, or not an admin token; in open
#: mode with open_admin=loopback, an admin operation from another address)
TOKEN_ERRORS: Final = (codes.UNAUTHORIZED, codes.TOKEN_EXPIRED, codes.FORBIDDEN)
#: a cross-origin request that is not a GET or HEAD, from an origin not allowed (RestAPI._cors)
CORS_ERRORS: Final = (codes.ORIGIN_NOT_ALLOWED,)
#: a JSON body (RestAPI._json_body)
BODY_ERRORS: Final = (codes.UNSUPPORTED_MEDIA_TYPE, codes.INVALID_JSON)
#: one publish: its fields (messages.decode_publish), its channel and encoding (Hub.prepare),
#: a batch's shape, the tenant's channels (Broker.admit) and rate (Hub.take_tenant_publishes),
#: a draining worker, a cluster's Redis
PUBLISH_ERRORS: Final = (
    codes.MISSING_HEADER, codes.INVALID_TENANT_ID, codes.INVALID_USER_ID,
    codes.INVALID_MESSAGE, codes.BATCH_TOO_LARGE, codes.INVALID_FIELD,
    codes.MISSING_FIELD, codes.INVALID_EVENT, codes.RESERVED_TYPE, codes.INVALID_SOURCE,
    codes.INVALID_PRIORITY, codes.INVALID_CHANNEL, codes.FORBIDDEN_CHANNEL,
    codes.TOO_MANY_CHANNELS, codes.RATE_LIMITED, codes.SERVICE_UNAVAILABLE, codes.BROKER_UNAVAILABLE,
)
#: what an upgrade on /ws can be refused with (Server._check_websocket, WorkerControl.admit,
#: fastws.server.http: the handshake and a server that stopped accepting); a GET without upgrade
#: headers answers the checks that spend nothing, else upgrade_required
UPGRADE_ERRORS: Final = (
    codes.UPGRADE_REQUIRED, codes.ORIGIN_NOT_ALLOWED, codes.UNAUTHORIZED, codes.TOKEN_EXPIRED,
    codes.FORBIDDEN, codes.INVALID_TENANT_ID, codes.INVALID_USER_ID, codes.INVALID_FILTERS,
    codes.INVALID_PRIORITY, codes.INVALID_FIELD, codes.ROLLED_BACK, codes.SERVICE_UNAVAILABLE,
    codes.RATE_LIMITED, codes.TOO_MANY_CONNECTIONS,
)

_API = "/api/websocket"
_STATUS = "/api/websocket/status"
_HISTORY = "/api/websocket/history"
_STATIC = STATIC_PREFIX + "{path}"
#: the REST paths a browser of another origin may call (with a preflight): OPTIONS is described there
PREFLIGHT_PATHS: Final = (_API, _STATUS, _HISTORY)

#: (method, path) -> the error codes the operation can answer, besides FRONT_ERRORS
OPERATION_ERRORS: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("GET", _API): (*TOKEN_ERRORS, codes.MISSING_HEADER, codes.INVALID_TENANT_ID),
    ("POST", _API): (*TOKEN_ERRORS, *CORS_ERRORS, *BODY_ERRORS, *PUBLISH_ERRORS),
    ("PUT", _API): (
        *TOKEN_ERRORS, *CORS_ERRORS, *BODY_ERRORS, codes.MISSING_FIELD, codes.INVALID_FIELD,
        codes.INVALID_TENANT_ID, codes.SERVICE_UNAVAILABLE, codes.BROKER_UNAVAILABLE,
    ),
    ("DELETE", _API): (
        *TOKEN_ERRORS, *CORS_ERRORS, codes.MISSING_FIELD, codes.INVALID_TENANT_ID, codes.INVALID_USER_ID,
        codes.INVALID_FIELD, codes.SERVICE_UNAVAILABLE, codes.BROKER_UNAVAILABLE,
    ),
    ("GET", _STATUS): TOKEN_ERRORS,
    ("GET", _HISTORY): (
        *TOKEN_ERRORS, codes.MISSING_HEADER, codes.INVALID_TENANT_ID, codes.INVALID_USER_ID,
        codes.INVALID_CHANNEL, codes.FORBIDDEN_CHANNEL, codes.INVALID_FIELD, codes.BROKER_UNAVAILABLE,
    ),
    ("GET", "/healthz"): (),
    ("GET", "/readyz"): (codes.SERVICE_UNAVAILABLE,),
    ("GET", WEBSOCKET_PATH): UPGRADE_ERRORS,
    ("GET", OPENAPI_PATH): (),
    #: RestAPI._authorize_metrics; 503 on a RestAPI without a running server's control plane
    ("GET", METRICS_PATH): (*TOKEN_ERRORS, codes.SERVICE_UNAVAILABLE),
    **{("OPTIONS", path): CORS_ERRORS for path in PREFLIGHT_PATHS},
    **{("GET", path): (codes.NOT_FOUND,) for path in sorted(DASHBOARD_PATHS)},
    ("GET", _STATIC): (codes.NOT_FOUND,),
}


def operation_errors(method: str, path: str) -> tuple[str, ...]:
    """Every error code an operation can answer: its own and the HTTP front's, each once."""
    return tuple(dict.fromkeys((*OPERATION_ERRORS[(method, path)], *FRONT_ERRORS)))


# -- schemas -------------------------------------------------------------------------------------

_ID = {"type": "string", "pattern": f"^{ID_PATTERN}$"}
_NAME_RULE = (f"text of 1 to {MAX_NAME_BYTES} bytes of UTF-8 without control characters "
              "(U+0000-U+001F, U+007F-U+009F)")
_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES, "pattern": f"^[^{CONTROL_CHARACTERS}]+$",
         "description": _NAME_RULE}
_CHANNEL = {
    "type": "string",
    "pattern": f"^{ID_PATTERN}(:{ID_PATTERN})?$",
    "description": "NAME or NAME:TENANT (a bare NAME is the caller's tenant's); another tenant's channel is "
                   "forbidden_channel",
}
_COUNT = {"type": "integer", "minimum": 0}
_OFFSET = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _ok(properties: dict[str, Any]) -> dict[str, Any]:
    """A success body: ``{"success": true, ...}`` with every property given."""
    return {
        "type": "object",
        "properties": {"success": {"const": True}, **properties},
        "required": ["success", *properties],
        "additionalProperties": False,
    }


def _schemas(settings: Settings) -> dict[str, Any]:
    limits = settings.limits
    metric_names = ("total_connections", "active_connections", "events_sent", "events_published",
                    "messages_received", "bytes_received", "bytes_sent", "errors", "workers",
                    "event_history_size", "client_count")
    worker_counters = ("pid", "restarts", "connections", "total_connections", "messages_in",
                       "events_published", "events_sent", "bytes_in", "bytes_out", "errors", "bus_position")
    return {
        "Error": {
            "type": "object",
            "description": "Every error: the code names it, with the status codes.ERRORS gives it",
            "properties": {
                "success": {"const": False},
                "error": {
                    "type": "object",
                    "properties": {"code": {"enum": list(codes.ERRORS)}, "message": {"type": "string"}},
                    "required": ["code", "message"],
                    "additionalProperties": False,
                },
                "legacy_url": {
                    "type": ["string", "null"],
                    "description": "with rolled_back only: where to connect instead (null when none is configured)",
                },
            },
            "required": ["success", "error"],
            "additionalProperties": False,
        },
        "Metrics": {
            "type": "object",
            "description": "Counters summed over every worker of the host (and of every host, with Redis)",
            "properties": {
                **{name: _COUNT for name in metric_names},
                "hosts": {**_COUNT, "description": "with Redis: the hosts of the cluster"},
                "last_activity": {"type": ["string", "null"], "description": "ISO-8601 UTC, this worker's"},
            },
            "required": [*metric_names, "last_activity"],
            "additionalProperties": False,
        },
        "Flags": {
            "type": "object",
            "properties": {
                "websocket_v2": {"type": "boolean"},
                "rollout_percent": {"type": "integer", "minimum": 0, "maximum": 100},
                "existing": {"enum": list(EXISTING_POLICIES)},
                "tenants": {
                    "type": "object",
                    "propertyNames": _ID,
                    "additionalProperties": {"enum": ["on", "off"]},
                },
                "source": {"enum": ["default", "config", "api"]},
            },
            "required": ["websocket_v2", "rollout_percent", "existing", "tenants", "source"],
            "additionalProperties": False,
        },
        "FlagChanges": {
            "type": "object",
            "description": "The flags to change (any of them, at least one)",
            "minProperties": 1,
            "properties": {
                "websocket_v2": {"anyOf": [{"type": "boolean"}, {"enum": ["on", "off"]}]},
                "rollout_percent": {"type": "integer", "minimum": 0, "maximum": 100,
                                    "description": "tenants whose stable bucket (crc32 of the id, mod 100) is below "
                                                   "it are on websocket_v2"},
                "existing": {"enum": list(EXISTING_POLICIES),
                             "description": "what happens to open connections of a tenant leaving websocket_v2: "
                                            "keep them, or close them with 4002"},
                "tenants": {
                    "type": "object",
                    "description": "per-tenant overrides: on, off, or null (or \"default\") to remove one",
                    "propertyNames": _ID,
                    "additionalProperties": {"enum": [True, False, "on", "off", "default", None]},
                },
            },
            "additionalProperties": False,
        },
        "Event": {
            "type": "object",
            "description": "An event as it was delivered over WebSocket",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "eventType": _NAME,
                "data": {},
                "timestamp": {"type": "string", "description": "ISO-8601 UTC with milliseconds and Z"},
                "source": _NAME,
                "priority": {"enum": list(PRIORITY_NAMES)},
                "tenantId": _ID,
                "userId": {**_NAME, "description": "the publisher's user id"},
                "channel": _CHANNEL,
                "offset": {**_OFFSET, "minimum": 1, "description": "the event's place in its channel's stream"},
            },
            "required": ["id", "eventType", "data", "timestamp", "source", "priority", "tenantId", "userId",
                         "channel", "offset"],
            "additionalProperties": False,
        },
        "Publish": {
            "type": "object",
            "description": "One event to publish, as the WebSocket publish command's fields; other fields are "
                           "ignored",
            "properties": {
                "event": {**_NAME, "not": {"enum": sorted(RESERVED_TYPES)},
                          "description": f"the event name: {_NAME_RULE}, not one of the reserved names"},
                "channel": _nullable({**_CHANNEL, "description": "the tenant channel tenant:T when absent"}),
                "payload": {"description": "any JSON ({} when absent)"},
                "source": _nullable({**_NAME, "description": "\"api\" when absent"}),
                "priority": _nullable({"enum": list(PRIORITY_NAMES), "description": "normal when absent"}),
                "targetUserId": _nullable({**_NAME, "description": "deliver to this user's connections only"}),
            },
            "required": ["event"],
        },
        "Endpoint": {
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "this server's WebSocket URL, as the request reached it"},
                "status": {"enum": ["active", "draining", "disabled"]},
                "enabled": {"type": "boolean", "description": "false while websocket_v2 is off for the tenant"},
                "metrics": _ref("Metrics"),
            },
            "required": ["url", "status", "enabled", "metrics"],
            "additionalProperties": False,
        },
        "LegacyEndpoint": {
            "type": "object",
            "properties": {
                "url": {"type": ["string", "null"], "description": "the configured legacy_url (null: none)"},
                "enabled": {"type": "boolean"},
                "status": {"enum": ["standby", "active"]},
            },
            "required": ["url", "enabled", "status"],
            "additionalProperties": False,
        },
        "Info": _ok({
            "websocket": {
                "type": "object",
                "properties": {
                    "nextjs": _ref("Endpoint"),
                    "primary": _ref("Endpoint"),
                    "supabase": _ref("LegacyEndpoint"),
                    "legacy": _ref("LegacyEndpoint"),
                    "tenant_id": _ID,
                    "channels": {"type": "array", "items": _CHANNEL,
                                 "description": "tenant:T first, then the channels with subscribers in the tenant"},
                    "event_types": {"type": "array", "items": _NAME,
                                    "maxItems": limits.max_tracked_names + 1},
                    "sources": {"type": "array", "items": _NAME, "maxItems": limits.max_tracked_names + 1},
                    "flags": _ref("Flags"),
                },
                "required": ["nextjs", "primary", "supabase", "legacy", "tenant_id", "channels", "event_types",
                             "sources", "flags"],
                "additionalProperties": False,
            },
        }),
        "Published": _ok({"id": {"type": "string", "format": "uuid"}, "offset": {**_OFFSET, "minimum": 1}}),
        "PublishedBatch": _ok({
            "ids": {"type": "array", "items": {"type": "string", "format": "uuid"}, "minItems": 1,
                    "maxItems": limits.max_batch},
            "offsets": {"type": "array", "items": {**_OFFSET, "minimum": 1}, "minItems": 1,
                        "maxItems": limits.max_batch},
        }),
        "FlagsSet": _ok({"flags": _ref("Flags")}),
        "Disconnected": _ok({"disconnected": {**_COUNT, "description": "connections closed (with 4001)"}}),
        "WorkerRow": {
            "type": "object",
            "properties": {
                **{name: _COUNT for name in worker_counters},
                "state": {"enum": ["empty", "starting", "running", "draining"]},
                "started_at": {"type": "number", "description": "Unix time"},
                "heartbeat": {"type": "number", "description": "Unix time"},
                "drops": {"type": "array", "items": _COUNT, "minItems": len(PRIORITY_NAMES),
                          "maxItems": len(PRIORITY_NAMES),
                          "description": "events dropped for slow consumers, by priority (low to critical)"},
                "latency": {"type": "array", "items": _COUNT, "minItems": LATENCY_BUCKETS,
                            "maxItems": LATENCY_BUCKETS,
                            "description": "cross-worker delivery latency histogram"},
            },
            "required": [*worker_counters, "state", "started_at", "heartbeat", "drops", "latency"],
        },
        "Status": _ok({
            "websocket": {
                "type": "object",
                "properties": {
                    "server_running": {"const": True},
                    "status": {"enum": ["active", "draining"]},
                    "health": {"enum": ["healthy", "degraded"]},
                    "auth": {"enum": ["open", "jwt"]},
                    "metrics": _ref("Metrics"),
                    "version": {"type": "string", "description": "detailed only"},
                    "implementation": {"enum": ["cython", "python"], "description": "detailed only: the core in use"},
                    "uptime_seconds": {"type": "number", "minimum": 0, "description": "detailed only"},
                    "tenants": {
                        "type": "object",
                        "description": "detailed only: this worker's tenants",
                        "propertyNames": _ID,
                        "additionalProperties": {
                            "type": "object",
                            "properties": {
                                "connections": _COUNT,
                                "events_published": _COUNT,
                                "channels": {"type": "object", "propertyNames": _CHANNEL,
                                             "additionalProperties": _COUNT,
                                             "description": "channel -> subscribers on this worker"},
                            },
                            "required": ["connections", "events_published", "channels"],
                            "additionalProperties": False,
                        },
                    },
                    "limits": {
                        "type": "object",
                        "description": "detailed only",
                        "properties": {"maxMessageSize": _COUNT, "maxSubscriptions": _COUNT, "maxSendBuffer": _COUNT},
                        "required": ["maxMessageSize", "maxSubscriptions", "maxSendBuffer"],
                        "additionalProperties": False,
                    },
                    "flags": {**_ref("Flags"), "description": "detailed only"},
                    "worker": {**_COUNT, "description": "detailed only: the worker that answered"},
                    "workers": {"type": "object", "additionalProperties": _ref("WorkerRow"),
                                "description": "detailed only: every worker's row, by number"},
                    "cluster": {"type": "object", "description": "detailed, with Redis: this host, the others "
                                                                 "and their workers, this worker's broker",
                                "properties": {"host": {"type": "string"}, "hosts": {"type": "object"},
                                               "broker": {"type": "object"}},
                                "required": ["host", "hosts", "broker"]},
                },
                "required": ["server_running", "status", "health", "auth", "metrics"],
                "additionalProperties": False,
            },
        }),
        "History": _ok({
            "channel": _CHANNEL,
            "epoch": {"type": "string", "description": "the stream's epoch: positions are (offset, epoch)"},
            "offset": {**_OFFSET, "description": "the stream's latest offset"},
            "events": {"type": "array", "items": _ref("Event"), "maxItems": MAX_HISTORY_LIMIT},
        }),
        "Health": _ok({"status": {"const": "ok"}}),
        "Ready": _ok({"status": {"const": "ready"}}),
    }


# -- responses -----------------------------------------------------------------------------------

_RETRY_AFTER = {
    "description": "seconds to wait before trying again (rate_limited)",
    "schema": {"type": "integer", "minimum": 1},
}


def _error_schema(error_codes: list[str]) -> dict[str, Any]:
    """The Error body narrowed to ``error_codes``; ``legacy_url`` comes with rolled_back and only with it."""
    narrowed: dict[str, Any] = {"properties": {"error": {"properties": {"code": {"enum": error_codes}}}}}
    if codes.ROLLED_BACK in error_codes:
        narrowed.update({
            "if": {"properties": {"error": {"properties": {"code": {"const": codes.ROLLED_BACK}}}}},
            "then": {"required": ["legacy_url"]},
            "else": {"not": {"required": ["legacy_url"]}},
        })
    else:
        narrowed["not"] = {"required": ["legacy_url"]}
    return {"allOf": [_ref("Error"), narrowed]}


def _error_responses(error_codes: Iterable[str]) -> dict[str, Any]:
    """One response per status, each naming the codes answered with it (codes.ERRORS)."""
    by_status: dict[int, list[str]] = {}
    for code in error_codes:
        by_status.setdefault(codes.ERRORS[code][0], []).append(code)
    responses = {}
    for status in sorted(by_status):
        names = by_status[status]
        response: dict[str, Any] = {
            "description": "; ".join(f"{code}: {codes.ERRORS[code][1]}" for code in names),
            "content": {JSON: {"schema": _error_schema(names)}},
        }
        headers = {}
        if codes.RATE_LIMITED in names:
            headers["Retry-After"] = _RETRY_AFTER
        if codes.UPGRADE_REQUIRED in names:
            headers["Upgrade"] = {"description": "websocket (upgrade_required)", "schema": {"const": "websocket"}}
            headers["Sec-WebSocket-Version"] = {
                "description": "13, when the handshake named another version", "schema": {"const": "13"}}
        if headers:
            response["headers"] = headers
        responses[str(status)] = response
    return responses


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


# -- parameters ----------------------------------------------------------------------------------


def _header(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "description": description, "schema": schema}


def _identity_header(name: str, schema: dict[str, Any], description: str, required: bool) -> dict[str, Any]:
    """X-Tenant-ID or X-User-ID: an optional one given empty counts as absent (a required one is 400)."""
    if required:
        return _header(name, schema, description, required=True)
    return _header(name, {"anyOf": [schema, {"const": ""}]}, description + " (empty: as if absent)")


def _query(
    name: str, schema: dict[str, Any], description: str, required: bool = False, empty: bool = False
) -> dict[str, Any]:
    """A query parameter; ``empty``: given empty (``?name=``) it counts as absent."""
    parameter = {"name": name, "in": "query", "required": required, "description": description, "schema": schema}
    if empty:
        parameter["allowEmptyValue"] = True
    return parameter


def _tenant_header(open_mode: bool) -> dict[str, Any]:
    how = ("required: no token is read in open mode" if open_mode else
           "the token's tenant when absent; another tenant's needs an admin token (else 403 forbidden)")
    return _identity_header("X-Tenant-ID", _ID, f"the tenant: 1-64 characters of [A-Za-z0-9_.-]; {how}",
                            required=open_mode)


def _user_header(open_mode: bool, required: bool) -> dict[str, Any]:
    if not required:
        how = "optional"
    elif open_mode:
        how = "required: no token is read in open mode"
    else:
        how = "the token's user when absent; another user's needs an admin token (else 403 forbidden)"
    return _identity_header("X-User-ID", _NAME, f"the user: {_NAME_RULE} (UTF-8 is read as such); {how}",
                            required=required and open_mode)


# -- the document ----------------------------------------------------------------------------------


def _operation(
    method: str,
    path: str,
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    tags: list[str],
    description: str = "",
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    security: Security | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": tags}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    if security is not None:
        operation["security"] = security
    operation["responses"] = {**responses, **_error_responses(operation_errors(method, path))}
    return operation


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server with ``settings`` (a fresh dict)."""
    limits = settings.limits
    open_mode = not (settings.jwt_secret or settings.jwt_keys_file)
    #: with a key: a token, in the Authorization header or (as browsers' WebSockets send it) the query
    token: Security = [{"bearerAuth": []}, {"tokenQuery": []}]
    #: on public paths, and everywhere in open mode
    public: Security = []
    secured = public if open_mode else token
    status_security = public if open_mode else [{}, *token] if settings.public_status else token
    admin_note = (
        "Admin operation: in open mode accepted from loopback only unless open_admin is \"any\" "
        f"(this server: {settings.open_admin}); with a key, only with an admin token (role \"admin\"), "
        "else 403 forbidden."
    )
    json_body = {"description": "sent as JSON: a Content-Type other than application/json is 415"}

    paths: dict[str, dict[str, Any]] = {
        _API: {
            "get": _operation(
                "GET", _API, "getConnectionInfo", "Connection info for a tenant",
                {"200": _json_response("this server's endpoint, the legacy one, the tenant's channels and names, "
                                       "the flags", "Info")},
                tags=["websocket"],
                description="What a client of the tenant needs to connect: this server's WebSocket URL and status "
                            "(disabled while websocket_v2 is off for the tenant), the legacy endpoint, the "
                            "tenant's channels with subscribers, the event types and sources seen in it, the flags.",
                parameters=[_tenant_header(open_mode)],
                security=secured,
            ),
            "post": _operation(
                "POST", _API, "publish", "Publish one event, or a batch",
                {"200": {
                    "description": "published: the event's id and offset, or a batch's in order",
                    "content": {JSON: {"schema": {"oneOf": [_ref("Published"), _ref("PublishedBatch")]}}},
                }},
                tags=["websocket"],
                description=(
                    "A JSON object publishes one event to its channel, as the WebSocket publish command does "
                    "(source \"api\" when absent). A JSON array of 1 to max_batch "
                    f"({limits.max_batch}) such objects is checked and encoded whole before any is published, "
                    "then published in order; one bad item publishes nothing (its index is in the message). "
                    f"The body is at most max_body_size ({limits.max_body_size} bytes, else 413). Publishes "
                    "count against the tenant's rate (429 rate_limited with Retry-After) and a new channel "
                    "against its channels with history (429 too_many_channels)."
                ),
                parameters=[_tenant_header(open_mode), _user_header(open_mode, required=True)],
                body={**json_body, "required": True, "content": {JSON: {"schema": {"oneOf": [
                    _ref("Publish"),
                    {"type": "array", "items": _ref("Publish"), "minItems": 1, "maxItems": limits.max_batch},
                ]}}}},
                security=secured,
            ),
            "put": _operation(
                "PUT", _API, "setFlags", "Change the flags",
                {"200": _json_response("the flags now in force on every worker (and host)", "FlagsSet")},
                tags=["admin"],
                description="Changes websocket_v2 (instant rollback to the legacy system), the rollout "
                            "percentage, the policy for open connections and per-tenant overrides, for every "
                            "worker of the host (of the cluster, with Redis). " + admin_note,
                body={**json_body, "required": True, "content": {JSON: {"schema": {
                    "type": "object",
                    "description": "other fields are ignored",
                    "properties": {"flags": _ref("FlagChanges")},
                    "required": ["flags"],
                }}}},
                security=secured,
            ),
            "delete": _operation(
                "DELETE", _API, "disconnect", "Disconnect a tenant's connections (a user's, one connection)",
                {"200": _json_response("how many connections were closed (with 4001), on every worker",
                                       "Disconnected")},
                tags=["admin"],
                description="The tenant from ?tenant_id= or, as the seed's apps send it, the X-Tenant-ID header "
                            "(one is required, else 400 missing_field); the user likewise (?user_id= or "
                            "X-User-ID); connection_id narrows to the connection its welcome event named. "
                            "The query wins where both are given. " + admin_note,
                parameters=[
                    _query("tenant_id", _ID, "the tenant whose connections to close (empty: as if absent)",
                           empty=True),
                    _query("user_id", _NAME, f"only this user's: {_NAME_RULE} (empty: as if absent)", empty=True),
                    _query("connection_id", {"type": "string", "minLength": 1, "maxLength": 64},
                           "only this connection (the connectionId of its welcome event)"),
                    _identity_header("X-Tenant-ID", _ID, "the tenant, when ?tenant_id= is not given (checked "
                                     "either way)", required=False),
                    _identity_header("X-User-ID", _NAME, "the user, when ?user_id= is not given (checked either "
                                     "way)", required=False),
                ],
                security=secured,
            ),
        },
        _STATUS: {
            "get": _operation(
                "GET", _STATUS, "getStatus", "Status and metrics",
                {"200": _json_response("the host's status and counters (detailed: version, core, workers, "
                                       "tenants, flags, limits)", "Status")},
                tags=["health"],
                description=(
                    "Counters summed over every worker of the host, whichever worker answers. With a key a "
                    "token is needed, unless public_status is set (this server: "
                    f"{'set' if settings.public_status else 'not set'}), which answers the basic status "
                    "without one. detailed=true is an admin operation: " + admin_note
                ),
                parameters=[_query(
                    "detailed", {"type": "string", "examples": ["true", "false"]},
                    "true, 1 or yes (any case) add version, implementation, uptime, every worker's row, this "
                    "worker's tenants, the flags and limits; any other value (false, empty) does not",
                    empty=True,
                )],
                security=status_security,
            ),
        },
        _HISTORY: {
            "get": _operation(
                "GET", _HISTORY, "getHistory", "A channel's recent events",
                {"200": _json_response("the stored events after since, oldest first, as they were delivered",
                                       "History")},
                tags=["websocket"],
                description=f"At most history_size ({limits.history_size}) events are kept per channel. Events "
                            "targeted at one user are listed only when X-User-ID is that user.",
                parameters=[
                    _tenant_header(open_mode),
                    _user_header(open_mode, required=False),
                    _query("channel", _CHANNEL, "the channel (the tenant channel tenant:T when absent or empty)",
                           empty=True),
                    _query("since", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0},
                           "the events after this offset (0 when absent or empty)", empty=True),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY_LIMIT, "default": 100},
                           "at most this many events (100 when absent or empty)", empty=True),
                ],
                security=secured,
            ),
        },
        "/healthz": {
            "get": _operation(
                "GET", "/healthz", "healthz", "Liveness", {"200": _json_response("alive", "Health")},
                tags=["health"], security=public,
            ),
        },
        "/readyz": {
            "get": _operation(
                "GET", "/readyz", "readyz", "Readiness",
                {"200": _json_response("accepting connections", "Ready")},
                tags=["health"], description="503 service_unavailable while the server shuts down.", security=public,
            ),
        },
        WEBSOCKET_PATH: {"get": _websocket_operation(open_mode, token, public)},
        OPENAPI_PATH: {
            "get": _operation(
                "GET", OPENAPI_PATH, "getOpenAPI", "This description",
                {"200": {"description": "the OpenAPI 3.1 document of this server's HTTP API",
                         "content": {JSON: {"schema": {"type": "object", "required": ["openapi", "info", "paths"]}}}}},
                tags=["meta"], security=public,
            ),
        },
    }
    paths[METRICS_PATH] = {"get": _metrics_operation(settings, open_mode)}
    for path in PREFLIGHT_PATHS:
        paths[path]["options"] = _options_operation(path)
    dashboard = {"description": "the dashboard page", "content": {"text/html": {"schema": {"type": "string"}}},
                 "headers": {"Content-Security-Policy": {"schema": {"type": "string"}},
                             "Cache-Control": {"schema": {"const": "no-cache"}}}}
    for path in sorted(DASHBOARD_PATHS):
        paths[path] = {"get": _operation(
            "GET", path, "dashboard" if path == "/dashboard" else "websocketTest", "The dashboard page",
            {"200": dashboard}, tags=["dashboard"], security=public,
            description="Live status, charts, a message log, publishing, history and the flags, in the browser; "
                        "it asks for tokens itself. GET and HEAD only (else 405).",
        )}
    static_types = sorted({content_type.decode().split(";")[0] for content_type in CONTENT_TYPES.values()})
    paths[_STATIC] = {"get": _operation(
        "GET", _STATIC, "staticFile", "A file of the dashboard",
        {
            "200": {"description": "the file",
                    "headers": {"ETag": {"schema": {"type": "string"}},
                                "Cache-Control": {"schema": {"type": "string"}}},
                    "content": {media: {"schema": {}} for media in static_types}},
            "304": {"description": "not modified (If-None-Match names the file's ETag)",
                    "headers": {"ETag": {"schema": {"type": "string"}}}},
        },
        tags=["dashboard"], security=public,
        description="The scripts, styles and vendored files the dashboard loads; a path that is not a file of "
                    "fastws/static/ is 404. GET and HEAD only (else 405).",
        parameters=[
            {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}, "example": "dashboard.js",
             "description": "the file's path under fastws/static/ (segments of [A-Za-z0-9_.-])"},
            _header("If-None-Match", {"type": "string"}, "ETags the client holds: 304 when one matches"),
        ],
    )}

    security_note = (
        "This server runs in open mode: no token is read; the identity headers (and query) name the tenant and user."
        if open_mode else
        "This server verifies tokens: HS256 JWTs with the claims sub (the user), tenant_id and exp, and role "
        "\"admin\" for admin operations (mint one with `fastws token --tenant T --user U [--admin]`)."
    )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "fastws HTTP API",
            "version": __version__,
            "summary": "REST API and WebSocket endpoint of a fastws server",
            "description": (
                "The REST API of fastws, a multi-tenant WebSocket pub/sub server, on the same port as its "
                f"WebSocket endpoint ({WEBSOCKET_PATH}; the wire protocol is docs/protocol.md). HTTP/1.1 with "
                "keep-alive; HEAD is answered wherever GET is, without the body. Every error is "
                "{\"success\":false,\"error\":{\"code\",\"message\"}} with the status its code has; a path "
                "that serves no route is 404 not_found, a method it does not serve 405 method_not_allowed "
                "with an Allow header.\n\n"
                f"{security_note} Without a key, every operation is open and admin operations are "
                "accepted from loopback only (unless open_admin is \"any\"). With a key, /healthz, /readyz, "
                "this description and the dashboard's files need none, and public_status opens the basic "
                "status.\n\n"
                "Browsers of another origin are served CORS headers when the origin is in allowed_origins; "
                "from an origin not allowed, anything but GET and HEAD is 403 origin_not_allowed and not "
                "acted on."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        **({} if open_mode else {"security": token}),
        "tags": [
            {"name": "websocket", "description": "publishing, connection info, history"},
            {"name": "admin", "description": "flags and disconnections"},
            {"name": "health", "description": "liveness, readiness, status"},
            {"name": "meta", "description": "this description"},
            {"name": "metrics", "description": "Prometheus' scrape endpoint"},
            {"name": "dashboard", "description": "the dashboard and its files"},
        ],
        "paths": paths,
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "Authorization: Bearer TOKEN (when the server has a key)"},
                "tokenQuery": {"type": "apiKey", "in": "query", "name": "token",
                               "description": "?token=TOKEN, as browsers' WebSockets send it; the header wins"},
                "metricsToken": {"type": "http", "scheme": "bearer",
                                 "description": "Authorization: Bearer METRICS_TOKEN, the metrics_token setting "
                                                "(FASTWS_METRICS_TOKEN): GET /metrics only"},
            },
        },
    }


def _websocket_operation(open_mode: bool, token: Security, public: Security) -> dict[str, Any]:
    identity = ("required: no token is read in open mode" if open_mode else
                "the token's when absent or empty; another's needs an admin token (else 403 forbidden)")
    filters = [
        _query(key, {"type": "string"},
               f"a comma list of {'priority names' if key == 'priority' else 'names'}: the connection's "
               f"{key} filter, set before anything is sent (empty: none)", empty=True)
        for key in FILTER_KEYS
    ]
    return _operation(
        "GET", WEBSOCKET_PATH, "websocketUpgrade", "Open a WebSocket (or learn why it would be refused)",
        {"101": {"description": "Switching Protocols: the WebSocket protocol follows (docs/protocol.md); "
                                "its first message is the welcome event",
                 "headers": {"Upgrade": {"schema": {"const": "websocket"}},
                             "Sec-WebSocket-Accept": {"schema": {"type": "string"}}}}},
        tags=["websocket"],
        description=(
            "With the handshake's headers (Upgrade: websocket, Connection: Upgrade, Sec-WebSocket-Version: "
            "13, Sec-WebSocket-Key: the base64 of 16 bytes) the connection is upgraded, or refused with a "
            "JSON error body: another version is 426 upgrade_required naming 13, a bad key 400 bad_request, "
            "then the origin, the token or ids, the position and filters, the websocket_v2 flag (503 "
            "rolled_back with legacy_url), the client address's connect rate (429 rate_limited with "
            "Retry-After) and the address's and tenant's open connections (429 too_many_connections). "
            "Without them (a plain GET, as a browser that cannot read a refused upgrade's status asks again) "
            "the answer is the refusal an upgrade with this query would get from the checks that spend "
            "nothing (not the connect rate or counts), else 426 upgrade_required."
        ),
        parameters=[
            _query("tenant_id", _ID, f"the tenant; {identity}", required=open_mode, empty=not open_mode),
            _query("user_id", _NAME, f"the user: {_NAME_RULE}; {identity}", required=open_mode, empty=not open_mode),
            *filters,
            _query("since", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                   "resume the tenant channel after this offset"),
            _query("epoch", {"type": "string", "minLength": 1, "maxLength": 64},
                   "with since: the epoch the offset belongs to"),
            _header("Origin", {"type": "string"}, "a browser's origin: refused (403) when allowed_origins is set "
                                                  "and does not list it"),
        ],
        security=public if open_mode else token,
    )


def _metrics_operation(settings: Settings, open_mode: bool) -> dict[str, Any]:
    """GET /metrics (RestAPI._authorize_metrics): the metrics token when one is set, with a key an admin
    token too; in open mode without a metrics token, nothing."""
    security: Security = []
    if settings.metrics_token:
        security.append({"metricsToken": []})
    if not open_mode:
        security.append({"bearerAuth": []})
    access = (
        "This server: " + (
            "open (no metrics_token is set and no key)." if not security else
            "the metrics token" + (", or an admin token" if not open_mode else "") + "."
            if settings.metrics_token else "an admin token (no metrics_token is set)."
        )
    )
    text = {"schema": {"type": "string"}}
    return _operation(
        "GET", METRICS_PATH, "getMetrics", "The host's metrics for Prometheus",
        {"200": {
            "description": "every worker's counters of this host (and, with Redis, its broker's) in Prometheus' "
                           "text format, or OpenMetrics when Accept names application/openmetrics-text; the "
                           "families are docs/metrics.md",
            "content": {PROMETHEUS_TEXT: text, OPENMETRICS_TEXT: text},
        }},
        tags=["metrics"],
        description=(
            "Whichever worker answers reads every worker's row from the host's shared memory, so one scrape "
            "covers the host; counters never go back (a worker started again continues its predecessor's). "
            "Access: with metrics_token set, Authorization: Bearer METRICS_TOKEN (compared in constant time); "
            "with a key, an admin token also works, and is needed when no metrics_token is set; in open mode "
            "without a metrics_token the endpoint is open. The token is read from the header only. " + access
        ),
        parameters=[_header("Accept", {"type": "string"},
                            f"{OPENMETRICS_TEXT} for OpenMetrics; anything else gets the text format")],
        security=security,
    )


def _options_operation(path: str) -> dict[str, Any]:
    return _operation(
        "OPTIONS", path, "preflight" + "".join(part.title() for part in path.split("/")[2:]),
        "CORS preflight",
        {"204": {
            "description": "the methods the path serves; to an allowed origin's preflight also the methods, "
                           "headers and max age it may use",
            "headers": {
                "Allow": {"schema": {"type": "string"}},
                "Access-Control-Allow-Origin": {"schema": {"type": "string"}},
                "Access-Control-Allow-Methods": {"schema": {"type": "string"}},
                "Access-Control-Allow-Headers": {"schema": {"type": "string"}},
                "Access-Control-Max-Age": {"schema": {"type": "string"}},
                "Access-Control-Allow-Credentials": {"schema": {"const": "true"},
                                                     "description": "with cors_credentials set"},
                "Vary": {"schema": {"type": "string"}},
            },
        }},
        tags=["websocket"],
        description="From an origin not in allowed_origins (or any other origin, when the list is empty) a "
                    "preflight is 403 origin_not_allowed.",
        parameters=[
            _header("Origin", {"type": "string"}, "the page's origin"),
            _header("Access-Control-Request-Method", {"type": "string"}, "the method the page will use"),
        ],
        security=[],
    )
