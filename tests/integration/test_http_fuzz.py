"""A short, bounded hypothesis fuzz of the HTTP front over loopback.

Each example is one request made of a method, a target, a version and a header
set drawn from what has broken HTTP servers before (absolute and authority
targets, IPv6 literals, userinfo, huge ports, CONNECT, upgrade headers on any
path, WebSocket handshakes with any version and key, Content-Length and
Transfer-Encoding at odds), sent on a fresh connection that is then half-closed.
What comes back must be well-formed HTTP/1.1 responses with the standard reason
phrase and a status under 500 (a 101 ends the HTTP part), then a clean close.
Nothing may be logged above INFO, and afterwards a WebSocket client still
connects and a REST publish still reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from http import HTTPStatus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import TIMEOUT, Client, close_writer
from tests.integration.test_http import fetch

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ([^\r\n]+)\r\n")
TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~", min_size=1, max_size=12)
#: printable ASCII but space: what a request target may be made of, and then some
TARGET_CHARS = st.text("".join(chr(c) for c in range(0x21, 0x7F)), max_size=40)
VALUE = st.text("".join(chr(c) for c in range(0x20, 0x7F)) + "\t", max_size=40)
KEY = "dGhlIHNhbXBsZSBub25jZQ=="

KNOWN_METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"])
METHODS = st.one_of(KNOWN_METHODS, KNOWN_METHODS, KNOWN_METHODS, TOKEN)
TARGETS = st.one_of(
    st.sampled_from([
        "/", "*", "/ws", "/ws?tenant_id=fz&user_id=u", "/healthz", "/readyz", "/api/websocket",
        "/api/websocket?tenant_id=fz", "/api/websocket/status?detailed=true", "/api/websocket/history?channel=x",
        "http://", "http://[::1", "http://[::1]/healthz", "http://a:99999999/healthz", "http://a:b@/healthz",
        "http://a/ws?tenant_id=fz&user_id=u", "127.0.0.1:22", "//", "/%zz", "/?%", "/#frag", "a",
    ]),
    TARGET_CHARS.map(lambda text: "/" + text),
    TARGET_CHARS,
)
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.10"])
HEADER = st.one_of(
    st.sampled_from([
        ("Connection", "Upgrade"), ("Connection", "keep-alive, Upgrade"), ("Connection", "close"),
        ("Upgrade", "websocket"), ("Upgrade", "h2c"), ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Key", "abc"),
        ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Version", "8"), ("Content-Length", "0"),
        ("Content-Length", "5"), ("Content-Length", "99999999999999999999"), ("Content-Length", "-1"),
        ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "gzip"), ("Content-Type", "application/json"),
        ("X-Tenant-ID", "fz"), ("X-User-ID", "u"), ("Authorization", "Bearer x.y.z"), ("Origin", "null"),
        ("Host", "[::1"), ("Expect", "100-continue"),
    ]),
    st.tuples(st.sampled_from(["Connection", "Upgrade", "Sec-WebSocket-Version", "Sec-WebSocket-Key", "Host"]), VALUE),
    st.tuples(TOKEN, VALUE),
)
#: no space, so a body the server takes for the next request is no request line
BODY = st.binary(max_size=24).map(lambda data: data.replace(b" ", b"_"))

REQUESTS = st.builds(
    lambda method, target, version, headers, body: (
        method,
        f"{method} {target} {version}\r\n".encode() + b"".join(f"{n}: {v}\r\n".encode() for n, v in headers) + b"\r\n" + body,
    ),
    METHODS, TARGETS, VERSIONS, st.lists(HEADER, max_size=6), BODY,
)


def check_responses(method: str, data: bytes) -> None:
    """``data`` is well-formed HTTP/1.1 responses, each under 500 with its standard reason phrase and a Content-Length
    body; a 101 ends the HTTP part."""
    first = True
    while data:
        match = STATUS_LINE.match(data)
        assert match, data[:200]
        status = int(match[1])
        assert status < 500, data[:400]
        assert match[2].decode() == HTTPStatus(status).phrase, match[0]
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, head
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, colon, value = line.partition(b":")
            assert colon and name and name == name.strip(), line
            headers[name.lower()] = value.strip()
        if status == 101:
            return  # WebSocket frames follow
        length = headers.get(b"content-length")
        assert length is not None and length.isdigit(), head
        # A HEAD is answered without the body, but for a request refused before it was read
        # whole (malformed, too large), whose answer is the connection's last and has it.
        if first and method == "HEAD" and not (headers.get(b"connection") == b"close" and len(data) == int(length)):
            first = False
            continue
        assert len(data) >= int(length), (head, data)
        data = data[int(length):]
        first = False


async def exchange(server, request: bytes) -> bytes:
    """Send ``request``, half-close, and read until the server closes (or resets) the connection."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        writer.write_eof()
        chunks = []
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        await close_writer(writer)


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=REQUESTS)
async def test_random_requests_get_well_formed_answers(server, caplog, request):
    """Random requests: well-formed answers under 500 or a clean close, nothing logged above INFO, and the server
    then still takes a WebSocket client and delivers a REST publish to it."""
    caplog.set_level(logging.INFO)
    method, data = request
    check_responses(method, await exchange(server, data))
    loud = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
    assert not loud, loud
    async with await Client.connect(server.ws_url, "fz", "u") as client:
        response = await fetch(server, "POST", "/api/websocket", {"X-Tenant-ID": "fz", "X-User-ID": "svc"}, json={"event": "after"})
        assert response.status == 200, response
        assert (await client.recv())["id"] == response.json()["id"]
