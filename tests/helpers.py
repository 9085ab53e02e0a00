"""Test clients: the `websockets` library (independent) and picows (the stack's own)."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
from typing import Any

import orjson
import websockets
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

TIMEOUT = 10.0
_refs = itertools.count(1)


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM a server started with Popen and wait for it; killed if it outlives ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a raw stream connection, whatever state the peer left it in."""
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


class Client:
    """A `websockets` client that speaks the fastws protocol."""

    def __init__(self, ws: websockets.ClientConnection, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        #: messages read while waiting for a reply, handed out by recv() first
        self.backlog: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, url: str, tenant_id: str = "t1", user_id: str = "u1", **query: str) -> "Client":
        params = "&".join(f"{k}={v}" for k, v in {"tenant_id": tenant_id, "user_id": user_id, **query}.items())
        # max_queue=None: a test client that leaves events unread must still see the close frame behind them
        ws = await websockets.connect(f"{url}?{params}", max_size=None, max_queue=None, open_timeout=TIMEOUT)
        welcome = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert welcome["eventType"] == "connection", welcome
        return cls(ws, welcome)

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        if isinstance(message, dict):
            message = orjson.dumps(message).decode()
        await self.ws.send(message)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        return orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a command with a fresh ref and return its reply; what comes before it stays for recv()."""
        ref = next(_refs)
        await self.send({**message, "ref": ref})
        skipped = []
        while True:
            reply = orjson.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
            if reply.get("ref") == ref and reply.get("type") in ("ack", "error", "pong"):
                self.backlog += skipped
                return reply
            skipped.append(reply)

    async def publish(self, event: str, payload: Any = None, **fields: Any) -> dict[str, Any]:
        message = {"type": "publish", "event": event, **fields}
        if payload is not None:
            message["payload"] = payload
        return await self.request(message)

    async def drain(self) -> list[dict[str, Any]]:
        """Everything this client was sent before now: a ping/pong barrier, no sleeping."""
        ref = f"barrier-{next(_refs)}"
        await self.send({"type": "ping", "ref": ref})
        received = self.backlog
        self.backlog = []
        while True:
            message = orjson.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
            if message.get("type") == "pong" and message.get("ref") == ref:
                return received
            received.append(message)

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class PicowsClient(WSListener):
    """A picows client collecting every text message it receives."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.transport: WSTransport | None = None
        self.waiter: asyncio.Future | None = None
        self.expected = 0
        self.close_code: int | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.messages.append(orjson.loads(frame.get_payload_as_bytes()))
            if self.waiter is not None and len(self.messages) >= self.expected and not self.waiter.done():
                self.waiter.set_result(None)
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())
            transport.disconnect()

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        if len(self.messages) < count:
            self.expected = count
            self.waiter = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self.waiter, timeout)
        return self.messages

    def send_json(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, orjson.dumps(message))

    @classmethod
    async def connect(cls, url: str, tenant_id: str = "t1", user_id: str = "u1") -> "PicowsClient":
        _, client = await ws_connect(cls, f"{url}?tenant_id={tenant_id}&user_id={user_id}")
        return client  # type: ignore[return-value]


def event_ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in messages if "eventType" in m and m["eventType"] != "connection"]
