"""Faults of one party never stall the rest: a stopped worker, a stopped writer, a stuck flag writer."""

from __future__ import annotations

import asyncio
import os
import random
import signal

from tests.helpers import event_ids
from tests.cluster_util import Cluster, until
from tests.integration.test_workers import cluster  # noqa: F401 (the fixture)

STOP = 0.4


def sides(groups: dict[int, list]) -> tuple[int, int]:
    """(a, b): the worker with the most connections (at least 2 of them, for a publisher and a
    watcher), and another."""
    a = max(groups, key=lambda worker: len(groups[worker]))
    assert len(groups[a]) >= 2
    return a, next(worker for worker in groups if worker != a)


async def test_a_stopped_worker_delays_no_other_worker(cluster):
    """Worker B is stopped (SIGSTOP) at random moments while its clients are reading and worker A
    publishes without pause: A's publishes go on being acked during every stop, A's subscribers get
    everything, and B, once continued, delivers every event to its own clients in order."""
    groups = await cluster.spread("stop", count=30)
    _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
    a, b = sides(groups)
    b_pid = body["websocket"]["workers"][str(b)]["pid"]
    publisher, a_watcher, b_watcher = groups[a][0], groups[a][-1], groups[b][-1]
    sent: list[str] = []
    acked_during_stop: list[int] = []
    rng = random.Random(14)
    for _ in range(8):
        for n in range(rng.randrange(5, 40)):  # B busy reading, at a random point of it
            sent.append((await publisher.publish("e", {"n": len(sent)}))["id"])
        os.kill(b_pid, signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        stopped_until = loop.time() + STOP
        during = 0
        try:
            while loop.time() < stopped_until:
                sent.append((await publisher.publish("e", {"n": len(sent)}))["id"])
                during += 1
        finally:
            os.kill(b_pid, signal.SIGCONT)
        acked_during_stop.append(during)
    assert all(count >= 5 for count in acked_during_stop), acked_during_stop
    assert event_ids(await a_watcher.drain()) == sent
    assert event_ids(await b_watcher.drain()) == sent  # B caught up from the shared log, in order
    assert "killing it" not in cluster.text()  # B never held the writers' lock while stopped
    for clients in groups.values():
        for client in clients:
            await client.close()


async def test_a_writer_stopped_holding_the_lock_is_killed_and_no_one_waits(cluster):
    """A process stopped while it holds the writers' lock (what a worker stopped by a debugger or
    SIGSTOP right after taking it would be) is killed by the next writer after the lease, and the
    other workers' publishes go on. The holder here is a helper that opens the segment through
    worker B's descriptor (its name is gone from /dev/shm), takes the lock and stops itself: a real
    worker cannot be stopped at that instant from a test."""
    groups = await cluster.spread("lock", count=8)
    _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
    a, b = sorted(groups)[:2]
    b_pid = body["websocket"]["workers"][str(b)]["pid"]
    descriptor = next(f"/proc/{b_pid}/fd/{fd}" for fd in os.listdir(f"/proc/{b_pid}/fd")
                      if "fastws-" in os.readlink(f"/proc/{b_pid}/fd/{fd}"))
    helper = await asyncio.create_subprocess_exec(
        "python3", "-c",
        "import fcntl, os, signal, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.lockf(fd, fcntl.LOCK_EX); print('locked', flush=True); os.kill(os.getpid(), signal.SIGSTOP)",
        descriptor, stdout=asyncio.subprocess.PIPE,
    )
    assert (await asyncio.wait_for(helper.stdout.readline(), 10)).strip() == b"locked"
    publisher, watcher = groups[a][0], groups[b][-1]
    ack = await asyncio.wait_for(publisher.publish("e", {"n": 1}), 10)
    assert ack["type"] == "ack"
    assert await asyncio.wait_for(helper.wait(), 10) == -signal.SIGKILL
    assert "is stopped holding the shared log's writers' lock: killing it" in cluster.text()
    assert event_ids(await watcher.drain()) == [ack["id"]]  # B was never touched and still delivers
    for clients in groups.values():
        for client in clients:
            await client.close()


async def test_sigterm_under_load_delivers_every_acknowledged_publish():
    """SIGTERM while publishers on both workers publish without pause: every publish that was
    acknowledged reaches every connected subscriber, on either worker, before its 1001 close."""
    running = await Cluster.start(2)
    try:
        groups = await running.spread("drain", count=16)
        publishers = [clients[0] for clients in groups.values()]
        subscribers = [c for clients in groups.values() for c in clients[1:]]
        acked: list[str] = []

        async def publish_forever(client) -> None:
            n = 0
            try:
                while True:
                    await client.send({"type": "publish", "event": "e", "payload": {"n": n}, "ref": f"p{n}"})
                    n += 1
                    await asyncio.sleep(0)
            except Exception:
                pass

        async def collect(client) -> list[dict]:
            messages = []
            try:
                while True:
                    messages.append(await client.recv(timeout=15))
            except Exception:
                return messages

        readers = [asyncio.ensure_future(collect(c)) for c in subscribers + publishers]
        writers = [asyncio.ensure_future(publish_forever(p)) for p in publishers]
        await asyncio.sleep(0.5)
        running.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.process.wait(), 20) == 0
        for w in writers:
            w.cancel()
        received = await asyncio.gather(*readers)
        for messages in received[len(subscribers):]:  # the publishers' replies
            acked += [m["id"] for m in messages if m.get("type") == "ack"]
            refused = [m for m in messages if m.get("type") == "error"]
            assert all(m["code"] == "service_unavailable" for m in refused), refused[:3]
        assert len(acked) > 50
        for client, messages in zip(subscribers, received):
            got = {m["id"] for m in messages if m.get("eventType") == "e"}
            assert set(acked) <= got, (len(set(acked) - got), client.welcome["data"]["worker"])
            assert client.ws.close_code == 1001
    finally:
        if running.process.returncode is None:
            running.process.kill()
        await running._reader


async def test_kill_9_under_load_loses_nothing_and_the_killed_workers_clients_recover(cluster):
    """A publisher on worker A publishes without pause to two channels; fastws.Client subscribers sit
    on worker B, which is killed with SIGKILL. A's own subscriber misses nothing; the supervisor
    replaces B within 2 s; every client of B reconnects and recovers both channels: every event once,
    in order, with no recovery failure."""
    from fastws import Client as ResilientClient

    groups = await cluster.spread("k9load", count=8)
    a, _ = sides(groups)
    publisher, watcher = groups[a][0], groups[a][-1]
    for client in groups[a][1:]:
        for channel in ("one", "two"):
            await client.request({"type": "subscribe", "channel": channel})
    clients = []
    for _ in range(100):
        client = ResilientClient(cluster.url, "k9load", f"r{len(clients)}", reconnect_interval=0.05)
        await client.connect()
        if client.welcome["data"]["worker"] != a:
            await client.subscribe("one")
            await client.subscribe("two")
            clients.append(client)
            if len(clients) == 4:
                break
        else:
            await client.disconnect()
    victim = clients[0].welcome["data"]["worker"]
    _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
    victim_pid = body["websocket"]["workers"][str(victim)]["pid"]
    sent: dict[str, list[str]] = {"one:k9load": [], "two:k9load": []}
    stop = asyncio.Event()

    async def publish() -> None:
        n = 0
        while not stop.is_set():
            channel = ("one", "two")[n % 2]
            ack = await publisher.publish("e", {"n": n}, channel=channel)
            sent[ack["channel"] if "channel" in ack else f"{channel}:k9load"].append(ack["id"])
            n += 1

    publishing = asyncio.ensure_future(publish())
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    os.kill(victim_pid, signal.SIGKILL)

    async def replaced() -> bool:
        try:
            _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
        except ConnectionError:  # accepted by the killed worker's socket before the kernel closed it
            return False
        row = body["websocket"]["workers"].get(str(victim))
        return row is not None and row["state"] == "running" and row["pid"] != victim_pid

    await until(replaced)
    replaced_after = loop.time() - killed_at
    await until(lambda: _true(all(c.is_connected for c in clients)))
    await asyncio.sleep(0.3)
    stop.set()
    await publishing
    total = sum(len(ids) for ids in sent.values())
    assert total > 50
    for client in clients:
        got: dict[str, list[str]] = {"one:k9load": [], "two:k9load": []}
        while sum(len(ids) for ids in got.values()) < total:
            event = await asyncio.wait_for(client.__anext__(), 20)
            got[event["channel"]].append(event["id"])
        assert got == sent and not client.recovery_failures
        await client.disconnect()
    drained = await watcher.drain()
    watched = [e for e in drained if e.get("eventType") == "e"]
    assert watched, drained[:3]
    for channel, ids in sent.items():
        assert [e["id"] for e in watched if e["channel"] == channel] == ids
    assert replaced_after < 2.0, replaced_after
    for group in groups.values():
        for each in group:
            await each.close()


async def _true(value: bool) -> bool:
    return value


STORM = int(os.environ.get("FASTWS_STORM_CLIENTS", "600"))


async def test_reconnect_storm_after_a_worker_dies(cluster):
    """Half of ``STORM`` fastws.Client connections (600 by default; 5,000 with FASTWS_STORM_CLIENTS=10000)
    lose their worker at once (kill -9): all reconnect with jittered backoff, are resubscribed and
    recover what was published meanwhile, within 30 s, while clients on the surviving worker are
    served throughout (their publishes acked, nothing refused with a 5xx)."""
    from fastws import Client as ResilientClient

    groups = await cluster.spread("storm", count=4)
    a = sorted(groups)[0]
    publisher, watcher = groups[a][0], groups[a][-1]
    clients = []

    async def one(i: int) -> ResilientClient:
        client = ResilientClient(cluster.url, "storm", f"s{i}", reconnect_interval=0.1, max_reconnect_interval=2.0)
        await client.connect()
        await client.subscribe("news")
        return client

    for first in range(0, STORM, 100):
        clients += await asyncio.gather(*(one(i) for i in range(first, min(first + 100, STORM))))
    victims = [c for c in clients if c.welcome["data"]["worker"] != a]
    assert len(victims) > STORM // 4
    _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
    victim_pid = body["websocket"]["workers"][str(victims[0].welcome["data"]["worker"])]["pid"]
    sent = [(await publisher.publish("e", {"n": n}, channel="news"))["id"] for n in range(3)]
    os.kill(victim_pid, signal.SIGKILL)
    loop = asyncio.get_running_loop()
    started = loop.time()
    while all(c.is_connected for c in victims):  # until the clients notice
        assert loop.time() - started < 10
        await asyncio.sleep(0.01)
    acks_during = 0
    while not all(c.is_connected for c in clients):
        assert loop.time() - started < 30, sum(not c.is_connected for c in clients)
        ack = await publisher.publish("e", {"n": len(sent)}, channel="news")
        assert ack["type"] == "ack", ack
        sent.append(ack["id"])
        acks_during += 1
        await asyncio.sleep(0.02)
    sent += [(await publisher.publish("e", {"n": n}, channel="news"))["id"] for n in range(len(sent), len(sent) + 3)]
    assert acks_during > 0

    async def received(client) -> list[str]:
        ids = []
        while len(ids) < len(sent):
            ids.append((await asyncio.wait_for(client.__anext__(), 30))["id"])
        return ids

    for first in range(0, len(clients), 200):
        batch = clients[first:first + 200]
        for client, ids in zip(batch, await asyncio.gather(*(received(c) for c in batch))):
            assert ids == sent and not client.recovery_failures
    assert [e["id"] for e in await watcher.drain() if e.get("eventType") == "e"] == []  # not subscribed to news
    await asyncio.gather(*(c.disconnect() for c in clients))
    for group in groups.values():
        for each in group:
            await each.close()


async def test_a_worker_that_lost_its_place_in_the_log_closes_with_4009_and_clients_recover():
    """Worker B is stopped while the shared log (1 MiB here) wraps past it. Once continued, it finds
    the loss and closes its clients with 4009; a fastws.Client reconnects and is either given what it
    missed or told it cannot be (recovery_failures): never a silent gap. Worker A is not affected."""
    from fastws import Client as ResilientClient

    running = await Cluster.start(2, env={"FASTWS_HISTORY_TOTAL_BYTES": str(1024 * 1024)})
    try:
        groups = await running.spread("lost", count=8)
        a, b = sides(groups)
        publisher, a_watcher = groups[a][0], groups[a][-1]
        raw = groups[b][0]
        resilient = None
        for i in range(50):
            client = ResilientClient(running.url, "lost", f"r{i}", reconnect_interval=0.05)
            await client.connect()
            if client.welcome["data"]["worker"] == b:
                resilient = client
                break
            await client.disconnect()
        assert resilient is not None
        _, body = await running.http("GET", "/api/websocket/status?detailed=true")
        b_pid = body["websocket"]["workers"][str(b)]["pid"]
        first = (await publisher.publish("e", {"n": -1}))["id"]
        assert (await asyncio.wait_for(resilient.__anext__(), 10))["id"] == first
        os.kill(b_pid, signal.SIGSTOP)
        try:
            sent = [(await publisher.publish("e", {"n": n, "blob": "x" * 2000}))["id"] for n in range(1500)]
        finally:
            os.kill(b_pid, signal.SIGCONT)
        sent.append((await publisher.publish("e", {"n": 1500}))["id"])  # wakes B: it finds the loss
        await asyncio.wait_for(raw.ws.wait_closed(), 20)
        assert raw.ws.close_code == 4009
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not (resilient.is_connected and resilient.reconnect_attempts == 0) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        assert resilient.is_connected
        got = []
        last = (await publisher.publish("e", {"n": 1501}))["id"]
        while not got or got[-1] != last:
            got.append((await asyncio.wait_for(resilient.__anext__(), 20))["id"])
        if resilient.recovery_failures:  # told: history no longer held all it missed
            assert resilient.recovery_failures == ["tenant:lost"]
        else:  # or given everything, once, in order
            assert got == sent + [last]
        assert [e["id"] for e in await a_watcher.drain() if e.get("eventType") == "e"] == [first, *sent, last]
        assert "with 4009 after losing" in running.text()
        await resilient.disconnect()
        for clients in groups.values():
            for client in clients:
                if client is not raw:
                    await client.close()
    finally:
        await running.stop()
