"""The dashboard and the browser client, served from ``fastws/static/``, sans I/O.

Routes::

    GET|HEAD  /dashboard, /websocket-test   the dashboard page (dashboard.html)
    GET|HEAD  /static/<path>                a file under fastws/static/

Every file is read once, when the first ``StaticFiles`` is built, and kept in
memory (the directory holds a few hundred KiB). A request names a file by a
key in that table and nothing else: the path is never joined to a directory
or opened, so no request can reach a file outside ``fastws/static/``. Keys are
checked against a strict grammar first (segments of ``[A-Za-z0-9_.-]``, no
``.`` or ``..`` segment, no empty segment), which refuses percent-escapes,
backslashes, NUL and absolute paths before the lookup; a miss is 404.

HTML is sent with ``Cache-Control: no-cache`` and a Content-Security-Policy;
other files with ``public, max-age=3600`` and an ETag (a hash of the content)
that an ``If-None-Match`` is answered 304 against.

``fastws/static/fastws-client.js`` is, in the source tree, a symbolic link to
the npm package's module (``clients/js/src/index.js``): the page and the
package use the same file. A wheel holds its content.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import codes
from .rest import Request, Response, error_response

__all__ = ["DASHBOARD_PATHS", "STATIC_DIR", "STATIC_PREFIX", "StaticFiles"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/static/"
#: paths answered with the dashboard page (the seed's test page is /websocket-test)
DASHBOARD_PATHS = frozenset({"/dashboard", "/websocket-test"})
DASHBOARD_FILE = "dashboard.html"

#: file suffix -> Content-Type; files of other types are not served
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".json": b"application/json",
    ".map": b"application/json",
    ".txt": b"text/plain; charset=utf-8",
    ".md": b"text/plain; charset=utf-8",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    "": b"text/plain; charset=utf-8",  # LICENSE
}

#: the dashboard loads its own scripts and styles, and talks to this origin (REST and WebSocket)
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; "
    b"img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HTML_CACHE = b"no-cache"
ASSET_CACHE = b"public, max-age=3600"
#: the largest file kept in memory; anything bigger is not served (the directory holds small files)
MAX_FILE_SIZE = 4 * 1024 * 1024

#: a key: segments of safe characters separated by single slashes (no leading slash)
_KEY = re.compile(r"[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*")
_METHODS = ("GET", "HEAD")
_ALLOW = [(b"Allow", b"GET, HEAD")]


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: bytes
    etag: bytes
    html: bool


def _load(directory: Path) -> dict[str, Asset]:
    """Every servable file under ``directory``, by its relative POSIX path.

    File symlinks are followed (the browser client is one); directory
    symlinks are not, and a dangling link is left out.
    """
    assets: dict[str, Asset] = {}
    if not directory.is_dir():
        return assets
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            key = path.relative_to(directory).as_posix()
            content_type = CONTENT_TYPES.get(path.suffix.lower())
            if content_type is None or not _valid_key(key) or not path.is_file():
                continue
            if path.stat().st_size > MAX_FILE_SIZE:
                continue
            body = path.read_bytes()
            etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
            assets[key] = Asset(body, content_type, etag, path.suffix.lower() == ".html")
    return assets


def _valid_key(key: str) -> bool:
    return _KEY.fullmatch(key) is not None and not any(part in (".", "..") for part in key.split("/"))


def _matches(if_none_match: str, etag: bytes) -> bool:
    """Whether an If-None-Match header names this ETag (weak comparison, RFC 9110 13.1.2)."""
    tag = etag.decode()
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False


class StaticFiles:
    """The files of ``fastws/static/``, read once; ``handle()`` answers a request for one."""

    _cache: dict[Path, dict[str, Asset]] = {}

    def __init__(self, directory: Path = STATIC_DIR) -> None:
        if directory not in StaticFiles._cache:
            StaticFiles._cache[directory] = _load(directory)
        self.assets = StaticFiles._cache[directory]

    @staticmethod
    def serves(path: str) -> bool:
        """Whether ``path`` is one of the paths this class answers (the rest are the REST API's)."""
        return path in DASHBOARD_PATHS or path.startswith(STATIC_PREFIX)

    def handle(self, request: Request) -> Response:
        if request.method not in _METHODS:
            return error_response(
                codes.METHOD_NOT_ALLOWED, f"{request.method[:16]} is not allowed here", list(_ALLOW)
            )
        path = request.path
        key = DASHBOARD_FILE if path in DASHBOARD_PATHS else path[len(STATIC_PREFIX):]
        asset = self.assets.get(key) if _valid_key(key) else None
        if asset is None:
            return error_response(codes.NOT_FOUND, f"no file for {path[:100]}")
        if asset.html:
            headers = [
                (b"Cache-Control", HTML_CACHE),
                (b"Content-Security-Policy", CONTENT_SECURITY_POLICY),
                (b"X-Content-Type-Options", b"nosniff"),
                (b"Referrer-Policy", b"no-referrer"),
            ]
            return Response(200, asset.body, headers, asset.content_type)
        headers = [(b"Cache-Control", ASSET_CACHE), (b"ETag", asset.etag), (b"X-Content-Type-Options", b"nosniff")]
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None and _matches(if_none_match, asset.etag):
            return Response(304, b"", headers, asset.content_type)
        return Response(200, asset.body, headers, asset.content_type)
