"""Micro benchmarks of whole request paths, without sockets (pytest-benchmark; run by python -m benchmarks.core).

- ws_publish_local / ws_publish_shared: one publish command through
  ``Session.receive`` (decode, limits, numbering, encoding, history, the ack,
  the match and the hand-off to 10 subscribers), with the one-process history
  and with the shared-log broker of a supervised worker;
- rest_publish: one ``POST /api/websocket`` request through the HTTP front
  (``HttpProtocol.data_received`` to the response bytes) with a transport that
  only records what is written.

What they leave out (the kernel's reads and writes, picows' frame parsing,
the event loop) is what the end-to-end figures of ``benchmarks.load`` add.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

import pytest

from fastws.broker import SharedBroker, SharedSegment
from fastws.config import Settings
from fastws.hub import Hub

PUBLISH = b'{"type":"publish","event":"tick","ref":1,"payload":{"n":1,"t":12345.678901234}}'
SUBSCRIBERS = 10


class Sink:
    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames = 0

    def send(self, frame: bytes) -> None:
        self.frames += 1

    def send_event(self, frame: bytes, priority: int, channel: str, offset: int) -> None:
        self.frames += 1

    def close(self, close_code: int, reason: str) -> None:  # pragma: no cover - never closed here
        raise AssertionError("closed")


def _hub(shared: bool, tmp_path) -> Hub:
    settings = Settings()
    limits = replace(settings.limits, publish_rate=10**9, publish_burst=10**9,
                     tenant_publish_rate=10**9, tenant_publish_burst=10**9)
    hub = Hub(limits)
    if shared:
        path = str(tmp_path / "segment")
        segment = SharedSegment.create(path, limits)
        os.unlink(path)
        broker = SharedBroker(segment, 0, limits, lambda *event: None, lambda body: 0, lambda: None)
        broker.start()
        hub.broker = broker
    return hub


@pytest.mark.parametrize("shared", [False, True], ids=["local", "shared"])
def test_ws_publish(benchmark, shared, tmp_path):
    hub = _hub(shared, tmp_path)
    subscribers = [Sink() for _ in range(SUBSCRIBERS)]
    for number, sink in enumerate(subscribers):
        hub.connect(sink, "t1", f"u{number}")
    publisher_sink = Sink()
    publisher = hub.connect(publisher_sink, "t1", "pub")
    before = [sink.frames for sink in subscribers], publisher_sink.frames, hub.metrics.events_published
    benchmark.pedantic(publisher.receive, args=(PUBLISH,), rounds=2_000, iterations=10, warmup_rounds=10)
    published = hub.metrics.events_published - before[2]
    benchmark.extra_info["correct"] = (
        published >= 20_000
        and all(sink.frames - start == published for sink, start in zip(subscribers, before[0]))
        and publisher_sink.frames - before[1] == 2 * published  # its ack and its own copy
    )
    benchmark.extra_info["subscribers"] = SUBSCRIBERS


class RecordingTransport:
    def __init__(self) -> None:
        self.responses = 0
        self.ok = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.responses += 1
        self.ok += data.startswith(b"HTTP/1.1 200 ")

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:  # at the server's shutdown only: every request is keep-alive
        self.closed = True

    def is_closing(self) -> bool:
        return False


def test_rest_publish(benchmark):
    from fastws.server import Server
    from fastws.server.http import HttpProtocol

    body = b'{"event":"tick","payload":{"n":1234},"source":"bench"}'
    request = (b"POST /api/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"X-Tenant-ID: http\r\nX-User-ID: pub\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    loop = asyncio.new_event_loop()
    server = Server(Settings(host="127.0.0.1", port=0))
    try:
        loop.run_until_complete(server.start())
        protocol = HttpProtocol(server)
        transport = RecordingTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        benchmark.pedantic(protocol.data_received, args=(request,), rounds=2_000, iterations=10, warmup_rounds=10)
        benchmark.extra_info["correct"] = transport.responses == transport.ok >= 20_000 and not transport.closed
    finally:
        loop.run_until_complete(server.close())
        loop.close()
