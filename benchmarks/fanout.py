"""Fan-out benchmark: one publisher, N subscriber connections, a real server process.

    python -m benchmarks.fanout [--connections 1000] [--events 2000] [--window 64] [--rounds 20] [--workers 1]
    python -m benchmarks.fanout --compare-workers [--rounds-compare 3] [--connections 1000] [--events 2000]

Starts ``fastws serve --workers N`` on a free loopback port, opens N picows
subscriber connections in one tenant, and measures:

- throughput: a publisher keeps ``--window`` un-acked publishes in flight until
  ``--events`` events are acked and every subscriber has received every event;
  reports deliveries per second (wall) and per server CPU-second;
- one-event fan-out: ``--rounds`` single publishes, each waiting until all N
  subscribers have it; reports the median and max time from send to the last
  subscriber's receipt;
- correctness: every subscriber received every event exactly once, in order.

The server is a process tree: with ``--workers N`` (N >= 1) a supervisor and N
worker processes sharing the port; with ``--workers 0`` one process. Server
CPU is the user+system CPU-seconds of the throughput phase summed over every
process of the tree (found with psutil after start-up, checked again at the
end); memory is their summed PSS (``server_pss_mib``; ``server_rss_mib`` is
the summed RSS, which counts shared pages once per process).

Pinning: with --workers 0 or 1 and two CPUs or more, the server runs on the
first CPU and this load process on the second. With --workers >= 2 the server
gets the first N CPUs and the load process the next one if there are more
than N CPUs; otherwise (e.g. two workers on a 2-core machine) nothing is
pinned. ``pinned`` in the output says which.

Each connection's welcome event names its worker (``data.worker``): the
output gives ``subscribers_per_worker`` and ``publisher_worker``. With two or
more workers the publisher is reconnected (up to 20 times) while it lands on
the worker holding most subscribers, so most deliveries cross workers.

``--compare-workers`` runs the scenario alternately with --workers 1 and
--workers 2, ``--rounds-compare`` times each, prints every run's result and
the median deliveries per server CPU-second of each configuration with the
ratio workers2 / workers1 as JSON on stdout (and a short summary on stderr),
and exits non-zero if any run failed or was incorrect.

The load generator's receive path counts frames and reads the sequence number
(and, once per connection, the worker) with a bytes search, without building
Python objects per event.
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
import threading
import time
from collections import Counter

import orjson
import psutil
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

URL_LINE = re.compile(rb"WebSocket (ws://\S+?)\?")
SERVING_LINE = re.compile(rb"worker (\d+) \(pid (\d+)\) serving")
SEQ = b'"data":{"n":'
WORKER = b'"worker":'
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
CONNECT_TIMEOUT = 60.0
WELCOME_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
PUBLISHER_TRIES = 20
#: the project's target: crossing workers costs at most 15 % of the deliveries per server CPU-second
TARGET_RATIO = 0.85


def worker_of(payload: bytes) -> int | None:
    """The worker named in a welcome event (``"worker":N``), or None."""
    start = payload.find(WORKER)
    if start < 0:
        return None
    start += len(WORKER)
    ends = [i for i in (payload.find(b",", start), payload.find(b"}", start)) if i >= 0]
    try:
        return int(payload[start:min(ends)]) if ends else None
    except ValueError:
        return None


class Subscriber(WSListener):
    __slots__ = ("count", "last", "errors", "bench", "transport", "worker")

    def __init__(self, bench: "Bench") -> None:
        self.bench = bench
        self.count = 0
        self.last = -1
        self.errors = 0
        self.worker: int | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        payload = frame.get_payload_as_bytes()
        start = payload.find(SEQ)
        if start < 0:
            if self.worker is None:  # the welcome event
                self.worker = worker_of(payload)
                if self.worker is not None:
                    self.bench.on_welcome()
            return
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
        self.worker: int | None = None
        self.welcomed: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        payload = frame.get_payload_as_bytes()
        if payload.startswith(b'{"type":"ack"'):
            self.bench.on_ack()
        elif self.worker is None and payload.find(SEQ) < 0:
            self.worker = worker_of(payload)
            if self.worker is not None and not self.welcomed.done():
                self.welcomed.set_result(self.worker)

    def publish(self, n: int) -> None:
        message = b'{"type":"publish","event":"tick","ref":%d,"payload":{"n":%d}}' % (n, n)
        self.transport.send(WSMsgType.TEXT, message)  # type: ignore[union-attr]


class Bench:
    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.delivered: dict[int, int] = {}
        self.acked = 0
        self.waiter: asyncio.Future | None = None
        self.want_event = -1
        self.ack_waiter: asyncio.Future | None = None
        self.welcomes = 0
        self.welcome_waiter: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_delivery(self, n: int) -> None:
        count = self.delivered.get(n, 0) + 1
        self.delivered[n] = count
        if n == self.want_event and count == self.connections and self.waiter and not self.waiter.done():
            self.waiter.set_result(time.perf_counter())

    def on_ack(self) -> None:
        self.acked += 1
        if self.ack_waiter is not None and not self.ack_waiter.done():
            self.ack_waiter.set_result(None)

    def on_welcome(self) -> None:
        self.welcomes += 1
        if self.welcomes == self.connections and not self.welcome_waiter.done():
            self.welcome_waiter.set_result(None)


class ServerLog:
    """The server tree's stderr, read by a thread so a full pipe never blocks the server."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[bytes] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in iter(stream.readline, b""):
            self.lines.append(line)

    def url(self) -> str | None:
        for line in list(self.lines):
            match = URL_LINE.search(line)
            if match:
                return match.group(1).decode()
        return None

    def serving(self) -> dict[int, int]:
        """pid -> worker index, from the workers' "serving" lines."""
        found = {}
        for line in list(self.lines):
            match = SERVING_LINE.search(line)
            if match:
                found[int(match.group(2))] = int(match.group(1))
        return found

    def warnings(self) -> list[str]:
        return [
            line.decode(errors="replace").rstrip()
            for line in list(self.lines)
            if any(level in line for level in (b" WARNING ", b" ERROR ", b" CRITICAL ", b"Traceback"))
        ]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ServerTree:
    """The server's processes: the root (supervisor, or the only process) and its descendants."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[tuple[int, float], psutil.Process] = {}

    def processes(self) -> list[psutil.Process]:
        procs = [self.root]
        try:
            procs += self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        alive = []
        for proc in procs:
            try:
                key = (proc.pid, proc.create_time())
            except psutil.NoSuchProcess:
                continue
            self.seen.setdefault(key, proc)
            alive.append(proc)
        return alive

    @staticmethod
    def key(proc: psutil.Process) -> tuple[int, float]:
        return (proc.pid, proc.create_time())

    @staticmethod
    def cpu(procs: list[psutil.Process]) -> dict[tuple[int, float], float]:
        """user + system CPU-seconds of each process still alive."""
        times = {}
        for proc in procs:
            try:
                times[(proc.pid, proc.create_time())] = sum(proc.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return times

    @staticmethod
    def memory(procs: list[psutil.Process]) -> tuple[int, int]:
        """(summed PSS, summed RSS) in bytes."""
        pss = rss = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except psutil.NoSuchProcess:
                continue
            pss += info.pss
            rss += info.rss
        return pss, rss


async def wait_until(predicate, timeout: float, what: str, server: subprocess.Popen) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if server.poll() is not None:
            raise RuntimeError(f"server exited ({server.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:.0f} s")
        await asyncio.sleep(0.02)


async def stop_server(server: subprocess.Popen, tree: ServerTree | None, log: ServerLog) -> None:
    """SIGTERM the root (the supervisor drains its workers), wait, then kill whatever is left."""
    procs: list[psutil.Process] = []
    if tree is not None:
        tree.processes()  # pick up workers started since the last look (a restart)
        procs = list(tree.seen.values())
    if server.poll() is None:
        server.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        while server.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if server.poll() is None:
            print(f"fanout: server pid {server.pid} did not stop in {STOP_TIMEOUT:.0f} s: killing it", file=sys.stderr)
            server.kill()
            server.wait(5)
    leftovers = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                leftovers.append(proc)
        except psutil.NoSuchProcess:
            pass
    for proc in leftovers:
        print(f"fanout: server process {proc.pid} still running after the supervisor: killing it", file=sys.stderr)
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=5)
    log.join(5)


def choose_pinning(cpus: list[int], workers: int) -> tuple[list[int] | None, int | None]:
    """(CPUs for the server, CPU for this load process), or (None, None) for no pinning."""
    server_cpus = max(1, workers)
    if len(cpus) > server_cpus:
        return cpus[:server_cpus], cpus[server_cpus]
    return None, None


async def connect_publisher(
    bench: Bench, url: str, per_worker: Counter, workers: int
) -> tuple[WSTransport, Publisher, int]:
    """The publisher's connection, on a worker other than the most crowded one when there are several."""
    crowded = [w for w, c in per_worker.items() if c == max(per_worker.values())] if per_worker else []
    avoid = crowded[0] if workers >= 2 and len(crowded) == 1 else None
    connects = 0
    while True:
        connects += 1
        transport, publisher = await asyncio.wait_for(
            ws_connect(lambda: Publisher(bench), f"{url}?tenant_id=bench&user_id=pub"), CONNECT_TIMEOUT
        )
        await asyncio.wait_for(publisher.welcomed, WELCOME_TIMEOUT)  # type: ignore[attr-defined]
        if publisher.worker != avoid or connects > PUBLISHER_TRIES:  # type: ignore[attr-defined]
            if publisher.worker == avoid:  # type: ignore[attr-defined]
                print(
                    f"fanout: the publisher landed on worker {avoid} (most subscribers) {connects} times; keeping it",
                    file=sys.stderr,
                )
            return transport, publisher, connects  # type: ignore[return-value]
        transport.disconnect()
        await asyncio.wait_for(transport.wait_disconnected(), 10)


async def run(args: argparse.Namespace, cpus: list[int] | None = None) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections * 2 + 100)), hard))
    cpus = cpus or sorted(os.sched_getaffinity(0))
    workers = args.workers
    server_cmd = [sys.executable, "-m", "fastws", "serve", "--host", HOST, "--port", "0", "--workers", str(workers)]
    server_cpus, load_cpu = choose_pinning(cpus, workers)
    if server_cpus is not None:
        # taskset execs the server: the pid stays the server's; workers inherit the affinity
        server_cmd = ["taskset", "-c", ",".join(map(str, server_cpus))] + server_cmd
        os.sched_setaffinity(0, {load_cpu})
    else:
        os.sched_setaffinity(0, set(cpus))
    env = {**os.environ, "FASTWS_LOG_LEVEL": "info"}
    server = subprocess.Popen(server_cmd, stderr=subprocess.PIPE, env=env)
    log = ServerLog(server.stderr)
    tree: ServerTree | None = None
    transports: list[WSTransport] = []
    try:
        await wait_until(lambda: log.url() is not None, STARTUP_TIMEOUT, "URL in the server log", server)
        url = log.url()
        assert url is not None and url.startswith(f"ws://{HOST}:"), url
        tree = ServerTree(server.pid)
        if workers >= 1:
            await wait_until(lambda: len(log.serving()) >= workers, STARTUP_TIMEOUT, f"{workers} workers serving", server)
            await wait_until(lambda: len(tree.processes()) >= workers + 1, STARTUP_TIMEOUT, "worker processes", server)
        start_procs = tree.processes()
        bench = Bench(args.connections)
        subscribers: list[Subscriber] = []
        started = time.perf_counter()
        for batch in range(0, args.connections, 100):
            pairs = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        ws_connect(lambda: Subscriber(bench), f"{url}?tenant_id=bench&user_id=s{i}")
                        for i in range(batch, min(batch + 100, args.connections))
                    )
                ),
                CONNECT_TIMEOUT,
            )
            transports += [t for t, _ in pairs]
            subscribers += [listener for _, listener in pairs]  # type: ignore[misc]
        await asyncio.wait_for(bench.welcome_waiter, WELCOME_TIMEOUT)
        connect_seconds = time.perf_counter() - started
        per_worker = Counter(s.worker for s in subscribers)
        transport, publisher, publisher_connects = await connect_publisher(bench, url, per_worker, workers)
        transports.append(transport)

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
        procs_before = tree.processes()
        cpu_before = tree.cpu(procs_before)
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
        procs_after = tree.processes()
        cpu_after = tree.cpu(procs_after)
        cpu = sum(after - cpu_before.get(key, 0.0) for key, after in cpu_after.items())
        deliveries = args.events * args.connections

        expected = args.rounds + args.events
        lost = sum(expected - s.count for s in subscribers if s.count < expected)
        duplicated = sum(s.count - expected for s in subscribers if s.count > expected)
        out_of_order = sum(s.errors for s in subscribers)
        pss, rss = tree.memory(procs_after)
        start_keys = {tree.key(p) for p in start_procs}
        end_keys = set(cpu_after)
        stable = start_keys == end_keys and set(cpu_before) == end_keys
        if not stable:
            print(
                f"fanout: the server's processes changed during the run: {sorted(start_keys)} -> {sorted(end_keys)}",
                file=sys.stderr,
            )
        roles = {server.pid: "supervisor" if workers >= 1 else "server"}
        roles.update({pid: f"worker {index}" for pid, index in log.serving().items()})
        cpu_by_process = {
            roles.get(key[0], f"pid {key[0]}"): round(after - cpu_before.get(key, 0.0), 3)
            for key, after in sorted(cpu_after.items())
        }
        return {
            "connections": args.connections,
            "events": args.events,
            "window": args.window,
            "workers": workers,
            "pinned": server_cpus is not None,
            "server_cpus": server_cpus,
            "load_cpu": load_cpu,
            "subscribers_per_worker": {str(w): c for w, c in sorted(per_worker.items(), key=lambda kv: str(kv[0]))},
            "publisher_worker": publisher.worker,  # type: ignore[attr-defined]
            "publisher_connects": publisher_connects,
            "subscribers_on_other_workers": args.connections - per_worker.get(publisher.worker, 0),  # type: ignore[attr-defined]
            "connect_seconds": round(connect_seconds, 3),
            "one_event_fanout_ms_median": round(statistics.median(fanout_times) * 1000, 3),
            "one_event_fanout_ms_max": round(max(fanout_times) * 1000, 3),
            "deliveries": deliveries,
            "wall_seconds": round(wall, 3),
            "deliveries_per_second": round(deliveries / wall),
            "server_cpu_seconds": round(cpu, 3),
            "server_cpu_seconds_by_process": cpu_by_process,
            "deliveries_per_server_cpu_second": round(deliveries / cpu) if cpu else None,
            "server_processes": len(procs_after),
            "server_processes_stable": stable,
            "server_rss_mib": round(rss / 2**20, 1),
            "server_pss_mib": round(pss / 2**20, 1),
            "server_log_warnings": log.warnings()[:20],
            "lost": lost,
            "duplicated": duplicated,
            "out_of_order": out_of_order,
            "correct": lost == duplicated == out_of_order == 0,
        }
    except BaseException as exc:
        # say what the server said (a worker's exit, a traceback) along with the timeout it caused
        if tree is not None:
            exc.add_note(f"server processes at the failure: {[p.pid for p in tree.processes()]}")
        for line in log.warnings()[:20]:
            exc.add_note(f"server log: {line}")
        raise
    finally:
        for t in transports:
            t.disconnect()
        await asyncio.sleep(0.1)
        await stop_server(server, tree, log)
        os.sched_setaffinity(0, set(cpus))


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def compare_workers(args: argparse.Namespace, cpus: list[int]) -> int:
    runs: list[dict] = []
    for round_ in range(args.rounds_compare):
        for workers in (1, 2):
            run_args = argparse.Namespace(**{**vars(args), "workers": workers})
            print(f"fanout: round {round_ + 1}/{args.rounds_compare}, --workers {workers}", file=sys.stderr)
            try:
                result = uvloop.run(run(run_args, cpus))
            except Exception as exc:  # a timeout or a crash: recorded, and the exit code says so
                notes = getattr(exc, "__notes__", [])
                result = {"workers": workers, "error": f"{type(exc).__name__}: {exc}", "notes": notes, "correct": False}
            result["round"] = round_ + 1
            runs.append(result)
            print(
                f"fanout:   {result.get('deliveries_per_server_cpu_second')} deliveries/server CPU-s, "
                f"{result.get('deliveries_per_second')} deliveries/s, correct: {result['correct']}"
                + (f", error: {result['error']}" if "error" in result else ""),
                file=sys.stderr,
            )
    summary: dict = {}
    for workers in (1, 2):
        mine = [r for r in runs if r["workers"] == workers and "error" not in r]
        summary[f"workers{workers}"] = {
            "runs": len(mine),
            "deliveries_per_server_cpu_second_median": median([r["deliveries_per_server_cpu_second"] for r in mine]),
            "deliveries_per_second_median": median([r["deliveries_per_second"] for r in mine]),
            "server_cpu_seconds_median": median([r["server_cpu_seconds"] for r in mine]),
            "server_pss_mib_median": median([r["server_pss_mib"] for r in mine]),
            "one_event_fanout_ms_median": median([r["one_event_fanout_ms_median"] for r in mine]),
        }
    one = summary["workers1"]["deliveries_per_server_cpu_second_median"]
    two = summary["workers2"]["deliveries_per_server_cpu_second_median"]
    ratio = round(two / one, 3) if one and two else None
    summary["ratio_workers2_over_workers1"] = ratio
    summary["target_ratio_min"] = TARGET_RATIO
    summary["target_met"] = ratio is not None and ratio >= TARGET_RATIO
    correct = all(r["correct"] for r in runs)
    summary["all_correct"] = correct
    print(orjson.dumps({"summary": summary, "runs": runs}, option=orjson.OPT_INDENT_2).decode())
    for workers in (1, 2):
        print(
            f"fanout: --workers {workers}: median {summary[f'workers{workers}']['deliveries_per_server_cpu_second_median']} "
            f"deliveries per server CPU-second over {summary[f'workers{workers}']['runs']} runs",
            file=sys.stderr,
        )
    print(
        f"fanout: ratio workers2 / workers1 = {ratio} (target >= {TARGET_RATIO}: "
        f"{'met' if summary['target_met'] else 'not met'}); all runs correct: {correct}",
        file=sys.stderr,
    )
    return 0 if correct else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1,
                        help="passed to fastws serve: 0 = one process, N >= 1 = a supervisor and N workers")
    parser.add_argument("--compare-workers", action="store_true",
                        help="run alternately with --workers 1 and --workers 2 and compare")
    parser.add_argument("--rounds-compare", type=int, default=3, help="runs of each configuration with --compare-workers")
    args = parser.parse_args()
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    cpus = sorted(os.sched_getaffinity(0))
    if args.compare_workers:
        sys.exit(compare_workers(args, cpus))
    result = uvloop.run(run(args, cpus))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    sys.exit(0 if result["correct"] else 1)


if __name__ == "__main__":
    main()
