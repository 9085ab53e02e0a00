"""An asyncio client for fastws, on picows: auto-reconnect, resubscribe, and recovery.

The options and state mirror the seed's React hook (``useWebSocket``)::

    client = fastws.Client("ws://127.0.0.1:8765/ws", tenant_id="acme", user_id="alice",
                           filters={"eventTypes": ["idea_created"]})
    await client.connect()
    await client.subscribe("ideas")
    ack = await client.publish("idea_created", {"title": "New Idea"}, channel="ideas")
    async for event in client:          # ends after client.disconnect()
        print(event["eventType"], event["data"])

After a drop (the server closed, a worker restarted, the network blinked)
the client reconnects with capped exponential backoff and jitter, restores
its filters and subscriptions, and resumes every channel from the last offset
it saw: the missed events arrive first, nothing twice. When the server
cannot recover a channel (it restarted, or the events left its history) the
client says so: ``on_error(RecoveryFailed(channel))``, and
``client.recovery_failures`` lists the channels, so the application can
resync them. Authentication failures (401, 403) are not retried. When the
server answers that websocket_v2 is off for the tenant (503 ``rolled_back``
with a ``legacy_url``, or close 4002 naming it), the client follows it to the
legacy URL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import deque
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from picows.common import WSHandshakeError

from .exceptions import FastWSError
from .messages import publish_fields

__all__ = [
    "Client",
    "ClientError",
    "CommandError",
    "AuthenticationError",
    "RecoveryFailed",
    "ConnectionStatus",
]

log = logging.getLogger("fastws.client")

ConnectionStatus = str  # "disconnected" | "connecting" | "connected" | "reconnecting" | "failed"

Callback = Callable[..., Any]


class ClientError(FastWSError):
    """Something went wrong on the client's side of the connection."""


class CommandError(ClientError):
    """The server answered a command with an error: ``code`` is one of fastws.codes.ERRORS."""

    def __init__(self, code: str, message: str, ref: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref


class AuthenticationError(ClientError):
    """The server refused the token or identity (HTTP 401 or 403): not retried."""

    def __init__(self, status: int, body: Any = None) -> None:
        super().__init__(f"connection refused with HTTP {status}: {body}")
        self.status = status
        self.body = body


class RecoveryFailed(ClientError):
    """The server could not replay what this client missed on ``channel``: resync it."""

    def __init__(self, channel: str) -> None:
        super().__init__(f"could not recover the events missed on {channel}")
        self.channel = channel


class _Closed:
    """The end of iteration."""


_END = _Closed()


class _Listener(WSListener):
    def __init__(self, client: "Client") -> None:
        self.client = client

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.client._on_text(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            self.client._close_code = frame.get_close_code()
            self.client._close_reason = frame.get_close_reason() or ""
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.client._on_disconnected(transport)


class Client:
    """A fastws connection that reconnects and recovers by itself."""

    def __init__(
        self,
        url: str,
        tenant_id: str | None = None,
        user_id: str | None = None,
        *,
        token: str | None = None,
        filters: dict[str, list[str]] | None = None,
        on_message: Callback | None = None,
        on_open: Callback | None = None,
        on_close: Callback | None = None,
        on_error: Callback | None = None,
        reconnect_interval: float = 5.0,
        max_reconnect_interval: float = 60.0,
        max_reconnect_attempts: int = 10,
        auto_reconnect: bool = True,
        follow_legacy: bool = True,
        max_queue: int = 10_000,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.token = token
        self.filters = dict(filters or {})
        self.on_message = on_message
        self.on_open = on_open
        self.on_close = on_close
        self.on_error = on_error
        self.reconnect_interval = reconnect_interval
        self.max_reconnect_interval = max_reconnect_interval
        self.max_reconnect_attempts = max_reconnect_attempts
        self.auto_reconnect = auto_reconnect
        self.follow_legacy = follow_legacy
        self.timeout = timeout
        # state, as the seed's hook exposes it
        self.connection_status: ConnectionStatus = "disconnected"
        self.last_message: dict[str, Any] | None = None
        self.reconnect_attempts = 0
        self.error: BaseException | None = None
        #: the welcome event of the current connection
        self.welcome: dict[str, Any] | None = None
        #: channel -> per-subscription event types (None: any)
        self.subscriptions: dict[str, list[str] | None] = {}
        #: channel -> (epoch, last offset seen): where to resume from
        self.positions: dict[str, tuple[str, int]] = {}
        #: channels whose missed events the server could not replay
        self.recovery_failures: list[str] = []
        self._transport: WSTransport | None = None
        self._refs = itertools.count(1)
        self._pending: dict[Any, asyncio.Future] = {}
        self._queue: deque[dict[str, Any] | _Closed] = deque()
        self._max_queue = max_queue
        self._queue_waiter: asyncio.Future | None = None
        self._welcome_waiter: asyncio.Future | None = None
        self._closing = False
        self._close_code: WSCloseCode | None = None
        self._close_reason = ""
        self._reconnector: asyncio.Task | None = None
        self._recent: dict[str, set[int]] = {}

    # -- state -----------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self.connection_status == "connected"

    @property
    def tenant_channel(self) -> str | None:
        return None if self.welcome is None else self.welcome["channel"]

    # -- connecting ------------------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Connect (and keep reconnecting if the connection drops); the welcome event."""
        self._closing = False
        self.connection_status = "connecting"
        for _ in range(3):  # follow a rollback to the legacy URL, not round in circles
            try:
                await self._open()
                break
            except _Redirect as redirect:
                self.url = redirect.url
            except BaseException as exc:
                self.connection_status = "failed" if isinstance(exc, AuthenticationError) else "disconnected"
                self.error = exc
                raise
        return self.welcome  # type: ignore[return-value]

    def _connect_url(self) -> str:
        parts = urlsplit(self.url)
        query: dict[str, str] = {}
        if self.tenant_id:
            query["tenant_id"] = self.tenant_id
        if self.user_id:
            query["user_id"] = self.user_id
        if self.token:
            query["token"] = self.token
        for key in ("eventTypes", "sources", "priority", "users"):
            if self.filters.get(key):
                query[key] = ",".join(self.filters[key])
        home = self.tenant_channel
        if home is not None and home in self.positions:
            epoch, offset = self.positions[home]
            query["since"], query["epoch"] = str(offset), epoch
        extra = parts.query + "&" if parts.query else ""
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/ws", extra + urlencode(query), ""))

    async def _open(self) -> None:
        """One connection attempt: handshake, welcome, then restore subscriptions."""
        loop = asyncio.get_running_loop()
        self._welcome_waiter = loop.create_future()
        self._close_code = None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            transport, _ = await asyncio.wait_for(
                ws_connect(lambda: _Listener(self), self._connect_url(), extra_headers=headers, enable_auto_ping=False),
                self.timeout,
            )
        except WSHandshakeError as exc:
            raise self._refusal(exc) from None
        self._transport = transport
        await asyncio.wait_for(self._welcome_waiter, self.timeout)
        self.connection_status = "connected"
        self.reconnect_attempts = 0
        self.error = None
        if self.on_open:
            self.on_open()
        for channel, event_types in list(self.subscriptions.items()):
            await self._subscribe(channel, event_types)

    def _refusal(self, exc: WSHandshakeError) -> BaseException:
        status = exc.response.status if exc.response is not None else 0
        try:
            body = orjson.loads(exc.raw_body or b"{}")
        except orjson.JSONDecodeError:
            body = exc.raw_body
        if status in (401, 403):
            return AuthenticationError(int(status), body)
        if status == 503 and isinstance(body, dict) and body.get("legacy_url") and self.follow_legacy:
            return _Redirect(body["legacy_url"])
        return ClientError(f"connection refused with HTTP {int(status)}: {body}")

    async def disconnect(self) -> None:
        """Close (1000), stop reconnecting, and end ``async for``."""
        self._closing = True
        if self._reconnector is not None:
            self._reconnector.cancel()
            self._reconnector = None
        transport = self._transport
        if transport is not None and not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            await transport.wait_disconnected()
        self.connection_status = "disconnected"
        self._push(_END)

    # -- commands --------------------------------------------------------------------------

    def send_message(self, message: dict[str, Any]) -> None:
        """Send one message as is (the seed's sendMessage), e.g. {"type": "custom_event", "data": {...}}."""
        if self._transport is None or not self.is_connected:
            raise ClientError("not connected")
        self._transport.send(WSMsgType.TEXT, orjson.dumps(message))

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a command with a fresh ref; its ack (or pong); CommandError on an error reply."""
        ref = f"c{next(self._refs)}"
        future = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            self.send_message({**message, "ref": ref})
            reply = await asyncio.wait_for(future, self.timeout)
        finally:
            self._pending.pop(ref, None)
        if reply.get("type") == "error":
            raise CommandError(reply["code"], reply.get("message", ""), ref)
        return reply

    async def publish(
        self,
        event: str,
        payload: Any = None,
        *,
        channel: str | None = None,
        source: str | None = None,
        priority: str | None = None,
        target_user_id: str | None = None,
    ) -> dict[str, Any]:
        """Publish and wait for the ack (``id`` and ``offset``); CommandError if refused."""
        fields = publish_fields(event, payload, channel, source, priority, target_user_id)
        return await self.request({"type": "publish", **fields})

    async def update_filters(self, filters: dict[str, list[str]]) -> dict[str, Any]:
        """Replace the connection's filters (kept across reconnects)."""
        reply = await self.request({"type": "filters", "filters": filters})
        self.filters = dict(filters)
        return reply

    async def subscribe(self, channel: str, event_types: list[str] | None = None) -> dict[str, Any]:
        """Subscribe (kept across reconnects, resumed from the last offset seen)."""
        reply = await self._subscribe(channel, event_types)
        self.subscriptions[reply["channel"]] = event_types
        return reply

    async def _subscribe(self, channel: str, event_types: list[str] | None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe", "channel": channel}
        if event_types:
            message["eventTypes"] = event_types
        position = self.positions.get(channel)
        if position is not None:
            message["epoch"], message["since"] = position
        return await self.request(message)

    async def unsubscribe(self, channel: str) -> dict[str, Any]:
        reply = await self.request({"type": "unsubscribe", "channel": channel})
        self.subscriptions.pop(reply["channel"], None)
        return reply

    # -- receiving -------------------------------------------------------------------------

    def _on_text(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("ignored a message that is not JSON")
            return
        kind = message.get("type")
        if kind == "ack" and "epoch" in message:
            self._track(message["channel"], message)  # before any replayed event that follows it
        if kind in ("ack", "error", "pong") and message.get("ref") in self._pending:
            future = self._pending.pop(message["ref"])
            if not future.done():
                future.set_result(message)
            return
        if kind == "missed":
            asyncio.ensure_future(self._recover_missed(message))
            return
        if message.get("eventType") == "connection" and "connectionId" in message.get("data", {}):
            self.welcome = message
            self._track(message["channel"], message["data"])
            if self._welcome_waiter is not None and not self._welcome_waiter.done():
                self._welcome_waiter.set_result(message)
            return
        channel, offset = message.get("channel"), message.get("offset")
        if channel is not None and offset is not None:
            recent = self._recent.setdefault(channel, set())
            if offset in recent:
                return  # a replay overlapping what was already delivered
            recent.add(offset)
            if len(recent) > 4096:
                for old in sorted(recent)[:2048]:
                    recent.discard(old)
            epoch = self.positions.get(channel, (None, 0))[0]
            if epoch is not None and offset > self.positions[channel][1]:
                self.positions[channel] = (epoch, offset)
        self.last_message = message
        if self.on_message:
            self.on_message(message)
        self._push(message)

    def _track(self, channel: str, position: dict[str, Any]) -> None:
        """A stream position from a welcome or a subscribe ack: resume from ours, or start from the server's."""
        recovered = position.get("recovered")
        if recovered is False:
            self._recovery_failed(channel)
        if recovered is not True:
            if self.positions.get(channel, (position["epoch"],))[0] != position["epoch"]:
                self._recent.pop(channel, None)  # a new stream: its offsets start again
            self.positions[channel] = (position["epoch"], position["offset"])

    async def _recover_missed(self, notice: dict[str, Any]) -> None:
        """The server dropped events for this slow client: replay them from history."""
        for channel, window in notice.get("channels", {}).items():
            position = self.positions.get(channel)
            if position is None:
                continue
            message: dict[str, Any] = {"type": "subscribe", "channel": channel, "epoch": position[0],
                                       "since": window["first"] - 1}
            if self.subscriptions.get(channel):
                message["eventTypes"] = self.subscriptions[channel]
            try:
                await self.request(message)  # the ack says whether it recovered (see _track)
            except (asyncio.TimeoutError, ClientError):
                self._recovery_failed(channel)

    def _recovery_failed(self, channel: str) -> None:
        self.recovery_failures.append(channel)
        self._report(RecoveryFailed(channel))

    def _report(self, error: BaseException) -> None:
        self.error = error
        if self.on_error:
            self.on_error(error)

    def _push(self, item: dict[str, Any] | _Closed) -> None:
        queue = self._queue
        if len(queue) >= self._max_queue and item is not _END:
            queue.popleft()  # bounded: the oldest unread event goes
        queue.append(item)
        waiter = self._queue_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> "Client":
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._queue:
            self._queue_waiter = asyncio.get_running_loop().create_future()
            await self._queue_waiter
        item = self._queue.popleft()
        if isinstance(item, _Closed):
            self._queue.appendleft(item)  # stay ended
            raise StopAsyncIteration
        return item

    # -- reconnecting ----------------------------------------------------------------------

    def _on_disconnected(self, transport: WSTransport) -> None:
        if transport is not self._transport:
            return
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClientError("connection lost"))
        self._pending.clear()
        if self.on_close:
            self.on_close(self._close_code)
        if self._closing:
            return
        self.connection_status = "reconnecting" if self.auto_reconnect else "disconnected"
        if self._close_code == 4002 and self.follow_legacy:
            url = self._close_reason.partition(": ")[2].strip()
            if url:
                self.url = url
        if not self.auto_reconnect:
            self._push(_END)
            return
        self._reconnector = asyncio.ensure_future(self._reconnect())

    def _backoff(self) -> float:
        """Capped exponential backoff with jitter: between half and all of the capped delay."""
        delay = min(self.max_reconnect_interval, self.reconnect_interval * 2 ** max(0, self.reconnect_attempts - 1))
        return delay * random.uniform(0.5, 1.0)

    async def _reconnect(self) -> None:
        while not self._closing:
            if self.reconnect_attempts >= self.max_reconnect_attempts:
                self.connection_status = "failed"
                self._report(ClientError(f"gave up after {self.reconnect_attempts} attempts"))
                self._push(_END)
                return
            self.reconnect_attempts += 1
            await asyncio.sleep(self._backoff())
            try:
                await self._open()
                return
            except _Redirect as redirect:
                self.url = redirect.url
                self.reconnect_attempts -= 1  # following the rollback is not a failure
            except AuthenticationError as exc:
                self.connection_status = "failed"
                self._report(exc)
                self._push(_END)
                return
            except (OSError, asyncio.TimeoutError, ClientError, WSHandshakeError) as exc:
                self._report(exc)


class _Redirect(ClientError):
    """websocket_v2 is off for this tenant: go to the legacy URL."""

    def __init__(self, url: str) -> None:
        super().__init__(f"rolled back to {url}")
        self.url = url
