"""Slow consumers: bounded backlogs, drops by priority, the missed notice, 4008 for critical overflow."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import orjson
import pytest

from fastws.config import Limits, Settings
from tests.helpers import Client

KIB = 1024


@pytest.fixture
def settings():
    # Small buffers everywhere, so backpressure shows after a few hundred KiB, not 4 MB.
    return Settings(
        host="127.0.0.1", port=0, drain_timeout=2.0, socket_send_buffer=4 * KIB, write_buffer_high=16 * KIB,
        limits=Limits(max_send_buffer=96 * KIB),
    )


class StalledClient:
    """A raw WebSocket client that reads nothing until told to: its kernel and stream buffers are tiny."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server, tenant: str, user: str) -> "StalledClient":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KIB)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws?tenant_id={tenant}&user_id={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        client = cls(reader, writer)
        welcome = await client.read_frame()
        assert orjson.loads(welcome[1])["eventType"] == "connection"
        return client

    async def read_frame(self, timeout: float = 10.0) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return head[0] & 0x0F, await asyncio.wait_for(self.reader.readexactly(length), timeout)

    async def read_all(self) -> tuple[list[dict], int | None]:
        """Every message until the server goes quiet (a ping barrier is not possible while stalled), and a close code."""
        messages: list[dict] = []
        while True:
            try:
                opcode, payload = await self.read_frame(timeout=1.0)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError):
                return messages, None
            if opcode == 8:
                return messages, int.from_bytes(payload[:2], "big")
            messages.append(orjson.loads(payload))

    def close(self) -> None:
        self.writer.close()


async def publish_until_dropping(server, publisher: Client, priorities: list[str], size: int, limit: int) -> list[dict]:
    """Publish events cycling through priorities until the server has dropped some (bounded by ``limit``)."""
    acks = []
    payload = {"blob": "x" * size}
    for n in range(limit):
        acks.append(await publisher.publish("e", {**payload, "n": n}, priority=priorities[n % len(priorities)]))
        if sum(server.hub.metrics.drops[:3]) > 20 and n % len(priorities) == len(priorities) - 1:
            break
    return acks


async def test_slow_consumer_drops_low_first_and_is_told(server):
    """A stalled connection loses low-priority events first, keeps every high one, then hears what it missed."""
    stalled = await StalledClient.connect(server, "slow", "stuck")
    publisher = await Client.connect(server.ws_url, "slow", "pub")
    watcher = await Client.connect(server.ws_url, "slow", "fast")
    acks = await publish_until_dropping(server, publisher, ["low", "high", "low", "normal"], 2000, 3000)
    drops = server.hub.metrics.drops
    assert drops[0] > 0 and drops[2] == 0 and drops[3] == 0, drops
    # Everyone else got everything, promptly: the stalled connection delays no one.
    assert [e["offset"] for e in await watcher.drain()] == [a["offset"] for a in acks]
    messages, close_code = await stalled.read_all()
    assert close_code is None
    events = [m for m in messages if "eventType" in m]
    (missed,) = [m for m in messages if m.get("type") == "missed"]
    by_offset = {a["offset"]: n for n, a in enumerate(acks)}
    got = {e["offset"] for e in events}
    lost = set(by_offset) - got
    assert all(by_offset[o] % 4 != 1 for o in lost), "a high-priority event was dropped"
    assert missed["count"] == len(lost) == sum(drops[:3])
    window = missed["channels"]["tenant:slow"]
    assert window["count"] == len(lost) and window["first"] == min(lost) and window["last"] == max(lost)
    assert [e["offset"] for e in events] == sorted(got)
    stalled.close()
    await publisher.close(), await watcher.close()


async def test_critical_overflow_closes_with_4008(server):
    """When only critical events fill the backlog, the connection is closed with 4008, and others carry on."""
    stalled = await StalledClient.connect(server, "crit", "stuck")
    publisher = await Client.connect(server.ws_url, "crit", "pub")
    for n in range(3000):
        await publisher.publish("e", {"blob": "x" * 2000, "n": n}, priority="critical")
        if server.hub.metrics.drops[3]:
            break
    assert server.hub.metrics.drops[3] > 0
    messages, close_code = await stalled.read_all()
    while close_code is None:  # the close frame waits behind what the kernel already holds
        more, close_code = await stalled.read_all()
        if not more and close_code is None:
            break
    assert close_code == 4008
    assert (await publisher.request({"type": "ping"}))["type"] == "pong"
    stalled.close()
    await publisher.close()


@pytest.mark.parametrize("settings", [Settings(
    host="127.0.0.1", port=0, drain_timeout=2.0, socket_send_buffer=4 * KIB, write_buffer_high=16 * KIB,
    limits=Limits(max_send_buffer=256 * KIB, max_send_buffer_total=320 * KIB),
)])
async def test_worker_budget_sheds_the_largest_then_closes(server):
    """Past the worker's send budget, the connection holding the most is shed first; when what it
    holds cannot be shed (critical events), it is closed with 4008; healthy clients lose nothing."""
    stalled = [await StalledClient.connect(server, "budget", f"stuck{n}") for n in range(3)]
    publisher = await Client.connect(server.ws_url, "budget", "pub")
    watcher = await Client.connect(server.ws_url, "budget", "fast")
    acks = []
    for n in range(400):  # normal events, 2 KB: every stalled backlog grows alike until the budget sheds
        acks.append(await publisher.publish("e", {"blob": "x" * 2000, "n": n}))
        if server.hub.metrics.drops[1] > 30:
            break
    assert server.hub.metrics.drops[1] > 30 and server.hub.metrics.drops[3] == 0
    # the budget, not the per-connection limit, did it: no backlog reached 256 KiB
    assert server.budget.used <= server.budget.limit
    assert all(c.backlog is None or c.backlog.nbytes < 256 * KIB for c in server.connections)
    for n in range(400):  # now critical events, which cannot be shed: the largest holders are closed
        acks.append(await publisher.publish("e", {"blob": "x" * 2000, "n": n}, priority="critical"))
        if server.hub.metrics.drops[3]:
            break
    assert server.hub.metrics.drops[3] > 0
    assert server.budget.used <= server.budget.limit
    assert [e["offset"] for e in await watcher.drain()] == [a["offset"] for a in acks]


    async def close_code(client: StalledClient) -> int | None:
        # read concurrently: a closed connection's socket is dropped drain_timeout after its close
        messages, code = await client.read_all()
        while code is None and messages:
            messages, code = await client.read_all()
        client.close()
        return code

    codes = await asyncio.gather(*(close_code(client) for client in stalled))
    assert 4008 in codes and None in codes, codes  # the largest went, the rest were kept
    assert (await publisher.request({"type": "ping"}))["type"] == "pong"
    await publisher.close(), await watcher.close()
