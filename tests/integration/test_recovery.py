"""Recovery and history end to end against a real server."""

from __future__ import annotations

import asyncio

import orjson

from tests.helpers import Client


async def rest_get(server, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{lines}\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, body = raw.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), orjson.loads(body)


async def test_reconnect_recovers_exactly_the_missed_events_then_goes_live(server):
    """Connect, receive, drop, miss N events, reconnect from the last position: exactly those N, then live, nothing twice."""
    publisher = await Client.connect(server.ws_url, "rec", "pub")
    subscriber = await Client.connect(server.ws_url, "rec", "sub")
    epoch = subscriber.welcome["data"]["epoch"]
    seen = []
    for n in range(3):
        await publisher.publish("tick", {"n": n})
    for event in await subscriber.drain():
        seen.append(event)
    last = seen[-1]["offset"]
    await subscriber.close()

    missed = [(await publisher.publish("tick", {"n": n}))["id"] for n in range(3, 13)]
    resumed = await Client.connect(server.ws_url, "rec", "sub", since=str(last), epoch=epoch)
    assert resumed.welcome["data"]["recovered"] is True
    assert resumed.welcome["data"]["offset"] == last + 10
    live = [(await publisher.publish("tick", {"n": n}))["id"] for n in range(13, 16)]
    received = await resumed.drain()
    assert [e["id"] for e in received] == missed + live
    assert [e["offset"] for e in received] == list(range(last + 1, last + 14))
    assert [e["data"]["n"] for e in seen + received] == list(range(16))
    await resumed.close()
    await publisher.close()


async def test_resume_with_filters_on_the_url(server):
    """Filters given on the URL apply to the replay from its first event."""
    publisher = await Client.connect(server.ws_url, "rf", "pub")
    epoch = publisher.welcome["data"]["epoch"]
    await publisher.publish("a", priority="low")
    await publisher.publish("b", priority="high")
    await publisher.publish("a", priority="critical", source="svc")
    await publisher.publish("c", priority="critical", source="svc")
    client = await Client.connect(
        server.ws_url, "rf", "sub", since="0", epoch=epoch, eventTypes="a,b", priority="high,critical"
    )
    assert client.welcome["data"]["recovered"] is True
    assert [(e["eventType"], e["priority"]) for e in await client.drain()] == [("b", "high"), ("a", "critical")]
    await client.close(), await publisher.close()


async def test_stale_epoch_is_told_to_resync(server):
    """A position from another epoch (e.g. before a restart) gives recovered false and no replay."""
    publisher = await Client.connect(server.ws_url, "st", "pub")
    await publisher.publish("a")
    client = await Client.connect(server.ws_url, "st", "sub", since="0", epoch="0123456789abcdef")
    assert client.welcome["data"]["recovered"] is False
    assert await client.drain() == []
    await client.close(), await publisher.close()


async def test_subscribe_recovery_for_any_channel(server):
    """subscribe with since/epoch replays a channel's missed events after its ack."""
    publisher = await Client.connect(server.ws_url, "sr", "pub")
    first = await publisher.request({"type": "subscribe", "channel": "ideas"})
    ids = [(await publisher.publish("idea", channel="ideas"))["id"] for _ in range(4)]
    client = await Client.connect(server.ws_url, "sr", "sub")
    await client.send({"type": "subscribe", "channel": "ideas", "since": 1, "epoch": first["epoch"]})
    ack = await client.recv()
    assert (ack["type"], ack["recovered"], ack["offset"], ack["ref"]) == ("ack", True, 4, None)
    assert [e["id"] for e in await client.drain()] == ids[1:]
    await client.close(), await publisher.close()


async def test_rest_history(server):
    """GET /api/websocket/history serves a channel's events after since, tenant-scoped, targeted ones only to their user."""
    publisher = await Client.connect(server.ws_url, "hi", "pub")
    ids = [(await publisher.publish("e", {"n": n}))["id"] for n in range(5)]
    secret = (await publisher.publish("dm", targetUserId="alice"))["id"]
    status, body = await rest_get(server, "/api/websocket/history?since=1&limit=3", {"X-Tenant-ID": "hi"})
    assert status == 200 and body["success"] is True
    assert (body["channel"], body["epoch"], body["offset"]) == ("tenant:hi", publisher.welcome["data"]["epoch"], 6)
    assert [e["id"] for e in body["events"]] == ids[1:4]
    _, everything = await rest_get(server, "/api/websocket/history", {"X-Tenant-ID": "hi"})
    assert [e["id"] for e in everything["events"]] == ids
    _, alices = await rest_get(server, "/api/websocket/history", {"X-Tenant-ID": "hi", "X-User-ID": "alice"})
    assert [e["id"] for e in alices["events"]] == ids + [secret]
    status, body = await rest_get(server, "/api/websocket/history?channel=tenant:other", {"X-Tenant-ID": "hi"})
    assert (status, body["error"]["code"]) == (403, "forbidden_channel")
    for query in ("limit=0", "limit=1001", "since=-1", "since=x"):
        status, body = await rest_get(server, f"/api/websocket/history?{query}", {"X-Tenant-ID": "hi"})
        assert (status, body["error"]["code"]) == (400, "invalid_field"), query
    _, status_body = await rest_get(server, "/api/websocket/status", {})
    assert status_body["websocket"]["metrics"]["event_history_size"] == 6
    await publisher.close()


async def test_bad_positions_on_the_url_are_refused(server):
    """A malformed since or epoch on the connect URL is HTTP 400 invalid_field, without an upgrade."""
    import pytest
    import websockets

    for query in ("since=-1", "since=abc", "epoch=x", "priority=urgent"):
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(f"{server.ws_url}?tenant_id=t&user_id=u&{query}")
        assert info.value.response.status_code == 400, query
