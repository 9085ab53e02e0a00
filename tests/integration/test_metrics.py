"""GET /metrics on a real `fastws serve --workers 2`: exact counts after known traffic, parsed with
prometheus_client's own parser; counters that survive a killed worker; the endpoint's token."""

from __future__ import annotations

import asyncio
import os
import signal

import orjson
import pytest
import websockets
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from fastws.auth import Authenticator
from fastws.config import Settings
from tests.cluster_util import TIMEOUT, Cluster, until
from tests.helpers import Client

pytestmark = pytest.mark.uvloop_only  # the servers are processes: the test's own loop matters little

Samples = dict[tuple[str, frozenset], float]


async def fetch(cluster: Cluster, path: str = "/metrics", headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """One GET on a new connection (any worker may answer): (status, headers, body)."""
    reader, writer = await asyncio.open_connection(cluster.host, int(cluster.port))
    lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{lines}\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    response_headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), response_headers, body


async def scrape(cluster: Cluster, headers: dict[str, str] | None = None) -> Samples:
    status, response_headers, body = await fetch(cluster, headers=headers)
    assert status == 200, body
    assert response_headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (sample, _), v in samples.items() if sample == name)


async def converge(cluster: Cluster, expected: dict[tuple, float], headers: dict[str, str] | None = None) -> Samples:
    """Scrape until every expected series has its exact value (the rows of other workers are
    written every 100 ms, tenant tables every second); fail with the last figures if they never do."""
    last: dict = {}

    async def matches() -> bool:
        nonlocal last
        samples = await scrape(cluster, headers)
        last = {key: value(samples, key[0], **dict(key[1:])) for key in expected}
        return last == expected

    try:
        await until(matches, 10.0)
    except AssertionError:
        raise AssertionError(f"metrics never reached {expected}: last {last}") from None
    return await scrape(cluster, headers)


@pytest.fixture
async def cluster():
    running = await Cluster.start(2, "--max-message-size", "2048", env={
        "FASTWS_METRICS_TENANTS": "2", "FASTWS_PUBLISH_RATE": "10", "FASTWS_PUBLISH_BURST": "40",
    })
    yield running
    await running.stop()


async def test_metrics_count_known_traffic_on_two_workers_exactly(cluster):
    """Connections on both workers, WebSocket and REST publishes, a refused command, an oversize
    message (1009), client closes (1000) and rate-limit refusals: every counter moves by exactly what
    the clients did, summed over both workers, with the per-tenant series capped at 2 plus other."""
    acme = await cluster.spread("acme", count=8)
    subscribers = [client for clients in acme.values() for client in clients]
    beta = [await Client.connect(cluster.url, "beta", f"b{i}") for i in range(3)]
    gamma = await Client.connect(cluster.url, "gamma", "g0")
    opened = len(subscribers) + len(beta) + 1
    before = await converge(cluster, {("fastws_connections",): opened, ("fastws_connections_opened_total",): opened})
    assert value(before, "fastws_workers") == 2
    assert {value(before, "fastws_worker_up", worker=w) for w in ("0", "1")} == {1.0}

    sent_messages, sent_bytes = 0, 0

    async def send(client: Client, message: dict | str) -> None:
        nonlocal sent_messages, sent_bytes
        text = message if isinstance(message, str) else orjson.dumps(message).decode()
        await client.send(text)
        sent_messages += 1
        sent_bytes += len(text.encode())

    publisher = subscribers[0]
    for n in range(5):
        await send(publisher, {"type": "publish", "event": "tick", "payload": {"n": n}, "ref": f"p{n}"})
    status, body = await cluster.http("POST", "/api/websocket", {"X-Tenant-ID": "acme", "X-User-ID": "rest"},
                                      {"event": "tock", "payload": {}})
    assert status == 200, body
    status, body = await cluster.http("POST", "/api/websocket", {"X-Tenant-ID": "acme", "X-User-ID": "rest"},
                                      [{"event": "tock", "payload": {}}, {"event": "tock", "payload": {}}])
    assert status == 200, body
    acks = 0
    for client in subscribers:
        events = []
        while len(events) < 8:
            message = await client.recv()
            if message.get("eventType") in ("tick", "tock"):
                events.append(message)
            else:
                assert client is publisher and message["type"] == "ack"
                acks += 1
    while acks < 5:
        assert (await publisher.recv())["type"] == "ack"
        acks += 1
    await send(beta[0], "{not json")
    assert (await beta[0].recv())["code"] == "invalid_json"

    # beta[1] publishes past its burst of 40 (10 per second after it; fewer than 10 refusals a second do not close it): the refusals are rate_limited
    refused = replies = own = 0
    for n in range(46):
        await send(beta[1], {"type": "publish", "event": "burst", "ref": f"r{n}"})
    while replies < 46:
        reply = await beta[1].recv()
        if reply.get("type") in ("ack", "error"):
            replies += 1
            refused += reply.get("code") == "rate_limited"
        else:
            assert reply["eventType"] == "burst"
            own += 1
    assert refused >= 3
    burst_deliveries = 46 - refused  # beta's 3 connections each receive what was accepted
    for client in beta:
        for _ in range(burst_deliveries - (own if client is beta[1] else 0)):
            assert (await client.recv())["eventType"] == "burst"

    # an oversize message: the server closes with 1009
    big = "x" * 4096
    await gamma.ws.send(big)
    with pytest.raises(websockets.ConnectionClosed):
        await gamma.recv()
    assert gamma.ws.close_code == 1009
    # two clients close normally (1000, by the client)
    await beta[2].close()
    await subscribers[-1].close()

    expected_sent = 8 * len(subscribers) + 3 * burst_deliveries
    expected = {
        ("fastws_connections",): opened - 3,
        ("fastws_messages_received_total",): sent_messages,
        ("fastws_received_bytes_total",): sent_bytes,
        ("fastws_messages_sent_total",): expected_sent,
        ("fastws_events_published_total", ("origin", "websocket")): 5 + burst_deliveries,
        ("fastws_events_published_total", ("origin", "rest")): 3,
        ("fastws_error_replies_total",): 1 + refused,
        ("fastws_rate_limited_total", ("limit", "publish")): refused,
        ("fastws_rate_limited_total", ("limit", "tenant_publish")): 0,
        ("fastws_disconnects_total", ("code", "1009"), ("initiator", "server")): 1,
        ("fastws_disconnects_total", ("code", "1000"), ("initiator", "client")): 2,
        ("fastws_slow_consumer_disconnects_total",): 0,
        # the 2 busiest tenants have series of their own, gamma (now without connections) is in other
        ("fastws_tenant_connections", ("tenant", "acme")): len(subscribers) - 1,
        ("fastws_tenant_connections", ("tenant", "beta")): 2,
        ("fastws_tenant_connections", ("tenant", "other")): 0,
        ("fastws_tenant_events_published_total", ("tenant", "acme")): 8,
        ("fastws_tenant_events_published_total", ("tenant", "beta")): burst_deliveries,
        ("fastws_tenant_messages_sent_total", ("tenant", "acme")): 8 * len(subscribers),
        ("fastws_tenant_messages_sent_total", ("tenant", "beta")): 3 * burst_deliveries,
        ("fastws_tenant_messages_sent_total", ("tenant", "other")): 0,
    }
    samples = await converge(cluster, expected)
    assert ("fastws_tenant_connections", frozenset({("tenant", "gamma")})) not in samples
    assert total(samples, "fastws_disconnects_total") == 3
    # the per-worker series add up to the host's
    assert sum(value(samples, "fastws_worker_messages_sent_total", worker=w) for w in ("0", "1")) == expected_sent
    assert sum(value(samples, "fastws_worker_connections", worker=w) for w in ("0", "1")) == opened - 3
    # events crossed workers and were sampled: the latency histogram is consistent
    count = value(samples, "fastws_delivery_latency_seconds_count")
    assert count >= 1 and value(samples, "fastws_delivery_latency_seconds_bucket", le="+Inf") == count
    assert 0 < value(samples, "fastws_delivery_latency_seconds_sum") < count * 5
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                     if name == "fastws_delivery_latency_seconds_bucket")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert value(samples, "fastws_history_events") >= 8 + burst_deliveries
    assert value(samples, "fastws_worker_event_loop_lag_seconds", worker="0") >= 0
    for client in subscribers[:-1] + beta[:2]:
        await client.close()


async def test_counters_survive_a_killed_worker(cluster):
    """kill -9 of a worker: the supervisor starts a new one, which counts on from its row, so no
    counter of the host ever goes back (scraped all along), and the status API keeps the counts too."""
    groups = await cluster.spread("acme", count=6)
    clients = [client for group in groups.values() for client in group]
    for n in range(3):
        await clients[0].publish("tick", {"n": n})
    for client in clients:
        await client.drain()
    opened = len(clients)
    before = await converge(cluster, {("fastws_connections_opened_total",): opened,
                                      ("fastws_messages_sent_total",): 3 * opened})
    status, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
    victim = next(w for w, group in groups.items() if clients[0] not in group)
    pid = body["websocket"]["workers"][str(victim)]["pid"]
    os.kill(pid, signal.SIGKILL)

    counters = [name for (name, _), _ in before.items()
                if name.endswith("_total") and not name.startswith(("fastws_worker_restarts", "fastws_tenant_"))]
    last = before

    async def restarted() -> bool:
        nonlocal last
        try:
            now = await scrape(cluster)
        except (ConnectionError, IndexError):
            return False  # a connection queued on the killed worker's socket is reset: scrape again
        for name in counters:
            assert total(now, name) >= total(last, name), f"{name} went back: {total(last, name)} -> {total(now, name)}"
        last = now
        return value(now, "fastws_worker_restarts_total", worker=str(victim)) == 1 and \
            value(now, "fastws_worker_up", worker=str(victim)) == 1

    await until(restarted, TIMEOUT)
    after = last
    assert value(after, "fastws_connections_opened_total") == opened
    assert value(after, "fastws_messages_sent_total") == 3 * opened
    assert value(after, "fastws_connections") == len(groups[next(w for w in groups if w != victim)])
    status, body = await cluster.http("GET", "/api/websocket/status")
    assert body["websocket"]["metrics"]["total_connections"] == opened
    assert body["websocket"]["metrics"]["events_sent"] == 3 * opened
    for client in clients:
        await client.close()


async def test_openmetrics_when_asked(cluster):
    """Accept: application/openmetrics-text gets OpenMetrics, which its parser reads, ending # EOF."""
    status, headers, body = await fetch(cluster, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    names = {family.name for family in parse_openmetrics(body.decode())}
    assert {"fastws_connections", "fastws_messages_sent", "fastws_delivery_latency_seconds"} <= names


async def test_the_metrics_token():
    """With a metrics token (and JWT keys): the token or an admin token is let in; no token 401, a
    wrong one 401, a user's token 403. The endpoint answers HEAD too."""
    secret = "s" * 32
    running = await Cluster.start(1, env={"FASTWS_METRICS_TOKEN": "scrape-me", "FASTWS_JWT_SECRET": secret})
    try:
        authenticator = Authenticator.from_settings(Settings(jwt_secret=secret))
        admin = authenticator.mint("acme", "ops", admin=True)
        user = authenticator.mint("acme", "alice")
        assert (await fetch(running))[0] == 401
        assert (await fetch(running, headers={"Authorization": "Bearer wrong"}))[0] == 401
        assert (await fetch(running, headers={"Authorization": f"Bearer {user}"}))[0] == 403
        assert (await fetch(running, "/metrics?token=scrape-me"))[0] == 401  # headers only: URLs get logged
        await scrape(running, {"Authorization": "Bearer scrape-me"})
        await scrape(running, {"Authorization": f"Bearer {admin}"})
        status, body = await running.http("GET", "/metrics")
        assert status == 401 and body["error"]["code"] == "unauthorized"
    finally:
        await running.stop()


async def test_a_metrics_token_in_open_mode():
    """Open mode with a metrics token: the token is required; without one, /metrics is open."""
    running = await Cluster.start(1, env={"FASTWS_METRICS_TOKEN": "scrape-me"})
    try:
        assert (await fetch(running))[0] == 401
        await scrape(running, {"Authorization": "Bearer scrape-me"})
    finally:
        await running.stop()


async def test_metrics_with_redis_speak_for_the_host(redis_server):
    """Two hosts over one Redis: each host's /metrics counts its own workers (hosts are scraped one
    by one), names the cluster's size and the Redis broker's series, and events that came through
    Redis are sampled in the latency histogram."""
    args = ["--broker", redis_server.url, "--redis-prefix", "metrics"]
    first, second = await Cluster.start(2, *args), await Cluster.start(2, *args)
    try:
        listeners = [await Client.connect(second.url, "acme", f"l{i}") for i in range(4)]
        publisher = await Client.connect(first.url, "acme", "p")
        for n in range(4):
            await publisher.publish("tick", {"n": n})
        for client in listeners:
            assert [e["eventType"] for e in await _events(client, 4)] == ["tick"] * 4
        on_first = await converge(first, {("fastws_connections",): 1, ("fastws_cluster_hosts",): 2,
                                          ("fastws_events_published_total", ("origin", "websocket")): 4})
        on_second = await converge(second, {("fastws_connections",): 4, ("fastws_messages_sent_total",): 16,
                                            ("fastws_events_published_total", ("origin", "websocket")): 0})
        assert any(value(on_first, "fastws_build_info", broker="redis", implementation=i, version=_version()) == 1
                   for i in ("cython", "python"))
        assert value(on_second, "fastws_broker_errors_total") == 0
        assert ("fastws_worker_redis_pubsub_lag_seconds", frozenset({("worker", "0")})) in on_second
        assert value(on_second, "fastws_delivery_latency_seconds_count") >= 1
        for client in [*listeners, publisher]:
            await client.close()
    finally:
        await first.stop()
        await second.stop()


async def _events(client: Client, count: int) -> list[dict]:
    events = []
    while len(events) < count:
        message = await client.recv()
        if "eventType" in message and message["eventType"] != "connection":
            events.append(message)
    return events


def _version() -> str:
    from fastws import __version__

    return __version__
