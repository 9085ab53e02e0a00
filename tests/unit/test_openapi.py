"""The OpenAPI description (fastws.openapi) against the code, without sockets: valid OpenAPI 3.1, every
route and nothing else, every error code an operation can answer (derived from the handlers' code)
under the status codes.ERRORS gives it, and the answers of the REST API to a battery of requests valid
against it. tests/integration/test_openapi_live.py checks it against live servers with schemathesis."""

from __future__ import annotations

import inspect
import re
import textwrap
import time
from typing import Any, Awaitable, Callable

import orjson
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from fastws import __version__, codes
from fastws.assets import StaticFiles
from fastws.auth import Authenticator, OriginPolicy
from fastws.broker import SharedBroker
from fastws.config import Settings
from fastws.control import Flags, WorkerStats
from fastws.control.flags import v2_enabled_for
from fastws.history import History, TenantStreams
from fastws.hub import Hub
from fastws.openapi import FRONT_ERRORS, OPERATION_ERRORS, PREFLIGHT_PATHS, document, operation_errors
from fastws.rest import METRICS_PATH, OPENAPI_PATH, PUBLIC_PATHS, WEBSOCKET_PATH, Request, Response, RestAPI
from fastws.server.app import Server
from fastws.server.cluster_plane import ClusterPlane
from fastws.server.control import WorkerControl
from fastws.server.http import HttpProtocol
from fastws.server.redis_broker import RedisBroker

SECRET = "openapi-unit-test-secret-0123456789"
OPEN = Settings()
AUTH = Settings(jwt_secret=SECRET)
JSON = "application/json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): operation for path, item in spec["paths"].items()
            for method, operation in item.items() if method in METHODS}


def error_codes(spec: dict[str, Any], operation: dict[str, Any]) -> dict[str, set[str]]:
    """status -> the error codes an operation's response of that status names."""
    found = {}
    for status, response in operation["responses"].items():
        schema = response.get("content", {}).get("application/json", {}).get("schema", {})
        for part in schema.get("allOf", []):
            enum = part.get("properties", {}).get("error", {}).get("properties", {}).get("code", {}).get("enum")
            if enum is not None:
                found[status] = set(enum)
    return found


# -- the document itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [OPEN, AUTH, Settings(jwt_secret=SECRET, public_status=True),
     Settings.from_dict({"open_admin": "any", "max_batch": 7})],
    ids=["open", "auth", "public", "any"],
)
def test_document_is_valid_openapi_3_1(settings):
    """The document validates as OpenAPI 3.1 (openapi-spec-validator), and round-trips through JSON."""
    spec = document(settings)
    assert spec["openapi"].startswith("3.1.")
    assert spec["info"]["version"] == __version__
    validate(spec)
    assert orjson.loads(orjson.dumps(spec)) == spec


def test_every_route_is_described_and_nothing_else():
    """Each (method, path) of RestAPI._routes is an operation; the others are OPTIONS (on routes that a
    browser may call cross-origin) and the dashboard's files that StaticFiles serves, and nothing more."""
    spec = document(OPEN)
    rest = RestAPI(Hub(OPEN.limits), OPEN, describe=document)
    routes = {(method, path) for path, methods in rest._routes.items() for method in methods}
    described = set(operations(spec))
    assert routes <= described
    others = described - routes
    preflights = {(method, path) for method, path in others if method == "OPTIONS"}
    assert preflights == {("OPTIONS", path) for path in PREFLIGHT_PATHS}
    assert {path for _, path in preflights} <= set(rest._routes)
    static = others - preflights
    assert {method for method, _ in static} == {"GET"}
    for _, path in static:
        assert StaticFiles.serves(path.replace("{path}", "dashboard.js")), path
        assert path not in rest._routes
    assert OPERATION_ERRORS.keys() == described


def test_error_responses_carry_each_code_under_its_status():
    """Every error response names, in its code enum, exactly the codes codes.ERRORS gives its status,
    and an operation's enums together are all the codes it can answer (operation_errors)."""
    spec = document(AUTH)
    for (method, path), operation in operations(spec).items():
        found = error_codes(spec, operation)
        for status, names in found.items():
            assert {str(codes.ERRORS[code][0]) for code in names} == {status}, (method, path, status)
        assert set().union(*found.values()) == set(operation_errors(method, path)), (method, path)
        assert not {status for status in operation["responses"] if status >= "400"} - set(found), (method, path)


def test_security_follows_the_settings():
    """Open mode: no operation asks for a token and the identity headers are required; with a key every
    operation but the public ones asks for one; public_status opens basic status."""
    def secured(spec, method, path):
        security = operations(spec)[(method, path)].get("security", spec.get("security", []))
        return security != [] and {} not in security

    def required(spec, method, path, name):
        return next(p["required"] for p in operations(spec)[(method, path)]["parameters"] if p["name"] == name)

    open_spec, auth_spec, public_spec = document(OPEN), document(AUTH), document(AUTH.replace(public_status=True))
    assert not any(secured(open_spec, *operation) for operation in operations(open_spec))
    for method, path in operations(auth_spec):
        public = (path in PUBLIC_PATHS - {WEBSOCKET_PATH} or method == "OPTIONS"
                  or not path.startswith(("/api", "/ws", METRICS_PATH)))
        assert secured(auth_spec, method, path) != public, (method, path)
    assert not secured(public_spec, "GET", "/api/websocket/status")
    assert required(open_spec, "POST", "/api/websocket", "X-Tenant-ID")
    assert not required(auth_spec, "POST", "/api/websocket", "X-Tenant-ID")
    assert required(open_spec, "GET", WEBSOCKET_PATH, "tenant_id")
    assert not required(auth_spec, "GET", WEBSOCKET_PATH, "tenant_id")


def test_metrics_security_follows_its_token_and_the_key():
    """GET /metrics: open in open mode without a metrics token; the metrics token when one is set; with a
    key an admin token (bearer only: the token is not read from the query), beside the metrics token."""
    def security(settings):
        return operations(document(settings))[("GET", METRICS_PATH)]["security"]

    assert security(OPEN) == []
    assert security(OPEN.replace(metrics_token="m" * 32)) == [{"metricsToken": []}]
    assert security(AUTH) == [{"bearerAuth": []}]
    assert security(AUTH.replace(metrics_token="m" * 32)) == [{"metricsToken": []}, {"bearerAuth": []}]
    content = operations(document(OPEN))[("GET", METRICS_PATH)]["responses"]["200"]["content"]
    assert set(content) == {"text/plain", "application/openmetrics-text"}


def test_bounds_come_from_the_settings_and_the_code():
    """max_batch, the history limit and the id grammar are the code's own."""
    spec = document(Settings.from_dict({"max_batch": 7}))
    body = operations(spec)[("POST", "/api/websocket")]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][1]["maxItems"] == 7
    history = {p["name"]: p for p in operations(spec)[("GET", "/api/websocket/history")]["parameters"]}
    assert history["limit"]["schema"]["maximum"] == 1000 and history["limit"]["schema"]["minimum"] == 1
    assert history["X-Tenant-ID"]["schema"]["pattern"] == "^[A-Za-z0-9_.-]{1,64}$"


# -- the codes, derived from the code --------------------------------------------------------------
#
# codes_reached() reads a function's source for codes.NAME and follows what it calls: module functions
# of fastws (by name, called or passed), methods of ``self``, and the methods of the objects named in
# RECEIVERS (the hub, its broker, the worker's control, ...), every implementation of each.

_ERROR_NAMES = {name: value for name, value in vars(codes).items() if isinstance(value, str) and value in codes.ERRORS}
_BROKERS = (History, SharedBroker, RedisBroker)
RECEIVERS: dict[str, tuple[type, ...]] = {
    "self.hub": (Hub,), "hub": (Hub,), "self.control": (WorkerControl,), "self.cluster": (ClusterPlane,),
    "self.server": (Server,), "self.broker": _BROKERS, "self._broker": _BROKERS, "self.hub.broker": _BROKERS,
    "broker": _BROKERS, "self.authenticator": (Authenticator,), "self.hub.authenticator": (Authenticator,),
    "self.tenants": (TenantStreams,), "self.origins": (OriginPolicy,),
    # WorkerControl.set_flags: current = the flags in force
    "current": (Flags,),
}
_CALL = re.compile(r"(?<![.\w])((?:self|hub|broker|current)(?:\.\w+)*?)\.(\w+)\(")


def codes_reached(function: Callable, owner: type | None = None, seen: set | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if function in seen:
        return set()
    seen.add(function)
    source = textwrap.dedent(inspect.getsource(function))
    found = {_ERROR_NAMES[name] for name in re.findall(r"codes\.([A-Z_]+)", source) if name in _ERROR_NAMES}
    for name in set(re.findall(r"(?<![.\w])([A-Za-z_]\w*)\b", source)):
        target = function.__globals__.get(name)
        if inspect.isfunction(target) and target.__module__.startswith("fastws"):
            found |= codes_reached(target, None, seen)
    for receiver, attribute in set(_CALL.findall(source)):
        for cls in (owner,) if receiver == "self" and owner is not None else RECEIVERS.get(receiver, ()):
            target = inspect.getattr_static(cls, attribute, None)
            if isinstance(target, (staticmethod, classmethod)):
                target = target.__func__
            if inspect.isfunction(target):
                found |= codes_reached(target, cls, seen)
    return found


def _front_codes() -> set[str]:
    """What fastws.server.http answers a request with before (or around) its route: parse errors, the
    head and body limits (their own methods only: the route's are the operations')."""
    found = set()
    for name in ("data_received", "on_header", "_count", "on_headers_complete", "on_body"):
        found |= codes_reached(getattr(HttpProtocol, name))
    return found | {codes.BAD_REQUEST}  # on_message_complete: a request target that is no URL


def derived_errors(method: str, path: str) -> set[str]:
    """The codes the code says the operation can answer."""
    found = _front_codes()
    if path == WEBSOCKET_PATH:
        # the upgrade (handshake, then the Server's checks and admission), the plain GET's probe, the 426
        return (found | codes_reached(HttpProtocol._upgrade, HttpProtocol)
                | codes_reached(Server.probe_websocket, Server) | codes_reached(RestAPI.get_websocket, RestAPI))
    rest = RestAPI(Hub(OPEN.limits), OPEN, describe=document)
    if path not in rest._routes:  # the dashboard's files: 405 answers the methods that are no operation
        return found | codes_reached(StaticFiles.handle, StaticFiles) - {codes.METHOD_NOT_ALLOWED}
    if method not in ("GET", "HEAD"):  # RestAPI.handle: _cors refuses these from an origin not allowed
        found.add(codes.ORIGIN_NOT_ALLOWED)
    if method == "OPTIONS":
        return found | codes_reached(RestAPI._options, RestAPI)
    found.add(codes.INTERNAL)  # RestAPI._handle: an unexpected exception
    if path not in PUBLIC_PATHS:
        found |= codes_reached(RestAPI._authorize, RestAPI) | {codes.FORBIDDEN}  # open_admin=loopback
    return found | codes_reached(rest._routes[path][method].__func__, RestAPI)


#: codes an operation answers that no call from its handler names: they come from callbacks on the loop
SCHEDULED = {
    # RedisBroker._run_batch and its watchdog answer a publish that Redis did not number in time
    ("POST", "/api/websocket"): {codes.BROKER_UNAVAILABLE},
}


@pytest.mark.parametrize("operation", sorted(OPERATION_ERRORS), ids=lambda op: " ".join(op))
def test_described_codes_are_those_the_code_answers(operation):
    """Each operation describes every code its handler (and the HTTP front, the token and CORS checks)
    can answer, and no code it cannot, but for the few answered from callbacks (SCHEDULED)."""
    derived = derived_errors(*operation)
    described = set(operation_errors(*operation))
    assert derived - described == set(), "answered but not described"
    assert described - derived == SCHEDULED.get(operation, set()), "described but never answered"
    assert _front_codes() == set(FRONT_ERRORS)


# -- the answers, checked against the document -----------------------------------------------------


class FakeControl:
    """A worker's control for a RestAPI without a server: flags, rows and disconnections in memory."""

    worker = 0

    def __init__(self) -> None:
        self.flags = Flags()

    def v2_enabled(self, tenant_id: str) -> bool:
        return v2_enabled_for(self.flags, tenant_id)

    def set_flags(self, body: object) -> Flags:
        self.flags = self.flags.updated(body, 16)
        return self.flags

    def totals(self) -> dict[str, Any]:
        names = ("total_connections", "connections", "events_sent", "events_published", "messages_in",
                 "bytes_in", "bytes_out", "errors")
        return {**{name: 0 for name in names}, "workers": 1}

    def rows(self) -> dict[int, WorkerStats]:
        return {0: WorkerStats(pid=1, state="running", started_at=time.time(), heartbeat=time.time())}

    async def disconnect(self, tenant_id: str, user_id: str | None, connection_id: str | None) -> int:
        return 0

    def cluster_status(self) -> None:
        return None


class Checker:
    """Sends requests to a RestAPI and checks each answer against the document: a status the operation
    describes, a body its schema (with the components) accepts, the headers it names."""

    def __init__(self, settings: Settings, **rest: Any) -> None:
        self.rest = RestAPI(Hub(settings.limits, authenticator=Authenticator.from_settings(settings)), settings,
                            control=FakeControl(), static=StaticFiles(), describe=document, **rest)
        self.spec = document(settings)
        self.operations = operations(self.spec)
        self.seen: set[tuple[str, str, int]] = set()

    async def __call__(self, method: str, target: str, headers: dict[str, str] | None = None, body: Any = None,
                       operation: str | None = None, client: str = "127.0.0.1") -> tuple[int, Any]:
        path, _, query_text = target.partition("?")
        query = dict(pair.partition("=")[::2] for pair in query_text.split("&") if pair)
        raw = body if isinstance(body, bytes) else b"" if body is None else orjson.dumps(body)
        headers = {name.lower(): value for name, value in {"content-type": JSON, **(headers or {})}.items()}
        answer: Response | Awaitable[Response] = self.rest.handle(Request(method, path, query, headers, raw, client))
        response = answer if isinstance(answer, Response) else await answer
        described = self.operations[(method, operation or path)]
        assert str(response.status) in described["responses"], (method, target, response.status, response.body)
        expected = described["responses"][str(response.status)]
        content = expected.get("content")
        if content is None:
            assert response.body == b""
            data = None
        else:
            media = response.content_type.decode().split(";")[0]
            assert media in content, (method, target, media)
            data = orjson.loads(response.body) if media == "application/json" else response.body
            if media == "application/json":
                schema = {**content[media]["schema"], "components": self.spec["components"]}
                OAS31Validator(schema).validate(data)
        named = {name.decode().lower() for name, _ in response.headers}
        for header in ("retry-after", "allow", "upgrade"):
            if header in named:
                assert header in {name.lower() for name in expected.get("headers", {})}, (method, target, header)
        self.seen.add((method, operation or path, response.status))
        return response.status, data

    async def code(self, *args: Any, **kwargs: Any) -> str:
        """The error code of a request's answer."""
        status, data = await self(*args, **kwargs)
        assert status >= 400, (status, data)
        return data["error"]["code"]


async def test_answers_of_the_open_api_follow_the_document():
    """Open mode: every route's success and error answers (each body against its schema)."""
    settings = Settings.from_dict({"max_batch": 2, "max_channels_per_tenant": 2, "tenant_publish_rate": 1000,
                                   "tenant_publish_burst": 8, "legacy_url": "wss://legacy.example/ws"})
    check = Checker(settings)
    tenant = {"X-Tenant-ID": "acme", "X-User-ID": "alice"}
    assert (await check("GET", "/api/websocket", tenant))[0] == 200
    assert await check.code("GET", "/api/websocket") == codes.MISSING_HEADER
    assert await check.code("GET", "/api/websocket", {"X-Tenant-ID": "a b"}) == codes.INVALID_TENANT_ID
    publishes = [
        ({"event": "made", "payload": {"n": 1}, "priority": "high", "source": None}, 200),
        ([{"event": "a"}, {"event": "b", "targetUserId": "bob"}], 200),
        ([{"event": "a"}] * 3, codes.BATCH_TOO_LARGE),
        ([], codes.INVALID_FIELD),
        ([1], codes.INVALID_MESSAGE),
        ({}, codes.MISSING_FIELD),
        ({"event": "connection"}, codes.RESERVED_TYPE),
        ({"event": ""}, codes.INVALID_EVENT),
        ({"event": "e", "source": "\x00"}, codes.INVALID_SOURCE),
        ({"event": "e", "priority": "urgent"}, codes.INVALID_PRIORITY),
        ({"event": "e", "channel": "a:b:c"}, codes.INVALID_CHANNEL),
        ({"event": "e", "channel": "ideas:globex"}, codes.FORBIDDEN_CHANNEL),
        ({"event": "e", "targetUserId": ""}, codes.INVALID_USER_ID),
        ({"event": "e", "channel": "second"}, 200),
        ({"event": "e", "channel": "third"}, codes.TOO_MANY_CHANNELS),
        (b"{nope", codes.INVALID_JSON),
    ]
    for body, expected in publishes:
        status, data = await check("POST", "/api/websocket", tenant, body)
        assert (status if expected == 200 else data["error"]["code"]) == expected, body
    status, data = await check("POST", "/api/websocket", {**tenant, "Content-Type": "text/plain"}, {"event": "e"})
    assert data["error"]["code"] == codes.UNSUPPORTED_MEDIA_TYPE
    assert await check.code("POST", "/api/websocket", {"X-Tenant-ID": "acme"}, {"event": "e"}) == codes.MISSING_HEADER
    for _ in range(10):  # the tenant's bucket holds 8
        status, data = await check("POST", "/api/websocket", tenant, {"event": "e"})
    assert data["error"]["code"] == codes.RATE_LIMITED
    check.rest.hub.draining = True
    assert await check.code("POST", "/api/websocket", tenant, {"event": "e"}) == codes.SERVICE_UNAVAILABLE
    check.rest.hub.draining = False

    history = "/api/websocket/history"
    assert (await check("GET", f"{history}?since=0&limit=1000", tenant))[0] == 200
    assert len((await check("GET", f"{history}?channel=second", tenant))[1]["events"]) == 1
    for query, expected in (("channel=x:globex", codes.FORBIDDEN_CHANNEL), ("channel=a:b:c", codes.INVALID_CHANNEL),
                            ("limit=0", codes.INVALID_FIELD), ("limit=1001", codes.INVALID_FIELD),
                            ("since=-1", codes.INVALID_FIELD)):
        assert await check.code("GET", f"{history}?{query}", tenant) == expected, query
    assert await check.code("GET", history, {"X-Tenant-ID": "acme", "X-User-ID": "\x7f"}) == codes.INVALID_USER_ID

    flags = {"flags": {"websocket_v2": "off", "rollout_percent": 50, "existing": "keep", "tenants": {"vip": "on"}}}
    assert (await check("PUT", "/api/websocket", body=flags))[1]["flags"]["tenants"] == {"vip": "on"}
    for body, expected in (({}, codes.MISSING_FIELD), ({"flags": {}}, codes.INVALID_FIELD),
                           ({"flags": {"tenants": {"a b": "on"}}}, codes.INVALID_TENANT_ID)):
        assert await check.code("PUT", "/api/websocket", body=body) == expected, body
    assert (await check("GET", "/api/websocket", tenant))[1]["websocket"]["nextjs"]["status"] == "disabled"
    assert await check.code("PUT", "/api/websocket", body=flags, client="203.0.113.9") == codes.FORBIDDEN

    assert (await check("DELETE", "/api/websocket?tenant_id=acme&user_id=alice&connection_id=c"))[0] == 200
    for target, expected in (("", codes.MISSING_FIELD), ("?tenant_id=a%20b", codes.INVALID_TENANT_ID),
                             ("?tenant_id=a&connection_id=" + "c" * 65, codes.INVALID_FIELD)):
        assert await check.code("DELETE", f"/api/websocket{target}") == expected, target

    for query in ("", "?detailed=true", "?detailed=no"):
        assert (await check("GET", f"/api/websocket/status{query}"))[0] == 200
    assert (await check("GET", "/api/websocket/status?detailed=1", client="203.0.113.9"))[0] == 403
    assert (await check("GET", "/healthz"))[0] == 200
    assert (await check("GET", "/readyz"))[0] == 200
    check.rest.state = lambda: "draining"
    assert await check.code("GET", "/readyz") == codes.SERVICE_UNAVAILABLE
    assert (await check("GET", "/api/websocket/status"))[1]["websocket"]["status"] == "draining"
    assert await check.code("GET", WEBSOCKET_PATH) == codes.UPGRADE_REQUIRED
    status, data = await check("GET", OPENAPI_PATH)
    assert data == document(settings)
    for path in PREFLIGHT_PATHS:
        assert (await check("OPTIONS", path))[0] == 204
        assert (await check("OPTIONS", path, {"Origin": "https://elsewhere.example"}))[0] == 403
    foreign = {**tenant, "Origin": "https://elsewhere.example"}
    assert await check.code("POST", "/api/websocket", foreign, {"event": "e"}) == codes.ORIGIN_NOT_ALLOWED
    assert (await check("GET", "/dashboard"))[0] == 200
    status, _ = await check("GET", "/static/dashboard.js", operation="/static/{path}")
    etag = next(value.decode() for name, value in check.rest.static.handle(
        Request("GET", "/static/dashboard.js", {}, {})).headers if name == b"ETag")
    assert (await check("GET", "/static/dashboard.js", {"If-None-Match": etag}, operation="/static/{path}"))[0] == 304
    assert (await check("GET", "/static/nope.js", operation="/static/{path}"))[0] == 404


async def test_answers_with_tokens_follow_the_document():
    """With a key: no token, a bad or expired one, another tenant's headers, a user token on an admin
    operation; an admin token anywhere; public paths without one."""
    check = Checker(AUTH)
    authenticator = Authenticator.from_settings(AUTH)
    user = {"Authorization": f"Bearer {authenticator.mint('acme', 'alice')}"}
    admin = {"Authorization": f"Bearer {authenticator.mint('ops', 'root', admin=True)}"}
    expired = {"Authorization": f"Bearer {authenticator.mint('acme', 'alice', now=time.time() - 7200)}"}
    assert await check.code("GET", "/api/websocket") == codes.UNAUTHORIZED
    assert await check.code("GET", "/api/websocket", {"Authorization": "Bearer nope"}) == codes.UNAUTHORIZED
    assert await check.code("GET", "/api/websocket", expired) == codes.TOKEN_EXPIRED
    assert (await check("GET", "/api/websocket", user))[1]["websocket"]["tenant_id"] == "acme"
    other_tenant = {**user, "X-Tenant-ID": "globex"}
    assert await check.code("POST", "/api/websocket", other_tenant, {"event": "e"}) == codes.FORBIDDEN
    assert (await check("POST", "/api/websocket", {**admin, "X-Tenant-ID": "globex", "X-User-ID": "svc"},
                        {"event": "e"}))[0] == 200
    for method, target, body in (("PUT", "/api/websocket", {"flags": {"websocket_v2": True}}),
                                 ("DELETE", "/api/websocket?tenant_id=acme", None),
                                 ("GET", "/api/websocket/status?detailed=yes", None)):
        assert await check.code(method, target, user, body) == codes.FORBIDDEN, target
        assert (await check(method, target, admin, body))[0] == 200, target
    by_query = "/api/websocket/history?token=" + admin["Authorization"].removeprefix("Bearer ")
    assert (await check("GET", by_query, {"X-Tenant-ID": "globex"}))[0] == 200
    for path in ("/healthz", "/readyz", OPENAPI_PATH, "/dashboard"):
        assert (await check("GET", path))[0] == 200, path


def test_the_served_document_is_encoded_once_and_follows_a_reload():
    """GET /api/openapi.json answers the same bytes until the settings change, then describes the new ones."""
    rest = RestAPI(Hub(OPEN.limits), OPEN, describe=document)
    first = rest.handle(Request("GET", OPENAPI_PATH, {}, {}))
    assert first.body is rest.handle(Request("HEAD", OPENAPI_PATH, {}, {})).body
    assert first.content_type == b"application/json"
    rest.settings = AUTH
    assert orjson.loads(rest.handle(Request("GET", OPENAPI_PATH, {}, {})).body)["security"]
