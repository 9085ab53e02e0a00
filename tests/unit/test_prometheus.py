"""The host's metric families from control-plane rows (fastws.control.prometheus), through
prometheus_client's own encoder and parser."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastws.control.layout import CLOSE_SLOTS, LATENCY_BUCKETS, TenantRow, WorkerStats, close_slot
from fastws.control.prometheus import LATENCY_FIRST_BUCKET, HostView, families, merge_tenants


class _Registry:
    def __init__(self, view: HostView) -> None:
        self.view = view

    def collect(self):
        return families(self.view)


def scrape(view: HostView) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(_Registry(view)).decode()  # type: ignore[arg-type]
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, key
            samples[key] = sample.value
    return samples


def row(**fields) -> WorkerStats:
    return WorkerStats(state="running", **fields)


def test_totals_sum_every_row_and_connections_only_live_ones():
    """Counters sum every row, one being started again too (it keeps its predecessor's counts);
    open connections and the worker count are the live workers'."""
    rows = {0: row(connections=3, total_connections=10, events_sent=7, published_ws=2, published_rest=5),
            1: WorkerStats(state="starting", restarts=1, total_connections=4, events_sent=1)}
    samples = scrape(HostView(rows, top_tenants=0))
    assert samples[("fastws_connections", frozenset())] == 3
    assert samples[("fastws_workers", frozenset())] == 1
    assert samples[("fastws_connections_opened_total", frozenset())] == 14
    assert samples[("fastws_messages_sent_total", frozenset())] == 8
    assert samples[("fastws_events_published_total", frozenset({("origin", "websocket")}))] == 2
    assert samples[("fastws_events_published_total", frozenset({("origin", "rest")}))] == 5
    assert samples[("fastws_worker_up", frozenset({("worker", "1")}))] == 0
    assert samples[("fastws_worker_restarts_total", frozenset({("worker", "1")}))] == 1
    assert not any(name.startswith("fastws_tenant_") for name, _ in samples)


def test_disconnects_drops_and_rate_limits_by_label():
    disconnects = [0] * (2 * (len(CLOSE_SLOTS) + 1))
    disconnects[2 * close_slot(4008)] = 2  # by the server
    disconnects[2 * close_slot(1000) + 1] = 5  # by the client
    disconnects[2 * close_slot(3999) + 1] = 1  # a code fastws does not list
    drops = [0] * 12
    drops[0 * 4 + 0] = 3  # buffer, low
    drops[2 * 4 + 3] = 1  # closed, critical
    samples = scrape(HostView({0: row(disconnects=disconnects, drop_reasons=drops, rate_limited=[4, 0, 9])}))
    assert samples[("fastws_disconnects_total", frozenset({("code", "4008"), ("initiator", "server")}))] == 2
    assert samples[("fastws_disconnects_total", frozenset({("code", "1000"), ("initiator", "client")}))] == 5
    assert samples[("fastws_disconnects_total", frozenset({("code", "other"), ("initiator", "client")}))] == 1
    assert samples[("fastws_slow_consumer_disconnects_total", frozenset())] == 2
    assert samples[("fastws_events_dropped_total", frozenset({("priority", "low"), ("reason", "buffer")}))] == 3
    assert samples[("fastws_events_dropped_total", frozenset({("priority", "critical"), ("reason", "closed")}))] == 1
    assert samples[("fastws_rate_limited_total", frozenset({("limit", "connect")}))] == 9


def test_the_latency_histogram_is_cumulative_and_folds_the_finest_buckets():
    latency = [0] * LATENCY_BUCKETS
    latency[0] = 1  # under 1 microsecond: folded into the first bucket shown
    latency[LATENCY_FIRST_BUCKET] = 2
    latency[10] = 3  # under 1.024 ms
    latency[-1] = 4  # slower than the last bound
    samples = scrape(HostView({0: row(latency=latency, latency_sum=1.5), 1: row(latency=[0] * 10 + [1] + [0] * 13)}))
    bucket = "fastws_delivery_latency_seconds_bucket"
    assert samples[(bucket, frozenset({("le", str((1 << LATENCY_FIRST_BUCKET) / 1e6))}))] == 3
    assert samples[(bucket, frozenset({("le", "0.001024")}))] == 7
    assert samples[(bucket, frozenset({("le", "+Inf")}))] == 11
    assert samples[("fastws_delivery_latency_seconds_count", frozenset())] == 11
    assert samples[("fastws_delivery_latency_seconds_sum", frozenset())] == 1.5


def test_tenants_top_n_and_the_rest_as_other():
    """Tenants are summed over workers; the N with the most connections have series, the rest
    (a tenant named "other" always among them) make up tenant="other", so the series add up."""
    rows = {0: row(connections=10, published_ws=30, events_sent=100), 1: row(connections=6, published_rest=10)}
    tenants = [
        TenantRow("acme", 4, 10, 40), TenantRow("beta", 2, 5, 20), TenantRow("other", 3, 1, 1),  # worker 0
        TenantRow("acme", 3, 2, 2), TenantRow("gamma", 1, 9, 9),  # worker 1
    ]
    samples = scrape(HostView(rows, tenants, top_tenants=2))
    connections = {dict(labels)["tenant"]: v for (name, labels), v in samples.items() if name == "fastws_tenant_connections"}
    assert connections == {"acme": 7, "beta": 2, "other": 16 - 9}
    published = {dict(labels)["tenant"]: v for (name, labels), v in samples.items()
                 if name == "fastws_tenant_events_published_total"}
    assert published == {"acme": 12, "beta": 5, "other": 40 - 17}
    assert merge_tenants(tenants)["acme"] == TenantRow("acme", 7, 12, 42)


def test_broker_series_follow_the_broker():
    """The shared log's lag with several workers; Redis' errors, reconnects, lag and the cluster's
    size with Redis; neither with the embedded broker."""
    view = HostView({0: row(log_lag=3, broker_errors=2, broker_reconnects=1, redis_lag=0.004)})
    embedded = {name for name, _ in scrape(view)}
    assert not {"fastws_worker_shared_log_lag_records", "fastws_broker_errors_total", "fastws_cluster_hosts"} & embedded
    view.broker = "shared"
    assert scrape(view)[("fastws_worker_shared_log_lag_records", frozenset({("worker", "0")}))] == 3
    view.broker, view.hosts = "redis", 3
    samples = scrape(view)
    assert samples[("fastws_broker_errors_total", frozenset())] == 2
    assert samples[("fastws_broker_reconnects_total", frozenset())] == 1
    assert samples[("fastws_cluster_hosts", frozenset())] == 3
    assert samples[("fastws_worker_redis_pubsub_lag_seconds", frozenset({("worker", "0")}))] == 0.004
