"""The host's metrics as Prometheus metric families, from the control plane's rows (sans I/O).

Whichever worker answers ``GET /metrics`` reads every worker row of its host
from shared memory, so it speaks for the whole host: host totals (no
``worker`` label), a few series per worker (``fastws_worker_*``), and the
busiest tenants (``fastws_tenant_*``, the top N by open connections, the rest
summed as ``tenant="other"``). Counters come from rows that keep counting
across worker restarts (fastws.control.layout.WorkerStats.continued), so they
never go back while the host runs. docs/metrics.md lists every family.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from .layout import CLOSE_INITIATORS, CLOSE_SLOTS, DROP_REASONS, LATENCY_BUCKETS, RATE_LIMITS, TenantRow, WorkerStats

__all__ = ["HostView", "families", "merge_tenants", "PRIORITY_NAMES", "LATENCY_FIRST_BUCKET"]

PRIORITY_NAMES = ("low", "normal", "high", "critical")
#: the histogram's first bucket bound is 2**LATENCY_FIRST_BUCKET microseconds (the layout's finer
#: buckets are folded into it: nothing is delivered in under 16 microseconds)
LATENCY_FIRST_BUCKET = 4
_LIVE = ("running", "draining")


@dataclass(slots=True)
class HostView:
    """What one scrape reads: the host's rows and tenant tables, and a few facts of the host."""

    rows: Mapping[int, WorkerStats]
    #: every worker's tenant table, concatenated (merge_tenants sums a tenant over workers)
    tenants: list[TenantRow] = field(default_factory=list)
    #: tenants with series of their own; the rest are summed as "other" (0: no tenant series)
    top_tenants: int = 20
    version: str = ""
    implementation: str = ""
    #: embedded (one process), shared (the host's shared log) or redis (a cluster)
    broker: str = "embedded"
    websocket_v2: bool = True
    #: live hosts of the cluster (this one included); None without Redis
    hosts: int | None = None


def merge_tenants(rows: Iterable[TenantRow]) -> dict[str, TenantRow]:
    """Each tenant summed over the workers that listed it."""
    merged: dict[str, TenantRow] = {}
    for row in rows:
        seen = merged.get(row.tenant)
        if seen is not None:
            row = TenantRow(row.tenant, seen.connections + row.connections,
                            seen.events_published + row.events_published, seen.events_sent + row.events_sent)
        merged[row.tenant] = row
    return merged


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def families(view: HostView) -> Iterator[Metric]:
    """Every metric family of the host (prometheus_client's collector protocol: ``collect``)."""
    rows = list(view.rows.values())
    live = [row for row in rows if row.state in _LIVE]

    def total(name: str) -> int:
        return sum(getattr(row, name) for row in rows)

    info = InfoMetricFamily("fastws_build", "The fastws version and core implementation serving this host")
    info.add_metric([], {"version": view.version, "implementation": view.implementation, "broker": view.broker})
    yield info
    yield _gauge("fastws_websocket_v2_enabled", "1 while the websocket_v2 flag is on (0: rolled back to the "
                 "legacy system, but for tenants overridden on)", 1 if view.websocket_v2 else 0)
    yield _gauge("fastws_workers", "Worker processes of this host serving connections", len(live))
    if view.hosts is not None:
        yield _gauge("fastws_cluster_hosts", "Live hosts of the cluster sharing this host's Redis", view.hosts)

    # -- connections ---------------------------------------------------------------------
    connections = sum(row.connections for row in live)
    yield _gauge("fastws_connections", "Open WebSocket connections", connections)
    yield _counter("fastws_connections_opened", "WebSocket connections accepted", total("total_connections"))
    disconnects = CounterMetricFamily(
        "fastws_disconnects", "WebSocket connections ended, by close code and by who sent the first close frame "
        "(code 1006: the connection ended without one; code other: a code fastws does not list)",
        labels=["code", "initiator"])
    for slot in range(len(CLOSE_SLOTS) + 1):
        code = str(CLOSE_SLOTS[slot]) if slot < len(CLOSE_SLOTS) else "other"
        for initiator, name in enumerate(CLOSE_INITIATORS):
            count = sum(row.disconnects[2 * slot + initiator] for row in rows)
            if count:
                disconnects.add_metric([code, name], count)
    yield disconnects
    slow = CLOSE_SLOTS.index(4008)
    yield _counter("fastws_slow_consumer_disconnects",
                   "Connections closed with 4008 because they could not keep up with their events",
                   sum(row.disconnects[2 * slow] for row in rows))

    # -- messages ------------------------------------------------------------------------
    yield _counter("fastws_messages_received", "WebSocket messages received from clients", total("messages_in"))
    yield _counter("fastws_received_bytes", "Bytes of WebSocket messages received from clients", total("bytes_in"))
    yield _counter("fastws_messages_sent", "Event frames delivered to connections (one event to ten "
                   "subscribers counts ten)", total("events_sent"))
    yield _counter("fastws_sent_bytes", "Bytes written to WebSocket connections", total("bytes_out"))
    published = CounterMetricFamily("fastws_events_published", "Events accepted for publishing on this host, "
                                    "by where they came from", labels=["origin"])
    published.add_metric(["websocket"], total("published_ws"))
    published.add_metric(["rest"], total("published_rest"))
    yield published
    yield _counter("fastws_error_replies", "Commands of WebSocket clients refused with an error reply",
                   total("errors"))
    dropped = CounterMetricFamily(
        "fastws_events_dropped", "Events not delivered to a slow connection, by priority and reason (buffer: its "
        "send buffer was full; budget: the host's budget for slow connections was; closed: it was closed with "
        "4008 holding them)", labels=["priority", "reason"])
    for reason_index, reason in enumerate(DROP_REASONS):
        for rank, priority in enumerate(PRIORITY_NAMES):
            dropped.add_metric([priority, reason], sum(row.drop_reasons[4 * reason_index + rank] for row in rows))
    yield dropped
    limited = CounterMetricFamily("fastws_rate_limited", "Requests refused by a rate limit (publish: a "
                                  "connection's publishes; tenant_publish: a tenant's; connect: new connections "
                                  "from one address)", labels=["limit"])
    for index, name in enumerate(RATE_LIMITS):
        limited.add_metric([name], sum(row.rate_limited[index] for row in rows))
    yield limited

    # -- history and brokers -------------------------------------------------------------
    # every worker of a host holds the host's history (its replica of the shared log): the largest
    # of their figures is the host's
    yield _gauge("fastws_history_events", "Events held in history for recovery and GET /api/websocket/history",
                 max((row.history_events for row in live), default=0))
    yield _gauge("fastws_history_bytes", "Bytes of history counted against history_total_bytes",
                 max((row.history_bytes for row in live), default=0))
    if view.broker == "redis":
        yield _counter("fastws_broker_errors", "Calls to the cluster's Redis that failed or timed out",
                       total("broker_errors"))
        yield _counter("fastws_broker_reconnects", "Pub/sub connections to the cluster's Redis made again",
                       total("broker_reconnects"))

    latency = HistogramMetricFamily(
        "fastws_delivery_latency_seconds", "Time from an event's publish to the write of its frames to "
        "subscribers, sampled (one delivered event in 16 per worker)")
    buckets, cumulative = [], 0
    for index in range(LATENCY_BUCKETS):
        cumulative += sum(row.latency[index] for row in rows)
        if LATENCY_FIRST_BUCKET <= index < LATENCY_BUCKETS - 1:
            buckets.append((_bound(index), cumulative))
    buckets.append(("+Inf", cumulative))
    latency.add_metric([], buckets, sum_value=sum(row.latency_sum for row in rows))
    yield latency

    # -- per worker ----------------------------------------------------------------------
    per_worker = {
        "up": GaugeMetricFamily("fastws_worker_up", "1 for a worker serving connections, 0 for one being "
                                "started (again) or stopping", labels=["worker"]),
        "connections": GaugeMetricFamily("fastws_worker_connections", "Open WebSocket connections of the "
                                         "worker", labels=["worker"]),
        "restarts": CounterMetricFamily("fastws_worker_restarts", "Times the worker was started again after "
                                        "it died", labels=["worker"]),
        "received": CounterMetricFamily("fastws_worker_messages_received", "WebSocket messages the worker "
                                        "received", labels=["worker"]),
        "sent": CounterMetricFamily("fastws_worker_messages_sent", "Event frames the worker delivered",
                                    labels=["worker"]),
        "loop": GaugeMetricFamily("fastws_worker_event_loop_lag_seconds", "The longest delay of the worker's "
                                  "event loop over the last second", labels=["worker"]),
    }
    if view.broker == "shared":
        per_worker["log"] = GaugeMetricFamily("fastws_worker_shared_log_lag_records", "Records of the host's "
                                              "shared log the worker has not applied yet", labels=["worker"])
    if view.broker == "redis":
        per_worker["redis"] = GaugeMetricFamily("fastws_worker_redis_pubsub_lag_seconds", "The worker's last "
                                                "pub/sub round trip through Redis (publish to receipt)",
                                                labels=["worker"])
    for index, row in sorted(view.rows.items()):
        label = [str(index)]
        per_worker["up"].add_metric(label, 1 if row.state in _LIVE else 0)
        per_worker["connections"].add_metric(label, row.connections)
        per_worker["restarts"].add_metric(label, row.restarts)
        per_worker["received"].add_metric(label, row.messages_in)
        per_worker["sent"].add_metric(label, row.events_sent)
        per_worker["loop"].add_metric(label, row.loop_lag)
        if "log" in per_worker:
            per_worker["log"].add_metric(label, row.log_lag)
        if "redis" in per_worker:
            per_worker["redis"].add_metric(label, row.redis_lag)
    yield from per_worker.values()

    # -- per tenant ----------------------------------------------------------------------
    if view.top_tenants > 0:
        yield from _tenant_families(view, connections, total("published_ws") + total("published_rest"),
                                    total("events_sent"))


def _tenant_families(view: HostView, connections: int, published: int, sent: int) -> Iterator[Metric]:
    merged = merge_tenants(view.tenants)
    # a tenant named "other" is always counted in the rest, so the two never share a series
    merged.pop("other", None)
    top = sorted(merged.values(), key=lambda row: (-row.connections, -row.events_published, row.tenant))
    top = top[:view.top_tenants]
    doc = f" (the {view.top_tenants} tenants with the most connections; the rest summed as tenant=\"other\")"
    tenant_connections = GaugeMetricFamily("fastws_tenant_connections", "Open WebSocket connections of a "
                                           "tenant" + doc, labels=["tenant"])
    tenant_published = CounterMetricFamily("fastws_tenant_events_published", "Events a tenant's clients "
                                           "published" + doc, labels=["tenant"])
    tenant_sent = CounterMetricFamily("fastws_tenant_messages_sent", "Frames of a tenant's events delivered"
                                      + doc, labels=["tenant"])
    for row in top:
        tenant_connections.add_metric([row.tenant], row.connections)
        tenant_published.add_metric([row.tenant], row.events_published)
        tenant_sent.add_metric([row.tenant], row.events_sent)
    tenant_connections.add_metric(["other"], max(0, connections - sum(row.connections for row in top)))
    tenant_published.add_metric(["other"], max(0, published - sum(row.events_published for row in top)))
    tenant_sent.add_metric(["other"], max(0, sent - sum(row.events_sent for row in top)))
    yield tenant_connections
    yield tenant_published
    yield tenant_sent


def _bound(index: int) -> str:
    """The upper bound of latency bucket ``index`` (2**index microseconds), in seconds."""
    return repr((1 << index) / 1e6)
