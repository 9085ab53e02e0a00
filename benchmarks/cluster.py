"""Scale-out over Redis: the same load against the embedded broker, one host with Redis, and two hosts.

    python -m benchmarks.cluster [--connections 1000] [--events 5000] [--rounds 5]
                                 [--rate 100] [--seconds 5] [--window 64] [--config A --config C ...]

Three configurations, run alternately (A, B, C, then again, ``--rounds`` times)
so that the machine's noise falls on all of them alike, each on fresh
processes (a new redis-server too):

- A: one host, embedded broker (no Redis): ``fastws serve --workers 1``;
- B: one host with Redis: ``fastws serve --workers 1 --broker redis://...``;
- C: two hosts with the same Redis, ``fastws serve --workers 2 --broker ...`` twice on two
  ports: the subscribers are split between the hosts (the kernel spreads each host's half
  over its workers), the publisher is on the first host;
- E (only with ``--config E``): C's four workers on one host without Redis
  (``--workers 4``), to tell what Redis costs C from what four workers cost on two cores.

The load is the fan-out of ``benchmarks.load`` (its lean subscribers and compiled frame
reader, its publisher): ``--connections`` subscribers in one tenant, on the tenant channel
(the default one), connected 50 at a time, each batch waiting for its welcomes (with Redis a
welcome waits for the channel's position, read from Redis), then one publisher:

1. warm-up: 20 events, windowed, all delivered (Redis loads its scripts here);
2. latency: ``--rate`` events a second for ``--seconds`` (the same in every configuration),
   p50 / p99 / max from the publish time in the payload to its receipt by each subscriber
   (one process, one clock: ``time.perf_counter``). At 1,000 subscribers, 100 a second keeps
   both the embedded server's core and the load's below saturation here; at 200 a second
   both are near 100 % and the figure is a queue's;
3. throughput: ``--events`` events with ``--window`` un-acked publishes in flight, until all
   are acked and delivered everywhere. Measured over this phase:
   - deliveries per CPU-second, CPU being user + system of every fastws process (each
     host's whole process tree: supervisor and workers) plus the redis-server process;
   - the fastws processes' write calls, and deliveries per write (frames per write);
   - publish acks per second (to the last ack) and deliveries per second (to the last one);
   - Redis commands per event from ``INFO commandstats`` deltas (the harness's own INFO
     and CONFIG calls left out; the commands the scripts run are counted by Redis too, so
     they are in the total), script calls (EVALSHA/EVAL) per event, and the brokers' own
     ``round_trips`` / ``events`` from ``GET /api/websocket/status?detailed=true``
     (``cluster.broker``, summed over every worker of every host).

Correctness, per subscriber: every event (warm-up, latency and throughput: one sequence
``n`` = 0, 1, ...) received exactly once, in order; every publish acked, no
error. The exit code is non-zero if any run was incorrect or failed.

Pinning: with one host of one worker (A and B), the server side (the fastws process tree,
and redis-server in B) runs on the first CPUs and this load process on the last one, as
``benchmarks.load`` does; in C (four workers on this 2-core machine) nothing is pinned.
``pinned`` in each run says which.

The JSON document (parameters, every run, the medians per configuration and the ratios
B / A and C / A of deliveries per CPU-second, against the target of 0.7) goes to stdout;
a short summary goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter

import orjson
import psutil
import uvloop
from picows import WSFrame, WSMsgType, WSTransport, ws_connect

from benchmarks.fanout import ServerLog, ServerTree, stop_server, worker_of
from benchmarks.load import MAX_LATENCIES, Publisher, Reader, Stats, Subscriber, implementation, open_subscribers
from benchmarks.load import percentile, wait_until

HOST = "127.0.0.1"
TENANT = "fan"
PREFIX = "bench"
STARTUP_TIMEOUT = 30.0
WELCOME_TIMEOUT = 60.0
DELIVERY_TIMEOUT = 120.0
RUN_TIMEOUT = 300.0
WARMUP_EVENTS = 20
#: subscribers connected at once, each batch waiting for its welcomes: with Redis each welcome is a
#: position read, and a worker's redis-py pool refuses more than 100 commands in flight at once
#: ("Too many connections"; benchmarks/README.md, "Scale-out over Redis")
CONNECT_BATCH = 50
#: the project's target: with Redis, at least this share of the embedded broker's deliveries per CPU-second
TARGET_RATIO = 0.7
#: the welcome event and the worker it names (docs/protocol.md): the worker field comes last
WELCOME = re.compile(rb'"eventType":"connection".*?"worker":(\d+)[,}]', re.DOTALL)
#: the harness's own calls to Redis, left out of the counts
HARNESS_COMMANDS = ("info", "config|resetstat", "config|get", "config|set")

CONFIGS = {
    "A": {"hosts": 1, "workers": 1, "redis": False, "what": "1 host, embedded broker, --workers 1"},
    "B": {"hosts": 1, "workers": 1, "redis": True, "what": "1 host with Redis, --workers 1"},
    "C": {"hosts": 2, "workers": 2, "redis": True, "what": "2 hosts x --workers 2, one Redis"},
    # not run unless asked (--config E): C's four workers without Redis, to tell what Redis costs
    # from what four unpinned workers sharing two cores with the load cost
    "E": {"hosts": 1, "workers": 4, "redis": False, "what": "1 host, embedded broker, --workers 4"},
}
DEFAULT_CONFIGS = ["A", "B", "C"]


# -- connections ----------------------------------------------------------------------------


class ClusterSubscriber(Subscriber):
    """benchmarks.load's lean subscriber, which also notes its welcome (and the worker it names):
    with Redis, events published before a connection's welcome are not its to receive."""

    __slots__ = ("welcomed", "worker", "host", "_early")

    def __init__(self, stats: Stats, host: int) -> None:
        super().__init__(stats)
        self.welcomed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.worker: int | None = None
        self.host = host
        self._early = b""

    def data_received(self, data: bytes) -> None:
        if not self.welcomed.done():
            early = self._early + data
            match = WELCOME.search(early)
            if match is not None:
                self.worker = int(match.group(1))
                self.welcomed.set_result(None)
                self._early = b""
            else:
                self._early = early[-65536:]
        super().data_received(data)


class ClusterPublisher(Publisher):
    """benchmarks.load's publisher, which also notes its welcome's worker and counts errors."""

    def __init__(self) -> None:
        super().__init__()
        self.errors = 0
        self.worker: int | None = None
        self.welcomed: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        super().on_ws_frame(transport, frame)
        if frame.msg_type != WSMsgType.TEXT:
            return
        payload = frame.get_payload_as_bytes()
        if payload.startswith(b'{"type":"error"'):
            self.errors += 1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
        elif not self.welcomed.done() and b'"eventType":"connection"' in payload:
            self.worker = worker_of(payload)
            self.welcomed.set_result(None)


def set_latencies(subscribers: list[ClusterSubscriber], keep: bool) -> None:
    """Keep each delivery's latency (the latency phase) or none (warm-up and throughput: less load CPU)."""
    for subscriber in subscribers:
        subscriber.reader.max_latencies = MAX_LATENCIES if keep else 0


async def publish_window(publisher: ClusterPublisher, first: int, count: int, window: int) -> None:
    """Publish first..first+count-1 with at most ``window`` un-acked (every earlier publish is acked)."""
    n, end = first, first + count
    loop = asyncio.get_running_loop()
    while n < end:
        while n < end and n - publisher.acks - publisher.errors < window:
            publisher.publish(n)
            n += 1
        publisher.waiter = loop.create_future()
        await asyncio.wait_for(publisher.waiter, 30)
        if publisher.errors:
            raise RuntimeError(f"the server answered {publisher.errors} publishes with an error")


# -- the processes ----------------------------------------------------------------------------


class Host:
    """One ``fastws serve`` process tree (fastws.server.supervisor and its workers)."""

    def __init__(self, index: int, workers: int, broker: str | None, cpus: list[int] | None) -> None:
        self.index = index
        self.workers = workers
        self.broker = broker
        self.cpus = cpus
        self.process: subprocess.Popen | None = None
        self.log: ServerLog | None = None
        self.tree: ServerTree | None = None
        self.url = ""
        self.start_keys: set = set()

    def start(self) -> None:
        command = [sys.executable, "-m", "fastws", "serve", "--host", HOST, "--port", "0", "--workers", str(self.workers)]
        if self.broker:
            command += ["--broker", self.broker, "--redis-prefix", PREFIX]
        if self.cpus:
            # taskset execs the server: the pid stays the server's, its workers inherit the affinity
            command = ["taskset", "-c", ",".join(map(str, self.cpus)), *command]
        env = {key: value for key, value in os.environ.items() if key not in ("FASTWS_BROKER", "FASTWS_REDIS_PREFIX")}
        env["FASTWS_LOG_LEVEL"] = "info"
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
        self.log = ServerLog(self.process.stderr)

    async def ready(self) -> None:
        assert self.process is not None and self.log is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.log.url() is None or len(self.log.serving()) < self.workers:
            if self.process.poll() is not None:
                raise RuntimeError(f"host {self.index} exited ({self.process.returncode}) while starting")
            if time.monotonic() > deadline:
                raise TimeoutError(f"host {self.index}: not serving within {STARTUP_TIMEOUT:.0f} s")
            await asyncio.sleep(0.02)
        self.url = self.log.url()  # type: ignore[assignment]
        self.tree = ServerTree(self.process.pid)
        while len(self.tree.processes()) < self.workers + 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"host {self.index}: {self.workers} worker processes not found")
            await asyncio.sleep(0.02)
        self.start_keys = {ServerTree.key(p) for p in self.tree.processes()}

    def cpu(self) -> dict:
        assert self.tree is not None
        return ServerTree.cpu(self.tree.processes())

    def writes(self) -> int:
        """write(2)-family calls of the host's processes so far (/proc/PID/io syscw): one per flush
        of a connection's queued frames, so deliveries / writes is the frames each write carries."""
        assert self.tree is not None
        total = 0
        for process in self.tree.processes():
            try:
                total += process.io_counters().write_count
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def status(self, tries: int = 40) -> dict[str, dict]:
        """Every worker's ``cluster.broker`` from the detailed status: worker -> counters. A request
        is answered by the worker the kernel hands its connection to, so it is asked again, each
        time on a new connection, until every worker has answered (at most ``tries`` times)."""
        port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])
        found: dict[str, dict] = {}
        for _ in range(tries):
            connection = http.client.HTTPConnection(HOST, port, timeout=5)
            try:
                connection.request("GET", "/api/websocket/status?detailed=true", headers={"Connection": "close"})
                body = orjson.loads(connection.getresponse().read())
            except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
                break  # the counters are a report, not a check: what was read so far is shown
            finally:
                connection.close()
            websocket = body["websocket"]
            broker = (websocket.get("cluster") or {}).get("broker")
            if broker is not None:
                found[str(websocket["worker"])] = broker
            if len(found) >= self.workers:
                break
        return found

    def stable(self) -> bool:
        """The host's processes at the end are those of the start (no worker restarted)."""
        assert self.tree is not None
        return {ServerTree.key(p) for p in self.tree.processes()} == self.start_keys

    async def stop(self) -> None:
        if self.process is not None and self.log is not None:
            await stop_server(self.process, self.tree, self.log)


class Redis:
    """A fresh redis-server (tests/redisutil.py: loopback, persistence off) and its CPU."""

    def __init__(self, cpus: list[int] | None) -> None:
        from tests.redisutil import RedisServer  # redis-py: only the configurations with Redis need it

        self.server = RedisServer()
        self.cpus = cpus
        self.process: psutil.Process | None = None

    def start(self) -> str:
        self.server.start()
        self.process = psutil.Process(self.server.pid)
        if self.cpus:
            os.sched_setaffinity(self.server.pid, set(self.cpus))
        return self.server.url

    def cpu(self) -> float:
        assert self.process is not None
        times = self.process.cpu_times()
        return times.user + times.system

    def commands(self) -> dict[str, int]:
        return self.server.info_commandstats()

    def stop(self) -> None:
        self.server.stop()


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two INFO commandstats, the harness's own left out."""
    delta = {name: calls - before.get(name, 0) for name, calls in after.items() if name not in HARNESS_COMMANDS}
    return {name: calls for name, calls in sorted(delta.items(), key=lambda kv: -kv[1]) if calls}


def broker_delta(before: dict, after: dict) -> dict:
    """round_trips and events summed over every worker of every host, between two status reads."""
    out = {"round_trips": 0, "events": 0, "workers_seen": 0}
    for key, counters in after.items():
        out["workers_seen"] += 1
        for name in ("round_trips", "events"):
            out[name] += counters.get(name, 0) - before.get(key, {}).get(name, 0)
    for name in ("errors", "timeouts", "gaps_repaired", "missed", "resets", "reconnects", "deaf"):
        out[name] = sum(counters.get(name, 0) for counters in after.values())
    return out


# -- one run --------------------------------------------------------------------------------


def choose_pinning(cpus: list[int], hosts: int, workers: int) -> tuple[list[int] | None, int | None]:
    """(CPUs of the server side, CPU of the load), or (None, None): one worker in all gets the first
    CPUs and the load the last one (benchmarks.load's rule); more workers are not pinned."""
    if len(cpus) >= 2 and hosts * workers == 1:
        return cpus[:-1], cpus[-1]
    return None, None


async def run(name: str, args: argparse.Namespace, cpus: list[int]) -> dict:
    config = CONFIGS[name]
    server_cpus, load_cpu = choose_pinning(cpus, config["hosts"], config["workers"])
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    else:
        os.sched_setaffinity(0, set(cpus))
    redis = Redis(server_cpus) if config["redis"] else None
    hosts: list[Host] = []
    subscribers: list[ClusterSubscriber] = []
    transport: WSTransport | None = None
    try:
        broker = redis.start() if redis is not None else None
        hosts = [Host(i, config["workers"], broker, server_cpus) for i in range(config["hosts"])]
        for host in hosts:
            host.start()
        for host in hosts:
            await host.ready()

        # -- connections: subscribers split over the hosts, each waiting for its welcome ---------
        stats = Stats()
        started = time.perf_counter()
        for index, host in enumerate(hosts):
            share = range(index * args.connections // len(hosts), (index + 1) * args.connections // len(hosts))
            for first in range(share.start, share.stop, CONNECT_BATCH):
                batch = [ClusterSubscriber(stats, index) for _ in range(first, min(first + CONNECT_BATCH, share.stop))]
                await open_subscribers(host.url, batch, TENANT, number_from=first)
                await asyncio.wait_for(asyncio.gather(*(s.welcomed for s in batch)), WELCOME_TIMEOUT)
                subscribers += batch
        connect_seconds = time.perf_counter() - started
        transport, publisher = await ws_connect(ClusterPublisher, f"{hosts[0].url}?tenant_id={TENANT}&user_id=pub")
        await asyncio.wait_for(publisher.welcomed, WELCOME_TIMEOUT)
        per_worker = Counter(f"host{s.host}/worker{s.worker}" for s in subscribers)
        connections = len(subscribers)

        # -- warm-up ------------------------------------------------------------------------------
        set_latencies(subscribers, False)
        n = 0
        await publish_window(publisher, n, WARMUP_EVENTS, args.window)
        n += WARMUP_EVENTS
        if not await wait_until(lambda: stats.delivered >= n * connections, DELIVERY_TIMEOUT):
            raise TimeoutError("warm-up events not delivered")

        # -- latency at a fixed rate ------------------------------------------------------------------
        set_latencies(subscribers, True)
        stats.latencies.clear()
        count = int(args.rate * args.seconds)
        first = n
        cpu0, load0, busy0 = cpu_of(hosts, redis), time.process_time(), machine_busy()
        started = time.perf_counter()
        for i in range(count):
            await asyncio.sleep(max(0.0, started + i / args.rate - time.perf_counter()))
            publisher.publish(first + i)
        n += count
        if not await wait_until(lambda: stats.delivered >= n * connections and publisher.acks >= n, DELIVERY_TIMEOUT):
            raise TimeoutError("latency-phase events not delivered")
        latency_cpu = cpu_of(hosts, redis)["total"] - cpu0["total"]
        latency_load_cpu = time.process_time() - load0
        latency_other = machine_busy() - busy0 - latency_cpu - latency_load_cpu
        latency_wall = time.perf_counter() - started
        latencies = sorted(stats.latencies)
        set_latencies(subscribers, False)
        stats.latencies.clear()

        # -- throughput -------------------------------------------------------------------------------
        status0 = [host.status() for host in hosts] if redis is not None else []
        commands0 = redis.commands() if redis is not None else {}
        first = n
        cpu0, load0, busy0 = cpu_of(hosts, redis), time.process_time(), machine_busy()
        started = time.perf_counter()
        await publish_window(publisher, first, args.events, args.window)
        n += args.events
        if not await wait_until(lambda: publisher.acks >= n, DELIVERY_TIMEOUT):
            raise TimeoutError("throughput-phase publishes not acked")
        acked = time.perf_counter()
        if not await wait_until(lambda: stats.delivered >= n * connections, DELIVERY_TIMEOUT):
            raise TimeoutError("throughput-phase events not delivered")
        delivered = time.perf_counter()
        cpu1, load1, busy1 = cpu_of(hosts, redis), time.process_time(), machine_busy()
        commands1 = redis.commands() if redis is not None else {}
        status1 = [host.status() for host in hosts] if redis is not None else []

        # -- correctness (every event 0..n-1, once, in order, at every subscriber) -------------------
        await asyncio.sleep(0.2)  # anything extra (a duplicate) has time to arrive
        stats.tally(subscribers)
        wrong = [s for s in subscribers if s.count != n or s.reader.last != n - 1 or s.reader.lost
                 or s.reader.duplicated or s.reader.misrouted]
        lost = max(sum(max(0, n - s.count) for s in subscribers), stats.lost)
        acks_ok = publisher.acks == n and publisher.errors == 0
        deliveries = args.events * connections
        cpu = cpu1["total"] - cpu0["total"]
        events_counted = args.events
        commands = command_delta(commands0, commands1)
        scripts = commands.get("evalsha", 0) + commands.get("eval", 0)
        brokers = {}
        if status1:
            merged0 = {f"{h}/{w}": c for h, s in enumerate(status0) for w, c in s.items()}
            merged1 = {f"{h}/{w}": c for h, s in enumerate(status1) for w, c in s.items()}
            brokers = broker_delta(merged0, merged1)
        result = {
            "config": name,
            "what": config["what"],
            "hosts": config["hosts"],
            "workers_per_host": config["workers"],
            "redis": config["redis"],
            "pinned": server_cpus is not None,
            "server_cpus": server_cpus,
            "load_cpu": load_cpu,
            "connections": connections,
            "subscribers_per_worker": dict(sorted(per_worker.items())),
            "publisher": f"host0/worker{publisher.worker}",
            "connect_seconds": round(connect_seconds, 3),
            # latency phase
            "latency_events": count,
            "latency_rate": args.rate,
            "latency_ms_p50": round(percentile(latencies, 0.50) * 1000, 3),
            "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 3),
            "latency_ms_max": round(max(latencies, default=0.0) * 1000, 3),
            "latency_samples": len(latencies),
            "latency_phase_cpu_seconds": round(latency_cpu, 3),
            "latency_phase_wall_seconds": round(latency_wall, 3),
            # the load's own CPU over the phase: near 1.0 per core, its reading sets the latency
            "latency_phase_load_cpu_seconds": round(latency_load_cpu, 3),
            "latency_phase_other_cpu_seconds": round(latency_other, 3),
            # throughput phase
            "events": args.events,
            "window": args.window,
            "deliveries": deliveries,
            "cpu_seconds": round(cpu, 3),
            "cpu_seconds_fastws": round(cpu1["fastws"] - cpu0["fastws"], 3),
            "cpu_seconds_redis": round(cpu1["redis"] - cpu0["redis"], 3),
            "cpu_seconds_by_host": [round(a - b, 3) for a, b in zip(cpu1["hosts"], cpu0["hosts"])],
            "deliveries_per_cpu_second": round(deliveries / cpu) if cpu > 0 else None,
            "fastws_writes": cpu1["writes"] - cpu0["writes"],
            "deliveries_per_write": round(deliveries / max(1, cpu1["writes"] - cpu0["writes"]), 2),
            "acks_per_second": round(args.events / (acked - started)),
            "deliveries_per_second": round(deliveries / (delivered - started)),
            "wall_seconds": round(delivered - started, 3),
            "load_cpu_seconds": round(load1 - load0, 3),
            # the machine's busy CPU-seconds less the server side's and the load's: anything else
            # running meanwhile (another test run, the kernel's own work), to judge a run by
            "other_cpu_seconds": round(busy1 - busy0 - cpu - (load1 - load0), 3),
            "load_reader": implementation(Reader),
            "redis_commands": commands,
            "redis_commands_per_event": round(sum(commands.values()) / events_counted, 3) if redis else None,
            "redis_script_calls_per_event": round(scripts / events_counted, 4) if redis else None,
            "events_per_script_call": round(events_counted / scripts, 2) if scripts else None,
            "broker": brokers or None,
            "events_per_round_trip": round(brokers["events"] / brokers["round_trips"], 2)
            if brokers and brokers["round_trips"] else None,
            # correctness
            "processes_stable": all(host.stable() for host in hosts),
            "server_log_warnings": [line for host in hosts for line in host.log.warnings()  # type: ignore[union-attr]
                                    if "OPEN development mode" not in line][:20],
            "published": n,
            "acks": publisher.acks,
            "publish_errors": publisher.errors,
            "lost": lost,
            "duplicated": stats.duplicated,
            "misrouted": stats.misrouted,
            "subscribers_wrong": len(wrong),
            "correct": not wrong and lost == 0 and stats.duplicated == 0 and stats.misrouted == 0 and acks_ok,
        }
        return result
    except BaseException as exc:
        for host in hosts:
            if host.log is not None:
                for line in host.log.warnings()[:10]:
                    exc.add_note(f"host {host.index} log: {line}")
        raise
    finally:
        for subscriber in subscribers:
            subscriber.close()
        if transport is not None:
            transport.disconnect()
        await asyncio.sleep(0.1)
        for host in hosts:
            await host.stop()
        if redis is not None:
            redis.stop()
        os.sched_setaffinity(0, set(cpus))


def machine_busy() -> float:
    """CPU-seconds the whole machine has been busy, all CPUs: user, nice, system, irq and softirq
    (guest time is in user already; idle, I/O wait and steal are not this machine's work)."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def cpu_of(hosts: list[Host], redis: Redis | None) -> dict:
    """user + system CPU-seconds so far: per host (its process tree), fastws in all, redis-server, total.
    Summed per process, so a process that ended in between would be left out (processes_stable says)."""
    per_host = [sum(host.cpu().values()) for host in hosts]
    fastws = sum(per_host)
    redis_cpu = redis.cpu() if redis is not None else 0.0
    return {"hosts": per_host, "fastws": fastws, "redis": redis_cpu, "total": fastws + redis_cpu,
            "writes": sum(host.writes() for host in hosts)}


# -- rounds and the report ------------------------------------------------------------------------


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


FIGURES = [
    "deliveries_per_cpu_second", "acks_per_second", "deliveries_per_second", "latency_ms_p50", "latency_ms_p99",
    "latency_ms_max", "cpu_seconds", "cpu_seconds_fastws", "cpu_seconds_redis", "redis_commands_per_event",
    "redis_script_calls_per_event", "events_per_script_call", "events_per_round_trip", "latency_phase_cpu_seconds", "latency_phase_load_cpu_seconds",
    "load_cpu_seconds", "other_cpu_seconds", "latency_phase_other_cpu_seconds", "deliveries_per_write",
]


def summarize(runs: list[dict], configs: list[str]) -> dict:
    summary: dict = {}
    for name in configs:
        mine = [r for r in runs if r["config"] == name and "error" not in r]
        entry: dict = {"what": CONFIGS[name]["what"], "runs": len(mine)}
        for figure in FIGURES:
            entry[figure] = median([r.get(figure) for r in mine])
            entry[f"{figure}_per_round"] = [r.get(figure) for r in mine]
        summary[name] = entry
    base = summary.get("A", {}).get("deliveries_per_cpu_second")
    for name in configs:
        if name == "A":
            continue
        value = summary[name]["deliveries_per_cpu_second"]
        ratio = round(value / base, 3) if base and value else None
        summary[f"ratio_{name}_over_A"] = ratio
        if CONFIGS[name]["redis"]:  # the target is Redis' against the embedded broker
            summary[f"target_met_{name}"] = ratio is not None and ratio >= TARGET_RATIO
    summary["target_ratio_min"] = TARGET_RATIO
    summary["all_correct"] = all(r.get("correct") for r in runs)
    return summary


def report(summary: dict, configs: list[str]) -> None:
    def num(value: float | None, digits: int = 0) -> str:
        if value is None:
            return "-"
        return f"{value:,.{digits}f}"

    print("\ncluster: medians over rounds (throughput phase; latency at the fixed rate)", file=sys.stderr)
    for name in configs:
        s = summary[name]
        print(f"  {name} ({s['what']}, {s['runs']} runs): {num(s['deliveries_per_cpu_second'])} deliveries/CPU-s "
              f"(fastws {num(s['cpu_seconds_fastws'], 2)} + redis {num(s['cpu_seconds_redis'], 2)} CPU-s), "
              f"{num(s['acks_per_second'])} acks/s, p50/p99 {num(s['latency_ms_p50'], 2)}/{num(s['latency_ms_p99'], 2)} ms, "
              f"Redis commands/event {num(s['redis_commands_per_event'], 2)}, "
              f"events/script call {num(s['events_per_script_call'], 1)}", file=sys.stderr)
    for name in configs:
        if name != "A" and f"ratio_{name}_over_A" in summary:
            ratio = summary[f"ratio_{name}_over_A"]
            target = (f" (target >= {TARGET_RATIO}: {'met' if summary[f'target_met_{name}'] else 'not met'})"
                      if f"target_met_{name}" in summary else "")
            print(f"  {name}/A deliveries per CPU-second: {ratio}{target}", file=sys.stderr)
    print(f"  all runs correct: {summary['all_correct']}", file=sys.stderr)


def commit() -> str | None:
    """The checked-out commit (with ``+`` when the work tree has changes), for the record."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "") if head.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=1000, help="subscriber connections (one tenant)")
    parser.add_argument("--events", type=int, default=5000, help="events of the throughput phase")
    parser.add_argument("--window", type=int, default=64, help="un-acked publishes in flight")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each configuration, alternating")
    parser.add_argument("--rate", type=float, default=100.0, help="latency phase: events per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency phase: how long")
    parser.add_argument("--config", action="append", choices=list(CONFIGS),
                        help="run these configurations (repeat; default A, B and C; E is C's four workers "
                             "on one host without Redis)")
    args = parser.parse_args()
    if args.connections < 2 or args.events < 1 or args.rounds < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--connections >= 2, --events >= 1, --rounds >= 1, --rate and --seconds > 0")
    configs = [name for name in CONFIGS if name in (args.config or DEFAULT_CONFIGS)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections * 2 + 200)), hard))
    cpus = sorted(os.sched_getaffinity(0))
    runs: list[dict] = []
    began = time.monotonic()
    for round_ in range(args.rounds):
        for name in configs:
            print(f"cluster: round {round_ + 1}/{args.rounds}, {name}: {CONFIGS[name]['what']}", file=sys.stderr)
            try:
                result = uvloop.run(asyncio.wait_for(run(name, args, cpus), RUN_TIMEOUT))
            except Exception as exc:  # a timeout or a crash: recorded, and the exit code says so
                result = {"config": name, "error": f"{type(exc).__name__}: {exc}",
                          "notes": getattr(exc, "__notes__", []), "correct": False}
            result["round"] = round_ + 1
            runs.append(result)
            print(f"cluster:   {result.get('deliveries_per_cpu_second')} deliveries/CPU-s, "
                  f"{result.get('acks_per_second')} acks/s, p99 {result.get('latency_ms_p99')} ms, "
                  f"commands/event {result.get('redis_commands_per_event')}, correct: {result['correct']}"
                  + (f", error: {result['error']}" if "error" in result else ""), file=sys.stderr)
    summary = summarize(runs, configs)
    parameters = {"connections": args.connections, "events": args.events, "window": args.window,
                  "rounds": args.rounds, "rate": args.rate, "seconds": args.seconds, "configs": configs,
                  "warmup_events": WARMUP_EVENTS, "connect_batch": CONNECT_BATCH, "cpus": cpus,
                  "commit": commit(), "wall_seconds": round(time.monotonic() - began, 1)}
    print(orjson.dumps({"parameters": parameters, "summary": summary, "runs": runs}, option=orjson.OPT_INDENT_2).decode())
    report(summary, configs)
    sys.exit(0 if summary["all_correct"] else 1)


if __name__ == "__main__":
    main()
