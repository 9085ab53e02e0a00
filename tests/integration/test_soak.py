"""Soak: mixed load with churn on 2 workers; memory flat after warm-up, descriptors and per-tenant
state back to the baseline. 45 s by default (uvloop only); 30 minutes with --run-slow."""

from __future__ import annotations

import asyncio
import os
import random
import time

import psutil
import pytest

from tests.helpers import Client
from tests.integration.test_slow_consumer import StalledClient
from tests.cluster_util import Cluster

MIB = 2**20


def worker_pids(cluster: Cluster) -> list[int]:
    return [child.pid for child in psutil.Process(cluster.process.pid).children()]


def uss(pids: list[int]) -> int:
    """The workers' private memory (USS): pages shared between them (the segment) are not counted."""
    return sum(psutil.Process(pid).memory_full_info().uss for pid in pids)


def descriptors(pids: list[int]) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


async def churn(cluster: Cluster, seconds: float, rng: random.Random, samples: list[tuple[float, int]],
                pids: list[int]) -> int:
    """Each round: 20 clients connect (10 tenants), subscribe to one of 50 channels, a publisher
    publishes 40 events to random channels (some of them large), 2 stalled clients hold a backlog,
    and the previous round's clients leave. Returns the number of rounds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    previous: list = []
    rounds = 0
    publisher = await Client.connect(cluster.url, "soak0", "pub")
    while loop.time() < end:
        clients = []
        for i in range(20):
            client = await Client.connect(cluster.url, f"soak{rng.randrange(10)}", f"u{i}")
            await client.request({"type": "subscribe", "channel": f"ch{rng.randrange(50)}"})
            clients.append(client)
        stalled = [await StalledClient.connect(cluster, "soak0", f"slow{i}") for i in range(2)]
        for n in range(40):
            size = 20_000 if n % 10 == 0 else 200
            await publisher.publish("e", {"n": n, "blob": "x" * size}, channel=f"ch{rng.randrange(50)}",
                                    priority=rng.choice(["low", "normal", "high"]))
        for client in previous:
            if isinstance(client, StalledClient):
                client.close()
            else:
                await client.close()
        previous = clients + stalled
        rounds += 1
        samples.append((time.monotonic(), uss(pids)))
    for client in previous:
        if isinstance(client, StalledClient):
            client.close()
        else:
            await client.close()
    await publisher.close()
    return rounds


def slope_per_10_minutes(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of memory over time, in MiB per 10 minutes."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    num = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    den = sum((t - mean_t) ** 2 for t, _ in samples)
    return num / den * 600 / MIB


async def soak(seconds: float) -> tuple[float, float, int]:
    # a small history, so the shared log wraps during warm-up: what grows after it is a leak
    cluster = await Cluster.start(2, env={"FASTWS_HISTORY_TOTAL_BYTES": str(8 * MIB)})
    try:
        pids = worker_pids(cluster)
        await asyncio.sleep(0.5)
        fds0 = descriptors(pids)
        samples: list[tuple[float, int]] = []
        rounds = await churn(cluster, seconds, random.Random(7), samples, pids)
        warm = [s for s in samples if s[0] >= samples[0][0] + seconds / 4]
        slope = slope_per_10_minutes(warm)
        growth = (warm[-1][1] - warm[0][1]) / MIB

        async def settled() -> bool:
            return descriptors(pids) <= fds0 + 2

        deadline = time.monotonic() + 20
        while not await settled():
            assert time.monotonic() < deadline, (descriptors(pids), fds0)
            await asyncio.sleep(0.1)
        for _ in range(8):  # whichever worker answers: no connections, no subscriptions left
            _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
            for name, tenant in body["websocket"]["tenants"].items():
                assert tenant["connections"] == 0 and not any(tenant["channels"].values()), (name, tenant)
        assert sorted(worker_pids(cluster)) == sorted(pids)  # no worker died on the way
        print(f"soak {seconds:.0f} s: {rounds} rounds, USS slope {slope:+.2f} MiB/10 min, growth after warm-up "
              f"{growth:+.2f} MiB, descriptors back to {descriptors(pids)} (baseline {fds0})")
        return slope, growth, rounds
    finally:
        await cluster.stop()


@pytest.mark.uvloop_only
@pytest.mark.timeout(300)
async def test_soak_short():
    """45 s of churn: after warm-up the workers' private memory grows by less than 8 MiB."""
    _, growth, rounds = await soak(45)
    assert rounds > 10
    assert growth < 8, growth


@pytest.mark.slow
@pytest.mark.uvloop_only
@pytest.mark.timeout(2400)
async def test_soak_thirty_minutes():
    """30 minutes of churn (--run-slow): memory slope under 1 MiB per 10 minutes after warm-up."""
    slope, _, _ = await soak(1800)
    assert slope < 1.0, slope
