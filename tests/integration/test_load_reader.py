"""The load generator's lean subscriber (benchmarks/load.py) counts what the benchmarks report:
every event once, and every lost, duplicated or misrouted one, however reads cut the frames."""

from __future__ import annotations

import asyncio
import os
import time

import orjson
import pytest

from benchmarks import load
from benchmarks.load import Stats, Subscriber, open_subscribers
from benchmarks.reader import Reader, compiled_reader
from fastws.core import frame_text
from tests.helpers import Client


READERS = {"python": Reader}
try:
    READERS["cython"] = compiled_reader()
except Exception:  # pragma: no cover - no Cython or C compiler: the Python reader alone
    if os.environ.get("FASTWS_REQUIRE_EXTENSIONS") == "1":
        raise


@pytest.fixture(autouse=True, params=list(READERS))
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """Each reader implementation in turn, as the load generator's subscribers use it."""
    monkeypatch.setattr(load, "Reader", READERS[request.param])
    return READERS[request.param]


def event(n: int, event_type: str = "tick", tenant: str = "t1") -> bytes:
    """An event frame of the load's publishes, in the protocol's field order."""
    return frame_text(orjson.dumps({
        "id": "7d24af3f-8bbf-41a6-909e-0087dcae52dc", "eventType": event_type,
        "data": {"n": n, "t": time.perf_counter()}, "timestamp": "2026-11-29T08:33:41.851Z", "source": "client",
        "priority": "normal", "tenantId": tenant, "userId": "pub", "channel": f"tenant:{tenant}", "offset": n + 1,
    }))


class Wire:
    """Stands for the socket: what the subscriber writes back."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        pass


def opened(subscriber: Subscriber) -> Wire:
    wire = Wire()
    subscriber.connection_made(wire)  # type: ignore[arg-type]
    subscriber.opened.set_result(None)
    return wire


def feed(subscriber: Subscriber, data: bytes, cut: int) -> None:
    subscriber.data_received(data[:cut])
    subscriber.data_received(data[cut:])


async def test_every_event_counted_once_wherever_two_reads_cut_the_frames():
    welcome = frame_text(b'{"id":"x","eventType":"connection","data":{"worker":0},"tenantId":"t1"}')
    stream = welcome + b"".join(event(n) for n in range(5)) + frame_text(b'{"type":"ack","ref":1}') + event(5)
    for cut in range(len(stream) + 1):
        stats = Stats()
        subscriber = Subscriber(stats)
        opened(subscriber)
        feed(subscriber, stream, cut)
        stats.tally([subscriber])
        assert (stats.delivered, stats.lost, stats.duplicated, stats.misrouted) == (6, 0, 0, 0), cut
        assert len(stats.latencies) == 6 and all(0 <= latency < 60 for latency in stats.latencies)


async def test_a_payload_padded_after_the_stamp_is_counted():
    """benchmarks.slow pads its events with a blob after "t": they count like any other."""
    stats = Stats()
    subscriber = Subscriber(stats)
    opened(subscriber)
    padded = [frame_text(b'{"id":"x","eventType":"tick","data":{"n":%d,"t":%.6f,"blob":"xxxx"},"tenantId":"t1"}'
                         % (n, time.perf_counter())) for n in range(3)]
    subscriber.data_received(b"".join(padded))
    stats.tally([subscriber])
    assert (stats.delivered, stats.lost, stats.duplicated, stats.misrouted) == (3, 0, 0, 0)


async def test_gaps_and_repeats_counted_as_lost_and_duplicated():
    stats = Stats()
    subscriber = Subscriber(stats)
    opened(subscriber)
    subscriber.data_received(event(0) + event(1) + event(4) + event(4) + event(3) + event(5))
    stats.tally([subscriber])
    assert (stats.delivered, stats.lost, stats.duplicated) == (6, 2, 2)
    subscriber.data_received(event(9))
    assert stats.tally([subscriber]).lost == 5


async def test_a_filtered_subscriber_expects_its_type_every_step_events():
    stats = Stats()
    subscriber = Subscriber(stats, b"b", step=4)
    opened(subscriber)
    subscriber.data_received(event(1, "b") + event(5, "b") + event(9, "c") + event(17, "b"))
    stats.tally([subscriber])
    assert (stats.delivered, stats.lost, stats.duplicated, stats.misrouted) == (4, 1, 0, 1)


async def test_another_tenants_event_counts_as_misrouted():
    stats = Stats()
    subscriber = Subscriber(stats, expected_tenant=b"t1")
    opened(subscriber)
    subscriber.data_received(event(0, tenant="t1") + event(1, tenant="t2") + event(2, tenant="t1"))
    stats.tally([subscriber])
    assert (stats.delivered, stats.misrouted) == (3, 1)


async def test_a_ping_between_events_is_answered_with_a_masked_pong():
    stats = Stats()
    subscriber = Subscriber(stats)
    wire = opened(subscriber)
    ping = b"\x89\x04beat"
    stream = event(0) + ping + event(1)
    feed(subscriber, stream, len(event(0)) + 3)  # the read cuts the ping
    assert wire.written == [b"\x8a\x84\x00\x00\x00\x00beat"]
    stats.tally([subscriber])
    assert (stats.delivered, stats.lost, stats.misrouted) == (2, 0, 0)


async def test_a_ping_over_125_bytes_is_not_answered_and_counts_as_misrouted():
    stats = Stats()
    subscriber = Subscriber(stats)
    wire = opened(subscriber)
    subscriber.data_received(b"\x89\x7e\x00\x7e" + b"x" * 126 + event(0))
    assert wire.written == []
    stats.tally([subscriber])
    assert (stats.delivered, stats.misrouted) == (1, 1)


async def test_a_binary_frame_counts_as_misrouted():
    stats = Stats()
    subscriber = Subscriber(stats)
    opened(subscriber)
    subscriber.data_received(b"\x82\x01x" + event(0))
    stats.tally([subscriber])
    assert (stats.delivered, stats.misrouted) == (1, 1)


async def test_against_a_real_server(server):
    """Lean subscribers through a real handshake; one filtered; events from a real publisher."""
    subscribers = 3
    stats = Stats()
    everyone = await open_subscribers(server.ws_url, [Subscriber(stats) for _ in range(subscribers)], "lean")
    filtered = await open_subscribers(server.ws_url, [Subscriber(stats, b"odd", step=2)], "lean", "&eventTypes=odd")
    publisher = await Client.connect(server.ws_url, "lean", "pub")
    for n in range(10):
        await publisher.publish("odd" if n % 2 else "even", {"n": n, "t": time.perf_counter()})
    expected = 10 * subscribers + 5
    deadline = time.monotonic() + 10
    while stats.delivered < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stats.tally(everyone + filtered)
    assert (stats.delivered, stats.lost, stats.duplicated, stats.misrouted) == (expected, 0, 0, 0)
    assert filtered[0].count == 5 and filtered[0].reader.last == 9
    for subscriber in everyone + filtered:
        subscriber.close()
    await publisher.close()


async def test_a_refused_handshake_raises(server):
    with pytest.raises(ConnectionError, match="handshake refused"):
        await open_subscribers(server.ws_url.replace("/ws", "/nowhere"), [Subscriber(Stats())], "lean")

