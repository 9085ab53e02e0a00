"""Reference server: the fastws wire protocol on the ``websockets`` library (asyncio API).

    python -m benchmarks.reference.websockets_server [--port 0] [--rest-port 0] [--host 127.0.0.1] [--loop uvloop]

What a competent engineer would ship on that stack, for comparison with
fastws: the welcome event, per-connection filters, channels ``NAME:TENANT``
bound to the connection's tenant, subscribe/unsubscribe with per-subscription
event types, publish with ack (id, per-channel offset), ``targetUserId``,
ping/pong, custom events, and ``POST /api/websocket`` (one object or an array)
on a second port. Each event is encoded once (orjson) and sent with
``websockets.broadcast`` to the matching connections, found through an index
channel -> connections. A connection more than 16 MiB behind is closed (4008).

Left out: history and recovery (``since`` answers ``recovered: false``),
authentication, rate limits, flags, workers, the other REST endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
import uuid
from datetime import datetime, timezone
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import httptools
import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

log = logging.getLogger("reference")

ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
PRIORITIES = frozenset({"low", "normal", "high", "critical"})
RESERVED = frozenset({"filters", "subscribe", "unsubscribe", "publish", "ping", "connection", "ack", "error",
                      "pong", "refresh", "auth", "history", "presence", "system", "disconnect"})
FILTER_KEYS = ("eventTypes", "sources", "priority", "users")
MAX_MESSAGE, MAX_SUBSCRIPTIONS, MAX_SEND_BUFFER = 65536, 256, 16 * 2**20
MAX_BODY, MAX_BATCH, MAX_LIST = 2**20, 1000, 64
LIMITS = {"maxMessageSize": MAX_MESSAGE, "maxSubscriptions": MAX_SUBSCRIPTIONS, "maxSendBuffer": MAX_SEND_BUFFER}
_ABSENT = object()


class Error(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


def check(value: object, code: str, what: str) -> str:
    if type(value) is not str or ID.fullmatch(value) is None:
        raise Error(code, f"{what} must be 1-64 characters of [A-Za-z0-9_.-]")
    return value


def parse_filters(obj: object) -> tuple | None:
    """(eventTypes, sources, priority, users), each a frozenset or None for any; None if all are any."""
    if type(obj) is not dict:
        raise Error("invalid_filters", "filters must be an object of string lists")
    sets = []
    for key in FILTER_KEYS:
        values = obj.get(key)
        if not values:
            sets.append(None)
            continue
        if type(values) is not list or len(values) > MAX_LIST or any(type(v) is not str for v in values):
            raise Error("invalid_filters", f"'{key}' must be a list of at most {MAX_LIST} strings")
        if key == "priority" and not PRIORITIES.issuperset(values):
            raise Error("invalid_priority", "priority is not one of low, normal, high, critical")
        sets.append(frozenset(values))
    return None if sets == [None] * 4 else tuple(sets)


def parse_connect(path: str) -> tuple[str, str, tuple | None]:
    url = urlsplit(path)
    if url.path != "/ws":
        raise Error("not_found", "no such path", 404)
    query = {key: values[-1] for key, values in parse_qs(url.query).items()}
    tenant = check(query.get("tenant_id"), "invalid_tenant_id", "tenant_id")
    user = check(query.get("user_id"), "invalid_user_id", "user_id")
    lists = {key: query[key].split(",") for key in FILTER_KEYS if key in query}
    return tenant, user, parse_filters(lists) if lists else None


def resolve_channel(name: object, tenant: str) -> str:
    """``NAME`` or ``NAME:TENANT`` -> the canonical ``NAME:TENANT``, which must be the caller's tenant."""
    if type(name) is not str:
        raise Error("invalid_channel", "the channel must be NAME or NAME:TENANT")
    base, sep, owner = name.partition(":")
    if not sep:
        owner = tenant
    if ID.fullmatch(base) is None or ID.fullmatch(owner) is None:
        raise Error("invalid_channel", "the channel must be NAME or NAME:TENANT")
    if owner != tenant:
        raise Error("forbidden_channel", "the channel belongs to another tenant", 403)
    return f"{base}:{owner}"


def parse_publish(obj: object, tenant: str, default_source: str) -> tuple:
    """(channel, event, data, source, priority, targetUserId) of a publish command or REST body."""
    if type(obj) is not dict:
        raise Error("invalid_message", "an event must be a JSON object")
    event = obj.get("event")
    if event is None:
        raise Error("missing_field", "'event' is required")
    check(event, "invalid_event", "the event name")
    if event in RESERVED:
        raise Error("reserved_type", f"event name {event!r} is reserved")
    channel = obj.get("channel")
    channel = f"tenant:{tenant}" if channel is None else resolve_channel(channel, tenant)
    source = obj.get("source")
    source = default_source if source is None else check(source, "invalid_source", "the source")
    priority = obj.get("priority") or "normal"
    if priority not in PRIORITIES:
        raise Error("invalid_priority", "priority is not one of low, normal, high, critical")
    target = obj.get("targetUserId")
    if target is not None:
        check(target, "invalid_user_id", "targetUserId")
    data = obj.get("payload")
    return channel, event, {} if data is None else data, source, priority, target


class Client:
    __slots__ = ("ws", "tenant", "user", "connection_id", "filters", "subscriptions")

    def __init__(self, ws: ServerConnection, tenant: str, user: str, filters: tuple | None) -> None:
        self.ws, self.tenant, self.user, self.filters = ws, tenant, user, filters
        self.connection_id = str(uuid.uuid4())
        self.subscriptions: dict[str, frozenset | None] = {}  # channel -> event types (None: all)

    def accepts(self, event: str, source: str, priority: str, publisher: str) -> bool:
        types, sources, priorities, users = self.filters  # type: ignore[misc]
        return ((types is None or event in types) and (sources is None or source in sources)
                and (priorities is None or priority in priorities) and (users is None or publisher in users))


class Hub:
    def __init__(self) -> None:
        self.channels: dict[str, dict[Client, frozenset | None]] = {}  # the index: channel -> subscribers
        self.offsets: dict[str, int] = {}
        self.epoch = os.urandom(8).hex()
        self.closing: set[asyncio.Task] = set()

    def subscribe(self, client: Client, channel: str, types: frozenset | None) -> None:
        if channel not in client.subscriptions and len(client.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise Error("too_many_subscriptions", "the connection has reached its subscription limit")
        client.subscriptions[channel] = types
        self.channels.setdefault(channel, {})[client] = types

    def unsubscribe(self, client: Client, channel: str) -> None:
        if client.subscriptions.pop(channel, _ABSENT) is not _ABSENT:
            members = self.channels[channel]
            del members[client]
            if not members:
                del self.channels[channel]

    def remove(self, client: Client) -> None:
        for channel in list(client.subscriptions):
            self.unsubscribe(client, channel)

    def publish(self, tenant: str, user: str, command: tuple, ack_to: ServerConnection | None = None,
                ref: object = None) -> tuple[str, int]:
        """Number, encode once, ack, broadcast: all without yielding, so offsets reach everyone in order."""
        channel, event, data, source, priority, target = command
        offset = self.offsets[channel] = self.offsets.get(channel, 0) + 1
        event_id = str(uuid.uuid4())
        message = orjson.dumps({"id": event_id, "eventType": event, "data": data, "timestamp": now(),
                                "source": source, "priority": priority, "tenantId": tenant, "userId": user,
                                "channel": channel, "offset": offset})
        if ack_to is not None and ref is not None:  # the ack goes before the publisher's own copy
            broadcast((ack_to,), orjson.dumps({"type": "ack", "ref": ref, "id": event_id, "offset": offset}), text=True)
        members = self.channels.get(channel)
        if members:
            recipients, slow = [], []
            for client, types in members.items():
                if ((types is not None and event not in types) or (target is not None and client.user != target)
                        or (client.filters is not None and not client.accepts(event, source, priority, user))):
                    continue
                ws = client.ws
                if ws.transport.get_write_buffer_size() > MAX_SEND_BUFFER:
                    slow.append(client)
                else:
                    recipients.append(ws)
            broadcast(recipients, message, text=True)
            for client in slow:  # a slow consumer: stop sending to it and close it
                self.remove(client)
                task = asyncio.get_running_loop().create_task(client.ws.close(4008, "slow consumer"))
                self.closing.add(task)
                task.add_done_callback(self.closing.discard)
        return event_id, offset


def ack(ref: object, **extra: object) -> bytes | None:
    return None if ref is None else orjson.dumps({"type": "ack", "ref": ref, **extra})


class WebSocketServer:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            parse_connect(request.path)
        except Error as exc:
            status = HTTPStatus(exc.status)
            body = orjson.dumps({"success": False, "error": {"code": exc.code, "message": exc.message}})
            headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                               ("Connection", "close")])
            return Response(status.value, status.phrase, headers, body)
        return None

    async def handler(self, ws: ServerConnection) -> None:
        tenant, user, filters = parse_connect(ws.request.path)  # type: ignore[union-attr]
        client = Client(ws, tenant, user, filters)
        channel = f"tenant:{tenant}"
        self.hub.subscribe(client, channel, None)
        welcome = orjson.dumps({"id": str(uuid.uuid4()), "eventType": "connection", "data": {
            "connectionId": client.connection_id, "worker": 0, "channels": [channel], "limits": LIMITS,
            "epoch": self.hub.epoch, "offset": self.hub.offsets.get(channel, 0)}, "timestamp": now(),
            "source": "system", "priority": "normal", "tenantId": tenant, "userId": user, "channel": channel})
        try:
            await ws.send(welcome, text=True)  # written before any event: nothing yields before the write
            async for message in ws:
                if type(message) is not str:
                    await ws.close(1003, "binary messages are not supported")
                    break
                reply = self.command(client, message)
                if reply is not None:
                    await ws.send(reply, text=True)
        except ConnectionClosed:  # a peer that went away without a close handshake: not an error here
            pass
        finally:
            self.hub.remove(client)

    def command(self, client: Client, message: str) -> bytes | None:
        """The reply to one client message (an ack, pong or error), or None."""
        ref = None
        try:
            try:
                obj = orjson.loads(message)
            except orjson.JSONDecodeError:
                raise Error("invalid_json", "the message is not valid JSON") from None
            if type(obj) is not dict or type(obj.get("type")) is not str:
                raise Error("invalid_message", "a message is a JSON object with a string 'type'")
            ref = obj.get("ref")
            if ref is not None and type(ref) not in (str, int, float, bool):
                ref = None
                raise Error("invalid_field", "'ref' must be a string, number or boolean")
            return self.dispatch(client, obj, obj["type"], ref)
        except Error as exc:
            reply = {"type": "error", "code": exc.code, "message": exc.message}
            if ref is not None:
                reply["ref"] = ref
            return orjson.dumps(reply)

    def dispatch(self, client: Client, obj: dict, kind: str, ref: object) -> bytes | None:
        hub, tenant = self.hub, client.tenant
        if kind == "publish":
            hub.publish(tenant, client.user, parse_publish(obj, tenant, "client"), client.ws, ref)
            return None
        if kind == "ping":
            return b'{"type":"pong"}' if ref is None else orjson.dumps({"type": "pong", "ref": ref})
        if kind == "filters":
            client.filters = filters = parse_filters(obj.get("filters"))
            return ack(ref, filters={k: sorted(s) if s else [] for k, s in zip(FILTER_KEYS, filters or (None,) * 4)})
        if kind == "subscribe":
            if obj.get("channel") is None:
                raise Error("missing_field", "'channel' is required")
            channel = resolve_channel(obj["channel"], tenant)
            types = obj.get("eventTypes")
            if types is not None and (type(types) is not list or len(types) > MAX_LIST
                                      or any(type(t) is not str for t in types)):
                raise Error("invalid_field", "'eventTypes' must be a list of strings")
            hub.subscribe(client, channel, frozenset(types) if types else None)
            extra = {"channel": channel, "epoch": hub.epoch, "offset": hub.offsets.get(channel, 0)}
            if obj.get("since") is None:
                return ack(ref, **extra)
            return orjson.dumps({"type": "ack", "ref": ref, **extra, "recovered": False})  # no history here
        if kind == "unsubscribe":
            if obj.get("channel") is None:
                raise Error("missing_field", "'channel' is required")
            channel = resolve_channel(obj["channel"], tenant)
            hub.unsubscribe(client, channel)
            return ack(ref, channel=channel)
        if "data" not in obj:
            raise Error("unknown_type", f"unknown type {kind!r:.64}")
        if kind in RESERVED:
            raise Error("reserved_type", f"type {kind!r} is reserved")
        check(kind, "invalid_event", "the event name")
        hub.publish(tenant, client.user, (f"tenant:{tenant}", kind, obj["data"], "client", "normal", None),
                    client.ws, ref)
        return None


class RestProtocol(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 server for ``POST /api/websocket`` (httptools parser)."""

    def __init__(self, hub: Hub, live: set) -> None:
        self.hub, self.live = hub, live
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.on_message_begin()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.live.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # also an upgrade request: this port serves REST only
            self.respond(400, {"success": False, "error": {"code": "bad_request", "message": "bad request"}}, True)

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body, self.size = b"", {}, [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= MAX_BODY:  # beyond it the rest is read and dropped, then answered 413
            self.body.append(body)

    def on_message_complete(self) -> None:
        try:
            status, reply = 200, self.handle()
        except Error as exc:
            status, reply = exc.status, {"success": False, "error": {"code": exc.code, "message": exc.message}}
        except Exception:
            log.exception("error handling a REST request")
            status, reply = 500, {"success": False, "error": {"code": "internal_error", "message": "internal error"}}
        self.respond(status, reply, not self.parser.should_keep_alive() or self.size > MAX_BODY)

    def handle(self) -> dict:
        if self.url.partition(b"?")[0] != b"/api/websocket":
            raise Error("not_found", "no such path", 404)
        if self.parser.get_method() != b"POST":
            raise Error("method_not_allowed", "this path accepts POST", 405)
        if self.size > MAX_BODY:
            raise Error("payload_too_large", f"the body exceeds {MAX_BODY} bytes", 413)
        media = self.headers.get(b"content-type")
        if media is not None and media.partition(b";")[0].strip().lower() != b"application/json":
            raise Error("unsupported_media_type", "the body must be application/json", 415)
        ids = []
        for header in (b"x-tenant-id", b"x-user-id"):
            if header not in self.headers:
                raise Error("missing_header", f"the {header.decode()} header is required")
            ids.append(self.headers[header].decode("latin-1"))
        tenant = check(ids[0], "invalid_tenant_id", "X-Tenant-ID")
        user = check(ids[1], "invalid_user_id", "X-User-ID")
        try:
            body = orjson.loads(b"".join(self.body))
        except orjson.JSONDecodeError:
            raise Error("invalid_json", "the body is not valid JSON") from None
        if type(body) is list:
            if len(body) > MAX_BATCH:
                raise Error("batch_too_large", f"a batch holds at most {MAX_BATCH} events")
            commands = [parse_publish(item, tenant, "api") for item in body]  # all validated before any is sent
            results = [self.hub.publish(tenant, user, command) for command in commands]
            return {"success": True, "ids": [r[0] for r in results], "offsets": [r[1] for r in results]}
        event_id, offset = self.hub.publish(tenant, user, parse_publish(body, tenant, "api"))
        return {"success": True, "id": event_id, "offset": offset}

    def respond(self, status: int, reply: dict, close: bool) -> None:
        body = orjson.dumps(reply)
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n" % (
            status, HTTPStatus(status).phrase.encode(), len(body),
            b"Allow: POST\r\n" if status == 405 else b"", b"Connection: close\r\n" if close else b"")
        self.transport.write(head + body)  # type: ignore[union-attr]
        if close:
            self.closing = True
            self.transport.close()  # type: ignore[union-attr]


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    hub = Hub()
    app = WebSocketServer(hub)
    live: set = set()
    rest = await loop.create_server(lambda: RestProtocol(hub, live), args.host, args.rest_port)
    async with serve(app.handler, args.host, args.port, process_request=app.process_request,
                     compression=None, max_size=MAX_MESSAGE, ping_interval=20, ping_timeout=20, close_timeout=2) as server:
        port = server.sockets[0].getsockname()[1]
        rest_port = rest.sockets[0].getsockname()[1]
        print(f"WebSocket ws://{netloc(args.host, port)}/ws?tenant_id=..&user_id=..", file=sys.stderr)
        print(f"REST http://{netloc(args.host, rest_port)}/api/websocket", file=sys.stderr, flush=True)
        await stop
        rest.close()
        for transport in list(live):
            transport.close()
    await rest.wait_closed()  # leaving `serve` closed every WebSocket with 1001 and waited for the handlers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="WebSocket port (0: any free port)")
    parser.add_argument("--rest-port", type=int, default=0, help="REST port (0: any free port)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.loop == "uvloop":
        import uvloop
        uvloop.run(run(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
