"""The default limits do not get in the way of real high-throughput use.

    python -m benchmarks.defaults [--publish-rate 10000] [--seconds 5] [--connections 10000] [--connect-rate 2000]

Starts ``fastws serve --workers 1`` with its default settings on a free
loopback port and checks, with the numbers the project promises:

- one publisher connection sustains ``--publish-rate`` publishes per second for
  ``--seconds`` without a single ``rate_limited`` reply;
- ``--connections`` connections from one address, opened at ``--connect-rate``
  per second, are all accepted (none refused with 429).

It prints the achieved rates and the refusals (expected 0) and exits non-zero
if any publish or connection was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

URL_LINE = re.compile(rb"WebSocket (ws://\S+?)\?")


class Publisher(WSListener):
    def __init__(self) -> None:
        self.acks = 0
        self.refused = 0
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        payload = frame.get_payload_as_bytes()
        if payload.startswith(b'{"type":"ack"'):
            self.acks += 1
        elif b'"rate_limited"' in payload:
            self.refused += 1


class Idle(WSListener):
    pass


def open_connections(url: str, first: int, count: int, rate: float, hold: float) -> tuple[int, int, float]:
    """In a load process: open ``count`` connections at ``rate`` a second, hold them, close them."""
    return uvloop.run(_open_connections(url, first, count, rate, hold))


async def _open_connections(url: str, first: int, count: int, rate: float, hold: float) -> tuple[int, int, float]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    accepted = refused = 0
    transports = []
    batch = max(1, int(rate // 20))  # opened together every 50 ms
    started = time.perf_counter()
    for offset in range(0, count, batch):
        await asyncio.sleep(max(0.0, started + offset / rate - time.perf_counter()))
        results = await asyncio.gather(
            *(ws_connect(Idle, f"{url}?tenant_id=t{i % 100}&user_id=u{i}")
              for i in range(first + offset, first + min(offset + batch, count))),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                refused += 1
            else:
                accepted += 1
                transports.append(result[0])
    elapsed = time.perf_counter() - started
    await asyncio.sleep(hold)
    for transport in transports:
        transport.disconnect()
    return accepted, refused, elapsed


async def run(args: argparse.Namespace) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 1000), hard))
    server = subprocess.Popen([sys.executable, "-m", "fastws", "serve", "--port", "0", "--workers", "1"],
                              stderr=subprocess.PIPE)
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = server.stderr.readline()  # type: ignore[union-attr]
            match = URL_LINE.search(line)
            url = match and match.group(1).decode()
        assert url, "the server did not start"
        # read the rest of its log (an access line per connection): a full pipe would stop the server
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()  # type: ignore[union-attr]
        # -- one publisher at a fixed rate --------------------------------------------
        _, publisher = await ws_connect(Publisher, f"{url}?tenant_id=bench&user_id=pub")
        total = args.publish_rate * args.seconds
        started = time.perf_counter()
        sent = 0
        tick = 0.01
        while sent < total:
            due = min(total, int((time.perf_counter() - started) * args.publish_rate) + 1)
            for n in range(sent, due):
                publisher.transport.send(WSMsgType.TEXT, b'{"type":"publish","event":"e","ref":%d}' % n)
            sent = due
            await asyncio.sleep(tick)
        deadline = time.monotonic() + 30
        while publisher.acks + publisher.refused < total and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        publisher.transport.disconnect()
        # -- many connections from one address at a fixed rate -------------------------
        # One Python process opens at most 600-1,900 connections a second here, so the
        # connections come from several load processes, each at its share of the rate.
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        share = args.connections // args.load_processes
        started = time.perf_counter()
        with ProcessPoolExecutor(args.load_processes, mp_context=context) as pool:
            results = await asyncio.gather(*(
                loop.run_in_executor(pool, open_connections, url, index * share, share,
                                     args.connect_rate / args.load_processes, args.hold)
                for index in range(args.load_processes)
            ))
        connect_seconds = max(r[2] for r in results)
        accepted = sum(r[0] for r in results)
        refused = sum(r[1] for r in results)
        return {
            "publishes": total,
            "publish_seconds": round(elapsed, 3),
            "publishes_per_second": round(total / elapsed),
            "publishes_acked": publisher.acks,
            "publishes_refused": publisher.refused,
            "connections": args.connections,
            "connections_accepted": accepted,
            "connections_refused": refused,
            "connects_per_second": round(args.connections / connect_seconds),
            "load_processes": args.load_processes,
            "correct": publisher.refused == 0 and publisher.acks == total and refused == 0,
        }
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--publish-rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--connect-rate", type=int, default=2_000)
    parser.add_argument("--load-processes", type=int, default=2, help="processes opening the connections")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds all connections stay open together")
    args = parser.parse_args()
    result = uvloop.run(run(args))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    sys.exit(0 if result["correct"] else 1)


if __name__ == "__main__":
    main()
