"""The seed's WebSocket protocol, end to end against a real server."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import Client, PicowsClient, event_ids


async def clients(server, *specs):
    return [await Client.connect(server.ws_url, tenant, user) for tenant, user in specs]


async def test_welcome_event(server):
    """The welcome event is shaped like every event and names the connection, its channels and limits."""
    async with await Client.connect(server.ws_url, "acme", "alice") as client:
        welcome = client.welcome
        assert set(welcome) == {"id", "eventType", "data", "timestamp", "source", "priority", "tenantId", "userId", "channel"}
        assert welcome["channel"] == "tenant:acme"
        assert (welcome["tenantId"], welcome["userId"]) == ("acme", "alice")
        assert welcome["data"]["channels"] == ["tenant:acme"]
        assert set(welcome["data"]["limits"]) >= {"maxMessageSize", "maxSubscriptions"}
        assert welcome["timestamp"].endswith("Z")


async def test_publish_reaches_every_tenant_connection_with_the_same_id(server):
    """A publish goes to every connection of the tenant, publisher included; the ack carries the event id."""
    a, b = await clients(server, ("t1", "a"), ("t1", "b"))
    ack = await a.publish("idea_created", {"title": "x"}, source="idea_service", priority="high")
    assert ack["type"] == "ack"
    for client in (a, b):
        (event,) = await client.drain()
        assert event["id"] == ack["id"]
        assert event["eventType"] == "idea_created" and event["data"] == {"title": "x"}
        assert (event["source"], event["priority"], event["userId"], event["tenantId"]) == ("idea_service", "high", "a", "t1")
        assert event["channel"] == "tenant:t1"
    for client in (a, b):
        await client.close()


async def test_custom_event_as_the_seed_sends_it(server):
    """sendMessage({type:'custom_event', data}) publishes event custom_event to tenant:T."""
    a, b = await clients(server, ("t1", "a"), ("t1", "b"))
    await a.send({"type": "custom_event", "data": {"message": "Hello WebSocket!"}})
    (event,) = [m for m in await b.drain()]
    assert (event["eventType"], event["data"], event["channel"]) == ("custom_event", {"message": "Hello WebSocket!"}, "tenant:t1")
    await a.close(), await b.close()


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"eventTypes": ["idea_created"]}, ["idea_created/idea_service/normal/a", "idea_created/user_service/high/b"]),
        ({"sources": ["user_service"]}, ["user_update/user_service/critical/a", "idea_created/user_service/high/b"]),
        ({"priority": ["high", "critical"]}, ["user_update/user_service/critical/a", "idea_created/user_service/high/b"]),
        ({"users": ["b"]}, ["idea_created/user_service/high/b", "other/other/low/b"]),
        ({"eventTypes": ["idea_created"], "sources": ["user_service"]}, ["idea_created/user_service/high/b"]),
        ({}, None),
    ],
)
async def test_every_filter_dimension(server, filters, expected):
    """Filters on event type, source, priority and publisher user are ANDed; empty means any."""
    (watcher,) = await clients(server, ("t1", "w"))
    a, b = await clients(server, ("t1", "a"), ("t1", "b"))
    assert (await watcher.request({"type": "filters", "filters": filters}))["type"] == "ack"
    sent = [
        (a, "idea_created", "idea_service", "normal"),
        (a, "user_update", "user_service", "critical"),
        (b, "idea_created", "user_service", "high"),
        (b, "other", "other", "low"),
    ]
    for publisher, event, source, priority in sent:
        await publisher.publish(event, source=source, priority=priority)
    got = [f"{e['eventType']}/{e['source']}/{e['priority']}/{e['userId']}" for e in await watcher.drain()]
    everything = [f"{e}/{s}/{p}/{'a' if c is a else 'b'}" for c, e, s, p in sent]
    assert got == (everything if expected is None else expected)
    for client in (watcher, a, b):
        await client.close()


async def test_subscribe_unsubscribe_and_per_subscription_event_types(server):
    """subscribe (bare or full name) with optional eventTypes, replace, unsubscribe."""
    sub, pub = await clients(server, ("t1", "s"), ("t1", "p"))
    ack = await sub.request({"type": "subscribe", "channel": "ideas", "eventTypes": ["idea_created"]})
    assert ack == {"type": "ack", "ref": ack["ref"], "channel": "ideas:t1", "epoch": ack["epoch"], "offset": 0}
    await pub.publish("idea_created", channel="ideas:t1")
    await pub.publish("idea_deleted", channel="ideas")
    assert [e["eventType"] for e in await sub.drain()] == ["idea_created"]
    await sub.request({"type": "subscribe", "channel": "ideas:t1"})  # replaces: any type now
    await pub.publish("idea_deleted", channel="ideas")
    assert [e["eventType"] for e in await sub.drain()] == ["idea_deleted"]
    assert (await sub.request({"type": "unsubscribe", "channel": "ideas"}))["type"] == "ack"
    assert (await sub.request({"type": "unsubscribe", "channel": "ideas"}))["type"] == "ack"
    await pub.publish("idea_created", channel="ideas")
    assert await sub.drain() == []
    await sub.close(), await pub.close()


async def test_channel_events_only_reach_subscribers(server):
    """An event on ideas:T reaches its subscribers only, not the whole tenant."""
    sub, other, pub = await clients(server, ("t1", "s"), ("t1", "o"), ("t1", "p"))
    await sub.request({"type": "subscribe", "channel": "ideas"})
    ack = await pub.publish("idea_created", channel="ideas")
    assert event_ids(await sub.drain()) == [ack["id"]]
    assert await other.drain() == []
    assert await pub.drain() == []  # the publisher is not subscribed to ideas:t1
    for client in (sub, other, pub):
        await client.close()


async def test_tenant_isolation(server):
    """No event crosses tenants, and another tenant's channels are forbidden."""
    a, b = await clients(server, ("acme", "u"), ("acme-evil", "u"))
    await b.request({"type": "subscribe", "channel": "ideas"})
    reply = await b.request({"type": "subscribe", "channel": "ideas:acme"})
    assert reply["code"] == "forbidden_channel"
    reply = await a.request({"type": "subscribe", "channel": "ideas:acme-evil"})
    assert reply["code"] == "forbidden_channel"
    await a.publish("e")
    await a.publish("e", channel="ideas")
    assert (await a.publish("e", channel="ideas:acme-evil"))["code"] == "forbidden_channel"
    assert await b.drain() == []
    assert len(await a.drain()) == 1
    await a.close(), await b.close()


async def test_user_targeting(server):
    """targetUserId delivers only to that user's connections among the would-be recipients."""
    u1a, u1b, u2, pub = await clients(server, ("t1", "u1"), ("t1", "u1"), ("t1", "u2"), ("t1", "p"))
    ack = await pub.publish("dm", {"x": 1}, targetUserId="u1")
    assert event_ids(await u1a.drain()) == [ack["id"]]
    assert event_ids(await u1b.drain()) == [ack["id"]]
    assert await u2.drain() == []
    assert await pub.drain() == []
    for client in (u1a, u1b, u2, pub):
        await client.close()


async def test_ping_pong_and_refs(server):
    """ping answers pong with the ref; refs are echoed as sent (any scalar)."""
    (client,) = await clients(server, ("t1", "u"))
    for ref in ("abc", 12, 1.5, True):
        await client.send({"type": "ping", "ref": ref})
        assert await client.recv() == {"type": "pong", "ref": ref}
    await client.send({"type": "ping"})
    assert await client.recv() == {"type": "pong"}
    await client.close()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{oops", "invalid_json"),
        ({"type": "nope"}, "unknown_type"),
        ({"type": "pong", "data": {}}, "reserved_type"),
        ({"type": "publish"}, "missing_field"),
        ({"type": "publish", "event": "e", "priority": "urgent"}, "invalid_priority"),
        ({"type": "publish", "event": "e", "channel": "ideas:t2"}, "forbidden_channel"),
        ({"type": "subscribe", "channel": "a b"}, "invalid_channel"),
        ({"type": "filters", "filters": {"priority": ["x"]}}, "invalid_priority"),
    ],
)
async def test_error_replies_keep_the_connection(server, message, code):
    """A bad command gets its documented error and the connection keeps working."""
    (client,) = await clients(server, ("t1", "u"))
    await client.send(message)
    reply = await client.recv()
    assert reply["type"] == "error" and reply["code"] == code and reply["message"]
    assert "ref" not in reply
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    await client.close()


@pytest.mark.parametrize("query", ["tenant_id=t1", "user_id=u", "tenant_id=&user_id=u", "tenant_id=a:b&user_id=u"])
async def test_bad_connect_parameters_are_refused(server, query):
    """A missing, empty or invalid tenant or user id is refused with HTTP 400, no upgrade."""
    import websockets

    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(f"{server.ws_url}?{query}")
    assert info.value.response.status_code == 400
    assert b'"success":false' in info.value.response.body


async def test_fanout_to_200_picows_connections(server):
    """One publisher, 200 subscribers on picows: each receives every event exactly once, in order."""
    subscribers = await asyncio.gather(*(PicowsClient.connect(server.ws_url, "fan", f"u{i}") for i in range(200)))
    publisher = await Client.connect(server.ws_url, "fan", "pub")
    ids = [(await publisher.publish("tick", {"n": n}))["id"] for n in range(20)]
    for subscriber in subscribers:
        messages = await subscriber.wait_for(21)
        assert event_ids(messages) == ids
    assert server.hub.metrics.events_sent == 20 * 201
    await publisher.close()
    for subscriber in subscribers:
        subscriber.transport.disconnect()


async def test_shutdown_closes_clients_with_1001(settings):
    """Server.close() tells every client 1001 (going away)."""
    from fastws.server import Server

    async with Server(settings) as server:
        client = await Client.connect(server.ws_url)
        await server.close()
        await asyncio.wait_for(client.ws.wait_closed(), 5)
        assert client.ws.close_code == 1001


async def test_events_of_one_loop_iteration_go_out_in_one_write(server, monkeypatch):
    """A batch of 10 events reaches a subscriber as one socket write holding 10 frames."""
    import orjson

    from fastws.server.websocket import Connection

    subscriber = await Client.connect(server.ws_url, "co", "sub")
    (connection,) = [c for c in server.connections if c.tenant_id == "co"]
    writes: list[bytes] = []
    original = Connection._write

    def counting_write(self: Connection, data: bytes) -> None:
        if self is connection:
            writes.append(data)
        original(self, data)

    monkeypatch.setattr(Connection, "_write", counting_write)
    body = orjson.dumps([{"event": "tick", "payload": {"n": n}} for n in range(10)])
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /api/websocket HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: co\r\nX-User-ID: p\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await reader.readuntil(b"\r\n\r\n")
    received = [await subscriber.recv() for _ in range(10)]
    assert [m["data"]["n"] for m in received] == list(range(10))
    assert len(writes) == 1 and writes[0].count(b'"eventType":"tick"') == 10
    writer.close()
    await subscriber.close()
