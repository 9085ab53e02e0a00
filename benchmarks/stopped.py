"""A stopped worker: does anyone else wait for it?

    python -m benchmarks.stopped [--stops 60] [--stop-seconds 0.6] [--rate 500] [--subscribers 20]

``fastws serve --workers 2``; on worker A a publisher and 20 subscribers, on
worker B 20 subscribers too (so B reads the shared log all the time). The
publisher publishes one event after another, each waiting for its ack,
either unpaced (as fast as acks come back) or paced at ``--rate`` per second.
Meanwhile worker B is stopped with SIGSTOP for ``--stop-seconds`` at random
moments, ``--stops`` times. In the same invocation, the same load runs for
the same time without stops (the baseline). Reported for each: the worst and
p99 publish ack latency on A, the longest gap between two deliveries seen by
any subscriber on A, and whether every subscriber on A and B got every event
in order (B's after it is continued). Target: worst ack and longest gap on A
under 150 ms while B is being stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
import urllib.request

import orjson
import uvloop
import websockets

from benchmarks.load import Target, percentile


class Watcher:
    """A subscriber: every event's sequence number and the longest gap between two arrivals."""

    def __init__(self, ws: websockets.ClientConnection, worker: int) -> None:
        self.ws = ws
        self.worker = worker
        self.ids: list[int] = []
        self.longest_gap = 0.0
        self.last = 0.0
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.perf_counter()
                message = orjson.loads(raw)
                if message.get("eventType") == "tick":
                    if self.last:
                        self.longest_gap = max(self.longest_gap, now - self.last)
                    self.last = now
                    self.ids.append(message["data"]["n"])
        except websockets.ConnectionClosed:
            pass


async def connect(url: str, user: str) -> tuple[websockets.ClientConnection, int]:
    ws = await websockets.connect(f"{url}?tenant_id=stop&user_id={user}", max_size=None)
    welcome = orjson.loads(await ws.recv())
    return ws, welcome["data"]["worker"]


async def watch(url: str, worker: int, count: int) -> list[Watcher]:
    """``count`` subscribers on ``worker`` (connections landing elsewhere are closed)."""
    watchers: list[Watcher] = []
    for i in range(400):
        ws, landed = await connect(url, f"w{worker}-{i}")
        if landed == worker:
            watchers.append(Watcher(ws, worker))
            if len(watchers) == count:
                return watchers
        else:
            await ws.close()
    raise RuntimeError("the workers are unbalanced")


async def watch_b(url: str, count: int) -> None:
    """The child process holding worker B's subscribers (``--watch-b``): B's burst of deliveries after
    each SIGCONT is read here, not in the process that times A's acks. Says ``ready``, then, at a line
    on stdin giving the number published, how many watchers got exactly 0..N-1, in order."""
    watchers = await watch(url, 1, count)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    published = int(await loop.run_in_executor(None, sys.stdin.readline))
    deadline = time.monotonic() + 30
    while any(len(w.ids) < published for w in watchers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print(json.dumps({"in_order": sum(w.ids == list(range(published)) for w in watchers),
                      "gap_ms_worst": round(max(w.longest_gap for w in watchers) * 1000, 1)}), flush=True)
    for w in watchers:
        await w.ws.close()


async def run(target: Target, args: argparse.Namespace, stops: int, seconds: float) -> dict:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.stopped", "--watch-b", target.url, "--subscribers", str(args.subscribers),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert (await asyncio.wait_for(child.stdout.readline(), 60)).strip() == b"ready"
    by_worker = {0: await watch(target.url, 0, args.subscribers)}
    publisher = None
    while publisher is None:
        ws, worker = await connect(target.url, "pub")
        if worker == 0:
            publisher = ws
        else:
            await ws.close()
    with urllib.request.urlopen(f"{target.rest}/api/websocket/status?detailed=true", timeout=10) as response:
        b_pid = json.load(response)["websocket"]["workers"]["1"]["pid"]

    rng = random.Random(args.seed)
    done = asyncio.Event()

    async def stopper() -> None:
        for _ in range(stops):
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            os.kill(b_pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(args.stop_seconds)
            finally:
                os.kill(b_pid, signal.SIGCONT)
        done.set()

    acks: list[float] = []
    sent: list[str] = []
    stopping = asyncio.ensure_future(stopper()) if stops else None
    if not stops:
        asyncio.get_running_loop().call_later(seconds, done.set)
    started = time.perf_counter()
    n = 0
    while not done.is_set():
        if args.rate:
            await asyncio.sleep(max(0.0, started + n / args.rate - time.perf_counter()))
        t0 = time.perf_counter()
        await publisher.send(orjson.dumps({"type": "publish", "event": "tick", "ref": n, "payload": {"n": n}}).decode())
        while True:
            reply = orjson.loads(await publisher.recv())
            if reply.get("type") == "ack" and reply.get("ref") == n:
                break
        acks.append(time.perf_counter() - t0)
        sent.append(reply["id"])
        n += 1
    elapsed = time.perf_counter() - started
    if stopping is not None:
        await stopping
    watchers = by_worker[0]
    deadline = time.monotonic() + 30
    while any(len(w.ids) < len(sent) for w in watchers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    child.stdin.write(b"%d\n" % len(sent))
    b = json.loads(await asyncio.wait_for(child.stdout.readline(), 60))
    await child.wait()
    for w in watchers:
        await w.ws.close()
    await publisher.close()
    ordered = sorted(acks)
    return {
        "stops": stops,
        "paced_rate": args.rate or None,
        "published": len(sent),
        "seconds": round(elapsed, 1),
        "ack_ms_p50": round(percentile(ordered, 0.5) * 1000, 1),
        "ack_ms_p99": round(percentile(ordered, 0.99) * 1000, 1),
        "ack_ms_worst": round(ordered[-1] * 1000, 1),
        "gap_ms_worst_on_a": round(max(w.longest_gap for w in by_worker[0]) * 1000, 1),
        "gap_ms_worst_on_b": b["gap_ms_worst"],
        "correct": all(w.ids == list(range(len(sent))) for w in watchers) and b["in_order"] == args.subscribers,
    }


async def main_async(args: argparse.Namespace) -> list[dict]:
    results = []
    seconds = args.stops * (args.stop_seconds + 0.175)  # about as long as the run with stops
    for rate in (0, args.rate):
        for stops in (0, args.stops):
            with Target("fastws", 2) as target:
                run_args = argparse.Namespace(**{**vars(args), "rate": rate})
                result = await run(target, run_args, stops, seconds)
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stops", type=int, default=60)
    parser.add_argument("--stop-seconds", type=float, default=0.6)
    parser.add_argument("--rate", type=int, default=500, help="the paced runs' publishes per second")
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--watch-b", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watch_b:
        uvloop.run(watch_b(args.watch_b, args.subscribers))
        return
    results = uvloop.run(main_async(args))
    stopped = [r for r in results if r["stops"]]
    ok = all(r["correct"] for r in results)
    print(json.dumps({"worst_ack_ms_with_stops": max(r["ack_ms_worst"] for r in stopped),
                      "worst_gap_ms_on_a_with_stops": max(r["gap_ms_worst_on_a"] for r in stopped),
                      "target_ms": 150, "all_correct": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
