"""Fan-out benchmark: one publisher, N subscriber connections, a real server process.

    python -m benchmarks.fanout [--connections 1000] [--events 2000] [--window 64] [--rounds 20]

Starts ``fastws serve`` on a free loopback port pinned to CPU 0 (this load
process pins itself to CPU 1 when there are two), opens N picows subscriber
connections in one tenant, and measures:

- throughput: a publisher keeps ``--window`` un-acked publishes in flight until
  ``--events`` events are acked and every subscriber has received every event;
  reports deliveries per second (wall) and per server CPU-second;
- one-event fan-out: ``--rounds`` single publishes, each waiting until all N
  subscribers have it; reports the median and max time from send to the last
  subscriber's receipt;
- correctness: every subscriber received every event exactly once, in order.

The load generator's receive path counts frames and reads the sequence number
with a bytes search, without building Python objects per event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import subprocess
import sys
import time

import orjson
import psutil
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

URL_LINE = re.compile(rb"WebSocket (ws://\S+?)\?")
SEQ = b'"data":{"n":'


class Subscriber(WSListener):
    __slots__ = ("count", "last", "errors", "bench", "transport")

    def __init__(self, bench: "Bench") -> None:
        self.bench = bench
        self.count = 0
        self.last = -1
        self.errors = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        payload = frame.get_payload_as_bytes()
        start = payload.find(SEQ)
        if start < 0:
            return  # the welcome event
        start += len(SEQ)
        n = int(payload[start:payload.index(b"}", start)])
        if n != self.last + 1:
            self.errors += 1
        self.last = n
        self.count += 1
        self.bench.on_delivery(n)


class Publisher(WSListener):
    def __init__(self, bench: "Bench") -> None:
        self.bench = bench
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and frame.get_payload_as_bytes().startswith(b'{"type":"ack"'):
            self.bench.on_ack()

    def publish(self, n: int) -> None:
        message = b'{"type":"publish","event":"tick","ref":%d,"payload":{"n":%d}}' % (n, n)
        self.transport.send(WSMsgType.TEXT, message)  # type: ignore[union-attr]


class Bench:
    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.delivered: dict[int, int] = {}
        self.acked = 0
        self.waiter: asyncio.Future | None = None
        self.want_acks = 0
        self.want_event = -1
        self.ack_waiter: asyncio.Future | None = None

    def on_delivery(self, n: int) -> None:
        count = self.delivered.get(n, 0) + 1
        self.delivered[n] = count
        if n == self.want_event and count == self.connections and self.waiter and not self.waiter.done():
            self.waiter.set_result(time.perf_counter())

    def on_ack(self) -> None:
        self.acked += 1
        if self.ack_waiter is not None and not self.ack_waiter.done():
            self.ack_waiter.set_result(None)


async def run(args: argparse.Namespace) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections * 2 + 100)), hard))
    cpus = sorted(os.sched_getaffinity(0))
    server_cmd = [sys.executable, "-m", "fastws", "serve", "--port", "0"]
    if len(cpus) >= 2:
        # taskset execs the server: the pid stays the server's
        server_cmd = ["taskset", "-c", str(cpus[0])] + server_cmd
        os.sched_setaffinity(0, {cpus[1]})
    env = {**os.environ, "FASTWS_LOG_LEVEL": "info"}
    server = subprocess.Popen(server_cmd, stderr=subprocess.PIPE, env=env)
    try:
        url = None
        while url is None:
            line = server.stderr.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError("server exited")
            match = URL_LINE.search(line)
            url = match and match.group(1).decode()
        proc = psutil.Process(server.pid)
        bench = Bench(args.connections)
        subscribers: list[Subscriber] = []
        started = time.perf_counter()
        for batch in range(0, args.connections, 100):
            pairs = await asyncio.gather(
                *(
                    ws_connect(lambda: Subscriber(bench), f"{url}?tenant_id=bench&user_id=s{i}")
                    for i in range(batch, min(batch + 100, args.connections))
                )
            )
            subscribers += [listener for _, listener in pairs]  # type: ignore[misc]
        connect_seconds = time.perf_counter() - started
        transport, publisher = await ws_connect(lambda: Publisher(bench), f"{url}?tenant_id=bench&user_id=pub")

        loop = asyncio.get_running_loop()
        # -- one-event fan-out latency ----------------------------------------------
        fanout_times = []
        n = 0
        for _ in range(args.rounds):
            bench.want_event = n
            bench.waiter = loop.create_future()
            sent = time.perf_counter()
            publisher.publish(n)
            done = await asyncio.wait_for(bench.waiter, 30)
            fanout_times.append(done - sent)
            n += 1

        # -- throughput ------------------------------------------------------------
        cpu_before = sum(proc.cpu_times()[:2])
        start_acks = bench.acked
        first = n
        last = n + args.events - 1
        bench.want_event = last
        bench.waiter = loop.create_future()
        started = time.perf_counter()
        while n <= last:
            while n <= last and n - first - (bench.acked - start_acks) < args.window:
                publisher.publish(n)
                n += 1
            bench.ack_waiter = loop.create_future()
            await asyncio.wait_for(bench.ack_waiter, 30)
        await asyncio.wait_for(bench.waiter, 60)
        wall = time.perf_counter() - started
        cpu = sum(proc.cpu_times()[:2]) - cpu_before
        deliveries = args.events * args.connections

        expected = args.rounds + args.events
        lost = sum(expected - s.count for s in subscribers if s.count < expected)
        duplicated = sum(s.count - expected for s in subscribers if s.count > expected)
        out_of_order = sum(s.errors for s in subscribers)
        rss = proc.memory_info().rss
        transport.disconnect()
        return {
            "connections": args.connections,
            "events": args.events,
            "window": args.window,
            "connect_seconds": round(connect_seconds, 3),
            "one_event_fanout_ms_median": round(statistics.median(fanout_times) * 1000, 3),
            "one_event_fanout_ms_max": round(max(fanout_times) * 1000, 3),
            "deliveries": deliveries,
            "wall_seconds": round(wall, 3),
            "deliveries_per_second": round(deliveries / wall),
            "server_cpu_seconds": round(cpu, 3),
            "deliveries_per_server_cpu_second": round(deliveries / cpu) if cpu else None,
            "server_rss_mib": round(rss / 2**20, 1),
            "lost": lost,
            "duplicated": duplicated,
            "out_of_order": out_of_order,
            "correct": lost == duplicated == out_of_order == 0,
        }
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    result = uvloop.run(run(args))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    sys.exit(0 if result["correct"] else 1)


if __name__ == "__main__":
    main()
