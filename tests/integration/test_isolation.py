"""Tenant isolation as a property over random traffic, WebSocket and REST, against a real server."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from tests.helpers import Client

TENANTS = ["acme", "acme-evil", "acm", "beta", "b"]
CHANNELS = ["ideas", "tenant", "chat.x", "ideas-evil"]


async def rest_publish(server, tenant: str, user: str, body: dict) -> int:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    data = orjson.dumps(body)
    writer.write(
        f"POST /api/websocket HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Tenant-ID: {tenant}\r\n"
        f"X-User-ID: {user}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
    )
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(raw.split()[1])


@pytest.mark.parametrize("seed", range(4))
async def test_no_event_crosses_tenants_and_no_foreign_subscription_is_granted(server, seed):
    """Random subscribes (own and other tenants' channels, look-alike names) and publishes (WS and REST): 0 cross-tenant deliveries, 0 foreign subscriptions."""
    rng = random.Random(seed)
    clients = []
    for i in range(12):
        tenant = rng.choice(TENANTS)
        clients.append((tenant, await Client.connect(server.ws_url, tenant, f"u{i % 3}")))
    granted = 0
    for tenant, client in clients:
        for _ in range(4):
            target = rng.choice(TENANTS)
            channel = f"{rng.choice(CHANNELS)}:{target}" if rng.random() < 0.7 else rng.choice(CHANNELS)
            reply = await client.request({"type": "subscribe", "channel": channel})
            if target != tenant and ":" in channel:
                assert reply["type"] == "error" and reply["code"] == "forbidden_channel", (tenant, channel)
            elif reply["type"] == "ack":
                assert reply["channel"].rsplit(":", 1)[1] == tenant
                granted += 1
    for _ in range(60):
        tenant, client = rng.choice(clients)
        target = rng.choice(TENANTS)
        channel = f"{rng.choice(CHANNELS)}:{target}" if rng.random() < 0.5 else rng.choice(CHANNELS)
        message = {"event": "e", "channel": channel, "payload": {"from": tenant}}
        if rng.random() < 0.5:
            reply = await client.publish(**{k: v for k, v in message.items()})
            assert (reply["type"] == "ack") == (":" not in channel or target == tenant), (tenant, channel, reply)
        else:
            status = await rest_publish(server, tenant, "svc", message)
            assert (status == 200) == (":" not in channel or target == tenant), (tenant, channel, status)
    delivered = 0
    for tenant, client in clients:
        for event in await client.drain():
            assert event["tenantId"] == tenant and event["channel"].rsplit(":", 1)[1] == tenant
            assert event["data"]["from"] == tenant
            delivered += 1
        await client.close()
    assert granted and delivered  # the property was exercised, not vacuous
    for session in server.hub.sessions():
        assert all(channel.rsplit(":", 1)[1] == session.tenant_id for channel in server.hub.channels_of(session))
