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
        (426, "GET", "/ws", None, None),
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
