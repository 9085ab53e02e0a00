"""Slow consumers: what stalled readers cost everyone else.

    python -m benchmarks.slow [--rounds 3] [--subscribers 300] [--stalled-share 0.2] [--events 24000]

One fastws worker (``fastws serve --workers 1``), 300 subscribers on one tenant
channel, and one publisher sending 24,000 events of 1 KiB with priorities
cycling low, normal, high, critical, as fast as a window of un-acked publishes
allows. Each round runs twice in the same invocation, alternately: **without**
slow consumers (every subscriber reads), and **with** 20% of the subscribers
stalled (their sockets stay open, they read nothing, with a 4 KiB receive
buffer). Reported per run, and the median over rounds:

- deliveries to reading subscribers per server CPU-second, and the ratio of
  the run with slow consumers to the run without (target: at least 0.75);
- publish acks per second (every one of the 24,000 must be acked);
- latency of reading subscribers, p50/p99/p99.9 (target p99 under 1 s), and
  whether they lost, duplicated or misrouted anything (target: nothing);
- drops by priority (from the status API); for each stalled connection, read
  at the end: closed (4008), or every critical event received (a critical
  event is never dropped for a connection that stays connected);
- server RSS growth over the run (target: under 128 MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import sys
import time
import urllib.request

import orjson
import uvloop
from picows import WSMsgType, ws_connect

from benchmarks.load import Publisher, Stats, Subscriber, Target, open_subscribers, percentile, wait_until

PRIORITIES = ("low", "normal", "high", "critical")
BLOB = "x" * 1000


class Stalled:
    """A subscriber that completes the handshake, then reads nothing until the end of the run."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def connect(cls, url: str, tenant: str, user: str) -> "Stalled":
        netloc = url.removeprefix("ws://").partition("/")[0]
        host, _, port = netloc.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(sock, (
            f"GET /ws?tenant_id={tenant}&user_id={user} HTTP/1.1\r\nHost: {netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 1)  # byte by byte: nothing after the head is consumed
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head[:40])
        return cls(sock)

    async def read_rest(self) -> tuple[list[int], int | str | None]:
        """Everything the server still sends: the ``n`` of each critical event received, and how the
        connection ended: its close code, ``"dropped"`` if the server ended it without a close frame
        reaching us (a 4008 close whose frame sat behind unread data is followed, drain_timeout later,
        by dropping the socket), or None if it is still open."""
        loop = asyncio.get_running_loop()
        buffer = bytearray()
        critical: list[int] = []
        close_code: int | str | None = None
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), 2.0)
            except asyncio.TimeoutError:
                break
            except ConnectionError:
                close_code = "dropped"
                break
            if not chunk:
                close_code = "dropped"
                break
            buffer += chunk
            while len(buffer) >= 2:
                length, start = buffer[1] & 0x7F, 2
                if length == 126:
                    length, start = int.from_bytes(buffer[2:4], "big"), 4
                elif length == 127:
                    length, start = int.from_bytes(buffer[2:10], "big"), 10
                if len(buffer) < start + length:
                    break
                opcode, payload = buffer[0] & 0x0F, bytes(buffer[start:start + length])
                del buffer[:start + length]
                if opcode == 8:
                    close_code = int.from_bytes(payload[:2], "big")
                elif opcode == 1 and b'"priority":"critical"' in payload:
                    critical.append(orjson.loads(payload)["data"]["n"])
            if close_code is not None:
                break
        self.sock.close()
        return critical, close_code


def drops(target: Target) -> list[int]:
    with urllib.request.urlopen(f"{target.rest}/api/websocket/status?detailed=true", timeout=10) as response:
        status = json.load(response)
    workers = status["websocket"]["workers"].values()
    return [sum(w["drops"][rank] for w in workers) for rank in range(4)]


async def run(args: argparse.Namespace, slow: bool) -> dict:
    stalled_count = int(args.subscribers * args.stalled_share) if slow else 0
    readers = args.subscribers - stalled_count
    with Target("fastws", 1) as target:
        stats = Stats()
        subscribers = await open_subscribers(target.url, [Subscriber(stats) for _ in range(readers)], "slow")
        stalled = [await Stalled.connect(target.url, "slow", f"stuck{i}") for i in range(stalled_count)]
        _, publisher = await ws_connect(Publisher, f"{target.url}?tenant_id=slow&user_id=pub")
        await asyncio.sleep(0.5)
        rss0, cpu0, started = target.rss(), target.cpu(), time.perf_counter()
        events, window, n = args.events, args.window, 0
        loop = asyncio.get_running_loop()
        while n < events:
            while n < events and n - publisher.acks < window:
                publisher.transport.send(WSMsgType.TEXT, b'{"type":"publish","event":"tick","ref":%d,"priority":"%s",'
                                         b'"payload":{"n":%d,"t":%.9f,"blob":"%s"}}'
                                         % (n, PRIORITIES[n % 4].encode(), n, time.perf_counter(), BLOB.encode()))
                n += 1
            publisher.waiter = loop.create_future()
            try:
                await asyncio.wait_for(publisher.waiter, 30)
            except asyncio.TimeoutError:
                break
        expected = events * readers
        await wait_until(lambda: stats.delivered >= expected and publisher.acks >= events, 60)
        wall = time.perf_counter() - started
        cpu = target.cpu() - cpu0
        rss_growth = target.rss() - rss0
        stats.tally(subscribers)
        await asyncio.sleep(0.6)  # the worker's row is published every few hundred ms
        dropped = drops(target)
        ends = await asyncio.gather(*(s.read_rest() for s in stalled))
        critical_ok = all(code in (4008, "dropped") or (code is None and sorted(got) == list(range(3, events, 4)))
                          for got, code in ends)
        latencies = sorted(stats.latencies)
        lost = max(expected - stats.delivered, stats.lost)
        for s in subscribers:
            s.close()
        return {
            "slow": slow, "readers": readers, "stalled": stalled_count,
            "delivered": stats.delivered, "expected": expected,
            "delivered_per_server_cpu_second": round(stats.delivered / cpu) if cpu else None,
            "acks": publisher.acks, "acks_per_second": round(publisher.acks / wall),
            "latency_ms_p50": round(percentile(latencies, 0.5) * 1000, 2),
            "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 2),
            "latency_ms_p999": round(percentile(latencies, 0.999) * 1000, 2),
            "drops": dict(zip(PRIORITIES, dropped)),
            "stalled_closed_4008": sum(1 for _, code in ends if code == 4008),
            "stalled_dropped": sum(1 for _, code in ends if code == "dropped"),
            "stalled_still_open": sum(1 for _, code in ends if code is None),
            "critical_never_dropped_while_connected": critical_ok,
            "server_cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2),
            "rss_growth_mib": round(rss_growth / 2**20, 1),
            "lost": lost, "duplicated": stats.duplicated, "misrouted": stats.misrouted,
            "correct": (lost == 0 and stats.duplicated == 0 and stats.misrouted == 0
                        and publisher.acks == events and critical_ok),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=300)
    parser.add_argument("--stalled-share", type=float, default=0.2)
    parser.add_argument("--events", type=int, default=24_000)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    results = []
    for round_ in range(args.rounds):
        for slow in (False, True):
            result = uvloop.run(run(args, slow))
            results.append(result)
            print(json.dumps({"round": round_, **result}), flush=True)
    base = [r for r in results if not r["slow"]]
    slow_runs = [r for r in results if r["slow"]]
    ratios = [s["delivered_per_server_cpu_second"] / b["delivered_per_server_cpu_second"] for b, s in zip(base, slow_runs)]
    summary = {
        "ratio_deliveries_per_cpu_second_slow_vs_none": {"median": round(statistics.median(ratios), 2),
                                                          "each": [round(r, 2) for r in ratios]},
        "slow_p99_ms_median": statistics.median(r["latency_ms_p99"] for r in slow_runs),
        "slow_p999_ms_median": statistics.median(r["latency_ms_p999"] for r in slow_runs),
        "slow_acks_per_second_median": statistics.median(r["acks_per_second"] for r in slow_runs),
        "none_acks_per_second_median": statistics.median(r["acks_per_second"] for r in base),
        "slow_rss_growth_mib_max": max(r["rss_growth_mib"] for r in slow_runs),
        "all_correct": all(r["correct"] for r in results),
    }
    print(json.dumps(summary, indent=1))
    sys.exit(0 if summary["all_correct"] else 1)


if __name__ == "__main__":
    main()
