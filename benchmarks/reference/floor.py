"""The floor: a raw fan-out writer on picows + uvloop, the cost no server on that stack goes below.

    python -m benchmarks.reference.floor [--port 0] [--host 127.0.0.1]

Accepts ``/ws?tenant_id=T&user_id=U`` (no validation beyond both being
present), sends a welcome event of fastws's shape, and on a
``{"type":"publish",...}`` text message builds one event (fastws's fields,
``offset`` counting up per tenant) and its frame once, then queues those same
bytes to every connection of the tenant, the publisher's ack
(``{"type":"ack","ref","id","offset"}``) before its own copy. Each
connection's queued frames are written once per loop iteration, in one
``transport.write``, as fastws does.

Deliberately left out: filters, channels other than the tenant, history,
validation, errors, backpressure, REST. Any other message is ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs

import orjson
import uvloop
from picows import (WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, WSUpgradeResponse,
                    WSUpgradeResponseWithListener, ws_create_server)

from fastws.core import frame_text

LIMITS = {"maxMessageSize": 65536, "maxSubscriptions": 1, "maxSendBuffer": None}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


def new_id() -> str:
    return str(uuid.UUID(bytes=os.urandom(16), version=4))


class Floor:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tenants: dict[str, set[Connection]] = {}
        self.offsets: dict[str, int] = {}
        self.dirty: list[Connection] = []  # connections with pending frames, flushed once per iteration
        self.epoch = os.urandom(8).hex()

    def queue(self, connection: "Connection", frame: bytes) -> None:
        pending = connection.pending
        if pending is None:
            connection.pending = frame  # one frame waits as itself, as in fastws: no list to collect
            self.dirty.append(connection)
            if len(self.dirty) == 1:
                self.loop.call_soon(self.flush)
        elif type(pending) is bytes:
            connection.pending = [pending, frame]
        else:
            pending.append(frame)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for connection in dirty:
            pending, connection.pending = connection.pending, None
            if pending is not None and connection.write is not None:
                connection.write(pending if type(pending) is bytes else b"".join(pending))

    def publish(self, publisher: "Connection", message: dict) -> None:
        tenant = publisher.tenant
        offset = self.offsets[tenant] = self.offsets.get(tenant, 0) + 1
        event_id = new_id()
        payload = message.get("payload")
        frame = frame_text(orjson.dumps({
            "id": event_id, "eventType": message.get("event"), "data": {} if payload is None else payload,
            "timestamp": now(), "source": message.get("source") or "client",
            "priority": message.get("priority") or "normal", "tenantId": tenant, "userId": publisher.user,
            "channel": publisher.channel, "offset": offset}))
        ref = message.get("ref")
        if ref is not None:
            self.queue(publisher, frame_text(orjson.dumps({"type": "ack", "ref": ref, "id": event_id, "offset": offset})))
        dirty = self.dirty
        was_idle = not dirty
        for connection in self.tenants[tenant]:
            pending = connection.pending
            if pending is None:
                connection.pending = frame
                dirty.append(connection)
            elif type(pending) is bytes:
                connection.pending = [pending, frame]
            else:
                pending.append(frame)
        if was_idle and dirty:
            self.loop.call_soon(self.flush)


class Connection(WSListener):
    def __init__(self, floor: Floor, tenant: str, user: str) -> None:
        self.floor, self.tenant, self.user = floor, tenant, user
        self.channel = f"tenant:{tenant}"
        self.pending: bytes | list[bytes] | None = None  # one frame, or several in order
        self.write = None
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.write = transport.underlying_transport.write
        floor = self.floor
        floor.tenants.setdefault(self.tenant, set()).add(self)
        floor.queue(self, frame_text(orjson.dumps({
            "id": new_id(), "eventType": "connection", "data": {
                "connectionId": new_id(), "worker": 0, "channels": [self.channel], "limits": LIMITS,
                "epoch": floor.epoch, "offset": floor.offsets.get(self.tenant, 0)},
            "timestamp": now(), "source": "system", "priority": "normal", "tenantId": self.tenant,
            "userId": self.user, "channel": self.channel})))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.write = None
        self.pending = None
        members = self.floor.tenants.get(self.tenant)
        if members is not None:
            members.discard(self)
            if not members:
                del self.floor.tenants[self.tenant]

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT:
            try:
                message = orjson.loads(frame.get_payload_as_bytes())
            except orjson.JSONDecodeError:
                return
            if type(message) is dict and message.get("type") == "publish":
                self.floor.publish(self, message)
        elif msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


def listener_factory(floor: Floor, request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener | None:
    path, _, query = request.path.decode("latin-1").partition("?")  # picows gives the target as bytes
    if path != "/ws":
        return None  # 404
    params = parse_qs(query)
    tenant, user = params.get("tenant_id", [""])[-1], params.get("user_id", [""])[-1]
    if not tenant or not user:
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_error_response(400, b'{"success":false,"error":{"code":"invalid_tenant_id"}}'),
            None)
    return Connection(floor, tenant, user)


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    floor = Floor(loop)
    picows_log = logging.getLogger("floor.picows")
    picows_log.setLevel(logging.WARNING)
    server = await ws_create_server(
        lambda request: listener_factory(floor, request), args.host, args.port,
        logger_name=logging.LoggerAdapter(picows_log, {}),  # one logger, not one per connection
        use_aiofastnet=False,  # the event loop's own transport (uvloop), as fastws uses
        max_frame_size=65536, read_buffer_init_size=2048, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"WebSocket ws://{host}:{port}/ws?tenant_id=..&user_id=..", file=sys.stderr, flush=True)
    await stop
    server.close()
    for members in list(floor.tenants.values()):
        for connection in list(members):
            if connection.transport is not None:
                connection.transport.send_close(WSCloseCode.GOING_AWAY)
                connection.transport.disconnect()
    try:
        await asyncio.wait_for(server.wait_closed(), 5)  # unfinished handshakes: picows' own timeout is 5 s
    except TimeoutError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
