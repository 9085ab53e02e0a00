"""Hostile HTTP against a real server: request targets its URL parser refuses, CONNECT,
upgrade headers where no upgrade is served, broken WebSocket handshakes, HEAD.

Each is answered with a standard status line and (but for HEAD) the JSON error
body of its code, nothing is logged above INFO, and the server goes on serving
others. Requests are exact bytes (``tests.integration.test_http``'s raw client).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from http import HTTPStatus

import pytest

from fastws import codes
from tests.helpers import TIMEOUT, Client
from tests.integration.test_http import (  # noqa: F401 - fixtures
    assert_serves_fresh_clients,
    build_request,
    connect,
    expect_switch,
    expect_welcome,
    fetch,
    make_server,
)
from tests.rawws import upgrade_request

SECRET = "hostile-http-test-secret-of-32-bytes!"


def _token(tenant_id: str, user_id: str) -> str:
    import time

    import jwt

    return jwt.encode({"tenant_id": tenant_id, "sub": user_id, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
UPGRADE_HEADERS = {"Connection": "Upgrade", "Upgrade": "websocket"}


@pytest.fixture
def quiet_log(caplog):
    """Fail the test if anything was logged above INFO (an error, a traceback)."""
    caplog.set_level(logging.INFO)
    yield
    loud = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
    assert not loud, loud


def handshake(key: str | None = "", version: str | None = "13", connection: str = "Upgrade", extra: str = "") -> bytes:
    """An upgrade request to /ws; key "" is a fresh valid key, None leaves the header out (and so does version None)."""
    if key == "":
        key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws?tenant_id=acme&user_id=alice HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        f"Connection: {connection}",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


# --- request targets httptools' parser takes and its URL parser refuses ------------------------

BAD_TARGETS = ["http://", "http://[::1", "http://a:99999999/healthz", "http://a:b@/healthz"]


@pytest.mark.parametrize("target", BAD_TARGETS)
async def test_unparsable_target_is_400_and_the_connection_goes_on(server, connect, quiet_log, target):
    """A target that is no URL answers 400 bad_request (logged at most at INFO); the connection serves the next request."""
    connection = await connect(server)
    response = await connection.request("GET", target)
    assert response.status == 400, response
    assert response.reason == "Bad Request"
    assert response.error_code() == codes.BAD_REQUEST
    after = await connection.request("GET", "/healthz")
    assert after.status == 200 and after.json()["status"] == "ok", after
    await assert_serves_fresh_clients(server)


@pytest.mark.parametrize("target", BAD_TARGETS)
async def test_unparsable_target_is_400_before_authentication(make_server, quiet_log, target):
    """With tokens required, a target that is no URL is still 400 bad_request, not 401 nor 500."""
    server = await make_server(jwt_secret=SECRET)
    for method, headers in (("GET", None), ("POST", {"Content-Type": "application/json"})):
        response = await fetch(server, method, target, headers, body=b"{}" if method == "POST" else None)
        assert response.status == 400, (method, response)
        assert response.error_code() == codes.BAD_REQUEST


# --- CONNECT -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["127.0.0.1:22", "example.com:443", "/healthz"])
async def test_connect_is_405_with_allow(server, connect, quiet_log, target):
    """CONNECT answers 405 method_not_allowed with an Allow header listing what is served, then closes."""
    connection = await connect(server)
    await connection.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    response = await connection.response()
    assert response.status == 405, response
    assert response.error_code() == codes.METHOD_NOT_ALLOWED
    assert {m.strip() for m in response.header("Allow").split(",")} == {"GET", "HEAD", "POST", "PUT", "DELETE"}
    assert await connection.closed_by_server()
    await assert_serves_fresh_clients(server)


# --- upgrade headers where no upgrade is served ---------------------------------------------------


async def test_delete_with_upgrade_headers_disconnects_and_answers(server, connect, quiet_log):
    """DELETE /api/websocket with upgrade headers is a REST request: the tenant is disconnected (4001) and the count answered."""
    async with await Client.connect(server.ws_url, "gone", "u") as client, await Client.connect(server.ws_url, "kept", "u") as other:
        connection = await connect(server)
        response = await connection.request("DELETE", "/api/websocket?tenant_id=gone", UPGRADE_HEADERS)
        assert response.status == 200, response
        assert response.json() == {"success": True, "disconnected": 1}
        assert response.header("Sec-WebSocket-Accept") is None
        await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
        assert client.ws.close_code == codes.DISCONNECTED_BY_ADMIN
        assert (await other.request({"type": "ping"}))["type"] == "pong"


async def test_requests_with_upgrade_headers_keep_the_connection(server, connect, quiet_log):
    """Requests with upgrade headers that are not upgraded, pipelined with others, are each answered in order on one connection."""
    h2c = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"}
    identity = {"X-Tenant-ID": "acme", "X-User-ID": "svc"}
    connection = await connect(server)
    await connection.send(
        build_request("DELETE", "/api/websocket?tenant_id=nobody", UPGRADE_HEADERS)
        + build_request("POST", "/api/websocket", {**identity, **h2c}, json={"event": "first"})
        + build_request("GET", "/healthz", UPGRADE_HEADERS)
        + build_request("POST", "/api/websocket", {**identity, **UPGRADE_HEADERS, "Transfer-Encoding": "chunked"},
                        b'9\r\n{"event":\r\na\r\n "second"}\r\n0\r\n\r\n', json=None)
        + build_request("GET", "/readyz")
    )
    assert (await connection.response()).json() == {"success": True, "disconnected": 0}
    first = await connection.response()
    assert first.status == 200 and first.json()["offset"] >= 0, first
    assert (await connection.response()).json() == {"success": True, "status": "ok"}
    second = await connection.response()
    assert second.status == 200 and second.json()["offset"] == first.json()["offset"] + 1, second
    last = await connection.response()
    assert last.json() == {"success": True, "status": "ready"} and last.header("Connection") == "keep-alive", last


async def test_publish_with_upgrade_headers_is_delivered(server, quiet_log):
    """POST /api/websocket with upgrade headers (and a body) publishes as without them."""
    async with await Client.connect(server.ws_url, "acme", "alice") as alice:
        headers = {"X-Tenant-ID": "acme", "X-User-ID": "svc", **UPGRADE_HEADERS}
        response = await fetch(server, "POST", "/api/websocket", headers, json={"event": "upgraded_not"})
        assert response.status == 200, response
        assert (await alice.recv())["id"] == response.json()["id"]


@pytest.mark.parametrize(
    ("method", "status"),
    [("POST", 405), ("PUT", 405), ("DELETE", 405), ("HEAD", 426)],
)
async def test_upgrade_on_the_websocket_path_needs_get(server, connect, quiet_log, method, status):
    """Upgrade headers with another method than GET on /ws: no upgrade, the plain answer (405 Allow: GET, HEAD, or 426); the connection stays."""
    connection = await connect(server)
    request, _ = upgrade_request()
    await connection.send(request.replace(b"GET ", method.encode() + b" ", 1))
    response = await connection.response(head=method == "HEAD")
    assert response.status == status, response
    assert response.header("Sec-WebSocket-Accept") is None
    if status == 405:
        assert response.header("Allow") == "GET, HEAD"
    after = await connection.request("GET", "/healthz")
    assert after.status == 200, after


@pytest.mark.parametrize("protocol", ["h2c", "websocket2", "TLS/1.2"])
async def test_upgrade_to_another_protocol_is_426(server, connect, quiet_log, protocol):
    """GET /ws asking to upgrade to anything but websocket is no upgrade: 426 upgrade_required, Upgrade: websocket."""
    connection = await connect(server)
    await connection.send(handshake().replace(b"Upgrade: websocket", f"Upgrade: {protocol}".encode()))
    response = await connection.response()
    assert response.status == 426, response
    assert response.error_code() == codes.UPGRADE_REQUIRED
    assert response.header("Upgrade") == "websocket"


# --- the WebSocket handshake (RFC 6455 4.2.1, 4.2.2) ----------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        handshake(version="8"),
        handshake(version="7"),
        handshake(version=None),
        handshake(version="13, 8"),
        handshake(version="013"),
        handshake(version="13", extra="Sec-WebSocket-Version: 8\r\n"),
    ],
    ids=["8", "7", "missing", "list", "leading-zero", "twice"],
)
async def test_other_websocket_version_is_426_naming_13(server, connect, quiet_log, request_bytes):
    """A Sec-WebSocket-Version other than exactly 13 answers 426 with Sec-WebSocket-Version: 13, no upgrade."""
    connection = await connect(server)
    await connection.send(request_bytes)
    response = await connection.response()
    assert response.status == 426, response
    assert response.reason == "Upgrade Required"
    assert response.error_code() == codes.UPGRADE_REQUIRED
    assert response.header("Sec-WebSocket-Version") == "13"
    assert response.header("Sec-WebSocket-Accept") is None
    assert await connection.closed_by_server()


@pytest.mark.parametrize(
    "request_bytes",
    [
        handshake(key=None),
        handshake(key="abc"),
        handshake(key=base64.b64encode(b"x" * 15).decode()),
        handshake(key=base64.b64encode(b"x" * 17).decode()),
        handshake(key="!" * 22 + "=="),
        handshake(key=base64.b64encode(b"x" * 16).decode()[:-2] + "A="),
        handshake(extra="Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode() + "\r\n"),
    ],
    ids=["missing", "short", "15-bytes", "17-bytes", "not-base64", "bad-padding", "twice"],
)
async def test_bad_websocket_key_is_400(server, connect, quiet_log, request_bytes):
    """A missing, repeated or malformed Sec-WebSocket-Key (not the base64 of 16 bytes) answers 400 bad_request, no upgrade."""
    connection = await connect(server)
    await connection.send(request_bytes)
    response = await connection.response()
    assert response.status == 400, response
    assert response.error_code() == codes.BAD_REQUEST
    assert response.header("Sec-WebSocket-Accept") is None
    assert await connection.closed_by_server()


@pytest.mark.parametrize("connection_header", ["keep-alive, Upgrade", "upgrade", "UPGRADE,keep-alive"])
async def test_upgrade_with_connection_tokens_is_served(server, connect, quiet_log, connection_header):
    """A handshake whose Connection header lists upgrade among other tokens (as Firefox sends) is upgraded."""
    key = base64.b64encode(os.urandom(16)).decode()
    connection = await connect(server)
    await connection.send(handshake(key=key, connection=connection_header))
    await expect_switch(connection, key)
    await expect_welcome(connection)


async def test_key_with_surrounding_whitespace_is_upgraded(server, connect, quiet_log):
    """Whitespace around header values is not part of them (RFC 9110 5.5): the key is still the key."""
    key = base64.b64encode(os.urandom(16)).decode()
    connection = await connect(server)
    await connection.send(handshake(key=None, version=" 13\t", extra=f"Sec-WebSocket-Key: \t{key}  \r\n"))
    await expect_switch(connection, key)
    await expect_welcome(connection)


# --- status lines --------------------------------------------------------------------------------


async def test_every_status_line_has_the_standard_reason_phrase(make_server, connect, quiet_log):
    """200, 400, 401, 404, 405, 413, 426, 431 and 503 status lines carry their standard reason phrase."""
    from fastws.config import Limits

    server = await make_server(Limits(max_body_size=64, max_header_size=1024), jwt_secret=SECRET)
    cases = [
        (200, "GET", "/healthz", None, None),
        (400, "GET", "/healthz", {"Bad Name": "x"}, None),
        (401, "GET", "/api/websocket", None, None),
        (404, "GET", "/nope", None, None),
        (405, "POST", "/healthz", None, b"{}"),
        (413, "POST", "/api/websocket", None, b"x" * 65),
        (426, "GET", "/ws", {"Authorization": f"Bearer {_token('acme', 'alice')}"}, None),
        (431, "GET", "/healthz", {"X-Big": "x" * 2000}, None),
    ]
    for status, method, path, headers, body in cases:
        response = await fetch(server, method, path, headers, body)
        assert response.status == status, (path, response)
        assert response.reason == HTTPStatus(status).phrase, (status, response.reason)
    server.accepting = False  # as while draining: /readyz answers 503
    response = await fetch(server, "GET", "/readyz")
    assert (response.status, response.reason) == (503, "Service Unavailable"), response


# --- HEAD -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/healthz", None),
        ("/readyz", None),
        ("/api/websocket/status", None),
        ("/api/websocket", {"X-Tenant-ID": "acme"}),
        ("/api/websocket", None),
        ("/api/websocket/history?channel=tenant:acme", {"X-Tenant-ID": "acme"}),
        ("/nope", None),
    ],
)
async def test_head_answers_like_get_without_the_body(server, connect, quiet_log, path, headers):
    """HEAD answers GET's status and Content-Length with no body; the next request on the connection is answered."""
    get = await fetch(server, "GET", path, headers)
    connection = await connect(server)
    # HEAD and GET in one write: a body after the HEAD answer would be read as the next status line
    await connection.send(build_request("HEAD", path, headers) + build_request("GET", "/readyz"))
    head = await connection.response(head=True)
    assert head.status == get.status, (head, get)
    assert head.reason == get.reason
    assert head.header("Content-Length") == get.header("Content-Length") == str(len(get.body))
    assert head.header("Content-Type") == get.header("Content-Type")
    after = await connection.response()
    assert after.status == 200 and after.json() == {"success": True, "status": "ready"}, after
    assert head.header("Connection") == after.header("Connection") == "keep-alive"


async def test_head_needs_a_token_where_get_does(make_server, quiet_log):
    """With tokens required, HEAD of a protected path is 401 as GET is; HEAD /healthz stays public."""
    server = await make_server(jwt_secret=SECRET)
    assert (await fetch(server, "HEAD", "/api/websocket/status")).status == 401
    assert (await fetch(server, "HEAD", "/healthz")).status == 200
