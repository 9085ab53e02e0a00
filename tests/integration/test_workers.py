"""Several workers under the supervisor: cross-worker delivery, order, restarts, flags, drain, status."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import orjson
import pytest
import websockets

from tests.cluster_util import TIMEOUT, Cluster, until
from tests.helpers import Client, event_ids


@pytest.fixture
async def cluster():
    running = await Cluster.start(2)
    yield running
    await running.stop()


async def test_events_cross_workers(cluster):
    """A publish on one worker reaches subscribers on every worker, each exactly once."""
    groups = await cluster.spread("x")
    workers = sorted(groups)
    publisher = groups[workers[0]][0]
    ids = [(await publisher.publish("tick", {"n": n}))["id"] for n in range(20)]
    for worker in workers:
        for client in groups[worker]:
            received = []
            while len(received) < 20:
                received.append(await client.recv())
            assert [e["id"] for e in received] == ids, f"worker {worker}"
    for clients in groups.values():
        for client in clients:
            await client.close()


async def test_channel_order_is_the_same_on_every_worker(cluster):
    """Two publishers on different workers, interleaved: every subscriber sees the channel in one order, by offset."""
    groups = await cluster.spread("ord")
    a, b = (groups[w][0] for w in sorted(groups)[:2])
    for n in range(30):  # no refs, no waiting: the two workers race
        await a.send({"type": "publish", "event": "e", "payload": {"from": "a", "n": n}})
        await b.send({"type": "publish", "event": "e", "payload": {"from": "b", "n": n}})
    orders = []
    for clients in groups.values():
        for client in clients:
            received = [await client.recv() for _ in range(60)]
            orders.append([(e["data"]["from"], e["data"]["n"]) for e in received])
            assert [e["offset"] for e in received] == sorted(e["offset"] for e in received)
    assert all(order == orders[0] for order in orders)
    for clients in groups.values():
        for client in clients:
            await client.close()


async def test_recovery_on_another_worker(cluster):
    """A client that reconnects to another worker recovers exactly what it missed."""
    groups = await cluster.spread("rec")
    first_worker, other_worker = sorted(groups)[:2]
    client = groups[first_worker][0]
    publisher = groups[other_worker][0]
    epoch = client.welcome["data"]["epoch"]
    await publisher.publish("e", {"n": 0})
    last = (await client.recv())["offset"]
    await client.close()
    missed = [(await publisher.publish("e", {"n": n}))["id"] for n in range(1, 6)]
    for attempt in range(100):
        resumed = await Client.connect(cluster.url, "rec", "again", since=str(last), epoch=epoch)
        if resumed.welcome["data"]["worker"] != first_worker:
            break
        await resumed.close()
    assert resumed.welcome["data"]["worker"] != first_worker
    assert resumed.welcome["data"]["recovered"] is True
    assert event_ids(await resumed.drain()) == missed
    await resumed.close()


async def test_kill_9_of_a_worker_loses_nothing_elsewhere(cluster):
    """kill -9 of one worker: the supervisor starts a new one, and the other worker's clients miss nothing."""
    groups = await cluster.spread("k9")
    status, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
    rows = body["websocket"]["workers"]
    victim_worker = sorted(groups)[1]
    survivor_worker = sorted(groups)[0]
    victim_pid = rows[str(victim_worker)]["pid"]
    publisher = groups[survivor_worker][0]
    watcher = groups[survivor_worker][-1]
    sent = [(await publisher.publish("e", {"n": n}))["id"] for n in range(10)]
    os.kill(victim_pid, signal.SIGKILL)
    for client in groups[victim_worker]:
        await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
    sent += [(await publisher.publish("e", {"n": n}))["id"] for n in range(10, 20)]

    async def replaced() -> bool:
        _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
        row = body["websocket"]["workers"].get(str(victim_worker))
        return row is not None and row["state"] == "running" and row["pid"] != victim_pid

    await cluster.http("PUT", "/api/websocket", body={"flags": {"tenants": {"gone": "off"}}})
    await until(replaced)
    for _ in range(6):  # the flags live in the segment: the new worker has them too
        _, info = await cluster.http("GET", "/api/websocket", {"X-Tenant-ID": "gone"})
        assert info["websocket"]["flags"]["tenants"] == {"gone": "off"}
    sent += [(await publisher.publish("e", {"n": n}))["id"] for n in range(20, 30)]
    assert event_ids(await watcher.drain()) == sent
    assert "worker %d" % victim_worker in cluster.text() and "starting it again" in cluster.text()
    newcomers = await cluster.spread("k9b")  # both workers serve again
    assert len(newcomers) == 2
    for clients in list(groups.values()) + list(newcomers.values()):
        for client in clients:
            await client.close()


async def test_status_aggregates_every_worker(cluster):
    """Status reports the connections and events of all workers, whichever worker answers; detailed lists each."""
    groups = await cluster.spread("st")
    total = sum(len(c) for c in groups.values())
    publisher = next(iter(groups.values()))[0]
    for n in range(5):
        await publisher.publish("e")

    async def counted() -> bool:
        _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
        metrics = body["websocket"]["metrics"]
        return metrics["active_connections"] == total and metrics["events_sent"] == 5 * total and metrics["workers"] == 2

    for _ in range(4):  # several requests, landing on either worker
        await until(counted)
    _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
    rows = body["websocket"]["workers"]
    assert sorted(rows) == ["0", "1"]
    assert sum(row["connections"] for row in rows.values()) == total
    for clients in groups.values():
        for client in clients:
            await client.close()


async def test_flag_flip_reaches_every_worker(cluster):
    """PUT websocket_v2 off: every worker refuses new upgrades (503 with legacy_url) and reports it; on again restores."""
    status, body = await cluster.http("PUT", "/api/websocket", body={"flags": {"websocket_v2": False}})
    assert status == 200 and body["flags"]["websocket_v2"] is False and body["flags"]["source"] == "api"

    async def refused_everywhere() -> bool:
        for _ in range(8):
            try:
                client = await Client.connect(cluster.url, "ff", "u")
            except websockets.InvalidStatus as exc:
                assert exc.response.status_code == 503
                assert orjson.loads(exc.response.body)["error"]["code"] == "rolled_back"
                continue
            await client.close()
            return False
        return True

    await until(refused_everywhere)

    async def reported_everywhere() -> bool:
        for _ in range(8):
            _, info = await cluster.http("GET", "/api/websocket", {"X-Tenant-ID": "ff"})
            if info["websocket"]["nextjs"]["enabled"] or info["websocket"]["legacy"]["status"] != "active":
                return False
        return True

    await until(reported_everywhere)
    status, _ = await cluster.http("POST", "/api/websocket", {"X-Tenant-ID": "ff", "X-User-ID": "u"}, {"event": "e"})
    assert status == 200  # REST publishing keeps working
    await cluster.http("PUT", "/api/websocket", body={"flags": {"websocket_v2": True}})

    async def accepted() -> bool:
        try:
            groups = await cluster.spread("ff2", count=4)
        except websockets.InvalidStatus:
            return False
        for clients in groups.values():
            for client in clients:
                await client.close()
        return True

    await until(accepted)


async def test_delete_disconnects_on_every_worker(cluster):
    """DELETE /api/websocket?tenant_id=T closes that tenant's connections on all workers with 4001 and counts them."""
    groups = await cluster.spread("del")
    other = await Client.connect(cluster.url, "keep", "u")
    total = sum(len(c) for c in groups.values())
    status, body = await cluster.http("DELETE", "/api/websocket?tenant_id=del")
    assert (status, body) == (200, {"success": True, "disconnected": total})
    for clients in groups.values():
        for client in clients:
            await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
            assert client.ws.close_code == 4001
    assert (await other.request({"type": "ping"}))["type"] == "pong"
    await other.close()


async def test_sigterm_drains_every_worker():
    """SIGTERM: clients on every worker get 1001, the supervisor exits 0."""
    cluster = await Cluster.start(2)
    groups = await cluster.spread("drain", count=6)
    assert await cluster.stop() == 0
    for clients in groups.values():
        for client in clients:
            await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
            assert client.ws.close_code == 1001
    assert "stopped" in cluster.text()


async def test_sighup_reloads_without_dropping_connections(tmp_path):
    """SIGHUP reloads limits and config flags from the file; open connections stay; API-set flags win."""
    config = tmp_path / "fastws.toml"
    config.write_text("max_message_size = 65536\n[flags]\nwebsocket_v2 = true\n")
    cluster = await Cluster.start(2, "--config", str(config))
    try:
        groups = await cluster.spread("hup", count=4)
        config.write_text("max_message_size = 1000\n[flags]\nwebsocket_v2 = true\ntenants = { blocked = \"off\" }\n")
        cluster.process.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
            return body["websocket"]["limits"]["maxMessageSize"] == 1000 and "blocked" in body["websocket"]["flags"]["tenants"]

        for _ in range(4):
            await until(reloaded)
        for clients in groups.values():
            for client in clients:
                assert (await client.request({"type": "ping"}))["type"] == "pong"
        with pytest.raises(websockets.InvalidStatus):
            await Client.connect(cluster.url, "blocked", "u")
        await cluster.http("PUT", "/api/websocket", body={"flags": {"tenants": {"blocked": "on"}}})
        cluster.process.send_signal(signal.SIGHUP)  # the file says off, but the API has spoken since
        await asyncio.sleep(0)

        async def api_wins() -> bool:
            _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
            return body["websocket"]["flags"]["tenants"].get("blocked") == "on" and body["websocket"]["flags"]["source"] == "api"

        await until(api_wins)
        for clients in groups.values():
            for client in clients:
                await client.close()
    finally:
        await cluster.stop()


async def test_flag_command_talks_to_the_running_server(cluster):
    """`fastws flag` turns websocket_v2 off and on, sets a tenant override, and shows the flags."""
    base = f"http://{cluster.host}:{cluster.port}"

    async def flag(*args: str) -> tuple[int, dict]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastws", "flag", *args, "--base-url", base, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
        return process.returncode, orjson.loads(out) if out else {}

    code, flags = await flag("websocket_v2", "off")
    assert code == 0 and flags["websocket_v2"] is False
    code, flags = await flag("tenant", "vip", "on")
    assert code == 0 and flags["tenants"] == {"vip": "on"}
    code, flags = await flag("rollout", "40")
    assert code == 0 and flags["rollout_percent"] == 40

    async def everywhere() -> bool:
        for _ in range(6):
            code, shown = await flag("show")
            if (shown["websocket_v2"], shown["tenants"], shown["rollout_percent"]) != (False, {"vip": "on"}, 40):
                return False
        return True

    await until(everywhere)
    vip = await Client.connect(cluster.url, "vip", "u")  # the override wins over the rollback
    await vip.close()
    code, flags = await flag("websocket_v2", "on")
    assert code == 0 and flags["websocket_v2"] is True


async def test_rollback_with_policy_close_closes_open_connections():
    """With existing=close, turning websocket_v2 off closes open connections on every worker with 4002 naming the legacy URL."""
    cluster = await Cluster.start(2, "--legacy-url", "wss://legacy.example/ws")
    try:
        groups = await cluster.spread("pc", count=6)
        status, body = await cluster.http("PUT", "/api/websocket", body={"flags": {"existing": "close", "websocket_v2": False}})
        assert status == 200
        for clients in groups.values():
            for client in clients:
                await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
                assert client.ws.close_code == 4002
                assert "wss://legacy.example/ws" in client.ws.close_reason
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(cluster.url, "pc", "late")
        assert orjson.loads(refused.value.response.body)["legacy_url"] == "wss://legacy.example/ws"
    finally:
        await cluster.stop()


async def test_client_recovers_across_a_worker_restart(cluster):
    """fastws.Client on a worker that is killed reconnects (to any worker) and recovers every event, none twice."""
    from fastws import Client as ResilientClient

    groups = await cluster.spread("wr", count=8)
    publisher = groups[sorted(groups)[0]][0]
    for _ in range(50):
        client = ResilientClient(cluster.url, "wr", "resilient", reconnect_interval=0.05)
        await client.connect()
        if client.welcome["data"]["worker"] != sorted(groups)[0]:
            break
        await client.disconnect()
    victim = client.welcome["data"]["worker"]
    assert victim != sorted(groups)[0]
    sent = [(await publisher.publish("e", {"n": n}))["id"] for n in range(5)]
    _, body = await cluster.http("GET", "/api/websocket/status?detailed=true")
    os.kill(body["websocket"]["workers"][str(victim)]["pid"], signal.SIGKILL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while client.connection_status != "reconnecting" and client.is_connected and loop.time() < deadline:
        await asyncio.sleep(0.01)
    sent += [(await publisher.publish("e", {"n": n}))["id"] for n in range(5, 15)]
    while not client.is_connected and loop.time() < deadline:
        await asyncio.sleep(0.02)
    sent += [(await publisher.publish("e", {"n": n}))["id"] for n in range(15, 20)]
    received = []
    while len(received) < 20:
        received.append((await asyncio.wait_for(client.__anext__(), TIMEOUT))["id"])
    assert received == sent and not client.recovery_failures
    await client.disconnect()
    for clients in groups.values():
        for each in clients:
            await each.close()


async def test_status_sums_client_errors_over_every_worker(cluster):
    """`metrics.errors` counts the error replies of every worker, whichever answers."""
    groups = await cluster.spread("errs", count=8)
    for clients in groups.values():
        for client in clients[:2]:
            assert (await client.request({"type": "nope"}))["type"] == "error"
    expected = sum(min(2, len(clients)) for clients in groups.values())

    async def summed() -> bool:
        answers = [(await cluster.http("GET", "/api/websocket/status"))[1] for _ in range(4)]
        return all(a["websocket"]["metrics"]["errors"] == expected for a in answers)

    await until(summed)
    for clients in groups.values():
        for client in clients:
            await client.close()
