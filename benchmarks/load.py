"""End-to-end load generator: scenarios against fastws, the reference server, or the floor.

    python -m benchmarks.load [--scenario fanout|latency|latency-100|filtered|tenants|tenants-lockstep|http|idle|all]
                              [--target fastws|reference|floor] [--workers N] [--compare]

Each scenario starts the server fresh (fastws: ``fastws serve --workers N``;
the reference on the `websockets` library and the floor raw writer from
benchmarks/reference/), runs a load from this process (pinned to the last
CPU when the server has one worker), and reports per scenario: events
delivered per second and per server CPU-second (CPU summed over every server
process), publish acks per second, latency p50/p99/max, server peak RSS, the
load generator's own CPU, and correctness (lost, duplicated, misrouted: all
expected 0; every publish acked). ``--compare`` runs fastws, the reference and the floor
alternately ``--rounds`` times per scenario and reports median ratios.

The receive path is lean: subscribers are bare asyncio protocols, and each read
goes whole to a frame reader (benchmarks/reader.py, compiled from
benchmarks/_reader.pyx when Cython and a C compiler are there) that walks the
frames and reads each event's type, ``"n":`` sequence and ``"t":`` publish
time in place, building no Python object per event but its latency.
``load_reader`` in the output says which reader ran.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import orjson
import psutil
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from benchmarks.reader import implementation, load_reader

SERVER_PYTHON = [sys.executable]
#: where the server under test starts (--server-dir): ``-m fastws`` imports that checkout's package
SERVER_DIR: list[str | None] = [None]
URL_LINE = re.compile(rb"WebSocket (ws://\S+?)\?")
REST_LINE = re.compile(rb"REST (http://\S+?)/api/websocket")
TARGETS = {
    # SERVER_PYTHON (--server-python) runs fastws: another checkout's interpreter (benchmarks.commits)
    "fastws": lambda workers: [SERVER_PYTHON[0], "-m", "fastws", "serve", "--port", "0", "--workers", str(workers)],
    "reference": lambda workers: [sys.executable, "-m", "benchmarks.reference.websockets_server", "--port", "0"],
    "floor": lambda workers: [sys.executable, "-m", "benchmarks.reference.floor", "--port", "0"],
}


# -- the server under test --------------------------------------------------------------


class Target:
    def __init__(self, name: str, workers: int, cpus: list[int] | None = None) -> None:
        self.name = name
        self.workers = workers
        #: the CPUs the server is pinned to (taskset: workers inherit it); None: not pinned
        self.cpus = cpus
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.rest = ""
        self.tree: list[psutil.Process] = []

    def __enter__(self) -> "Target":
        env = {**os.environ, "FASTWS_LOG_LEVEL": "info"}
        command = TARGETS[self.name](self.workers)
        if self.cpus:
            # taskset execs the server, so the pid stays the server's
            command = ["taskset", "-c", ",".join(map(str, self.cpus)), *command]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, env=env,
                                        cwd=SERVER_DIR[0] if self.name == "fastws" else None)
        deadline = time.monotonic() + 30
        # the reference serves REST on a port of its own, logged after the WebSocket line
        while (not self.url or (self.name == "reference" and not self.rest)) and time.monotonic() < deadline:
            line = self.process.stderr.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"{self.name} exited")
            if match := URL_LINE.search(line):
                self.url = match.group(1).decode()
            if match := REST_LINE.search(line):
                self.rest = match.group(1).decode()
        if not self.rest:
            self.rest = self.url.replace("ws://", "http://").removesuffix("/ws")
        import threading

        threading.Thread(target=self._drain_stderr, daemon=True).start()
        root = psutil.Process(self.process.pid)
        self.tree = [root, *root.children(recursive=True)]
        return self

    def _drain_stderr(self) -> None:
        for _ in self.process.stderr:  # type: ignore[union-attr]
            pass

    def cpu(self) -> float:
        total = 0.0
        for process in self.tree:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss(self) -> int:
        total = 0
        for process in self.tree:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def peak_rss(self) -> int:
        """The server processes' peak RSS so far (VmHWM), summed."""
        total = 0
        for process in self.tree:
            try:
                with open(f"/proc/{process.pid}/status", "rb") as status:
                    for line in status:
                        if line.startswith(b"VmHWM:"):
                            total += int(line.split()[1]) * 1024
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            for process in self.tree:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass


# -- lean clients -------------------------------------------------------------------------


GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_LATENCIES = 2_000_000
#: the frame reader (benchmarks/reader.py): compiled when it builds here
Reader = load_reader()


class Subscriber(asyncio.Protocol):
    """A subscriber connection on a bare asyncio protocol: the WebSocket handshake, then each
    read handed whole to the frame reader (benchmarks/reader.py), which counts and checks the
    events without building Python objects for them. Pings are answered; a close is echoed.

    ``expected_type`` and ``expected_tenant``, when set, are what every event must carry
    (anything else counts as misrouted); ``step`` is the distance between consecutive
    sequence numbers this subscriber should see (1, or the number of filter groups).
    """

    __slots__ = ("stats", "reader", "transport", "opened", "key", "_head")

    def __init__(self, stats: "Stats", expected_type: bytes | None = None, step: int = 1,
                 expected_tenant: bytes | None = None) -> None:
        self.stats = stats
        self.reader = Reader(expected_type, step, expected_tenant, stats.latencies, MAX_LATENCIES)
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self.key = base64.b64encode(os.urandom(16))
        self._head = b""  # the handshake response, until its end

    @property
    def count(self) -> int:
        return self.reader.delivered

    def handshake(self, host: str, target: str) -> bytes:
        return (b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (target.encode(), host.encode(), self.key))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc}"))

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            data = self._handshake_response(data)
            if not data:
                return
        reader = self.reader
        self.stats.delivered += reader.feed(data, time.perf_counter())
        if reader.controls:
            for first, payload in reader.controls:
                self._control(first, payload)
            reader.controls.clear()

    def _handshake_response(self, data: bytes) -> bytes:
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > 16384:
                self.opened.set_exception(ConnectionError("handshake response too long"))
                self.transport.abort()  # type: ignore[union-attr]
            self._head = head
            return b""
        self._head = b""
        accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest())
        lines = head[:end].split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        if not lines[0].startswith(b"HTTP/1.1 101") or headers.get(b"sec-websocket-accept") != accept:
            self.opened.set_exception(ConnectionError(f"handshake refused: {lines[0]!r}"))
            self.transport.abort()  # type: ignore[union-attr]
            return b""
        self.opened.set_result(None)
        return head[end + 4:]

    def _control(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if opcode in (0x8, 0x9, 0xA) and len(payload) > 125:  # not a control frame RFC 6455 allows
            self.reader.misrouted += 1
        elif opcode == 0x9:  # ping: a masked pong (a zero mask leaves the payload as it is)
            self.transport.write(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)  # type: ignore[union-attr]
        elif opcode == 0x8:  # close: answer it and let the server end the connection
            self.transport.write(bytes((0x88, 0x80 | len(payload))) + b"\0\0\0\0" + payload)  # type: ignore[union-attr]
        elif opcode != 0xA:  # a fragment or a binary frame: no server here sends one
            self.reader.misrouted += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Publisher(WSListener):
    def __init__(self) -> None:
        self.acks = 0
        self.transport: WSTransport | None = None
        self.waiter: asyncio.Future | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and frame.get_payload_as_bytes().startswith(b'{"type":"ack"'):
            self.acks += 1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)

    def publish(self, n: int, event: str = "tick", channel: str | None = None) -> None:
        extra = b',"channel":"%s"' % channel.encode() if channel else b""
        self.transport.send(  # type: ignore[union-attr]
            WSMsgType.TEXT,
            b'{"type":"publish","event":"%s","ref":%d%s,"payload":{"n":%d,"t":%.9f}}'
            % (event.encode(), n, extra, n, time.perf_counter()),
        )


@dataclass
class Stats:
    """What a scenario's subscribers received: ``delivered`` as it happens, the errors once
    ``tally`` has summed them over the subscribers' readers."""

    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    misrouted: int = 0
    latencies: list[float] = field(default_factory=list)

    def tally(self, subscribers: "list[Subscriber]") -> "Stats":
        self.lost = sum(s.reader.lost for s in subscribers)
        self.duplicated = sum(s.reader.duplicated for s in subscribers)
        self.misrouted = sum(s.reader.misrouted for s in subscribers)
        return self


async def open_many(url: str, count: int, tenant: str | list[str], factory, query: str = "") -> list:
    listeners = []
    for first in range(0, count, 100):
        pairs = await asyncio.gather(*(
            ws_connect(factory, f"{url}?tenant_id={tenant[i] if isinstance(tenant, list) else tenant}&user_id=s{i}{query}")
            for i in range(first, min(first + 100, count))
        ))
        listeners += [listener for _, listener in pairs]
    return listeners


async def open_subscribers(url: str, subscribers: list[Subscriber], tenant: str | list[str], query: str = "",
                           number_from: int = 0) -> list[Subscriber]:
    """Connect lean subscribers, 100 at a time, each through the WebSocket handshake (user ids
    ``s{number_from}``, ``s{number_from + 1}``, ...)."""
    loop = asyncio.get_running_loop()
    netloc, _, path = url.removeprefix("ws://").partition("/")
    host, _, port = netloc.rpartition(":")

    async def one(index: int, subscriber: Subscriber) -> None:
        await loop.create_connection(lambda: subscriber, host.strip("[]"), int(port))
        name = tenant[index] if isinstance(tenant, list) else tenant
        subscriber.transport.write(subscriber.handshake(netloc, f"/{path}?tenant_id={name}&user_id=s{number_from + index}{query}"))  # type: ignore[union-attr]
        await asyncio.wait_for(subscriber.opened, 30)

    for first in range(0, len(subscribers), 100):
        await asyncio.gather(*(one(i, subscribers[i]) for i in range(first, min(first + 100, len(subscribers)))))
    return subscribers


async def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of sorted ``values``."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


async def publish_windowed(publisher: Publisher, events: int, window: int, event_of=None) -> None:
    """Publish events 0..events-1 as fast as ``window`` un-acked publishes allow (the fanout rule)."""
    n = 0
    while n < events:
        while n < events and n - publisher.acks < window:
            publisher.publish(n, event_of(n) if event_of is not None else "tick")
            n += 1
        publisher.waiter = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(publisher.waiter, 30)


# -- scenarios ----------------------------------------------------------------------------


async def fanout(target: Target, args: argparse.Namespace) -> dict:
    """1,000 subscribers, one publisher as fast as a window of un-acked publishes allows."""
    stats = Stats()
    subscribers = await open_subscribers(target.url, [Subscriber(stats) for _ in range(args.connections)], "fan")
    _, publisher = await ws_connect(Publisher, f"{target.url}?tenant_id=fan&user_id=pub")
    events = args.events
    cpu0, load0, started = target.cpu(), time.process_time(), time.perf_counter()
    await publish_windowed(publisher, events, args.window)
    expected = events * args.connections
    await wait_until(lambda: stats.delivered >= expected and publisher.acks >= events, 60)
    return summarize(target, stats, expected, events, started, cpu0, load0, subscribers, [publisher])


async def latency(target: Target, args: argparse.Namespace) -> dict:
    """Publishes at a fixed rate (below saturation) to N subscribers: delivery latency."""
    return await _latency(target, args, args.connections)


async def latency_100(target: Target, args: argparse.Namespace) -> dict:
    """The latency scenario with 100 subscribers: what is left when the load reads few sockets."""
    return await _latency(target, args, 100)


async def _latency(target: Target, args: argparse.Namespace, connections: int) -> dict:
    stats = Stats()
    subscribers = await open_subscribers(target.url, [Subscriber(stats) for _ in range(connections)], "lat")
    _, publisher = await ws_connect(Publisher, f"{target.url}?tenant_id=lat&user_id=pub")
    events = int(args.rate * args.seconds)
    cpu0, load0, started = target.cpu(), time.process_time(), time.perf_counter()
    for n in range(events):
        await asyncio.sleep(max(0.0, started + n / args.rate - time.perf_counter()))
        publisher.publish(n)
    expected = events * connections
    await wait_until(lambda: stats.delivered >= expected and publisher.acks >= events, 60)
    return summarize(target, stats, expected, events, started, cpu0, load0, subscribers, [publisher])


async def filtered(target: Target, args: argparse.Namespace) -> dict:
    """Subscribers filter on event type: each receives exactly its type's events. 8,000 events
    by default (--events x 4): each reaches a quarter of the subscribers, so 2,000,000
    deliveries, as many as in fanout."""
    stats = Stats()
    kinds = ["a", "b", "c", "d"]
    groups = []
    for kind in kinds:
        group = [Subscriber(stats, kind.encode(), step=len(kinds)) for _ in range(args.connections // len(kinds))]
        groups.append(await open_subscribers(target.url, group, "flt", f"&eventTypes={kind}"))
    _, publisher = await ws_connect(Publisher, f"{target.url}?tenant_id=flt&user_id=pub")
    events = args.events * len(kinds)
    cpu0, load0, started = target.cpu(), time.process_time(), time.perf_counter()
    await publish_windowed(publisher, events, args.window, lambda n: kinds[n % len(kinds)])
    expected = events // len(kinds) * (args.connections // len(kinds)) * len(kinds)
    await wait_until(lambda: stats.delivered >= expected and publisher.acks >= events, 60)
    return summarize(target, stats, expected, events, started, cpu0, load0, [s for g in groups for s in g],
                     [publisher])


async def tenants(target: Target, args: argparse.Namespace) -> dict:
    """100 tenants x 10 connections; each tenant's publisher, as fast as its window of un-acked
    publishes allows (the fanout rule, per tenant), reaches only its own tenant. 1,000 events per
    tenant by default (--events / 2): with 200, fastws's run took half a CPU-second, short enough
    for start-up costs and the CPU clock's 10 ms tick to move the figure."""
    return await _tenants(target, args, args.window, max(1, args.events // 2))


async def tenants_lockstep(target: Target, args: argparse.Namespace) -> dict:
    """100 tenants x 10 connections, one event per tenant per round, each round waiting for every
    ack: no connection ever has two events in one loop iteration, so every delivery is a write.
    200 events per tenant by default (--events / 10)."""
    return await _tenants(target, args, 1, max(1, args.events // 10))


async def _tenants(target: Target, args: argparse.Namespace, window: int, per_tenant: int) -> dict:
    stats = Stats()
    names = [f"t{i}" for i in range(100)]
    subscribers = await open_subscribers(target.url, [Subscriber(stats, expected_tenant=names[i // 10].encode()) for i in range(1000)],
                                         [names[i // 10] for i in range(1000)])
    publishers = [p for _, p in await asyncio.gather(*(ws_connect(Publisher, f"{target.url}?tenant_id={t}&user_id=pub") for t in names))]
    cpu0, load0, started = target.cpu(), time.process_time(), time.perf_counter()
    sent = [0] * len(publishers)
    loop = asyncio.get_running_loop()

    def room() -> bool:
        return any(sent[i] < per_tenant and sent[i] - p.acks < window for i, p in enumerate(publishers))

    while any(p.acks < per_tenant for p in publishers):
        for index, publisher in enumerate(publishers):
            n = sent[index]
            while n < per_tenant and n - publisher.acks < window:
                publisher.publish(n)
                n += 1
            sent[index] = n
        # wait for the next ack of any publisher (checked again first: nothing runs in between)
        waiter = loop.create_future()
        for publisher in publishers:
            publisher.waiter = waiter
        if not room() and any(p.acks < per_tenant for p in publishers):
            await asyncio.wait_for(waiter, 30)
    expected = per_tenant * 1000
    await wait_until(lambda: stats.delivered >= expected, 60)
    return summarize(target, stats, expected, per_tenant * 100, started, cpu0, load0, subscribers, publishers)


def summarize(target: Target, stats: Stats, expected: int, published: int, started: float, cpu0: float,
              load0: float, subscribers: list, publishers: "list[Publisher]") -> dict:
    wall = time.perf_counter() - started
    acks = sum(publisher.acks for publisher in publishers)
    cpu = target.cpu() - cpu0
    load_cpu = time.process_time() - load0  # before the percentiles' sort
    stats.tally(subscribers)
    latencies = sorted(stats.latencies)
    lost = max(expected - stats.delivered, stats.lost)  # missing at the end, or gaps in a sequence
    return {
        "target": target.name,
        "delivered": stats.delivered,
        "expected": expected,
        "delivered_per_second": round(stats.delivered / wall),
        "delivered_per_server_cpu_second": round(stats.delivered / cpu) if cpu > 0 else None,
        "publishes_per_second": round(published / wall),
        "acks": acks,
        "acks_per_second": round(acks / wall),
        "latency_ms_p50": round(percentile(latencies, 0.50) * 1000, 3),
        "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 3),
        "latency_ms_max": round(max(latencies, default=0) * 1000, 3),
        "server_cpu_seconds": round(cpu, 3),
        "server_rss_mib": round(target.rss() / 2**20, 1),
        "server_peak_rss_mib": round(target.peak_rss() / 2**20, 1),
        "load_cpu_seconds": round(load_cpu, 3),
        "load_reader": implementation(Reader),
        "wall_seconds": round(wall, 3),
        "lost": lost,
        "duplicated": stats.duplicated,
        "misrouted": stats.misrouted,
        "correct": lost == 0 and stats.duplicated == 0 and stats.misrouted == 0 and acks == published,
    }


async def http(target: Target, args: argparse.Namespace) -> dict:
    """REST publishes over keep-alive connections: publishes per second and per server CPU-second."""
    from fastws.publisher import AsyncPublisher

    count = args.events * 10  # 20,000 requests by default: CPU is counted in 10 ms ticks
    publishers = [AsyncPublisher(target.rest) for _ in range(8)]
    cpu0, load0, started = target.cpu(), time.process_time(), time.perf_counter()

    async def run(publisher: AsyncPublisher, share: int) -> int:
        done = 0
        for n in range(share):
            result = await publisher.publish("http", "pub", "tick", {"n": n})
            done += bool(result.get("success"))
        return done

    done = sum(await asyncio.gather(*(run(p, count // len(publishers)) for p in publishers)))
    wall = time.perf_counter() - started
    cpu = target.cpu() - cpu0
    for publisher in publishers:
        await publisher.aclose()
    return {
        "target": target.name,
        "publishes": done,
        "publishes_per_second": round(done / wall),
        "publishes_per_server_cpu_second": round(done / cpu) if cpu > 0 else None,
        "server_cpu_seconds": round(cpu, 3),
        "load_cpu_seconds": round(time.process_time() - load0, 3),
        "correct": done == count // len(publishers) * len(publishers),
    }


class Idle(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport


async def _settle(target: Target) -> int:
    # fastws gives freed memory back from its once-a-second sweep (fastws.server.allocator)
    await asyncio.sleep(2.0)
    return target.rss()


async def idle(target: Target, args: argparse.Namespace) -> dict:
    """N idle connections: RSS per connection, connect rate, server CPU per connection, and memory
    after closing them, over two open/close cycles (the second must grow it by < 1 KiB per connection)."""
    count = args.idle
    before = await _settle(target)
    cycles = []
    for cycle in range(2):
        cpu0, started = target.cpu(), time.perf_counter()
        listeners = await open_many(target.url, count, "idle", Idle)
        connect_seconds = time.perf_counter() - started
        cpu = target.cpu() - cpu0
        opened = await _settle(target)
        for listener in listeners:
            listener.transport.disconnect()
        closed = await _settle(target)
        cycles.append((len(listeners), connect_seconds, cpu, opened, closed))
    (n1, seconds1, cpu1, opened1, closed1), (n2, _, _, opened2, closed2) = cycles
    second_growth = (closed2 - closed1) / count / 1024
    return {
        "target": target.name,
        "connections": n1,
        "rss_per_connection_kib": round((opened1 - before) / count / 1024, 2),
        "connects_per_second": round(count / seconds1),
        "server_cpu_us_per_connection": round(cpu1 / count * 1e6, 1),
        "rss_kept_after_closing_kib_per_connection": round((closed1 - before) / count / 1024, 2),
        "second_cycle_growth_kib_per_connection": round(second_growth, 3),
        "second_cycle_within_1_kib": second_growth < 1.0,
        "correct": n1 == n2 == count,
    }


SCENARIOS = {
    "fanout": fanout, "latency": latency, "latency-100": latency_100, "filtered": filtered, "tenants": tenants, "tenants-lockstep": tenants_lockstep,
    "http": http, "idle": idle,
}


async def run_one(scenario: str, target_name: str, args: argparse.Namespace) -> dict:
    with Target(target_name, args.workers, args.server_cpus) as target:
        result = await asyncio.wait_for(SCENARIOS[scenario](target, args), 300)
    result["scenario"] = scenario
    return result


async def main_async(args: argparse.Namespace) -> list[dict]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 19_000), hard))
    # One server process on its own core(s), the load on the last one; with more workers than
    # that leaves cores for, nothing is pinned. A child inherits its parent's affinity: the
    # server is started under taskset, or it would share the load's core.
    cpus = sorted(os.sched_getaffinity(0))
    args.server_cpus = None
    if len(cpus) >= 2 and max(args.workers, 1) <= len(cpus) - 1:
        args.server_cpus = cpus[:-1]
        os.sched_setaffinity(0, {cpus[-1]})
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    targets = ["fastws", "reference", "floor"] if args.compare else [args.target]
    results = []
    for scenario in scenarios:
        for _ in range(args.rounds if args.compare else 1):
            for target in targets:
                # The floor only fans out (no REST, no filters): nothing to compare there.
                if scenario in ("http", "filtered") and target == "floor":
                    continue
                result = await run_one(scenario, target, args)
                print(orjson.dumps(result).decode(), file=sys.stderr)
                results.append(result)
    return results


def report(results: list[dict]) -> None:
    figures = ["delivered_per_server_cpu_second", "publishes_per_server_cpu_second", "latency_ms_p50", "latency_ms_p99",
               "rss_per_connection_kib", "server_cpu_us_per_connection"]
    by = {}
    for result in results:
        by.setdefault(result["scenario"], {}).setdefault(result["target"], []).append(result)
    for scenario, targets in by.items():
        print(f"\n{scenario}")
        for figure in figures:
            medians = {t: statistics.median(r[figure] for r in rs if r.get(figure) is not None)
                       for t, rs in targets.items() if any(r.get(figure) is not None for r in rs)}
            if not medians:
                continue
            line = "  ".join(f"{t}={v:,.3f}" if isinstance(v, float) and v < 100 else f"{t}={v:,.0f}" for t, v in medians.items())
            ratios = ""
            if "fastws" in medians:
                ratios = "  " + "  ".join(f"fastws/{t}={medians['fastws'] / v:.2f}" for t, v in medians.items() if t != "fastws" and v)
            print(f"  {figure}: {line}{ratios}")
        print(f"  correct: {all(r['correct'] for rs in targets.values() for r in rs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="fanout")
    parser.add_argument("--target", choices=list(TARGETS), default="fastws")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--compare", action="store_true", help="fastws, reference and floor, alternately")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rate", type=float, default=100.0, help="latency: publishes per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency: how long")
    parser.add_argument("--idle", type=int, default=10_000, help="idle: connections")
    parser.add_argument("--server-python", default=sys.executable, help="the interpreter that runs fastws")
    parser.add_argument("--server-dir", default=None, help="the directory fastws starts in (its checkout)")
    args = parser.parse_args()
    SERVER_PYTHON[0], SERVER_DIR[0] = args.server_python, args.server_dir
    results = uvloop.run(main_async(args))
    report(results)
    print(orjson.dumps(results).decode())
    sys.exit(0 if all(r["correct"] for r in results) else 1)


if __name__ == "__main__":
    main()
