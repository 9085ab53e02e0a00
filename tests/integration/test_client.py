"""fastws.Client against real servers: reconnect, recovery, backoff, auth, iteration."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

import fastws
from fastws.client import AuthenticationError, Client, CommandError, RecoveryFailed
from fastws.config import Settings
from fastws.server import Server
from tests.helpers import Client as Peer


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def collect(client: Client, count: int, timeout: float = 10.0) -> list[dict]:
    events = []

    async def take() -> None:
        async for event in client:
            events.append(event)
            if len(events) == count:
                return

    await asyncio.wait_for(take(), timeout)
    return events


async def test_publish_subscribe_filters_and_iteration(server):
    """publish awaits its ack, subscribe and filters work, and async iteration ends on disconnect()."""
    client = Client(server.ws_url, "acme", "alice", reconnect_interval=0.05)
    welcome = await client.connect()
    assert client.is_connected and client.connection_status == "connected" and welcome["tenantId"] == "acme"
    await client.subscribe("ideas")
    ack = await client.publish("idea_created", {"t": 1}, channel="ideas")
    assert ack["type"] == "ack" and ack["id"]
    await client.update_filters({"eventTypes": ["keep"]})
    await client.publish("drop")
    await client.publish("keep", {"n": 2})
    events = await collect(client, 2)
    assert [(e["eventType"], e["channel"]) for e in events] == [("idea_created", "ideas:acme"), ("keep", "tenant:acme")]
    assert client.last_message == events[-1]
    with pytest.raises(CommandError) as refused:
        await client.publish("e", channel="ideas:other")
    assert refused.value.code == "forbidden_channel"
    client.send_message({"type": "custom_event", "data": {"x": 1}})
    await client.disconnect()
    assert [e async for e in client] == [] and client.connection_status == "disconnected"


async def test_reconnect_recovers_everything_missed_nothing_twice(server):
    """Dropped by the server, the client reconnects, resubscribes and receives exactly the missed events, then live ones."""
    client = Client(server.ws_url, "rc", "alice", reconnect_interval=0.05)
    await client.connect()
    await client.subscribe("ideas", ["idea"])
    publisher = await Peer.connect(server.ws_url, "rc", "pub")
    sent = [(await publisher.publish("e", {"n": 0}))["id"], (await publisher.publish("idea", channel="ideas"))["id"]]
    first = await collect(client, 2)
    (connection,) = [c for c in server.connections if c.user_id == "alice"]
    connection.close(4001, "test drop")
    await until(lambda: client.connection_status == "reconnecting")
    missed = [(await publisher.publish("e", {"n": n}))["id"] for n in range(1, 4)]
    missed.append((await publisher.publish("idea", channel="ideas"))["id"])
    missed.append((await publisher.publish("other", channel="ideas"))["id"])  # not for this subscription
    await until(lambda: client.is_connected)
    live = (await publisher.publish("e", {"n": 9}))["id"]
    rest = await collect(client, 5)
    ids = [e["id"] for e in first + rest]
    assert ids[:2] == sent
    assert sorted(ids[2:]) == sorted(missed[:4] + [live]) and len(set(ids)) == len(ids)
    assert client.recovery_failures == [] and client.reconnect_attempts == 0
    await client.disconnect()
    await publisher.close()


async def test_full_restart_tells_the_application_recovery_failed(settings):
    """After a full server restart (history in memory is gone) the client reconnects and reports RecoveryFailed."""
    errors = []
    async with Server(settings) as first:
        port = first.port
        client = Client(first.ws_url, "fr", "alice", reconnect_interval=0.05, on_error=errors.append)
        await client.connect()
        await client.subscribe("ideas")
        await client.publish("e")
        await collect(client, 1)
    async with Server(settings.replace(port=port)):
        await until(lambda: client.is_connected, 15)
        await until(lambda: len(client.recovery_failures) >= 2)
        assert set(client.recovery_failures) == {"tenant:fr", "ideas:fr"}
        assert any(isinstance(e, RecoveryFailed) for e in errors)
        ack = await client.publish("after")
        assert (await collect(client, 1))[0]["id"] == ack["id"]
        await client.disconnect()


def test_backoff_is_capped_exponential_with_jitter():
    """Delays double from reconnect_interval, stay within [half, all] of the cap, never above max_reconnect_interval."""
    client = Client("ws://127.0.0.1:1/ws", "t", "u", reconnect_interval=1.0, max_reconnect_interval=8.0)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        client.reconnect_attempts = attempt
        delays = [client._backoff() for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays) and max(delays) > cap * 0.9 and min(delays) < cap * 0.6


async def test_gives_up_after_max_attempts():
    """With nothing listening, the client stops after max_reconnect_attempts and iteration ends."""
    async with Server(Settings(host="127.0.0.1", port=0)) as server:
        client = Client(server.ws_url, "t", "u", reconnect_interval=0.01, max_reconnect_attempts=3)
        await client.connect()
    await until(lambda: client.connection_status == "failed")
    assert client.reconnect_attempts == 3
    assert [e async for e in client] == []


async def test_authentication_failure_is_not_retried():
    """A refused token raises AuthenticationError at once, and a later 401 stops reconnecting."""
    secret = "k" * 40
    async with Server(Settings(host="127.0.0.1", port=0, jwt_secret=secret)) as server:
        bad = Client(server.ws_url, token=jwt.encode({"tenant_id": "t", "sub": "u", "exp": 1}, secret))
        with pytest.raises(AuthenticationError) as refused:
            await bad.connect()
        assert refused.value.status == 401 and bad.connection_status == "failed"
        good = Client(server.ws_url, token=jwt.encode({"tenant_id": "t", "sub": "u", "exp": int(time.time()) + 2}, secret),
                      reconnect_interval=0.01)
        await good.connect()
        assert good.welcome["tenantId"] == "t"
        await asyncio.sleep(2.1)  # the token expires: closed 4101, and the reconnect is refused with 401
        await until(lambda: good.connection_status == "failed")
        assert isinstance(good.error, AuthenticationError) and good.reconnect_attempts == 1


async def test_follows_the_rollback_to_the_legacy_url(settings):
    """503 rolled_back with legacy_url: the client connects to the legacy URL instead."""
    async with Server(settings) as legacy:
        async with Server(settings.replace(legacy_url=legacy.ws_url)) as primary:
            primary.control.set_flags({"websocket_v2": False})
            client = Client(primary.ws_url, "lg", "u")
            welcome = await client.connect()
            assert client.url == legacy.ws_url and welcome["tenantId"] == "lg"
            assert len(legacy.connections) == 1 and not primary.connections
            await client.disconnect()


async def test_rest_publish_helpers_reuse_one_connection(server):
    """fastws.publish (sync, in a thread) and AsyncPublisher deliver, reuse their connection, and raise PublishError."""
    subscriber = await Peer.connect(server.ws_url, "pub", "sub")
    base = server.http_url
    first = await asyncio.to_thread(fastws.publish, base, "pub", "svc", "sync", {"n": 1})
    second = await asyncio.to_thread(fastws.publish, base, "pub", "svc", "sync", {"n": 2}, priority="high")
    with pytest.raises(fastws.PublishError) as refused:
        await asyncio.to_thread(fastws.publish, base, "pub", "svc", "e", channel="x:other")
    assert (refused.value.status, refused.value.code) == (403, "forbidden_channel")
    async with fastws.AsyncPublisher(base) as publisher:
        third = await publisher.publish("pub", "svc", "async", {"n": 3}, channel="tenant:pub")
        streams = publisher._streams
        fourth = await publisher.publish("pub", "svc", "async", {"n": 4})
        assert streams is not None and publisher._streams is streams  # the same keep-alive connection
    events = await subscriber.drain()
    assert [e["id"] for e in events] == [first["id"], second["id"], third["id"], fourth["id"]]
    one_shot = await fastws.apublish(base, "pub", "svc", "once")
    assert (await subscriber.drain())[0]["id"] == one_shot["id"]
    await subscriber.close()
