"""``fastws selftest``: check a running server end to end, as the seed's test script did.

    fastws selftest [--base-url http://127.0.0.1:8765] [--ws-url ws://127.0.0.1:8765/ws] [--token T]

(also BASE_URL and WS_URL from the environment). One line per check, then
``N passed, N failed``; the exit status is non-zero when a check failed. The
checks use fresh random tenant ids, so they never see anyone else's traffic.
With authentication on, ``--token`` (or FASTWS_TOKEN) must be an admin token:
it lets the checks act for their own test tenants.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
import uuid
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import orjson
from prometheus_client.parser import text_string_to_metric_families

from .client import Client, CommandError
from .publisher import AsyncPublisher, PublishError

__all__ = ["run_selftest"]


class _Failed(Exception):
    pass


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise _Failed(message)


async def _http(base_url: str, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    code, body = await _http_raw(base_url, method, path, headers)
    return code, orjson.loads(body) if body else None


async def _http_raw(base_url: str, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n{lines}\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def _next_event(client: Client, timeout: float = 5.0) -> dict[str, Any]:
    return await asyncio.wait_for(client.__anext__(), timeout)


async def _nothing_more(client: Client) -> bool:
    """True if ``client`` has received nothing else: a ping round trip as the barrier."""
    await client.request({"type": "ping"})
    return not client._queue


async def run_selftest(base_url: str, ws_url: str, token: str | None = None, out: Callable[[str], None] = print) -> int:
    run = uuid.uuid4().hex[:8]
    tenant, other = f"selftest-{run}", f"selftest-{run}-other"
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    results: list[bool] = []
    clients: list[Client] = []

    def client(tenant_id: str, user_id: str, **options: Any) -> Client:
        made = Client(ws_url, tenant_id, user_id, token=token, reconnect_interval=0.1, **options)
        clients.append(made)
        return made

    async def check(name: str, body: Callable[[], Awaitable[str | None]]) -> None:
        started = time.perf_counter()
        try:
            detail = await asyncio.wait_for(body(), 20)
        except _Failed as exc:
            results.append(False)
            out(f"FAIL {name}: {exc}")
        except Exception as exc:  # a check must report, never crash the run
            results.append(False)
            out(f"FAIL {name}: {type(exc).__name__}: {exc}")
            if os.environ.get("FASTWS_SELFTEST_TRACEBACK"):
                traceback.print_exc()
        else:
            results.append(True)
            out(f"PASS {name} ({(time.perf_counter() - started) * 1000:.0f} ms){': ' + detail if detail else ''}")

    alice = client(tenant, "alice")
    bob = client(tenant, "bob")
    stranger = client(other, "eve")

    async def status() -> str:
        code, body = await _http(base_url, "GET", "/api/websocket/status", auth)
        _expect(code == 200 and body["success"], f"HTTP {code}")
        websocket = body["websocket"]
        _expect(websocket["server_running"] and websocket["health"] == "healthy", str(websocket))
        return f"{websocket['metrics']['active_connections']} connections, auth {websocket.get('auth')}"

    async def info() -> None:
        code, body = await _http(base_url, "GET", "/api/websocket", {**auth, "X-Tenant-ID": tenant})
        _expect(code == 200, f"HTTP {code}: {body}")
        websocket = body["websocket"]
        _expect(websocket["tenant_id"] == tenant and f"tenant:{tenant}" in websocket["channels"], str(websocket))
        _expect("url" in websocket["nextjs"] and "url" in websocket["supabase"], "seed keys missing")

    async def connect() -> str:
        for each in (alice, bob, stranger):
            welcome = await each.connect()
            _expect(welcome["eventType"] == "connection" and welcome["data"]["channels"], str(welcome))
        return f"worker {alice.welcome['data'].get('worker')}"

    async def ws_publish() -> None:
        ack = await alice.publish("selftest_ws", {"n": 1}, source="selftest")
        for each in (alice, bob):
            event = await _next_event(each)
            _expect(event["id"] == ack["id"] and event["userId"] == "alice", str(event))

    async def rest_publish() -> None:
        async with AsyncPublisher(base_url, token) as publisher:
            result = await publisher.publish(tenant, "backend", "selftest_rest", {"n": 2})
        for each in (alice, bob):
            event = await _next_event(each)
            _expect(event["id"] == result["id"] and event["userId"] == "backend", str(event))

    async def filters() -> None:
        await bob.update_filters({"priority": ["high", "critical"]})
        await alice.publish("selftest_low", priority="low")
        ack = await alice.publish("selftest_high", priority="high")
        await _next_event(alice), await _next_event(alice)
        event = await _next_event(bob)
        _expect(event["id"] == ack["id"], f"bob got {event['eventType']} through a high/critical filter")
        await bob.update_filters({})

    async def subscribe() -> None:
        ack = await bob.subscribe("ideas", ["idea_created"])
        _expect(ack["channel"] == f"ideas:{tenant}" and "epoch" in ack, str(ack))
        await alice.publish("idea_deleted", channel="ideas")
        sent = await alice.publish("idea_created", {"t": "x"}, channel="ideas")
        event = await _next_event(bob)
        _expect(event["id"] == sent["id"] and event["channel"] == f"ideas:{tenant}", str(event))
        await bob.unsubscribe("ideas")

    async def targeting() -> None:
        ack = await alice.publish("selftest_dm", {"secret": 1}, target_user_id="bob")
        event = await _next_event(bob)
        _expect(event["id"] == ack["id"], str(event))
        _expect(await _nothing_more(alice), "the publisher received an event targeted at bob")

    async def isolation() -> None:
        await alice.publish("selftest_private")
        await _next_event(alice), await _next_event(bob)
        _expect(await _nothing_more(stranger), "another tenant received the event")
        try:
            await stranger.subscribe(f"ideas:{tenant}")
        except CommandError as exc:
            _expect(exc.code == "forbidden_channel", exc.code)
        else:
            raise _Failed("subscribing to another tenant's channel was allowed")

    async def error_codes() -> str:
        for message, code in (({"type": "nope"}, "unknown_type"),
                              ({"type": "publish", "event": "e", "priority": "urgent"}, "invalid_priority"),
                              ({"type": "subscribe", "channel": "a b"}, "invalid_channel")):
            try:
                await alice.request(message)
            except CommandError as exc:
                _expect(exc.code == code, f"{message} gave {exc.code}, not {code}")
            else:
                raise _Failed(f"{message} was accepted")
        # no X-Tenant-ID and no token (an admin token's own tenant would fill the header in)
        code, body = await _http(base_url, "GET", "/api/websocket", {})
        _expect(code in (400, 401) and body["success"] is False, f"HTTP {code}")
        try:
            async with AsyncPublisher(base_url, token) as publisher:
                await publisher.publish(tenant, "backend", "e", channel=f"ideas:{other}")
        except PublishError as exc:
            _expect((exc.status, exc.code) == (403, "forbidden_channel"), f"{exc.status} {exc.code}")
        else:
            raise _Failed("a REST publish to another tenant's channel was accepted")
        return "unknown_type, invalid_priority, invalid_channel, missing header, forbidden_channel"

    async def recovery() -> str:
        transport = bob._transport
        assert transport is not None
        transport.disconnect(graceful=False)  # a network blip: bob reconnects by himself
        missed = [(await alice.publish("selftest_missed", {"n": n}))["id"] for n in range(3)]
        deadline = time.monotonic() + 15
        while not bob.is_connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        _expect(bob.is_connected, f"bob is {bob.connection_status}")
        got = [(await _next_event(bob))["id"] for _ in range(3)]
        _expect(got == missed, "the missed events were not replayed in order")
        _expect(not bob.recovery_failures, f"recovery failed for {bob.recovery_failures}")
        return "3 missed events replayed after reconnecting"

    async def metrics() -> str:
        # other workers' figures are at most 100 ms old (each writes its row every 100 ms)
        for _ in range(10):
            code, body = await _http_raw(base_url, "GET", "/metrics", auth)
            _expect(code == 200, f"HTTP {code}: {body[:200]!r}")
            samples = {sample.name: sample.value for family in text_string_to_metric_families(body.decode())
                       for sample in family.samples if not sample.labels}
            if samples.get("fastws_connections", 0) >= 3:
                break
            await asyncio.sleep(0.1)
        # this run's own three clients are open, and its publishes were counted
        _expect(samples.get("fastws_connections", 0) >= 3, "fewer than this run's 3 connections")
        _expect(samples.get("fastws_connections_opened_total", 0) >= 3, "connections opened not counted")
        _expect(samples.get("fastws_messages_sent_total", 0) >= 1, "deliveries not counted")
        return f"{int(samples['fastws_connections'])} connections, {int(samples['fastws_messages_sent_total'])} deliveries"

    try:
        await check("status", status)
        await check("connection info", info)
        await check("connect", connect)
        if alice.is_connected and bob.is_connected and stranger.is_connected:
            await check("publish over WebSocket", ws_publish)
            await check("publish over REST", rest_publish)
            await check("filters", filters)
            await check("subscribe and unsubscribe", subscribe)
            await check("user targeting", targeting)
            await check("tenant isolation", isolation)
            await check("error codes", error_codes)
            await check("reconnect and recovery", recovery)
            await check("metrics", metrics)
    finally:
        for each in clients:
            if each.connection_status != "disconnected":
                await each.disconnect()
    passed = sum(results)
    out(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) and results else 1


def default_urls(base_url: str | None, ws_url: str | None) -> tuple[str, str]:
    base = (base_url or os.environ.get("BASE_URL") or "http://127.0.0.1:8765").rstrip("/")
    if ws_url or os.environ.get("WS_URL"):
        return base, (ws_url or os.environ["WS_URL"])
    parts = urlsplit(base)
    return base, f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}/ws"
