"""Publishing from backends over the REST API, with connection reuse.

    fastws.publish("http://127.0.0.1:8765", "acme", "svc", "idea_created", {"title": "x"})

    async with fastws.AsyncPublisher("http://127.0.0.1:8765", token=TOKEN) as publisher:
        await publisher.publish("acme", "svc", "idea_created", {"title": "x"}, channel="ideas")

Both keep one HTTP/1.1 keep-alive connection per server and open a new one
when it was closed. A refused publish raises fastws.CommandError with the
server's error code (and ``status``).
"""

from __future__ import annotations

import asyncio
import http.client
import threading
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson

from .client import CommandError
from .messages import publish_fields

__all__ = ["publish", "apublish", "AsyncPublisher", "PublishError"]


class PublishError(CommandError):
    """The server refused a REST publish: ``code`` as in fastws.codes, ``status`` the HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status


def _body(event: str, payload: Any, channel: str | None, source: str | None, priority: str | None,
          target_user_id: str | None) -> bytes:
    return orjson.dumps(publish_fields(event, payload, channel, source, priority, target_user_id))


def _headers(tenant_id: str, user_id: str, token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Tenant-ID": tenant_id, "X-User-ID": user_id}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _result(status: int, raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise PublishError(status, "bad_response", raw[:200].decode(errors="replace")) from None
    if status != 200:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise PublishError(status, error.get("code", "http_error"), error.get("message", str(status)))
    return body


_local = threading.local()


def publish(
    base_url: str,
    tenant_id: str,
    user_id: str,
    event: str,
    payload: Any = None,
    *,
    channel: str | None = None,
    source: str | None = None,
    priority: str | None = None,
    target_user_id: str | None = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Publish one event (blocking); ``{"success": true, "id", "offset"}``. Reuses one connection per thread and server."""
    parts = urlsplit(base_url)
    key = (parts.scheme, parts.netloc)
    pool = getattr(_local, "connections", None)
    if pool is None:
        pool = _local.connections = {}
    body = _body(event, payload, channel, source, priority, target_user_id)
    headers = _headers(tenant_id, user_id, token)
    for attempt in (1, 2):
        connection = pool.get(key)
        if connection is None:
            kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            connection = pool[key] = kind(parts.netloc, timeout=timeout)
        try:
            connection.request("POST", "/api/websocket", body, headers)
            response = connection.getresponse()
            raw = response.read()
            if response.will_close:
                connection.close()
                pool.pop(key, None)
            return _result(response.status, raw)
        except (ConnectionError, http.client.HTTPException):
            connection.close()
            pool.pop(key, None)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class _Response:
    """httptools callbacks for one response."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True
        # read here: the parser forgets it once the message is over
        self.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]


class AsyncPublisher:
    """REST publishing from asyncio code over one keep-alive connection (requests take turns)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = parts.scheme == "https"
        self.token = token
        self.timeout = timeout
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def publish(
        self,
        tenant_id: str,
        user_id: str,
        event: str,
        payload: Any = None,
        *,
        channel: str | None = None,
        source: str | None = None,
        priority: str | None = None,
        target_user_id: str | None = None,
    ) -> dict[str, Any]:
        body = _body(event, payload, channel, source, priority, target_user_id)
        headers = _headers(tenant_id, user_id, self.token)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = (f"POST /api/websocket HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{head}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        async with self._lock:
            for attempt in (1, 2):
                try:
                    return await asyncio.wait_for(self._exchange(request), self.timeout)
                except (ConnectionError, asyncio.IncompleteReadError, httptools.HttpParserError):
                    await self.aclose()
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, request: bytes) -> dict[str, Any]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port, ssl=self.ssl or None)
        reader, writer = self._streams
        writer.write(request)
        response = _Response()
        parser = response.parser = httptools.HttpResponseParser(response)
        while not response.done:
            data = await reader.read(65536)
            if not data:
                raise ConnectionResetError("the server closed the connection")
            parser.feed_data(data)
        if not response.keep_alive:
            await self.aclose()
        return _result(parser.get_status_code(), bytes(response.body))

    async def aclose(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def apublish(base_url: str, tenant_id: str, user_id: str, event: str, payload: Any = None, *,
                   token: str | None = None, **fields: Any) -> dict[str, Any]:
    """Publish one event from asyncio code (a connection of its own; use AsyncPublisher to reuse one)."""
    async with AsyncPublisher(base_url, token) as publisher:
        return await publisher.publish(tenant_id, user_id, event, payload, **fields)
