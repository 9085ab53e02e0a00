"""Streams of many distinct channels: memory plateaus at the history budget; the per-tenant channel cap."""

from __future__ import annotations

import asyncio

import orjson
import psutil
import pytest

from fastws.config import MIB, Settings
from fastws.server import Server
from tests.helpers import Client
from tests.cluster_util import Cluster

BUDGET = 32 * MIB
BATCH = 1000
BATCHES = 400
TENANTS = ("m0", "m1", "m2", "m3")


async def _post(host: str, port: int, requests: list[tuple[dict[str, str], bytes]]) -> list[tuple[int, dict]]:
    """Send requests one after another on one keep-alive connection; (status, body) of each."""
    reader, writer = await asyncio.open_connection(host, port)
    answers = []
    try:
        for headers, body in requests:
            lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(
                f"POST /api/websocket HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: application/json\r\n{lines}\r\n".encode() + body
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            answers.append((int(head.split()[1]), orjson.loads(await reader.readexactly(length))))
    finally:
        writer.close()
    return answers


def _batch(tenant: str, first: int) -> tuple[dict[str, str], bytes]:
    events = [{"event": "e", "channel": f"c{first + i}", "payload": {"n": i}} for i in range(BATCH)]
    return {"X-Tenant-ID": tenant, "X-User-ID": "svc"}, orjson.dumps(events)


async def _publish_distinct(cluster: Cluster, start: int, batches: int) -> None:
    """``batches`` batches of BATCH events, each event to a channel never used before, over 4 connections."""
    lanes = [[] for _ in range(4)]
    for n in range(batches):
        lanes[n % 4].append(_batch(TENANTS[n % len(TENANTS)], (start + n) * BATCH))
    for answers in await asyncio.gather(*(_post(cluster.host, int(cluster.port), lane) for lane in lanes)):
        assert all(status == 200 for status, _ in answers), answers[:1]


async def _uss(cluster: Cluster, pids: list[int]) -> list[int]:
    """Each worker's unique memory, once every worker has applied the whole log."""
    while True:
        _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
        positions = {row["bus_position"] for row in body["websocket"]["workers"].values()}
        if len(positions) == 1:
            return [psutil.Process(pid).memory_full_info().uss for pid in pids]
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
@pytest.mark.asyncio(loop_factories=["uvloop"])  # the server is another process: one client loop is enough
async def test_memory_plateaus_at_the_history_budget_with_many_distinct_channels():
    """400,000 events, each to a new channel, from 4 tenants, to 2 workers with a 32 MiB history
    budget: each worker's memory grows while the budget fills, then stays (the second half grows much
    less than the first, the whole within 1.5 times the budget); the server keeps serving, and an
    evicted channel's resume says recovered:false."""
    cluster = await Cluster.start(2, env={"FASTWS_HISTORY_TOTAL_BYTES": str(BUDGET)})
    try:
        _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
        pids = [row["pid"] for row in body["websocket"]["workers"].values()]
        subscriber = await Client.connect(cluster.url, "m0", "watcher")
        ack = await subscriber.request({"type": "subscribe", "channel": "evicted"})
        await cluster.http("POST", "/api/websocket", {"X-Tenant-ID": "m0", "X-User-ID": "svc"},
                           {"event": "e", "channel": "evicted", "payload": {"n": 0}})
        first = await subscriber.recv()
        assert first["offset"] == 1
        position = (ack["epoch"], first["offset"])
        start = await _uss(cluster, pids)
        peaks = []  # each half's highest sample: single samples move by the allocator's 2-4 MiB
        for half in range(2):
            samples = []
            for chunk in range(5):
                await _publish_distinct(cluster, (half * 5 + chunk) * BATCHES // 10, BATCHES // 10)
                samples.append(await _uss(cluster, pids))
            peaks.append([max(column) for column in zip(*samples)])
        for worker, (a, b, c) in enumerate(zip(start, *peaks)):
            first_half, second_half = (b - a) / MIB, (c - b) / MIB
            print(f"worker {worker}: USS {a / MIB:.1f}, highest {b / MIB:.1f} in the first half, {c / MIB:.1f} in the second")
            assert second_half < first_half / 3, (first_half, second_half)
            # replicas cost less than they are counted for; half the budget again for the allocator
            assert c - a < BUDGET * 3 // 2, (first_half, second_half)
        # still serving: a live subscriber gets its events; the evicted channel starts again
        await cluster.http("POST", "/api/websocket", {"X-Tenant-ID": "m0", "X-User-ID": "svc"},
                           {"event": "e", "channel": "evicted", "payload": {"n": 1}})
        again = await subscriber.recv()
        assert again["data"] == {"n": 1} and again["offset"] == 1
        resumed = await subscriber.request(
            {"type": "subscribe", "channel": "evicted", "since": position[1], "epoch": position[0]}
        )
        assert resumed["recovered"] is False and resumed["epoch"] != position[0]
        await subscriber.close()
    finally:
        await cluster.stop()


async def test_tenant_channel_cap_over_rest_and_websocket(loop_errors):
    """Past max_channels_per_tenant, a publish to a new channel is refused (REST 429, WebSocket error
    too_many_channels), a batch whole; existing channels and other tenants go on."""
    settings = Settings.load(env={}, host="127.0.0.1", port=0, max_channels_per_tenant=5)
    async with Server(settings) as server:
        host, port = server.host, server.port
        headers = {"X-Tenant-ID": "capped", "X-User-ID": "svc"}
        ok = await _post(host, port, [(headers, orjson.dumps([{"event": "e", "channel": f"c{i}"} for i in range(4)]))])
        assert ok[0][0] == 200  # 4 channels
        refused = await _post(host, port, [
            (headers, orjson.dumps([{"event": "e", "channel": "c0"}, {"event": "e", "channel": "x1"},
                                    {"event": "e", "channel": "x2"}])),
            (headers, orjson.dumps({"event": "e", "channel": "c3"})),
            (headers, orjson.dumps({"event": "e", "channel": "x3"})),
        ])
        assert refused[0][0] == 429 and refused[0][1]["error"]["code"] == "too_many_channels"
        assert refused[1][0] == 200 and refused[1][1]["offset"] == 2  # the whole batch was refused: c3 was at 1
        assert refused[2][0] == 200  # the fifth channel
        async with await Client.connect(server.ws_url, "capped", "u") as client:
            reply = await client.publish("e", channel="x4")
            assert reply["type"] == "error" and reply["code"] == "too_many_channels"
            assert (await client.publish("e", channel="c1"))["type"] == "ack"
            # at the cap, the welcome's tenant channel and a subscribe to a new channel keep nothing
            assert client.welcome["data"]["offset"] == 0
            ack = await client.request({"type": "subscribe", "channel": "x5"})
            assert ack["type"] == "ack" and ack["offset"] == 0
            assert server.hub.broker.tenants.counts["capped"] == 5
        async with await Client.connect(server.ws_url, "other", "u") as client:
            assert (await client.publish("e", channel="x4"))["type"] == "ack"
