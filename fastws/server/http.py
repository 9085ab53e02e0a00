"""HTTP/1.1 front protocol: REST requests with keep-alive, WebSocket upgrades handed to picows.

httptools parses; picows only speaks WebSocket. Only a GET of ``/ws`` that
asks for a WebSocket is upgraded; any other request with upgrade headers is
parsed again without them and answered by the REST API like any request. An
upgrade is checked (the handshake, then tenant and user ids) and, if good,
this protocol replaces itself on the transport with picows' ``WSProtocol``
and replays the request to it, in short, then anything that followed it in
the same segment.
``WSProtocol`` is picows-internal: pyproject pins the picows version and
tests/integration/test_http.py covers the hand-off.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Awaitable, Protocol
from urllib.parse import parse_qsl

import httptools
from picows import WSUpgradeResponseWithListener
from picows.picows import WSAutoPingStrategy, WSProtocol  # type: ignore[attr-defined]

from .. import codes, logs
from ..core import CloseScanner
from ..rest import WEBSOCKET_PATH, Request, Response, error_response

if TYPE_CHECKING:
    from ..config import Settings
    from ..proxies import TrustedProxies
    from ..rest import RestAPI

__all__ = ["FrontHost", "HttpProtocol"]

log = logging.getLogger("fastws.http")


class FrontHost(Protocol):
    """What the HTTP front asks of the worker serving it (fastws.server.app.Server), so that
    this module needs nothing from that one."""

    settings: "Settings"
    rest: "RestAPI"
    accepting: bool
    #: write an access record per response (fastws.logs.access): the setting, and the logger enabled
    access_log: bool
    proxies: "TrustedProxies"
    http_connections: set["HttpProtocol"]
    picows_logger: Any

    def accept_websocket(self, request: Request) -> Any:
        """A listener for picows (fastws.server.websocket.Connection), or an error Response."""

    def probe_websocket(self, request: Request) -> Response | None:
        """For a GET of /ws without upgrade headers: the refusal an upgrade would get, or None."""

    def loop_time(self) -> float: ...

#: the status line of every standard status, with its reason phrase
_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus}


#: request headers replayed as they came to picows on an upgrade: those it refuses a request for
#: (a body); the handshake's own are replayed in their canonical form (HttpProtocol._raw_request)
_REFUSED_HEADERS = frozenset((b"transfer-encoding", b"content-length"))
#: picows refuses a request with more header lines than this
_PICOWS_MAX_HEADERS = 128


def _header_text(value: bytes) -> str:
    """A header value as text: UTF-8 when it is (an X-User-ID may be any name), else Latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _asks_websocket(headers: dict[str, str]) -> bool:
    """The Upgrade header names websocket among its protocols (RFC 6455 4.2.1, item 3)."""
    return any(token.strip().lower() == "websocket" for token in headers.get("upgrade", "").split(","))


def _websocket_key(headers: list[tuple[bytes, bytes]]) -> bytes | Response:
    """The request's Sec-WebSocket-Key, or the answer refusing the handshake (RFC 6455 4.2.1-2).

    Version 13 only, else 426 naming it; the key given once, the base64 of 16 bytes, else 400.
    """
    versions, keys = [], []
    for name, value in headers:
        if len(name) == 21 and name.lower() == b"sec-websocket-version":
            versions.append(value.strip(b" \t"))
        elif len(name) == 17 and name.lower() == b"sec-websocket-key":
            keys.append(value.strip(b" \t"))
    if versions != [b"13"]:
        return error_response(
            codes.UPGRADE_REQUIRED, "WebSocket version 13 only", [(b"Sec-WebSocket-Version", b"13")]
        )
    if len(keys) == 1 and len(keys[0]) == 24:
        try:
            if len(binascii.a2b_base64(keys[0], strict_mode=True)) == 16:
                return keys[0]
        except binascii.Error:
            pass
    return error_response(codes.BAD_REQUEST, "Sec-WebSocket-Key must be given once, the base64 of 16 bytes")


class _SwitchingProtocols:
    """picows' own 101 response, one object for every upgrade.

    picows sets the Sec-WebSocket-Accept header of the response it is given,
    serializes it at once, writes it, and then keeps a reference to it for
    the connection's lifetime (``WSTransport.response``, which fastws never
    reads). A response per connection would cost about 0.8 KiB for that
    reference alone; this one holds the accept value only between picows'
    two calls. The bytes are those of ``WSUpgradeResponse.create_101_response()``.
    """

    __slots__ = ("_accept",)
    version = b"HTTP/1.1"
    status = HTTPStatus.SWITCHING_PROTOCOLS
    body = None

    def __init__(self) -> None:
        self._accept = ""

    @property
    def headers(self) -> "_SwitchingProtocols":
        return self

    def __setitem__(self, name: str, value: str) -> None:
        if name != "Sec-WebSocket-Accept":
            raise KeyError(name)
        self._accept = value

    def to_bytes(self) -> bytearray:
        accept, self._accept = self._accept, ""
        return bytearray(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept.encode("ascii")
        )


_SWITCHING_PROTOCOLS = _SwitchingProtocols()
#: bytes of its response (the accept value is always 28 characters), for the access log
_SWITCHING_PROTOCOLS_SIZE = len(_SWITCHING_PROTOCOLS.to_bytes()) + 28


class _Abort(Exception):
    """Stop parsing: a response has been sent and the connection is closing."""


class HttpProtocol(asyncio.Protocol):
    """One TCP connection until it upgrades (or closes)."""

    __slots__ = (
        "server", "transport", "parser", "_url", "_headers", "_content_length", "_body", "_size",
        "_body_size", "_deadline", "_closing", "_in_head", "_head_bytes", "_completed", "_waiting",
        "_upgrading", "_replay", "_started",
    )

    def __init__(self, server: "FrontHost") -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        #: the last Content-Length header's value, if any
        self._content_length: bytes | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._body_size = 0
        #: loop time by which the current request (or the next one, when idle) must arrive; 0: none
        self._deadline = 0.0
        self._closing = False
        # head-size accounting across data_received calls (see data_received)
        self._in_head = True
        self._head_bytes = 0
        self._completed = 0
        # responses waiting for an earlier, slower one: [response or None, keep_alive, head]
        self._waiting: deque[list] = deque()
        #: the request to upgrade on, between on_message_complete and the parser's HttpParserUpgrade
        self._upgrading: Request | None = None
        #: a request with upgrade headers that is not upgraded, to parse again without them
        self._replay: bytes | None = None
        #: perf_counter() at the current request's first byte (only with the access log on)
        self._started = 0.0

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.http_connections.add(self)
        self._arm_timer(self.server.settings.handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        self.server.http_connections.discard(self)

    def data_received(self, data: bytes) -> None:
        # While a request head is arriving, feed the parser at most what is left
        # of the header budget: httptools buffers an unfinished header line
        # itself, so on_header alone cannot bound it.
        limit = self.server.settings.limits.max_header_size
        offset = 0
        while offset < len(data) and not self._closing:
            if self._in_head and len(data) - offset > limit + 1 - self._head_bytes:
                piece = data[offset:offset + limit + 1 - self._head_bytes]
            else:
                piece = data[offset:] if offset else data
            offset += len(piece)
            completed = self._completed
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade as upgrade:
                # What follows the request is not HTTP to this parser (see on_message_complete).
                tail = piece[upgrade.args[0]:] + data[offset:]
                request, self._upgrading = self._upgrading, None
                replay, self._replay = self._replay, None
                if request is not None:
                    self._upgrade(request, tail)
                    return
                if replay is None:
                    # a CONNECT: its answer closes the connection, read nothing more
                    if self.transport is not None and not self._closing:
                        self.transport.pause_reading()
                    return
                self.parser = httptools.HttpRequestParser(self)
                data, offset = replay + tail, 0
                continue
            except httptools.HttpParserCallbackError as exc:
                if not isinstance(exc.__context__, _Abort):
                    log.error("error handling HTTP request", exc_info=exc.__context__)
                    self._respond(error_response(codes.INTERNAL), close=True)
                return
            except httptools.HttpParserError as exc:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("malformed HTTP request: %s", exc, extra=logs.client_fault(code=codes.BAD_REQUEST))
                self._respond(error_response(codes.BAD_REQUEST, "malformed HTTP request"), close=True)
                return
            if self._in_head and self._completed == completed:
                self._head_bytes += len(piece)
                if self._head_bytes > limit:
                    self._respond(error_response(codes.HEADERS_TOO_LARGE), close=True)
                    return

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        # The whole request must arrive within handshake_timeout.
        self._arm_timer(self.server.settings.handshake_timeout)
        if self.server.access_log:
            self._started = time.perf_counter()
        self._url = b""
        self._headers = []
        self._content_length = None
        self._body = []
        self._size = 0
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._count(len(name) + len(value) + 4)
        if len(name) == 14 and name.lower() == b"content-length":
            self._content_length = value

    def _count(self, size: int) -> None:
        self._size += size
        if self._size > self.server.settings.limits.max_header_size:
            self._respond(error_response(codes.HEADERS_TOO_LARGE), close=True)
            raise _Abort

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._content_length is not None:
            try:
                length = int(self._content_length)
            except ValueError:
                length = -1
            if length > self.server.settings.limits.max_body_size:
                self._respond(error_response(codes.PAYLOAD_TOO_LARGE), close=True)
                raise _Abort

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.server.settings.limits.max_body_size:
            self._respond(error_response(codes.PAYLOAD_TOO_LARGE), close=True)
            raise _Abort
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._completed += 1
        parser = self.parser
        method = parser.get_method().decode("ascii")
        keep_alive = parser.should_keep_alive()
        request: Request | None = None
        if method == "CONNECT":
            # Its target is a host and port, no path (this is no proxy); the parser takes what
            # follows for another protocol (HttpParserUpgrade next): answered, then closed.
            allow = [(b"Allow", self.server.rest.allow)]
            response: Response | Awaitable[Response] = error_response(
                codes.METHOD_NOT_ALLOWED, "CONNECT is not served", allow
            )
            keep_alive = False
        elif parser.should_upgrade():
            # The parser stops here, any body unread (HttpParserUpgrade next). A GET of the
            # WebSocket path asking for one is upgraded; any other request is parsed again
            # without its Upgrade header (then only CONNECT stops the parser), so as a plain one.
            request = self._request(method)
            if (
                request is not None and method == "GET" and request.path == WEBSOCKET_PATH
                and _asks_websocket(request.headers)
            ):
                self._upgrading = request
            else:
                self._replay = self._head_without_upgrade(method)
            return
        else:
            request = self._request(method)
            if request is None:
                response = error_response(codes.BAD_REQUEST, "the request target is not a valid URL")
            else:
                refusal = None
                if request.path == WEBSOCKET_PATH and method in ("GET", "HEAD"):
                    refusal = self.server.probe_websocket(request)  # why an upgrade would fail
                response = refusal if refusal is not None else self.server.rest.handle(request)
        head = method == "HEAD"
        # what the access record says of this request (the answer may come after the next one's start)
        access = (method, self._url, self._started, request) if self.server.access_log else None
        if isinstance(response, Response) and not self._waiting:
            self._finish(response, keep_alive, head, access)
            return
        # An answer that comes later (or queues behind one): pipelined requests keep their order.
        slot: list = [response if isinstance(response, Response) else None, keep_alive, head, access]
        self._waiting.append(slot)
        if slot[0] is None:
            task = asyncio.ensure_future(response)  # type: ignore[arg-type]
            task.add_done_callback(lambda done: self._ready(slot, done))

    def _ready(self, slot: list, done: "asyncio.Future[Response]") -> None:
        slot[0] = done.result()
        while self._waiting and self._waiting[0][0] is not None and not self._closing:
            response, keep_alive, head, access = self._waiting.popleft()
            self._finish(response, keep_alive, head, access)

    def _finish(self, response: Response, keep_alive: bool, head: bool, access: tuple | None = None) -> None:
        keep_alive = keep_alive and self.server.accepting
        self._respond(response, close=not keep_alive, head=head, access=access)
        if keep_alive and not self._waiting:
            self._arm_timer(self.server.settings.keepalive_timeout)

    # -- helpers ----------------------------------------------------------------------------

    def _request(self, method: str) -> Request | None:
        """The request just parsed; None if its target is not a URL (httptools' parser takes
        targets that its URL parser refuses, such as ``http://a:99999999/``)."""
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            return None
        path = url.path.decode("latin-1") if url.path else "/"
        query = {}
        if url.query:
            for key, value in parse_qsl(url.query.decode("latin-1"), keep_blank_values=True):
                query.setdefault(key, value)
        headers = {name.decode("latin-1").lower(): _header_text(value) for name, value in self._headers}
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        address = peer[0] if isinstance(peer, tuple) and peer else ""
        proxies = self.server.proxies
        client = proxies.client(address, headers.get("x-forwarded-for"))
        # TLS ended at a trusted proxy: the client's URLs are https and wss
        secure = proxies.forwarded_https(address, headers.get("x-forwarded-proto"))
        return Request(method, path, query, headers, b"".join(self._body), client, secure)

    def _head_without_upgrade(self, method: str) -> bytes:
        """The head of the request just parsed, its Upgrade header left out."""
        parts = [method.encode(), b" ", self._url, b" HTTP/", self.parser.get_http_version().encode(), b"\r\n"]
        parts += [b"%s: %s\r\n" % header for header in self._headers if header[0].lower() != b"upgrade"]
        parts.append(b"\r\n")
        return b"".join(parts)

    def _respond(self, response: Response, close: bool, head: bool = False, access: tuple | None = None) -> None:
        """Write ``response``; ``access`` is (method, target, start, request) of the request it
        answers (None: the request being parsed, refused before it was complete)."""
        transport = self.transport
        if transport is None or self._closing:
            return
        if response.status in (204, 304):
            # no content: no Content-Length or Content-Type of a body not sent (RFC 9110 8.6, 15.4.5)
            parts = [_STATUS_LINES[response.status]]
            head = True
        else:
            parts = [
                _STATUS_LINES[response.status],
                b"Content-Type: ", response.content_type, b"\r\n",
                b"Content-Length: ", str(len(response.body)).encode(), b"\r\n",
            ]
        for name, value in response.headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"Connection: close\r\n\r\n" if close else b"Connection: keep-alive\r\n\r\n")
        if not head:
            parts.append(response.body)
        data = b"".join(parts)
        transport.write(data)
        if self.server.access_log:
            self._access(response.status, len(data), access)
        if close:
            self._closing = True
            self._cancel_timer()
            transport.close()

    def _access(self, status: int, size: int, access: tuple | None, connection: Any = None) -> None:
        """The access record of a response (fastws.logs.access)."""
        if access is None:  # refused while parsing: what is known of the request so far
            method = "-"
            if self._url and self.parser is not None:  # httptools says DELETE (0) before it has read one
                try:
                    method = self.parser.get_method().decode("ascii", "replace")
                except Exception:  # pragma: no cover - a method is known once the URL is
                    pass
            access = (method, self._url, self._started, None)
        method, target, started, request = access
        tenant = None
        if request is not None:
            client = request.client
            tenant = request.headers.get("x-tenant-id") or request.query.get("tenant_id")
        else:
            client = self._client_address()
        if connection is not None:  # a WebSocket that was accepted: its own tenant and id
            tenant = connection.tenant_id
            connection = connection.session.connection_id if connection.session is not None else None
        seconds = time.perf_counter() - started if started else 0.0
        logs.access(method, target, status, size, seconds, client, tenant, connection)

    def _client_address(self) -> str:
        """The client of a request refused before it was parsed: the peer, or the address a trusted
        proxy forwarded in the headers read so far."""
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        address = peer[0] if isinstance(peer, tuple) and peer else ""
        forwarded = None
        for name, value in self._headers:
            if len(name) == 15 and name.lower() == b"x-forwarded-for":
                forwarded = _header_text(value)
        return self.server.proxies.client(address, forwarded)

    # Timeouts are deadlines that the server's sweep checks (Server._sweep), not a
    # timer per request: arming one is a float store.

    def _arm_timer(self, timeout: float) -> None:
        self._deadline = self.server.loop_time() + timeout

    def _cancel_timer(self) -> None:
        self._deadline = 0.0

    def expired(self, now: float) -> bool:
        return 0.0 < self._deadline <= now

    def _on_timeout(self) -> None:
        self._deadline = 0.0
        if self.transport is not None and not self._closing:
            self._closing = True
            self.transport.close()

    def close_idle(self) -> None:
        """Close this connection if it has no request in progress (shutdown)."""
        if not self._closing and self.transport is not None:
            self._closing = True
            self._cancel_timer()
            self.transport.close()

    # -- upgrade ----------------------------------------------------------------------------

    def _upgrade(self, request: Request, tail: bytes) -> None:
        """Hand the connection to picows: a GET of /ws asking for a WebSocket (on_message_complete)."""
        access = ("GET", self._url, self._started, request) if self.server.access_log else None
        key_or_error = _websocket_key(self._headers)
        if isinstance(key_or_error, Response):
            self._respond(key_or_error, close=True, access=access)
            return
        if not self.server.accepting:
            self._respond(error_response(codes.SERVICE_UNAVAILABLE), close=True, access=access)
            return
        listener_or_error = self.server.accept_websocket(request)
        if isinstance(listener_or_error, Response):
            self._respond(listener_or_error, close=True, access=access)
            return
        listener = listener_or_error
        transport = self.transport
        assert transport is not None
        self._closing = True
        self._cancel_timer()
        self.server.http_connections.discard(self)
        # The parser and this protocol refer to each other: break the cycle so both go now,
        # not at the next cyclic garbage collection.
        self.parser = None  # type: ignore[assignment]
        settings = self.server.settings
        protocol = WSProtocol(
            None,  # host_port (client side only)
            None,  # ws_path (client side only)
            False,  # is_client_side
            lambda upgrade_request: WSUpgradeResponseWithListener(_SWITCHING_PROTOCOLS, listener),
            self.server.picows_logger,
            True,  # disconnect_on_exception
            # no handshake timer: picows is handed the whole request below and answers it at
            # once (the HTTP front enforced handshake_timeout while the request came in)
            None,
            # auto-ping off: Server._heartbeat pings idle peers from one timer (picows' costs a
            # task per connection, about 2 KiB each)
            False,  # enable_auto_ping
            20.0,
            20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            False,  # enable_auto_pong: Connection answers pings after checking the frame
            settings.limits.max_message_size,  # max_frame_size: a frame can't be larger than a message
            None,  # extra_headers (client side only)
            2048,  # read_buffer_init_size: small, grows on demand
        )
        guard = CloseGuard(protocol)
        listener.guard = guard
        transport.set_protocol(guard)
        protocol.connection_made(transport)
        # The request goes to picows in short; what followed it (frames) through the guard.
        _feed(protocol, self._raw_request(key_or_error), transport)
        if access is not None:
            # picows answered 101 and called on_ws_connected, or refused the request with a 400
            accepted = listener.transport is not None
            self._access(101 if accepted else 400, _SWITCHING_PROTOCOLS_SIZE if accepted else 0, access,
                         listener if accepted else None)
        if tail:
            _feed(guard, tail, transport)

    def _raw_request(self, key: bytes) -> bytes:
        """The request for picows: what its handshake checks, not what it would only keep.

        picows keeps the request it parsed (target and headers) for the
        connection's lifetime, so it is given a short target and the handshake
        in its canonical form (fastws has checked it: _websocket_key, and
        httptools found ``Connection: upgrade`` among the Connection tokens,
        where picows wants that one value and would refuse the
        ``keep-alive, Upgrade`` of Firefox), plus the headers it refuses a
        request for. Cookies, tokens and the like are not kept per connection.
        Every other header has been checked by httptools (picows' own checks
        of a header line are the same); a request with more header lines than
        picows takes is replayed whole (and refused by picows, as before).
        """
        headers = self._headers
        if len(headers) > _PICOWS_MAX_HEADERS:
            parts = [b"GET ", self._url, b" HTTP/1.1\r\n"]
            parts += [b"%s: %s\r\n" % header for header in headers]
        else:
            parts = [b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ", key, b"\r\n"]
            parts += [b"%s: %s\r\n" % header for header in headers if header[0].lower() in _REFUSED_HEADERS]
        parts.append(b"\r\n")
        return b"".join(parts)


def _feed(protocol: asyncio.BufferedProtocol, data: bytes, transport: asyncio.Transport) -> None:
    offset = 0
    while offset < len(data) and not transport.is_closing():
        buffer = protocol.get_buffer(len(data) - offset)
        size = min(len(buffer), len(data) - offset)
        buffer[:size] = data[offset:offset + size]
        offset += size
        protocol.buffer_updated(size)


class CloseGuard(CloseScanner, asyncio.BufferedProtocol):
    """Sits between the transport and picows' WSProtocol: hands it nothing after a CLOSE frame.

    picows parses the frame after the current one before delivering the
    current one, so a second CLOSE arriving in the same read as the first is
    refused with 1002 before the first is answered (Autobahn case 7.1.2).
    RFC 6455 5.5.1: after a CLOSE, nothing more is to be processed. The guard
    reads picows' own buffer (zero copy) and passes on data only up to the end
    of the first CLOSE frame, which it finds as a CloseScanner (compiled core:
    it follows the frame headers in C). It also notes that data arrived, for
    the server's heartbeat.
    """

    __slots__ = ("inner", "_buffer", "heard")

    # uvloop's set_protocol() caches ``protocol.data_received`` when there is one and keeps
    # the previous protocol's otherwise, which would keep the HttpProtocol (and its request)
    # alive as long as the connection: None.
    data_received = None

    def __init__(self, inner: asyncio.BufferedProtocol) -> None:
        super().__init__()
        self.inner = inner
        self._buffer: memoryview | None = None
        #: data arrived since the heartbeat's last tick (it pings peers silent for long)
        self.heard = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover - set_protocol
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def get_buffer(self, sizehint: int) -> memoryview:
        self._buffer = self.inner.get_buffer(sizehint)
        return self._buffer  # type: ignore[return-value]

    def buffer_updated(self, nbytes: int) -> None:
        buffer, self._buffer = self._buffer, None  # not kept between reads
        self.heard = True
        if self.done:
            return
        self.inner.buffer_updated(self.scan(buffer[:nbytes]))  # type: ignore[index]
