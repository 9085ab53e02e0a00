"""The dashboard's files on a real server: content types, caching, ETag and 304, HEAD, 405, and no way
out of fastws/static/ (traversal in every spelling is 404 with the standard error body).

Requests are raw bytes (tests.integration.test_http's client), so targets such as ``/static/../rest.py``
reach the server as written, not normalised by an HTTP library.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from fastws.assets import STATIC_DIR
from tests.helpers import close_writer
from tests.integration.test_http import build_request, fetch, make_server, read_response  # noqa: F401

CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "clients" / "js" / "src" / "index.js"


@pytest.fixture
async def server(make_server):  # noqa: F811
    return await make_server()


async def test_dashboard_pages_are_html_with_csp(server):
    """/dashboard and /websocket-test answer the dashboard page, not cached, with a strict CSP."""
    page = (STATIC_DIR / "dashboard.html").read_bytes()
    for path in ("/dashboard", "/websocket-test"):
        response = await fetch(server, "GET", path)
        assert response.status == 200, response
        assert response.body == page
        assert response.header("Content-Type") == "text/html; charset=utf-8"
        assert response.header("Cache-Control") == "no-cache"
        assert response.header("ETag") is None
        csp = response.header("Content-Security-Policy")
        assert csp is not None
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "connect-src 'self' ws: wss:" in csp
        assert "unsafe-inline" not in csp


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/static/dashboard.js", "text/javascript; charset=utf-8"),
        ("/static/dashboard.css", "text/css; charset=utf-8"),
        ("/static/vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("/static/vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
        ("/static/vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
    ],
)
async def test_assets_have_type_cache_and_etag(server, path, content_type):
    """A file under static/ is served as it is on disk, with its type, a public max-age and a content ETag."""
    body = (STATIC_DIR / path.removeprefix("/static/")).read_bytes()
    response = await fetch(server, "GET", path)
    assert response.status == 200, response
    assert response.body == body
    assert response.header("Content-Type") == content_type
    assert response.header("Cache-Control") == "public, max-age=3600"
    assert response.header("ETag") == '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    assert response.header("X-Content-Type-Options") == "nosniff"


async def test_if_none_match_is_304_without_body(server):
    """A request naming the current ETag (alone, in a list, or weak) is 304 with no body; another ETag is 200."""
    first = await fetch(server, "GET", "/static/dashboard.js")
    etag = first.header("ETag")
    for value in (etag, f'"nope", {etag}', f"W/{etag}", "*"):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(build_request("GET", "/static/dashboard.js", {"If-None-Match": value}))
            response = await read_response(reader, head=True)
            assert response.status == 304, (value, response)
            assert response.header("ETag") == etag
            assert response.header("Content-Length") is None
            # the connection stays usable: the next response follows at once, no body in between
            writer.write(build_request("GET", "/healthz"))
            assert (await read_response(reader)).status == 200
        finally:
            await close_writer(writer)
    response = await fetch(server, "GET", "/static/dashboard.js", {"If-None-Match": '"other"'})
    assert response.status == 200 and response.body == first.body


async def test_head_has_headers_and_no_body(server):
    """HEAD of a file: the GET's status and headers (Content-Length of the file), no body."""
    body = (STATIC_DIR / "dashboard.css").read_bytes()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(build_request("HEAD", "/static/dashboard.css") + build_request("GET", "/healthz"))
        head = await read_response(reader, head=True)
        assert head.status == 200
        assert head.header("Content-Length") == str(len(body))
        assert head.header("Content-Type") == "text/css; charset=utf-8"
        assert (await read_response(reader)).json() == {"success": True, "status": "ok"}
    finally:
        await close_writer(writer)
    page = await fetch(server, "HEAD", "/dashboard")
    assert page.status == 200 and page.body == b"" and page.header("Cache-Control") == "no-cache"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/dashboard", "/websocket-test", "/static/dashboard.js"])
async def test_other_methods_are_405(server, method, path):
    """Only GET and HEAD are served on the dashboard's paths: 405 method_not_allowed with Allow."""
    response = await fetch(server, method, path, body=b"")
    assert response.status == 405, response
    assert response.header("Allow") == "GET, HEAD"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "path",
    [
        "/static/../rest.py",
        "/static/%2e%2e/rest.py",
        "/static/%2E%2E/rest.py",
        "/static/..%2frest.py",
        "/static/..%2Frest.py",
        "/static/..%5crest.py",
        "/static/..\\rest.py",
        "/static//etc/passwd",
        "/static/vendor/../../rest.py",
        "/static/vendor/uplot/../../../rest.py",
        "/static/./dashboard.js",
        "/static/dashboard.js%00.css",
        "/static/%2fetc/passwd",
        "/static/",
        "/static/vendor",
        "/static/vendor/",
        "/static/missing.js",
        "/static/rest.py",
        "/static/../../../../etc/passwd",
        "/static/dashboard.js/",
    ],
)
async def test_traversal_and_misses_are_404(server, path):
    """No spelling of a path reaches a file outside fastws/static/ (or a directory): 404 not_found, JSON body."""
    response = await fetch(server, "GET", path)
    assert response.status == 404, (path, response)
    assert response.header("Content-Type") == "application/json"
    assert response.json() == {
        "success": False,
        "error": {"code": "not_found", "message": response.json()["error"]["message"]},
    }
    assert b"import" not in response.body and b"root:" not in response.body


async def test_absolute_form_target_is_not_a_file(server):
    """An absolute-form target naming a file outside static/ is not served either."""
    response = await fetch(server, "GET", "http://127.0.0.1/static/../rest.py")
    assert response.status == 404, response


async def test_browser_client_is_the_npm_module(server):
    """/static/fastws-client.js is the JS package's module (a symlink in the tree), served as JavaScript."""
    link = STATIC_DIR / "fastws-client.js"
    assert link.is_symlink() or link.is_file(), "fastws/static/fastws-client.js is missing"
    if link.is_symlink():
        assert link.resolve() == CLIENT_SOURCE.resolve()
    body = link.read_bytes()
    assert b"FastWSClient" in body and b"FastWSError" in body
    response = await fetch(server, "GET", "/static/fastws-client.js")
    assert response.status == 200, response
    assert response.body == body
    assert response.header("Content-Type") == "text/javascript; charset=utf-8"


async def test_static_paths_need_no_token(make_server):  # noqa: F811
    """With authentication on, the page and its files are served without a token (the API still needs one)."""
    server = await make_server(jwt_secret="s" * 32)
    assert (await fetch(server, "GET", "/dashboard")).status == 200
    assert (await fetch(server, "GET", "/static/dashboard.js")).status == 200
    assert (await fetch(server, "GET", "/static/../rest.py")).status == 404
    assert (await fetch(server, "GET", "/api/websocket/status")).status == 401
