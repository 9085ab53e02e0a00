"""One worker: the listener, its connections, and their lifecycle.

``Server`` is an async context manager; ``serve()`` runs one until SIGINT or
SIGTERM. Shutdown stops accepting, closes WebSocket clients with 1001, closes
idle HTTP connections, and waits up to ``drain_timeout`` before dropping the
rest.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import sys
from typing import Any

from .. import __version__, codes, logs
from ..assets import StaticFiles
from ..openapi import document
from ..channels import validate_tenant_id, validate_user_id
from ..config import Settings
from ..core import IMPLEMENTATION
from ..exceptions import ConfigError, ProtocolError
from ..messages import decimal, decode_position, decode_query_filters
from ..hub import HeldSink, Hub
from ..rest import Request, Response, RestAPI, error_response
from ..session import connection_id_bytes
from ..auth import Authenticator, OriginPolicy, bearer_token, log_auth_mode
from ..backlog import Budget
from ..proxies import TrustedProxies
from ..broker import SharedSegment
from ..control import Flags
from . import allocator
from .control import WorkerControl
from .http import HttpProtocol
from .websocket import Connection

__all__ = ["Server", "serve"]

log = logging.getLogger("fastws.server")


class Server:
    """A fastws worker listening on one port for WebSocket and HTTP."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        sock: socket.socket | None = None,
        segment: SharedSegment | None = None,
        worker: int = 0,
        wake_fds: list[int] | None = None,
        echo: bool = False,
        reuse_port: bool = False,
        host_id: str | None = None,
    ) -> None:
        self.settings = settings or Settings()
        #: this host's name in a cluster (--broker redis://...): the supervisor's, shared by its workers
        self.host_id = host_id or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        #: tests only (the Autobahn conformance run): WebSocket messages are echoed, not interpreted
        self.echo = echo
        self.debug = logging.getLogger("fastws").isEnabledFor(logging.DEBUG)
        #: verifies tokens; None: open development mode
        self.authenticator = Authenticator.from_settings(self.settings)
        self.origins = OriginPolicy.from_settings(self.settings)
        self.proxies = TrustedProxies.parse(self.settings.trusted_proxies)
        self.hub = Hub(self.settings.limits, debug=self.debug, worker=worker, authenticator=self.authenticator)
        self.control = WorkerControl(self, segment, worker, wake_fds)
        self.rest = RestAPI(self.hub, self.settings, self._state, self.control, StaticFiles(), document)
        self.connections: set[Connection] = set()
        #: this worker's share of the host's bytes waiting for slow connections, and who holds them
        self.workers = len(wake_fds) if wake_fds else 1
        self.budget = Budget(self.settings.limits.max_send_buffer_total // self.workers)
        self.backlogged: set[Connection] = set()
        self.http_connections: set[HttpProtocol] = set()
        self.accepting = False
        #: an access record per HTTP response (fastws.logs.access): decided once, not per request
        self.access_log = self.settings.access_log and logs.ACCESS.isEnabledFor(logging.INFO)
        # picows builds a logger per connection unless given an adapter
        picows_logger = logging.getLogger("fastws.picows")
        if not any(isinstance(f, logs.PicowsFilter) for f in picows_logger.filters):
            picows_logger.addFilter(logs.PicowsFilter())
        self.picows_logger = logging.LoggerAdapter(picows_logger, {})
        self._sock = sock
        self._reuse_port = reuse_port
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty: list[Connection] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        #: most WebSocket connections open since memory was last given back (see _sweep)
        self._connections_high = 0

    def _state(self) -> str:
        return "running" if self.accepting else "draining"

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> "Server":
        self._loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {"backlog": 4096}
        if self._sock is not None:
            kwargs["sock"] = self._sock
        else:
            kwargs.update(host=self.settings.host, port=self.settings.port, reuse_address=True,
                          reuse_port=self._reuse_port or None)
        self.control.start(self._loop)
        if self.settings.broker:
            await self._join_cluster()
        self._sweeper = self._loop.call_later(self._sweep_interval(), self._sweep)
        self._heartbeat_timer = self._loop.call_later(self._heartbeat_interval(), self._heartbeat)
        self._server = await self._loop.create_server(lambda: HttpProtocol(self), **kwargs)
        self.rest.fallback_ws_url = self.ws_url
        self.accepting = True
        self.control.publish_stats("running")
        return self

    async def _join_cluster(self) -> None:
        """Use the cluster's Redis (fastws.server.redis_broker) as the hub's broker, and share flags,
        rows and commands with the other hosts (fastws.server.cluster_plane)."""
        try:
            from .cluster_plane import ClusterPlane
            from .redis_broker import RedisBroker
        except ImportError as exc:  # redis-py is an extra: pip install 'fastws[redis]'
            raise ConfigError(f"--broker needs redis-py: pip install 'fastws[redis]' "
                              f"(from a clone: pip install '.[redis]') ({exc})") from None

        control = self.control
        broker = RedisBroker(self.settings, self.hub, self.host_id, control.worker,
                             on_reset=self.reset_channel)
        cluster = ClusterPlane(broker, self.host_id, control.worker, control.row, control.apply_flags,
                               self.disconnect_matching)
        broker.on_control = cluster.on_control
        await broker.start()
        self.hub.broker = broker
        control.cluster = cluster
        await cluster.start(control.flags)
        log.info("cluster: host %s, Redis %s (prefix %r)", self.host_id, broker.describe(), self.settings.redis_prefix)

    def reset_channel(self, channel: str) -> None:
        """The channel's stream restarted in Redis: its subscribers here resume (4009) and learn
        ``recovered:false``; nothing is delivered to them after the reset."""
        for session in self.hub.subscribers(channel):
            sink = session.sink
            connection = sink.sink if isinstance(sink, HeldSink) else sink
            connection.abandon(codes.LOST_PLACE, "the channel's stream restarted: reconnect and recover")  # type: ignore[attr-defined]

    def loop_time(self) -> float:
        return self._loop.time()  # type: ignore[union-attr]

    def _sweep_interval(self) -> float:
        settings = self.settings
        return max(0.02, min(1.0, settings.handshake_timeout / 4, settings.keepalive_timeout / 4))

    def _sweep(self) -> None:
        """Close HTTP connections past their deadline (request or keep-alive timeout); give memory
        back to the system once many WebSocket connections have gone (fastws.server.allocator)."""
        now = self._loop.time()  # type: ignore[union-attr]
        for http in [h for h in self.http_connections if h.expired(now)]:
            http._on_timeout()
        logs.flush()  # what the log's rate limit held back in windows now over; access lines waiting
        open_now = len(self.connections)
        if open_now > self._connections_high:
            self._connections_high = open_now
        elif self._connections_high - open_now >= allocator.TRIM_AFTER:
            self._connections_high = open_now
            allocator.release(open_now)
        self._sweeper = self._loop.call_later(self._sweep_interval(), self._sweep)  # type: ignore[union-attr]

    def _heartbeat_interval(self) -> float:
        interval = self.settings.ping_interval
        if interval <= 0:
            return 1.0  # pings off: look again (a reload may turn them on)
        return max(0.02, min(interval, self.settings.ping_timeout) / 4)

    def _heartbeat(self) -> None:
        """Ping WebSocket peers silent for ping_interval; close those that leave a ping unanswered
        for ping_timeout with 1001. One timer for every connection, ticking every quarter of the
        shorter of the two: a ping comes at most a tick late, a close never early."""
        interval = self.settings.ping_interval
        tick = self._heartbeat_interval()
        if interval > 0:
            timeout = min(self.settings.ping_timeout, interval)
            idle_ticks, timeout_ticks = math.ceil(interval / tick), math.ceil(timeout / tick)
            for connection in list(self.connections):
                connection.heartbeat(idle_ticks, timeout_ticks, timeout)
        self._heartbeat_timer = self._loop.call_later(tick, self._heartbeat)  # type: ignore[union-attr]

    def reload(self, settings: Settings) -> None:
        """Use new settings (limits, timeouts, keys, origins) for what comes next; open connections stay."""
        self.settings = settings
        self.access_log = settings.access_log and logs.ACCESS.isEnabledFor(logging.INFO)
        self.authenticator = Authenticator.from_settings(settings)
        self.hub.authenticator = self.authenticator
        self.origins = OriginPolicy.from_settings(settings)
        self.proxies = TrustedProxies.parse(settings.trusted_proxies)
        self.hub.limits = settings.limits
        self.budget.limit = settings.limits.max_send_buffer_total // self.workers
        self.rest.settings = settings
        self.rest.origins = self.origins
        broker = self.hub.broker
        if self.hub.remote:
            broker.settings = settings  # type: ignore[attr-defined]
        else:
            broker.max_events = settings.limits.history_size  # type: ignore[attr-defined]
            broker.max_bytes = settings.limits.history_bytes  # type: ignore[attr-defined]
            broker.max_total_bytes = settings.limits.history_total_bytes  # type: ignore[attr-defined]
            broker.tenants.limit = settings.limits.max_channels_per_tenant  # type: ignore[attr-defined]
        log.info("settings reloaded")

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[1]

    @property
    def host(self) -> str:
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[0]

    @property
    def ws_url(self) -> str:
        return f"ws://{_netloc(self.host, self.port)}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{_netloc(self.host, self.port)}"

    async def close(self, close_code: int = codes.GOING_AWAY) -> None:
        """Stop accepting, close every client with ``close_code``, and wait for them to go."""
        if self._server is None:
            return
        self.accepting = False
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
            self._heartbeat_timer = None
        self.hub.draining = True  # publishes are refused from here on
        self.control.stop("draining")
        await self.control.drain(min(self.settings.drain_timeout, 2.0))
        for connection in list(self.connections):
            connection.close(close_code, "server shutting down")
        for http in list(self.http_connections):
            http.close_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout
        while (self.connections or self.http_connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.disconnect(graceful=False)
        await self._server.wait_closed()
        self._server = None
        self.control.publish_stats("empty")
        if self.control.cluster is not None:
            await self.control.cluster.close()
        if self.hub.remote:
            await self.hub.broker.close()  # type: ignore[attr-defined]
        logs.flush(everything=True)

    async def __aenter__(self) -> "Server":
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- WebSocket upgrades ---------------------------------------------------------------

    def accept_websocket(self, request: Request) -> Connection | Response:
        """Check an upgrade request to /ws; a listener for picows, or an error response.

        In order: the browser origin, the token (or, in open mode, the ids in
        the query), the position and filters, the websocket_v2 flag, the
        address's connect rate, the address's and the tenant's connections.
        """
        checked = self._check_websocket(request)
        if isinstance(checked, Response):
            return checked
        tenant_id, user_id, filters, since, epoch, expires_at = checked
        refused = self.control.admit(request.client, tenant_id)
        if refused is not None:
            return refused
        # kept per connection: one string per tenant and per client address, not one per connection
        return Connection(self, sys.intern(tenant_id), user_id, filters, since, epoch, sys.intern(request.client), expires_at)

    def probe_websocket(self, request: Request) -> Response | None:
        """A GET of /ws without upgrade headers: the refusal an upgrade with this query would get, if any.

        Browsers (and fetch-based clients) cannot read the status of a refused
        upgrade, so a client asks again with a plain GET to learn why. Only the
        checks that spend nothing are made: not the connect rate or counts.
        """
        checked = self._check_websocket(request)
        return checked if isinstance(checked, Response) else None

    def _check_websocket(self, request: Request) -> tuple[str, str, Any, Any, Any, Any] | Response:
        """Origin, identity, position, filters and the websocket_v2 flag of a request to /ws."""
        query = request.query
        if not self.origins.allows(request.headers.get("origin")):
            return error_response(codes.ORIGIN_NOT_ALLOWED)
        expires_at = None
        try:
            if self.authenticator is not None:
                token = bearer_token(request.headers.get("authorization"), query.get("token"))
                if token is None:
                    raise ProtocolError(codes.UNAUTHORIZED)
                identity = self.authenticator.verify(token)
                if identity.admin:
                    # an admin token may connect as any tenant and user it names, as it may publish
                    # for them over REST (backends, `fastws selftest`); else as its own
                    tenant_id = validate_tenant_id(query.get("tenant_id") or identity.tenant_id)
                    user_id = validate_user_id(query.get("user_id") or identity.user_id)
                else:
                    # given empty, an id is absent, as for an admin token (and in the REST API)
                    for name, value in (("tenant_id", identity.tenant_id), ("user_id", identity.user_id)):
                        if query.get(name) not in (None, "", value):
                            raise ProtocolError(codes.FORBIDDEN, f"'{name}' disagrees with the token")
                    tenant_id, user_id = identity.tenant_id, identity.user_id
                expires_at = identity.expires_at
            else:
                tenant_id = validate_tenant_id(query.get("tenant_id"))
                user_id = validate_user_id(query.get("user_id"))
            filters = decode_query_filters(query)
            since_text = query.get("since")
            since = None if since_text is None else decimal(since_text)
            if since_text is not None and since is None:
                raise ProtocolError(codes.INVALID_FIELD, "'since' must be a non-negative integer offset")
            since, epoch = decode_position(since, query.get("epoch"))
        except ProtocolError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("upgrade refused: %s: %s", exc.code, exc.message, extra=logs.client_fault(code=exc.code))
            return error_response(exc.code, exc.message)
        if not self.control.v2_enabled(tenant_id):
            return error_response(
                codes.ROLLED_BACK, extra={"legacy_url": self.settings.legacy_url or None}
            )
        return tenant_id, user_id, filters, since, epoch, expires_at

    # -- operations -----------------------------------------------------------------------

    def disconnect_matching(self, tenant_id: str, user_id: str | None = None, connection_id: str | None = None) -> int:
        """Close this worker's connections of a tenant (and user, and connection id) with 4001."""
        count = 0
        wanted = None if connection_id is None else connection_id_bytes(connection_id)
        if connection_id is not None and wanted is None:
            return 0  # not an id fastws gives out: no connection has it
        for connection in list(self.connections):
            session = connection.session
            if (
                session is not None
                and session.tenant_id == tenant_id
                and (user_id is None or session.user_id == user_id)
                and (wanted is None or session.id_bytes == wanted)
            ):
                connection.close(codes.DISCONNECTED_BY_ADMIN, "disconnected by an administrator")
                count += 1
        return count

    def close_rolled_back(self, previous: Flags) -> None:
        """After a flag change with policy 'close': close connections of tenants no longer on v2 (4002)."""
        reason = f"websocket_v2 off: {self.settings.legacy_url}" if self.settings.legacy_url else "websocket_v2 off"
        for connection in list(self.connections):
            if not self.control.v2_enabled(connection.tenant_id):
                connection.close(codes.ROLLED_BACK_CLOSE, reason)

    # -- coalesced writes -----------------------------------------------------------------

    def schedule_flush(self, connection: Connection) -> None:
        """Write ``connection``'s queued frames at the end of this loop iteration."""
        dirty = self._dirty
        dirty.append(connection)
        if len(dirty) == 1:
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]

    def relieve_budget(self) -> None:
        """The worker's send budget is spent: shed the connections holding the most, then close
        them with 4008, down to the budget's low-water mark (fastws.backlog.Budget.plan)."""
        holders = [(c.backlog.nbytes, c.backlog.droppable_bytes(), c) for c in self.backlogged if c.backlog]
        shed, close = self.budget.plan(holders)
        for connection, target in shed:
            connection.shed(target)  # type: ignore[attr-defined]
        for connection in close:
            connection.overflow("slow consumer: the server's send budget is spent")  # type: ignore[attr-defined]
        if shed or close:
            log.info("send budget spent: shed %d and closed %d slow connections", len(shed), len(close),
                     extra=logs.client_fault())

    def _flush(self) -> None:
        dirty = self._dirty
        self._dirty = []
        for connection in dirty:
            try:
                connection.flush()
            except Exception:
                log.exception("error writing to a connection")
                connection.close(codes.INTERNAL_ERROR, "internal error")
        samples = self.hub.latency_samples
        if samples:
            # the sampled events' frames are written now: publish-to-write latency
            self.control.record_latencies(samples)
            samples.clear()


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(settings: Settings, ready: "asyncio.Future[Server] | None" = None) -> None:
    """Run one worker until SIGINT or SIGTERM, then shut down cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = Server(settings)
    await server.start()
    log.info("fastws %s (core: %s, loop: %s)", __version__, IMPLEMENTATION, type(loop).__module__.split(".")[0])
    log_auth_mode(settings, log)
    log.info("WebSocket %s?tenant_id=..&user_id=..", server.ws_url)
    log.info("REST %s/api/websocket (status: %s/api/websocket/status)", server.http_url, server.http_url)
    if settings.legacy_url:
        log.info("legacy endpoint %s", logs.redact_url(settings.legacy_url))
    if ready is not None:
        ready.set_result(server)
    try:
        await stop.wait()
    finally:
        log.info("shutting down: closing %d connections", len(server.connections))
        await server.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        log.info("stopped")
