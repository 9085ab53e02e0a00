"""Several hosts over Redis: two `fastws serve --workers 2` processes sharing real redis-servers.

Each test starts its own redis-server(s) (tests/redisutil.py, persistence
off) and two hosts given the same ``--broker`` and ``--redis-prefix``, on
loopback; clients reach every worker of both hosts (the welcome names the
worker). What is checked is what docs/protocol.md and the cluster modules
(fastws/cluster.py, fastws/server/redis_broker.py, cluster_plane.py) promise
with ``--broker redis://...``: one order and one (offset, epoch) numbering
per channel on every host, recovery and history on any host, flags, status
and DELETE across hosts, tenants and deployments kept apart, and what a
client sees while Redis is killed, stopped, split over two servers, or deaf:
refusals within the broker timeout, 4009 and ``recovered:false`` for a stream
that restarted, gaps filled from the stream or reported ``missed``, nothing
twice.

With Redis a publisher's own copy of an event may come after a later reply,
so a ping is no barrier: tests wait for the events they expect (or for one
published after them on the same channel).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any

import orjson
import pytest
import websockets

from fastws.cluster import Keys, shard_of
from tests.cluster_util import Cluster
from tests.helpers import Client
from tests.redisutil import FaultProxy, RedisServer

pytestmark = [pytest.mark.uvloop_only, pytest.mark.timeout(45)]

#: a publish refused while Redis does not answer is answered within broker_timeout (1 s) and some slack
REFUSAL_BOUND = 1.5
#: a flag change reaches every worker of every host within this
FLAG_BOUND = 0.2


# -- hosts and clients ------------------------------------------------------------------------


class Hosts:
    """Hosts of one deployment (same brokers, same prefix), and the clients a test opened on them.

    ``close()`` closes the clients and stops every host it started (and checks that each stopped
    cleanly and logged no traceback)."""

    def __init__(self, brokers: list[str], prefix: str) -> None:
        self.brokers = brokers
        self.prefix = prefix
        self.hosts: list[Cluster] = []
        #: hosts stopped or started besides ``hosts`` (replaced ones, other deployments)
        self.others: list[Cluster] = []
        self.clients: list[Client] = []

    def args(self, prefix: str | None = None) -> list[str]:
        return [arg for url in self.brokers for arg in ("--broker", url)] + ["--redis-prefix", prefix or self.prefix]

    async def start(self, count: int = 2) -> "Hosts":
        started = await asyncio.gather(*(Cluster.start(2, *self.args()) for _ in range(count)), return_exceptions=True)
        self.hosts = [host for host in started if isinstance(host, Cluster)]
        failed = [host for host in started if not isinstance(host, Cluster)]
        if failed:
            await self.close()
            raise failed[0]
        return self

    async def replace(self, index: int) -> Cluster:
        """Stop host ``index`` (SIGTERM: it drains) and start a new one in its place."""
        old = self.hosts[index]
        assert await old.stop() == 0
        self.others.append(old)
        self.hosts[index] = await Cluster.start(2, *self.args())
        return self.hosts[index]

    async def start_other(self, prefix: str) -> Cluster:
        """A host of another deployment on the same Redis: another --redis-prefix."""
        host = await Cluster.start(2, *self.args(prefix))
        self.others.append(host)
        return host

    def __getitem__(self, index: int) -> Cluster:
        return self.hosts[index]

    async def connect(self, host: Cluster, tenant: str, user: str = "u", **query: str) -> Client:
        client = await Client.connect(host.url, tenant, user, **query)
        self.clients.append(client)
        return client

    async def spread(self, host: Cluster, tenant: str, count: int = 4, **query: str) -> dict[int, list[Client]]:
        """Clients on every worker of a host (at least ``count`` in all), by worker."""
        groups = await host.spread(tenant, count, **query)
        for clients in groups.values():
            self.clients.extend(clients)
        return groups

    async def everywhere(self, tenant: str, count: int = 2) -> list[Client]:
        """Clients of ``tenant`` on every worker of every host (at least ``count`` per host)."""
        return [client for host in self.hosts for clients in (await self.spread(host, tenant, count)).values()
                for client in clients]

    async def close(self) -> None:
        for client in self.clients:
            try:
                await asyncio.wait_for(client.close(), 5)
            except (asyncio.TimeoutError, OSError, websockets.WebSocketException):
                pass
        hosts = self.hosts + self.others
        codes = await asyncio.gather(*(host.stop() for host in hosts), return_exceptions=True)
        for host, code in zip(hosts, codes):
            assert code == 0, f"a host did not stop cleanly ({code!r}):\n{host.text()[-3000:]}"
            assert "Traceback" not in host.text(), host.text()


def new_prefix() -> str:
    return "fw" + uuid.uuid4().hex[:8]


@pytest.fixture
async def deployment(redis_server: RedisServer):
    """Two hosts, each `fastws serve --workers 2`, sharing `redis_server`."""
    hosts = await Hosts([redis_server.url], new_prefix()).start()
    try:
        yield hosts
    finally:
        await hosts.close()


# -- helpers ---------------------------------------------------------------------------------


def now() -> float:
    return asyncio.get_running_loop().time()


async def rest_publish(host: Cluster, tenant: str, body: Any, user: str = "api") -> tuple[int, dict]:
    return await host.http("POST", "/api/websocket", {"X-Tenant-ID": tenant, "X-User-ID": user}, body)


async def subscribe(client: Client, channel: str, **fields: Any) -> dict:
    ack = await client.request({"type": "subscribe", "channel": channel, **fields})
    assert ack["type"] == "ack", ack
    return ack


def is_event(message: dict) -> bool:
    return "eventType" in message and message["eventType"] != "connection"


async def read_until(client: Client, done, timeout: float = 10.0) -> list[dict]:
    """Messages (events, missed notices, anything) up to and including the first for which
    ``done(message)`` holds."""
    received: list[dict] = []
    deadline = now() + timeout
    while True:
        left = deadline - now()
        assert left > 0, f"not received in {timeout} s; got {[m.get('offset', m.get('type')) for m in received]}"
        message = await client.recv(left)
        received.append(message)
        if done(message):
            return received


async def read_events(client: Client, channel: str, count: int, timeout: float = 10.0) -> list[dict]:
    """The next ``count`` events of ``channel`` (other messages are checked to be no events of it)."""
    events: list[dict] = []

    def enough(message: dict) -> bool:
        if is_event(message) and message["channel"] == channel:
            events.append(message)
        return len(events) >= count

    if count:
        await read_until(client, enough, timeout)
    return events


def until_id(event_id: str):
    return lambda message: message.get("id") == event_id


def events_of(messages: list[dict], channel: str) -> list[dict]:
    return [m for m in messages if is_event(m) and m["channel"] == channel]


def check_no_silent_gap(messages: list[dict], channel: str, after: int) -> list[int]:
    """The offsets of ``channel``'s events in ``messages``, checked: each is the one after the
    last, or follows a ``missed`` notice of the channel that names exactly the offsets between.
    ``after`` is the position the stream was followed from."""
    offsets: list[int] = []
    last = after
    for message in messages:
        if message.get("type") == "missed":
            notice = message["channels"].get(channel)
            if notice is not None:
                assert notice["first"] == last + 1, (notice, last)
                last = notice["last"]
        elif is_event(message) and message["channel"] == channel:
            assert message["offset"] == last + 1, (
                f"{channel}: offset {message['offset']} after {last} without a missed notice")
            last = message["offset"]
            offsets.append(last)
    return offsets


async def refused_upgrade(host: Cluster, tenant: str) -> bool:
    """Whether a new upgrade to ``host`` is refused with 503 rolled_back (an accepted one is closed)."""
    try:
        client = await Client.connect(host.url, tenant, "probe")
    except websockets.InvalidStatus as exc:
        assert exc.response.status_code == 503, exc.response.status_code
        assert orjson.loads(exc.response.body)["error"]["code"] == "rolled_back"
        return True
    await client.close()
    return False


async def closed_with(client: Client, timeout: float = 10.0) -> int:
    """Read (and drop) messages until the server closes the connection; its close code."""
    try:
        while True:
            await asyncio.wait_for(client.ws.recv(), timeout)
    except websockets.ConnectionClosed:
        pass
    return client.ws.close_code


async def status(host: Cluster, detailed: bool = False) -> dict:
    code, body = await host.http("GET", "/api/websocket/status" + ("?detailed=true" if detailed else ""))
    assert code == 200, body
    return body["websocket"]


# -- 1. delivery ------------------------------------------------------------------------------


async def test_cross_host_delivery_is_exactly_once_and_in_one_order(deployment):
    """Subscribers on both workers of both hosts; publishers on every worker of both hosts (WebSocket)
    and on both hosts (REST, single and batch), all at once, to one channel: every subscriber gets
    every event once, all in the same order, offsets 1..N of the one epoch the acks gave."""
    h1, h2 = deployment[0], deployment[1]
    tenant, channel = "ord", "orders:ord"
    subscribers: list[tuple[str, Client]] = []
    for name, host in (("h1", h1), ("h2", h2)):
        for worker, clients in (await deployment.spread(host, tenant, count=6)).items():
            subscribers += [(f"{name}/w{worker}", client) for client in clients]
    assert len({where for where, _ in subscribers}) == 4
    acks = [await subscribe(client, "orders", ref="s") for _, client in subscribers]
    assert {ack["offset"] for ack in acks} == {0}
    epochs = {ack["epoch"] for ack in acks}
    assert len(epochs) == 1, epochs
    # one publisher per worker (they are subscribers too: their own events come back to them)
    publishers = {}
    for where, client in subscribers:
        publishers.setdefault(where, client)
    assert len(publishers) == 4

    acked: dict[str, int] = {}

    async def ws_publisher(where: str, client: Client) -> list[str]:
        ids = []
        for n in range(15):
            ack = await client.publish("tick", {"by": where, "n": n}, channel="orders")
            assert ack["type"] == "ack", ack
            assert ack["id"] not in {m.get("id") for m in client.backlog}, "the ack comes before the own copy"
            acked[ack["id"]] = ack["offset"]
            ids.append(ack["id"])
        return ids

    async def rest_publisher(where: str, host: Cluster) -> list[str]:
        ids = []
        for n in range(10):
            code, body = await rest_publish(host, tenant, {"channel": "orders", "event": "rest", "payload": {"n": n}})
            assert code == 200, body
            acked[body["id"]] = body["offset"]
            ids.append(body["id"])
        code, body = await rest_publish(host, tenant, [{"channel": "orders", "event": "batch", "payload": {"n": n}}
                                                       for n in range(8)])
        assert code == 200, body
        assert body["offsets"] == list(range(body["offsets"][0], body["offsets"][0] + 8)), "a batch is consecutive"
        acked.update(zip(body["ids"], body["offsets"]))
        return ids + body["ids"]

    sequences = await asyncio.gather(*(ws_publisher(where, client) for where, client in publishers.items()),
                                     rest_publisher("h1", h1), rest_publisher("h2", h2))
    total = sum(len(ids) for ids in sequences)
    assert total == 4 * 15 + 2 * 18 == len(acked)
    assert sorted(acked.values()) == list(range(1, total + 1)), "acks: each offset once"
    code, body = await rest_publish(h2, tenant, {"channel": "orders", "event": "last"})
    assert (code, body["offset"]) == (200, total + 1)
    sentinel = body["id"]

    orders = []
    for where, client in subscribers:
        messages = await read_until(client, until_id(sentinel))
        assert not [m for m in messages if m.get("type") == "missed"], where
        events = events_of(messages, channel)
        assert [e["offset"] for e in events] == list(range(1, total + 2)), where
        assert all(acked[e["id"]] == e["offset"] for e in events[:-1]), where
        orders.append([e["id"] for e in events])
    assert all(order == orders[0] for order in orders), "subscribers saw different orders"
    position = {event_id: index for index, event_id in enumerate(orders[0])}
    for ids in sequences:  # each publisher's events in the order it published them
        assert [position[i] for i in ids] == sorted(position[i] for i in ids)
    # nothing after the sentinel: nothing was delivered twice
    for where, client in subscribers:
        assert not [m for m in await client.drain() if is_event(m) and m["channel"] == channel], where
    # the one epoch, from any host
    for host in (h1, h2):
        code, history = await host.http("GET", "/api/websocket/history?channel=orders&limit=1000",
                                        {"X-Tenant-ID": tenant})
        assert code == 200 and history["epoch"] in epochs and history["offset"] == total + 1
        assert [e["id"] for e in history["events"]] == orders[0]


# -- 2. recovery on another host ---------------------------------------------------------------


async def test_a_client_moving_to_another_host_recovers_exactly_what_it_missed(deployment):
    """Subscribed on host 1 (tenant channel and a named one), disconnected, events published on
    host 1 meanwhile; reconnecting to host 2 with since/epoch (URL for the tenant channel, subscribe
    for the named one) gives recovered:true, exactly the missed events, then live ones."""
    h1, h2 = deployment[0], deployment[1]
    tenant = "mv"
    home, notes = "tenant:mv", "notes:mv"
    publisher = await deployment.connect(h1, tenant, "pub")
    mover = await deployment.connect(h1, tenant, "mover")
    tenant_epoch = mover.welcome["data"]["epoch"]
    ack = await subscribe(mover, "notes", ref=1)
    notes_epoch = ack["epoch"]

    seen = []
    for n in range(3):
        seen.append((await publisher.publish("t", {"n": n}))["id"])
        seen.append((await publisher.publish("n", {"n": n}, channel="notes"))["id"])
    messages = await read_until(mover, until_id(seen[-1]))
    assert [e["id"] for e in events_of(messages, home) + events_of(messages, notes)] == seen[0::2] + seen[1::2]
    last_home = events_of(messages, home)[-1]["offset"]
    last_notes = events_of(messages, notes)[-1]["offset"]
    await mover.close()

    missed_home = [(await publisher.publish("t", {"n": n}))["id"] for n in range(3, 7)]
    missed_notes = []
    for n in range(3, 7):
        code, body = await rest_publish(h1, tenant, {"channel": "notes", "event": "n", "payload": {"n": n}})
        assert code == 200, body
        missed_notes.append(body["id"])

    moved = await deployment.connect(h2, tenant, "mover", since=str(last_home), epoch=tenant_epoch)
    data = moved.welcome["data"]
    assert (data["recovered"], data["epoch"], data["offset"]) == (True, tenant_epoch, last_home + 4)
    ack = await subscribe(moved, "notes", since=last_notes, epoch=notes_epoch, ref=2)
    assert (ack["recovered"], ack["epoch"], ack["offset"]) == (True, notes_epoch, last_notes + 4)
    # the welcome's replay came before the ack (request() kept it), the subscribe's after it
    assert [m["id"] for m in moved.backlog] == missed_home
    replay = await read_events(moved, notes, 4)
    assert [e["id"] for e in replay] == missed_notes
    assert [e["offset"] for e in replay] == list(range(last_notes + 1, last_notes + 5))

    live_home = [(await publisher.publish("t", {"n": n}))["id"] for n in range(7, 9)]
    live_notes = [(await publisher.publish("n", {"n": n}, channel="notes"))["id"] for n in range(7, 9)]
    messages = await read_until(moved, until_id(live_notes[-1]))
    assert [e["id"] for e in events_of(messages, home)] == live_home
    assert [e["id"] for e in events_of(messages, notes)] == live_notes
    assert [e["offset"] for e in events_of(messages, home)] == [last_home + 5, last_home + 6]
    assert not [m for m in await moved.drain() if is_event(m)], "nothing twice"

    # a position of another epoch is answered recovered:false, with no replay
    stale = await deployment.connect(h2, tenant, "stale", since="1", epoch="0000000000000000")
    assert (stale.welcome["data"]["recovered"], stale.welcome["data"]["offset"]) == (False, last_home + 6)
    assert not [m for m in await stale.drain() if is_event(m)]


async def test_joining_while_events_flow_gets_each_event_once(deployment):
    """While host 1 publishes without pause, clients on host 2 subscribe (the ack's offset), resume
    a named channel (since/epoch on subscribe) and resume the tenant channel (since/epoch on the
    URL), over and over: each gets its replay, then live events from the one after its position:
    never an event at or before the position it was given, never one twice."""
    h1, h2 = deployment[0], deployment[1]
    tenant, hot = "flow", "hot:flow"
    # the channels stay watched on every worker of host 2, so each worker follows them live
    for clients in (await deployment.spread(h2, tenant, count=2)).values():
        for client in clients:
            await subscribe(client, "hot", ref=1)
    stop = asyncio.Event()

    async def pump() -> None:
        n = 0
        while not stop.is_set():
            channel = "hot" if n % 2 else None
            code, body = await rest_publish(h1, tenant, {"event": "e", **({"channel": channel} if channel else {})})
            assert code == 200, body
            n += 1

    pumps = [asyncio.ensure_future(pump()) for _ in range(4)]
    try:
        seed = await deployment.connect(h2, tenant, "seed")
        # where the last client of each channel left off: the next one resumes from there
        last = {f"tenant:{tenant}": (seed.welcome["data"]["epoch"], seed.welcome["data"]["offset"])}
        ack = await subscribe(seed, "hot", ref=1)
        last[hot] = (ack["epoch"], ack["offset"])
        await seed.close()
        started, rounds = now(), 0
        while now() - started < 3.0:
            mode = rounds % 3
            if mode == 2:  # resume the tenant channel on connect
                channel = f"tenant:{tenant}"
                epoch, since = last[channel]
                client = await Client.connect(h2.url, tenant, "j", since=str(since), epoch=epoch)
                answer = client.welcome["data"]
            else:
                client = await Client.connect(h2.url, tenant, "j")
                channel = hot
                epoch, since = last[channel]
                if mode == 1:  # resume the named channel
                    answer = await subscribe(client, "hot", ref=1, since=since, epoch=epoch)
                else:
                    answer = await subscribe(client, "hot", ref=1)
                    since = answer["offset"]
            assert answer.get("recovered", True) is True and answer["epoch"] == epoch, answer
            position = answer["offset"]
            expected = position - since + 3  # the replay, then three live events
            events: list[dict] = []
            while len(events) < expected:
                message = await client.recv(5)
                if is_event(message) and message["channel"] == channel:
                    events.append(message)
            await client.close()
            offsets = [e["offset"] for e in events]
            assert offsets == list(range(since + 1, since + 1 + expected)), (
                f"mode {mode}: since {since}, position {position}, then offsets {offsets[:40]}")
            last[channel] = (epoch, offsets[-1])
            rounds += 1
        assert rounds > 30
    finally:
        stop.set()
        await asyncio.gather(*pumps)


# -- 3. history --------------------------------------------------------------------------------


async def test_history_of_events_published_on_another_host(deployment):
    """GET /api/websocket/history on host 2 lists what host 1 published, exactly as delivered."""
    h1, h2 = deployment[0], deployment[1]
    tenant = "hist"
    publisher = await deployment.connect(h1, tenant, "pub")
    watcher = await deployment.connect(h2, tenant, "bob")
    await subscribe(watcher, "docs", ref=1)
    ws_ids = [(await publisher.publish("e", {"n": n}))["id"] for n in range(5)]
    code, batch = await rest_publish(h1, tenant, [{"channel": "docs", "event": "d", "payload": {"n": n}}
                                                  for n in range(4)])
    assert code == 200
    code, targeted = await rest_publish(h1, tenant, {"channel": "docs", "event": "secret", "targetUserId": "bob"})
    assert code == 200
    delivered = await read_until(watcher, until_id(targeted["id"]))

    code, body = await h2.http("GET", "/api/websocket/history", {"X-Tenant-ID": tenant})
    assert code == 200 and body["channel"] == "tenant:hist"
    assert (body["epoch"], body["offset"]) == (publisher.welcome["data"]["epoch"], 5)
    assert [e["id"] for e in body["events"]] == ws_ids
    assert body["events"] == events_of(delivered, "tenant:hist")

    code, body = await h2.http("GET", "/api/websocket/history?channel=docs", {"X-Tenant-ID": tenant})
    assert code == 200 and body["offset"] == 5
    assert [e["id"] for e in body["events"]] == batch["ids"], "the targeted event is for bob only"
    code, body = await h2.http("GET", "/api/websocket/history?channel=docs", {"X-Tenant-ID": tenant,
                                                                             "X-User-ID": "bob"})
    assert body["events"] == events_of(delivered, "docs:hist")
    assert [e["id"] for e in body["events"]] == batch["ids"] + [targeted["id"]]
    code, body = await h2.http("GET", "/api/websocket/history?channel=docs&since=1&limit=2", {"X-Tenant-ID": tenant})
    assert [e["offset"] for e in body["events"]] == [2, 3]
    # the same from host 1 and from the other worker of host 2: whoever answers
    for host in (h1, h2, h2, h2):
        code, again = await host.http("GET", "/api/websocket/history", {"X-Tenant-ID": tenant})
        assert [e["id"] for e in again["events"]] == ws_ids
    code, body = await h2.http("GET", "/api/websocket/history?channel=docs:other", {"X-Tenant-ID": tenant})
    assert code == 403 and body["error"]["code"] == "forbidden_channel"


# -- 4. isolation ------------------------------------------------------------------------------


async def test_tenants_and_deployments_stay_apart_across_hosts(deployment, redis_server):
    """Tenant B's subscribers on host 2 never see tenant A's events from host 1 (tenant channel, a
    channel of the same name); a second deployment (another --redis-prefix) on the same Redis sees
    nothing of the first, numbers its own streams, and lists only its own hosts."""
    h1, h2 = deployment[0], deployment[1]
    a_watchers = [c for cs in (await deployment.spread(h2, "acme", count=2)).values() for c in cs]
    b_watchers = [c for cs in (await deployment.spread(h2, "beta", count=2)).values() for c in cs]
    for client in a_watchers + b_watchers:
        await subscribe(client, "news", ref=1)
    intruder = b_watchers[0]
    refused = await intruder.request({"type": "subscribe", "channel": "news:acme"})
    assert (refused["type"], refused["code"]) == ("error", "forbidden_channel")

    h3 = await deployment.start_other(new_prefix())
    far = [c for cs in (await deployment.spread(h3, "acme", count=2)).values() for c in cs]
    for client in far:
        assert client.welcome["data"]["offset"] == 0
        await subscribe(client, "news", ref=1)

    publisher = await deployment.connect(h1, "acme", "pub")
    sent_home = [(await publisher.publish("a", {"n": n}))["id"] for n in range(5)]
    code, body = await rest_publish(h1, "acme", [{"channel": "news", "event": "a"}] * 5)
    assert code == 200
    sent_news = body["ids"]
    for client in a_watchers:  # the control: tenant A's own subscribers on host 2 get them
        messages = await read_until(client, until_id(sent_news[-1]))
        assert [e["id"] for e in events_of(messages, "tenant:acme")] == sent_home
        assert [e["id"] for e in events_of(messages, "news:acme")] == sent_news

    # each of B's channels and the far deployment's gets an event of its own, after A's: it arrives
    # alone, with offset 1 (A's events neither arrive nor count in their numbering)
    code, b_home = await rest_publish(h2, "beta", {"event": "b"})
    assert (code, b_home["offset"]) == (200, 1)
    code, b_news = await rest_publish(h1, "beta", {"channel": "news", "event": "b"})
    assert (code, b_news["offset"]) == (200, 1)
    code, far_home = await rest_publish(h3, "acme", {"event": "far"})
    assert (code, far_home["offset"]) == (200, 1)
    code, far_news = await rest_publish(h3, "acme", {"channel": "news", "event": "far"})
    assert (code, far_news["offset"]) == (200, 1)
    for client in b_watchers:
        messages = await read_until(client, until_id(b_news["id"]))
        messages += await client.drain()
        assert [m["id"] for m in messages if is_event(m)] == [b_home["id"], b_news["id"]]
        assert all(m["tenantId"] == "beta" for m in messages if is_event(m))
    for client in far:
        messages = await read_until(client, until_id(far_news["id"]))
        messages += await client.drain()
        assert [m["id"] for m in messages if is_event(m)] == [far_home["id"], far_news["id"]]
    for client in a_watchers:  # and the far deployment's acme events never reach this one's acme
        assert not [m for m in await client.drain() if is_event(m)]

    code, body = await h2.http("GET", "/api/websocket/history?channel=news", {"X-Tenant-ID": "beta"})
    assert [e["id"] for e in body["events"]] == [b_news["id"]]
    code, body = await h3.http("GET", "/api/websocket/history?channel=news", {"X-Tenant-ID": "acme"})
    assert [e["id"] for e in body["events"]] == [far_news["id"]]
    # DELETE on the far deployment disconnects only its own clients
    code, body = await h3.http("DELETE", "/api/websocket?tenant_id=acme")
    assert (code, body["disconnected"]) == (200, len(far))
    for client in a_watchers:
        assert (await client.request({"type": "ping"}))["type"] == "pong"
    # each deployment lists its own hosts only
    for _ in range(40):
        mine, theirs = await status(h1), await status(h3)
        if mine["metrics"]["hosts"] == 2:
            break
        await asyncio.sleep(0.1)
    assert (mine["metrics"]["hosts"], theirs["metrics"]["hosts"]) == (2, 1)
    assert theirs["metrics"]["workers"] == 2


# -- 5. flags and DELETE -----------------------------------------------------------------------


async def test_flags_and_delete_across_hosts(deployment):
    """PUT on host 1 turns websocket_v2 off on every worker of host 2 within 200 ms; a tenant
    override too; both survive the restart of host 2; DELETE on host 1 closes the tenant's
    connections on both hosts with 4001 and answers how many."""
    h1 = deployment[0]
    code, body = await h1.http("PUT", "/api/websocket", body={"flags": {"websocket_v2": False}})
    answered = now()
    assert code == 200 and body["flags"]["websocket_v2"] is False
    h2 = deployment[1]
    first_refusal = None
    seen_off: dict[int, float] = {}
    while (first_refusal is None or len(seen_off) < 2) and now() - answered < 2.0:
        if first_refusal is None and await refused_upgrade(h2, "plain"):
            first_refusal = now() - answered
        answer = await status(h2, detailed=True)
        if answer["flags"]["websocket_v2"] is False:
            seen_off.setdefault(answer["worker"], now() - answered)
    assert first_refusal is not None and first_refusal < FLAG_BOUND, first_refusal
    assert len(seen_off) == 2 and max(seen_off.values()) < FLAG_BOUND, seen_off
    for _ in range(8):  # whichever worker takes it
        assert await refused_upgrade(h2, "plain")

    code, body = await h1.http("PUT", "/api/websocket", body={"flags": {"tenants": {"vip": "on"}}})
    answered = now()
    assert code == 200 and body["flags"]["tenants"] == {"vip": "on"}
    seen_on: dict[int, float] = {}
    while len(seen_on) < 2 and now() - answered < 2.0:
        try:
            client = await Client.connect(h2.url, "vip", "u")
        except websockets.InvalidStatus as exc:  # the override has not reached this worker yet
            assert exc.response.status_code == 503, exc.response.status_code
            continue
        seen_on.setdefault(client.welcome["data"]["worker"], now() - answered)
        await client.close()
    assert len(seen_on) == 2 and max(seen_on.values()) < FLAG_BOUND, seen_on
    assert await refused_upgrade(h2, "plain")

    # host 2 stopped and started again: the flags live in Redis
    h2 = await deployment.replace(1)
    for _ in range(6):
        code, info = await h2.http("GET", "/api/websocket", {"X-Tenant-ID": "vip"})
        flags = info["websocket"]["flags"]
        assert (flags["websocket_v2"], flags["tenants"], flags["source"]) == (False, {"vip": "on"}, "api")
        assert await refused_upgrade(h2, "plain")
    vips = await deployment.spread(h2, "vip", count=2)
    assert len(vips) == 2

    # DELETE on host 1: the tenant's connections on both hosts, every worker
    vips_h1 = await deployment.spread(h1, "vip", count=2)
    code, body = await h1.http("PUT", "/api/websocket", body={"flags": {"tenants": {"keep": "on"}}})
    assert code == 200
    await asyncio.sleep(FLAG_BOUND)  # a change reaches every worker of host 2 within it (shown above)
    keep = await deployment.connect(h2, "keep", "u")
    targets = [c for groups in (vips, vips_h1) for cs in groups.values() for c in cs]
    code, body = await h1.http("DELETE", "/api/websocket?tenant_id=vip")
    assert (code, body) == (200, {"success": True, "disconnected": len(targets)})
    for client in targets:
        assert await closed_with(client) == 4001
    assert (await keep.request({"type": "ping"}))["type"] == "pong"


# -- 6. status ---------------------------------------------------------------------------------


async def test_status_sums_both_hosts(deployment):
    """GET /api/websocket/status on either host counts both hosts' workers and connections;
    ?detailed=true lists both hosts under cluster.hosts."""
    h1, h2 = deployment[0], deployment[1]
    opened = 0
    for host, count in ((h1, 5), (h2, 7)):
        for clients in (await deployment.spread(host, "st", count=count)).values():
            opened += len(clients)
    loop_deadline = now() + 8.0
    answers: list[dict] = []
    while now() < loop_deadline:
        answers = [await status(host) for host in (h1, h2, h1, h2)]
        if all((a["metrics"]["hosts"], a["metrics"]["workers"], a["metrics"]["active_connections"])
               == (2, 4, opened) for a in answers):
            break
        await asyncio.sleep(0.1)
    assert [(a["metrics"]["hosts"], a["metrics"]["workers"], a["metrics"]["active_connections"])
            for a in answers] == [(2, 4, opened)] * 4
    ids = set()
    for host in (h1, h2):
        detailed = await status(host, detailed=True)
        cluster = detailed["cluster"]
        assert len(cluster["hosts"]) == 2 and cluster["host"] in cluster["hosts"]
        assert all(sorted(workers) == ["0", "1"] for workers in cluster["hosts"].values())
        assert sum(row["connections"] for workers in cluster["hosts"].values() for row in workers.values()) == opened
        ids.add(cluster["host"])
    assert len(ids) == 2, "each host has its own name"


# -- 7. Redis killed ---------------------------------------------------------------------------


async def test_redis_killed_and_restarted(deployment, redis_server):
    """Redis killed: publishes are refused (broker_unavailable, WebSocket and REST) within 1.5 s.
    Restarted empty: publishing works again within seconds. Every stream restarted, so their
    subscribers are closed with 4009 (docs/protocol.md), resume and are told recovered:false, then
    get the new stream's events, nothing twice, nothing out of order, and are not closed again:
    for a channel published to at once after the restart (before the workers were back on pub/sub)
    and for one published to only after its subscribers resumed."""
    h1, h2 = deployment[0], deployment[1]
    busy, quiet = "kill", "quiet"
    subscribers: dict[str, list[Client]] = {}
    old_epochs: dict[str, str] = {}
    for tenant in (busy, quiet):
        subscribers[tenant] = await deployment.everywhere(tenant)
        publisher = await deployment.connect(h1, tenant, "pub")
        before = [(await publisher.publish("e", {"n": n}))["id"] for n in range(5)]
        for client in subscribers[tenant]:
            messages = await read_until(client, until_id(before[-1]))
            assert [e["id"] for e in events_of(messages, f"tenant:{tenant}")] == before
        old_epochs[tenant] = publisher.welcome["data"]["epoch"]

    redis_server.kill()
    started = now()
    reply = await publisher.publish("e", {"n": "down"})
    assert (reply["type"], reply["code"]) == ("error", "broker_unavailable"), reply
    assert now() - started < REFUSAL_BOUND
    started = now()
    code, body = await rest_publish(h2, busy, {"event": "e"})
    assert (code, body["error"]["code"]) == (503, "broker_unavailable"), body
    assert now() - started < REFUSAL_BOUND
    await asyncio.sleep(1.0)

    redis_server.restart()
    restarted = now()
    while True:
        code, body = await rest_publish(h2, busy, {"event": "e", "payload": {"n": "first"}})
        if code == 200:
            break
        assert body["error"]["code"] == "broker_unavailable"
        assert now() - restarted < 5.0, "publishing did not work again within 5 s of the restart"
        await asyncio.sleep(0.05)
    after = {busy: [body["id"]], quiet: []}

    # every subscriber is told its stream restarted: closed with 4009 (once its worker has noticed)
    for tenant in (busy, quiet):
        for client in subscribers[tenant]:
            assert await closed_with(client, timeout=10.0) == 4009, tenant
    resumed: dict[str, list[Client]] = {}
    for tenant in (busy, quiet):
        resumed[tenant] = [await deployment.connect(host, tenant, f"back{i}", since="5", epoch=old_epochs[tenant])
                           for i, host in enumerate((h1, h2, h1, h2))]
        assert {c.welcome["data"]["recovered"] for c in resumed[tenant]} == {False}
        epochs = {c.welcome["data"]["epoch"] for c in resumed[tenant]}
        assert len(epochs) == 1 and old_epochs[tenant] not in epochs, tenant
    for n in range(5):
        for tenant in (busy, quiet):
            code, body = await rest_publish(h1 if n % 2 else h2, tenant, {"event": "e", "payload": {"n": n}})
            assert code == 200
            after[tenant].append(body["id"])
    for tenant in (busy, quiet):
        channel = f"tenant:{tenant}"
        code, history = await h1.http("GET", "/api/websocket/history", {"X-Tenant-ID": tenant})
        assert history["epoch"] == resumed[tenant][0].welcome["data"]["epoch"]
        assert [e["id"] for e in history["events"]] == after[tenant]
        for client in resumed[tenant]:
            position = client.welcome["data"]["offset"]
            messages = await read_until(client, until_id(after[tenant][-1]))
            assert check_no_silent_gap(messages, channel, position) == list(range(position + 1, len(after[tenant]) + 1))
            assert not [m for m in await client.drain() if is_event(m)], "nothing twice"


# -- 8. Redis stopped --------------------------------------------------------------------------


async def test_redis_paused_and_resumed(deployment, redis_server):
    """Redis stopped (SIGSTOP) for 5 s: publishes are refused within 1.5 s (broker_unavailable);
    after SIGCONT, everything acknowledged reached every subscriber, new publishes flow, and no
    subscriber sees a gap that no `missed` message explains (publishes refused while Redis was
    stopped may still have been run: each at most once, in order)."""
    h1, h2 = deployment[0], deployment[1]
    tenant, channel = "pause", "feed:pause"
    subscribers = await deployment.everywhere(tenant)
    positions = [(await subscribe(client, "feed", ref=1))["offset"] for client in subscribers]
    publisher = await deployment.connect(h2, tenant, "pub")
    acknowledged = [(await publisher.publish("e", {"n": n}, channel="feed"))["id"] for n in range(5)]

    redis_server.pause()
    paused = now()
    refused = []
    while now() - paused < 4.0:
        started = now()
        if len(refused) % 2:
            code, body = await rest_publish(h1, tenant, {"channel": "feed", "event": "e"})
            assert (code, body["error"]["code"]) == (503, "broker_unavailable"), body
        else:
            reply = await publisher.publish("e", {"n": "paused"}, channel="feed")
            assert (reply["type"], reply["code"]) == ("error", "broker_unavailable"), reply
        assert now() - started < REFUSAL_BOUND, now() - started
        refused.append(started)
    await asyncio.sleep(max(0.0, 5.0 - (now() - paused)))
    redis_server.resume()

    resumed = now()
    while True:
        reply = await publisher.publish("e", {"n": "after"}, channel="feed")
        if reply["type"] == "ack":
            break
        assert reply["code"] == "broker_unavailable"
        assert now() - resumed < 5.0, "publishing did not work again within 5 s of the resume"
    acknowledged.append(reply["id"])
    for n in range(5):
        code, body = await rest_publish(h1, tenant, {"channel": "feed", "event": "e", "payload": {"n": n}})
        assert code == 200, body
        acknowledged.append(body["id"])
    for client, position in zip(subscribers, positions):
        messages = await read_until(client, until_id(acknowledged[-1]), timeout=10.0)
        offsets = check_no_silent_gap(messages, channel, position)
        ids = [e["id"] for e in events_of(messages, channel)]
        assert len(ids) == len(set(ids)) == len(offsets)
        missing = set(acknowledged) - set(ids)
        assert not missing, f"{len(missing)} acknowledged events never arrived"
        assert not [m for m in await client.drain() if is_event(m)], "nothing twice"


# -- 9. two Redis servers ----------------------------------------------------------------------


async def test_channels_sharded_over_two_redis_servers(redis_pair):
    """Hosts given two --broker URLs: 40 channels spread over both servers (each channel's keys on
    the one its hash names); delivery across hosts and history work for channels on either."""
    first, second = redis_pair
    hosts = await Hosts([first.url, second.url], new_prefix()).start()
    try:
        h1, h2 = hosts[0], hosts[1]
        tenant = "shard"
        names = [f"ch{i}" for i in range(40)]
        shards = [shard_of(f"{name}:{tenant}", 2) for name in names]
        assert set(shards) == {0, 1}
        subscribers = await hosts.everywhere(tenant)
        for client in subscribers:
            for name in names:
                assert (await subscribe(client, name, ref=name))["offset"] == 0
        publisher = await hosts.connect(h1, tenant, "pub")
        sent: dict[str, list[str]] = defaultdict(list)
        for name in names:
            ack = await publisher.publish("e", {"c": name}, channel=name)
            assert ack["offset"] == 1
            sent[name].append(ack["id"])
        code, body = await rest_publish(h1, tenant, [{"channel": name, "event": "b"} for name in names])
        assert code == 200 and body["offsets"] == [2] * 40
        for name, event_id in zip(names, body["ids"]):
            sent[name].append(event_id)
        for client in subscribers:
            # no order across channels (two Redis servers, two pub/sub connections): all 80, however
            count = iter(range(1, 81))
            messages = await read_until(client, lambda m: is_event(m) and next(count) == 80)
            for name in names:
                events = events_of(messages, f"{name}:{tenant}")
                assert [e["id"] for e in events] == sent[name] and [e["offset"] for e in events] == [1, 2]
            assert not [m for m in await client.drain() if is_event(m)], "nothing twice"
        keys = Keys(hosts.prefix)
        for server, index in ((first, 0), (second, 1)):
            stored = set(server.client().keys(f"{hosts.prefix}:t:{tenant}:c:*:s"))
            expected = {keys.script_keys(f"{name}:{tenant}")[1] for name, shard in zip(names, shards) if shard == index}
            assert stored == expected, f"server {index}"
        for name in (names[shards.index(0)], names[shards.index(1)]):
            code, history = await h2.http("GET", f"/api/websocket/history?channel={name}", {"X-Tenant-ID": tenant})
            assert code == 200 and [e["id"] for e in history["events"]] == sent[name]
    finally:
        await hosts.close()


# -- 10. a deaf pub/sub connection -------------------------------------------------------------


async def test_a_deaf_pubsub_connection_is_replaced(redis_server, redis_proxy: FaultProxy):
    """Hosts reach Redis through a proxy that deafens their pub/sub connections (connected, hearing
    nothing): every worker's canary notices within a few seconds, the connection is replaced, and
    subscribers get what was published meanwhile (filled from the stream, or reported missed) and
    what is published after."""
    hosts = await Hosts([redis_proxy.url], new_prefix()).start()
    try:
        h1, h2 = hosts[0], hosts[1]
        tenant, channel = "deaf", "tenant:deaf"
        redis_proxy.wait_for_pubsub(4)
        subscribers = await hosts.everywhere(tenant)
        publisher = await hosts.connect(h1, tenant, "pub")
        sent = [(await publisher.publish("e", {"n": n}))["id"] for n in range(3)]
        for client in subscribers:
            await read_until(client, until_id(sent[-1]))
        assert redis_proxy.deafen() == 4
        deafened = now()
        for n in range(3, 6):  # published while every worker is deaf
            code, body = await rest_publish(h2, tenant, {"event": "e", "payload": {"n": n}})
            assert code == 200
            sent.append(body["id"])

        def deaf_counts(answer: dict) -> dict[str, int]:
            """Each worker's deaf count, as a host's detailed status shows them (its own worker's,
            the other host's rows)."""
            cluster = answer["cluster"]
            counts = {f"{cluster['host']}/{answer['worker']}": cluster["broker"]["deaf"]}
            for host, workers in cluster["hosts"].items():
                if host != cluster["host"]:
                    for index, row in workers.items():
                        counts[f"{host}/{index}"] = row["broker"]["deaf"]
            return counts

        counts: dict[str, int] = {}
        while not (len(counts) == 4 and all(counts.values())):
            assert now() - deafened < 8.0, f"deafness noticed by {counts} after 8 s"
            for host in (h1, h2):
                counts.update(deaf_counts(await status(host, detailed=True)))
            await asyncio.sleep(0.1)
        noticed = now() - deafened
        assert noticed < 5.0, noticed
        for n in range(6, 9):
            sent.append((await publisher.publish("e", {"n": n}))["id"])
        for client in subscribers:
            messages = await read_until(client, until_id(sent[-1]))
            check_no_silent_gap(messages, channel, 3)
            ids = [e["id"] for e in events_of(messages, channel)]
            assert len(ids) == len(set(ids))
            assert ids == sent[3:], "the stream still holds every event: the gap is filled, not reported"
            assert not [m for m in await client.drain() if is_event(m)], "nothing twice"
    finally:
        await hosts.close()
