"""Memory of closed connections: freed at once (no reference cycles), and given back to the system."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace

from fastws.config import Settings
from fastws.server import Server, allocator
from fastws.server.http import CloseGuard, HttpProtocol
from fastws.server.websocket import Connection
from fastws.session import Session
from tests.helpers import Client

# the per-connection objects of fastws and picows that must not outlive a connection
KINDS = (Connection, CloseGuard, HttpProtocol, Session)
PICOWS_KINDS = ("WSProtocol", "WSTransport")


def alive() -> dict[str, int]:
    counts: dict[str, int] = {}
    for thing in gc.get_objects():
        name = type(thing).__name__
        if isinstance(thing, KINDS) or name in PICOWS_KINDS:
            counts[name] = counts.get(name, 0) + 1
    return counts


async def until(predicate, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_closed_connections_are_freed_by_reference_counting():
    """With the cyclic garbage collector off, nothing of a closed connection stays: server-side
    objects hold no reference cycles, so memory goes when the connection does (not at a full GC)."""
    gc.collect()
    gc.disable()
    try:
        async with Server(Settings(host="127.0.0.1", port=0)) as server:
            before = alive()
            clients = [await Client.connect(server.ws_url, "t1", f"u{i}") for i in range(20)]
            await clients[0].publish("tick", {"n": 1})
            for client in clients:
                await client.drain()
            assert alive().get("Connection", 0) == before.get("Connection", 0) + 20
            for client in clients:
                await client.close()
            assert await until(lambda: not server.connections)
            await asyncio.sleep(0.05)
            assert alive() == before
    finally:
        gc.enable()


async def test_memory_is_given_back_after_a_wave_of_closes(monkeypatch):
    """Once open connections have fallen by TRIM_AFTER, the sweep returns the allocator's free pages;
    it empties the interpreter's free lists (a full collection) only when at most COLLECT_BELOW remain."""
    trims, collections = [], []
    monkeypatch.setattr(allocator, "TRIM_AFTER", 5)
    monkeypatch.setattr(allocator, "COLLECT_BELOW", 2)
    monkeypatch.setattr(allocator, "trim", lambda: trims.append(True) or True)
    monkeypatch.setattr(allocator, "gc", SimpleNamespace(collect=lambda: collections.append(True)))
    settings = Settings(host="127.0.0.1", port=0, keepalive_timeout=0.2)  # the sweep runs every 50 ms
    async with Server(settings) as server:
        clients = [await Client.connect(server.ws_url, "t1", f"u{i}") for i in range(8)]
        await asyncio.sleep(0.2)  # a sweep sees the high mark
        for client in clients[:4]:
            await client.close()
        await asyncio.sleep(0.3)
        assert trims == []  # fallen by 4: not yet
        await clients[4].close()
        assert await until(lambda: len(trims) == 1)
        await asyncio.sleep(0.3)
        assert len(trims) == 1  # once per wave, not once per sweep
        assert collections == []  # 3 still open: more than COLLECT_BELOW
        clients = clients[5:] + [await Client.connect(server.ws_url, "t1", f"v{i}") for i in range(5)]
        await asyncio.sleep(0.2)  # the new high mark: 8
        for client in clients:
            await client.close()
        assert await until(lambda: len(trims) == 2)
        assert collections == [True]


def test_trim_works_here():
    """On glibc (Linux CI), malloc_trim is found and callable."""
    assert allocator.trim() is True
