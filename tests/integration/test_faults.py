"""Faults of one party never stall the rest: a stopped worker, a stopped writer, a stuck flag writer."""

from __future__ import annotations

import asyncio
import os
import random
import signal

from tests.helpers import event_ids
from tests.integration.test_workers import Cluster, cluster, until  # noqa: F401 (the fixture)

STOP = 0.4


async def test_a_stopped_worker_delays_no_other_worker(cluster):
    """Worker B is stopped (SIGSTOP) at random moments while its clients are reading and worker A
    publishes without pause: A's publishes go on being acked during every stop, A's subscribers get
    everything, and B, once continued, delivers every event to its own clients in order."""
    groups = await cluster.spread("stop", count=30)
    _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
    a, b = sorted(groups)[:2]
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
