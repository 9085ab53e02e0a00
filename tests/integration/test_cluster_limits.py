"""Limits kept by the Redis broker: channels per tenant (whole batches), history by count and bytes."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from fastws.config import Limits, Settings
from fastws.server.app import Server
from tests.helpers import Client

pytestmark = pytest.mark.uvloop_only


async def _http(server: Server, method: str, path: str, body: object = None, tenant: str = "acme") -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    data = b"" if body is None else orjson.dumps(body)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                 f"X-Tenant-ID: {tenant}\r\nX-User-ID: svc\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(payload)


async def test_channels_per_tenant_are_capped_across_hosts_and_batches_are_refused_whole(redis_server):
    limits = Limits(max_channels_per_tenant=3)
    settings = Settings(port=0, broker=redis_server.url, redis_prefix="cap", limits=limits)
    async with Server(settings) as one, Server(settings) as two:
        # the tenant channel counts once a connection has read its position
        client = await Client.connect(one.ws_url, "acme", "u1")
        assert (await client.publish("e", channel="a"))["type"] == "ack"
        # a batch starting two more channels when one is left: refused whole, nothing published
        status, body = await _http(two, "POST", "/api/websocket", [{"event": "e", "channel": "b"},
                                                                   {"event": "e", "channel": "c"}])
        assert (status, body["error"]["code"]) == (429, "too_many_channels")
        for name in ("b", "c"):
            status, history = await _http(one, "GET", f"/api/websocket/history?channel={name}")
            assert status == 200 and history["offset"] == 0 and history["events"] == []
        # one more fits, on the other host; then none
        assert (await _http(two, "POST", "/api/websocket", {"event": "e", "channel": "b"}))[0] == 200
        reply = await client.publish("e", channel="d")
        assert (reply["type"], reply["code"]) == ("error", "too_many_channels")
        # publishing to channels that exist goes on; other tenants are not affected
        assert (await client.publish("e", channel="a"))["offset"] == 2
        assert (await _http(one, "POST", "/api/websocket", {"event": "e", "channel": "d"}, tenant="globex"))[0] == 200
        # a subscribe to a new channel past the cap is answered, but its position is not kept
        ack = await client.request({"type": "subscribe", "channel": "z"})
        assert ack["type"] == "ack" and ack["offset"] == 0
        status, history = await _http(one, "GET", "/api/websocket/history?channel=z")
        assert history["epoch"] != ack["epoch"]
        await client.close()


async def test_history_is_trimmed_by_count_and_by_bytes(redis_server):
    limits = Limits(history_size=5, history_bytes=2000)
    settings = Settings(port=0, broker=redis_server.url, redis_prefix="trim", limits=limits)
    async with Server(settings) as server:
        client = await Client.connect(server.ws_url, "acme", "u1")
        for i in range(8):
            await client.publish("e", {"i": i}, channel="small")
        status, history = await _http(server, "GET", "/api/websocket/history?channel=small")
        assert [event["data"]["i"] for event in history["events"]] == [3, 4, 5, 6, 7]
        for i in range(4):
            await client.publish("e", {"blob": "x" * 700, "i": i}, channel="big")
        status, history = await _http(server, "GET", "/api/websocket/history?channel=big")
        kept = [event["data"]["i"] for event in history["events"]]
        assert kept == [2, 3], kept  # two events of ~900 bytes fit in 2,000
        stream = redis_server.client().xlen("trim:t:acme:c:big:s")
        assert stream == 2
        # a resume from before what is kept is refused, from within it replayed
        epoch = history["epoch"]
        ack = await client.request({"type": "subscribe", "channel": "big", "since": 0, "epoch": epoch})
        assert ack["recovered"] is False
        ack = await client.request({"type": "subscribe", "channel": "big", "since": 2, "epoch": epoch})
        assert ack["recovered"] is True
        replayed = [await client.recv() for _ in range(2)]
        assert [event["offset"] for event in replayed] == [3, 4]
        await client.close()


async def test_a_burst_of_connections_all_get_their_welcome(redis_server, monkeypatch):
    """Each welcome reads its position from Redis: a burst of them queues for the broker's
    connections (bounded), it does not fail with 1013, even with a pool of 3."""
    from fastws.server import redis_broker

    monkeypatch.setattr(redis_broker, "MAX_CONNECTIONS", 3)
    settings = Settings(port=0, broker=redis_server.url, redis_prefix="burst",
                        limits=Limits(connect_rate=10_000, connect_burst=10_000))
    async with Server(settings) as server:
        clients = await asyncio.gather(*(Client.connect(server.ws_url, f"t{i % 500}", f"u{i}") for i in range(1000)))
        assert all(client.welcome["data"]["epoch"] for client in clients)
        await asyncio.gather(*(client.close() for client in clients))


async def test_a_foreign_message_on_a_channel_is_dropped_and_the_worker_keeps_listening(redis_server):
    """Something else publishing on a channel's Redis pub/sub (not PUBLISH_SCRIPT) costs nothing:
    the message is dropped, and the channel's events keep coming."""
    settings = Settings(port=0, broker=redis_server.url, redis_prefix="junk")
    async with Server(settings) as server:
        listener = await Client.connect(server.ws_url, "acme", "u1")
        publisher = await Client.connect(server.ws_url, "acme", "u2")
        redis_server.client().publish("junk:t:acme:c:tenant", b"\x00\x00\x00\x09not an event")
        redis_server.client().publish("junk:t:acme:c:tenant", b"garbage")
        ack = await publisher.publish("after", {"n": 1})
        event = await listener.recv()
        assert (event["eventType"], event["offset"]) == ("after", ack["offset"])
        status, body = await _http(server, "GET", "/api/websocket/status?detailed=true")
        assert body["websocket"]["cluster"]["broker"]["errors"] == 2
        await listener.close()
        await publisher.close()
