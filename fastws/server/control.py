"""A worker's link to its host: the control plane, flags, counters and the shared broker.

With one process (no supervisor) the control plane is a private buffer and
the hub keeps its own History. Under the supervisor, every worker maps the
host's SharedSegment: the plane is shared, the hub's broker is a
SharedBroker, other workers wake this one through its eventfd, and this
worker polls the flags generation every ``POLL_INTERVAL`` seconds, so a flag
change reaches every worker within 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Awaitable, ContextManager, Iterator, Protocol

import orjson
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from .. import __version__, codes
from ..broker import SharedBroker, SharedSegment
from ..control import ControlPlane, Flags, LATENCY_BUCKETS, WorkerStats, v2_enabled_for
from ..control.layout import TENANT_SLOTS, TenantRow
from ..control.prometheus import HostView, families
from ..core import IMPLEMENTATION
from ..limits import TokenBucket
from ..rest import Response, error_response

if TYPE_CHECKING:
    from ..config import Settings
    from ..hub import Hub
    from .cluster_plane import ClusterPlane

__all__ = ["ControlHost", "WorkerControl", "POLL_INTERVAL"]

log = logging.getLogger("fastws.control")


class ControlHost(Protocol):
    """What the control plane asks of the worker it serves (fastws.server.app.Server), so that
    this module needs nothing from that one."""

    settings: "Settings"
    hub: "Hub"
    connections: set[Any]  # fastws.server.websocket.Connection: abandon()

    def disconnect_matching(self, tenant_id: str, user_id: str | None = None, connection_id: str | None = None) -> int: ...

    def close_rolled_back(self, previous: Flags) -> None: ...

#: seconds between flag polls (and counter publications)
POLL_INTERVAL = 0.05
TICKS_PER_SECOND = round(1 / POLL_INTERVAL)
#: seconds a DELETE waits for the other workers to apply it
COMMAND_TIMEOUT = 2.0

_METRIC_FIELDS = (
    "connections", "total_connections", "messages_in", "events_published", "events_sent", "bytes_in", "bytes_out",
    "errors",
)


class WorkerControl:
    def __init__(
        self,
        server: "ControlHost",
        segment: SharedSegment | None = None,
        worker: int = 0,
        wake_fds: list[int] | None = None,
    ) -> None:
        self.server = server
        self.segment = segment
        self.worker = worker
        self.wake_fds = wake_fds or []
        if segment is not None:
            self.plane = segment.plane
        else:
            self.plane = ControlPlane.create(bytearray(ControlPlane.layout_size(1, 1024)), 1, 1024)
        self.flags: Flags = self.plane.read_flags() or Flags()
        self.broker: SharedBroker | None = None
        #: the control plane across hosts (--broker redis://...): flags, rows, commands
        self.cluster: "ClusterPlane | None" = None
        self.latency = [0] * LATENCY_BUCKETS
        self.latency_sum = 0.0
        self.started_at = time.time()
        #: unix time minus CLOCK_MONOTONIC (refreshed every tick)
        self._wall_offset = time.time() - time.monotonic()
        #: the longest event-loop delay of the last whole second, and of the current one
        self.loop_lag = 0.0
        self._lag_window = 0.0
        self._tick_due = 0.0
        #: what the worker that ran before this one in its row counted (counters never go back)
        self._base = self.plane.read_worker(worker) if segment is not None else WorkerStats()
        self._timer: asyncio.TimerHandle | None = None
        self._notify_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticks = 0
        #: this worker's state in its row
        self.state = "starting"
        # per client address: new connections allowed (this worker)
        self._connect_buckets: dict[str, TokenBucket] = {}

    @property
    def shared(self) -> bool:
        return self.segment is not None

    def lock(self) -> ContextManager[None]:
        return self.segment.exclusive() if self.segment is not None else contextlib.nullcontext()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        hub = self.server.hub
        self._continue_counts()
        if self.segment is not None and not self.server.settings.broker:
            self.broker = SharedBroker(
                self.segment, self.worker, self.server.settings.limits,
                self._on_remote_event, self._on_command, self._schedule_notify, self._on_lost,
            )
            self.broker.start()
            hub.broker = self.broker
            loop.add_reader(self.wake_fds[self.worker], self._on_wake)
        self.publish_stats("starting")
        self._tick_due = loop.time() + POLL_INTERVAL
        self._timer = loop.call_at(self._tick_due, self._tick)

    def _continue_counts(self) -> None:
        """Start this worker's counters where its row's previous worker left them (the supervisor
        keeps a dead worker's counts in its row: WorkerStats.continued), so the host's counters are
        monotonic across restarts, as Prometheus expects."""
        base = self._base
        metrics = self.server.hub.metrics
        metrics.total_connections += base.total_connections
        metrics.messages_received += base.messages_in
        metrics.events_sent += base.events_sent
        metrics.bytes_received += base.bytes_in
        metrics.bytes_sent += base.bytes_out
        metrics.errors += base.errors
        metrics.published_ws += base.published_ws
        metrics.published_rest += base.published_rest
        for index, count in enumerate(base.rate_limited):
            metrics.rate_limited[index] += count
        for index, count in enumerate(base.drop_reasons):
            metrics.drop_reasons[index // 4][index % 4] += count
        for index, count in enumerate(base.disconnects):
            metrics.disconnects[index] += count
        for index, count in enumerate(base.latency):
            self.latency[index] += count
        self.latency_sum += base.latency_sum

    def stop(self, state: str = "draining") -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.segment is not None and self._loop is not None:
            self._loop.remove_reader(self.wake_fds[self.worker])
        self.publish_stats(state)

    async def drain(self, timeout: float) -> None:
        """Before this worker closes its connections at shutdown (its hub refusing publishes): wait,
        at most ``timeout``, until no other live worker of the host still takes publishes, then
        deliver everything in the shared log, so every acknowledged publish reaches every connected
        subscriber before its close."""
        if self.cluster is not None:
            # with Redis: what this worker published is answered, and what Redis published before
            # now (from any host) has reached this worker's subscribers
            await self.server.hub.broker.barrier(timeout)  # type: ignore[attr-defined]
            return
        if self.broker is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(
            index != self.worker and row.state == "running" and _alive(row.pid)
            for index, row in self.plane.workers().items()
        ):
            await asyncio.sleep(0.005)
        self.broker.catch_up()

    def _tick(self) -> None:
        loop = self._loop
        now = loop.time()  # type: ignore[union-attr]
        # how late this timer ran: the event loop's lag (longest per second, as a gauge)
        self._lag_window = max(self._lag_window, now - self._tick_due)
        self._ticks += 1
        if self._ticks % TICKS_PER_SECOND == 0:
            self.loop_lag, self._lag_window = self._lag_window, 0.0
            self._wall_offset = time.time() - time.monotonic()
            self.plane.write_tenants(self.worker, self.tenant_rows())
        generation = self.plane.generation
        if self.cluster is None and generation // 2 != self.flags.generation and generation % 2 == 0:
            flags = self.plane.read_flags()
            if flags is not None:
                self._apply_flags(flags)
        if self._ticks % 2 == 0:
            self.publish_stats()
        self._tick_due = now + POLL_INTERVAL
        self._timer = loop.call_at(self._tick_due, self._tick)  # type: ignore[union-attr]

    def tenant_rows(self) -> list[TenantRow]:
        """This worker's busiest tenants (by open connections, then events published), for its
        tenant table."""
        tenants = self.server.hub.tenants()
        busiest = heapq.nlargest(
            TENANT_SLOTS, tenants.items(), key=lambda item: (item[1].connections, item[1].published_here)
        )
        return [TenantRow(tenant_id, state.connections, state.published_here, state.events_sent)
                for tenant_id, state in busiest]

    # -- the shared log ----------------------------------------------------------------------

    def _on_wake(self) -> None:
        try:
            os.eventfd_read(self.wake_fds[self.worker])
        except BlockingIOError:
            pass
        self.broker.catch_up()  # type: ignore[union-attr]

    def _on_lost(self, count: int) -> None:
        """This worker lost records of the shared log: its clients may have missed events of any
        channel. From now on they are sent nothing (not the events after the gap, which would move
        their position past it) and are closed with 4009 in the next loop iteration (this may run
        under the writers' lock), so they reconnect and recover from their last position, or learn
        that they cannot."""
        log.warning("closing %d connections with 4009 after losing %d records of the shared log",
                    len(self.server.connections), count)
        for connection in list(self.server.connections):
            connection.abandon(codes.LOST_PLACE, "lost place in the shared log: reconnect and recover")

    def _schedule_notify(self) -> None:
        if not self._notify_scheduled and self._loop is not None:
            self._notify_scheduled = True
            self._loop.call_soon(self._notify_others)

    def _notify_others(self) -> None:
        self._notify_scheduled = False
        for index, fd in enumerate(self.wake_fds):
            if index != self.worker:
                os.eventfd_write(fd, 1)

    def _on_remote_event(
        self, channel: str, event_type: str, source: str, priority: int, publisher: str,
        target: str | None, frame: bytes, offset: int, published_at: float,
    ) -> None:
        # published_at is CLOCK_MONOTONIC (shared by the host's processes): as unix time
        self.server.hub.fan_out(channel, event_type, source, priority, publisher, target, frame, offset,
                                published_at + self._wall_offset)

    def record_latencies(self, published: list[float]) -> None:
        """Sampled deliveries, written now, published at these unix times: into the latency histogram."""
        now = time.time()
        latency = self.latency
        total = 0.0
        for at in published:
            seconds = max(0.0, now - at)
            total += seconds
            latency[min(LATENCY_BUCKETS - 1, int(seconds * 1e6).bit_length())] += 1
        self.latency_sum += total

    def _on_command(self, body: bytes) -> int:
        command = orjson.loads(body)
        if command.get("op") == "disconnect":
            count = self.server.disconnect_matching(command.get("tenant_id"), command.get("user_id"), command.get("connection_id"))
            # publish the result once the broker has recorded it (after this call returns)
            if self._loop is not None:
                self._loop.call_soon(self.publish_stats)
            return count
        return 0

    # -- flags -------------------------------------------------------------------------------

    def set_flags(self, body: object) -> Flags | Awaitable[Flags]:
        """Apply a PUT body's flag changes for every worker of the host (of the cluster, with Redis:
        then an awaitable); the new flags."""
        if self.cluster is not None:
            return self.cluster.set_flags(body, self.plane.max_overrides)
        with self.lock():
            current = self.plane.read_flags(locked=True)
            flags = replace(current.updated(body, self.plane.max_overrides), source="api")
            written = self.plane.write_flags(flags)
        self._apply_flags(written)
        return written

    def load_config_flags(self, flags: Flags) -> None:
        """Flags from the configuration: applied unless the API has set them since."""
        with self.lock():
            current = self.plane.read_flags(locked=True)
            if current.source != "api":
                current = self.plane.write_flags(replace(flags, source="config"))
        self._apply_flags(current)

    def apply_flags(self, flags: Flags) -> None:
        """Flags changed elsewhere in the cluster (fastws.server.cluster_plane)."""
        self._apply_flags(flags)

    def _apply_flags(self, flags: Flags) -> None:
        previous, self.flags = self.flags, flags
        log.info("flags changed (generation %d): %s", flags.generation, flags.to_json())
        if flags.existing == "close":
            self.server.close_rolled_back(previous)

    def v2_enabled(self, tenant_id: str) -> bool:
        return v2_enabled_for(self.flags, tenant_id)

    # -- connection limits ---------------------------------------------------------------------

    def admit(self, address: str, tenant_id: str) -> Response | None:
        """None if a new connection from ``address`` for ``tenant_id`` is within the limits, else the refusal."""
        limits = self.server.settings.limits
        now = time.monotonic()
        bucket = self._connect_buckets.get(address)
        if bucket is None:
            if len(self._connect_buckets) >= 65536:
                self._connect_buckets.clear()  # bounded: forget old addresses (they start with a full bucket)
            bucket = self._connect_buckets[address] = TokenBucket(limits.connect_rate, limits.connect_burst, now)
        if not bucket.take(now):
            self.server.hub.metrics.rate_limited[2] += 1
            retry = str(bucket.retry_after()).encode()
            return error_response(codes.RATE_LIMITED, "connect rate limit", [(b"Retry-After", retry)])
        if address and self.plane.total("address", address) >= limits.max_connections_per_address:
            return error_response(codes.TOO_MANY_CONNECTIONS, "connection limit of this address")
        if self.plane.total("tenant", tenant_id) >= limits.max_connections_per_tenant:
            return error_response(codes.TOO_MANY_CONNECTIONS, "connection limit of this tenant")
        return None

    def connection_opened(self, address: str, tenant_id: str) -> None:
        if address:
            self.plane.count(self.worker, "address", address, +1)
        self.plane.count(self.worker, "tenant", tenant_id, +1)

    def connection_closed(self, address: str, tenant_id: str) -> None:
        if address:
            self.plane.count(self.worker, "address", address, -1)
        self.plane.count(self.worker, "tenant", tenant_id, -1)

    # -- counters ----------------------------------------------------------------------------

    def stats(self, state: str) -> WorkerStats:
        hub = self.server.hub
        metrics = hub.metrics
        broker = self.broker
        history = hub.broker
        redis = getattr(history, "stats", None)  # the cluster's Redis (fastws.server.redis_broker)
        base = self._base
        return WorkerStats(
            pid=os.getpid(),
            state=state,
            started_at=self.started_at,
            heartbeat=time.time(),
            connections=metrics.active_connections,
            total_connections=metrics.total_connections,
            messages_in=metrics.messages_received,
            events_published=metrics.events_published,
            events_sent=metrics.events_sent,
            bytes_in=metrics.bytes_received,
            bytes_out=metrics.bytes_sent,
            errors=metrics.errors,
            published_ws=metrics.published_ws,
            published_rest=metrics.published_rest,
            history_events=len(history),
            history_bytes=getattr(history, "nbytes", 0),
            log_lag=broker.lag if broker is not None else 0,
            broker_errors=base.broker_errors + (redis.errors + redis.timeouts if redis is not None else 0),
            broker_reconnects=base.broker_reconnects + (redis.reconnects if redis is not None else 0),
            loop_lag=self.loop_lag,
            redis_lag=redis.canary_ms / 1000 if redis is not None else 0.0,
            rate_limited=list(metrics.rate_limited),
            drop_reasons=[count for reason in metrics.drop_reasons for count in reason],
            disconnects=list(metrics.disconnects),
            latency=list(self.latency),
            latency_sum=self.latency_sum,
            bus_position=broker.position_applied if broker is not None else 0,
            commands=list(broker.command_results) if broker is not None else [],
            restarts=self._base.restarts,  # the supervisor wrote it before starting this worker
        )

    def publish_stats(self, state: str | None = None) -> None:
        """Write this worker's row; ``state`` (starting, running, draining, empty) sticks until changed."""
        if state is not None:
            self.state = state
        self.plane.write_worker(self.worker, self.stats(self.state))

    def rows(self) -> dict[int, WorkerStats]:
        self.publish_stats()
        return self.plane.workers()

    def totals(self) -> dict[str, Any]:
        """Counters summed over the host's rows (this worker's fresh; a row being restarted keeps
        its counts, so totals never go back), open connections over its live workers, and with
        Redis over the live workers of the other hosts (as they last wrote their rows)."""
        rows = list(self.rows().values())
        totals: dict[str, Any] = {name: sum(getattr(row, name) for row in rows) for name in _METRIC_FIELDS}
        live = [row for row in rows if row.state in ("running", "draining")]
        totals["connections"] = sum(row.connections for row in live)
        totals["workers"] = len(live)
        if self.cluster is not None:
            hosts = self.cluster.other_hosts()
            for workers in hosts.values():
                for row in workers.values():
                    if row.get("state") in ("running", "draining"):
                        for name in _METRIC_FIELDS:
                            totals[name] += int(row.get(name, 0))
                        totals["workers"] += 1
            totals["hosts"] = 1 + len(hosts)
        return totals

    def cluster_status(self) -> dict[str, Any] | None:
        """With Redis: this host, the other live hosts and their workers, and this worker's broker."""
        if self.cluster is None:
            return None
        hosts = {self.cluster.host_id: {str(i): row.to_json() for i, row in self.plane.workers().items()
                                        if row.state != "empty"}}
        for host, workers in self.cluster.other_hosts().items():
            hosts[host] = {str(i): row for i, row in sorted(workers.items())}
        broker = self.server.hub.broker
        return {"host": self.cluster.host_id, "hosts": hosts,
                "broker": {"redis": broker.describe(), "shards": len(broker.shards),  # type: ignore[attr-defined]
                           **broker.stats.to_json()}}  # type: ignore[attr-defined]

    def row(self) -> dict[str, Any]:
        """This worker's row as the cluster keeps it (JSON), with its broker's health."""
        data = self.stats(self.state).to_json()
        broker = self.server.hub.broker
        stats = getattr(broker, "stats", None)
        if stats is not None:
            data["broker"] = stats.to_json()
        return data

    # -- metrics -----------------------------------------------------------------------------

    def host_view(self) -> HostView:
        """The host as one scrape sees it: every row (this worker's fresh) and tenant table."""
        rows = self.rows()
        tenants = []
        for index in rows:
            tenants += self.tenant_rows() if index == self.worker else self.plane.read_tenants(index)
        settings = self.server.settings
        return HostView(
            rows=rows, tenants=tenants, top_tenants=settings.metrics_tenants, version=__version__,
            implementation=IMPLEMENTATION,
            broker="redis" if self.cluster is not None else "shared" if self.broker is not None else "embedded",
            websocket_v2=self.flags.websocket_v2,
            hosts=1 + len(self.cluster.other_hosts()) if self.cluster is not None else None,
        )

    def metrics(self, accept: str) -> tuple[bytes, str]:
        """GET /metrics: (the exposition, its content type) in the format ``accept`` asks for
        (Prometheus text 0.0.4, or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(_Collector(self.host_view())), content_type  # type: ignore[arg-type]

    # -- commands ----------------------------------------------------------------------------

    async def disconnect(self, tenant_id: str, user_id: str | None, connection_id: str | None) -> int:
        """Disconnect the selected connections on every worker; how many there were."""
        if self.cluster is not None:
            return await self.cluster.disconnect(tenant_id, user_id, connection_id)
        body = orjson.dumps({"op": "disconnect", "tenant_id": tenant_id, "user_id": user_id, "connection_id": connection_id})
        if self.broker is None:
            return self._on_command(body)
        position = self.broker.command(body)
        self.publish_stats()
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            rows = {i: r for i, r in self.plane.workers().items() if r.state == "running"}
            if all(r.bus_position >= position for r in rows.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)
        return sum(count for row in rows.values() for at, count in row.commands if at == position)


class _Collector:
    """One scrape's families, as prometheus_client's encoders take a registry (``collect``)."""

    __slots__ = ("view",)

    def __init__(self, view: HostView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        return families(self.view)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
