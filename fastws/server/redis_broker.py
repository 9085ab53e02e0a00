"""The Redis broker: a worker's link to the cluster's Redis servers (``--broker redis://...``).

fastws.cluster has the data model (keys, scripts, messages); this module does
the I/O with redis-py's asyncio client (hiredis parses replies). Per Redis
server (a shard) a worker keeps:

- a client whose connections run the scripts. Publishes wait in a queue and
  go as one PUBLISH_SCRIPT call per shard per loop iteration, one call in
  flight at a time (so a worker's publishes keep their order), however many
  events it holds;
- one pub/sub connection, subscribed to the channels its connections are
  subscribed to (reference-counted by the hub, kept ``LINGER`` seconds after
  the last one goes, so a flapping subscriber does not churn), to its canary,
  and on the first shard to the cluster's control channel.

Every event reaches every worker from pub/sub, the publisher's own too, so
every subscriber of a channel on every host sees one order: the offsets the
script assigned. A worker follows each channel's (epoch, last offset): an
event past the next one means a gap, filled from the stream before anything
after it is delivered (``_repair``), or, when the stream no longer has it,
reported to the channel's subscribers with a ``missed`` message; a stream
with another epoch (Redis lost it: restarted empty, or it expired) closes
the channel's subscribers with 4009 so they resume and learn
``recovered:false``. After a lost pub/sub connection the worker reconnects
with backoff, subscribes again, and checks every channel the same way.

Publishes and position reads are answered within ``timeout`` (default 1 s):
when Redis does not answer, publishes fail with ``broker_unavailable`` (503)
and connections waiting for a position are closed with 1013 (try again
later). Nothing waits without bound. A per-shard canary (a PUBLISH to the
worker's own channel every second) finds a pub/sub connection that is
connected but deaf and replaces it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import random
import struct
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.asyncio.retry import Retry

from .. import codes
from ..logs import redact_url
from ..cluster import (
    POSITION_SCRIPT, PUBLISH_SCRIPT, READ_SCRIPT, Keys, Message, decode_messages, decode_tail, encode_tail,
    new_tag, record_of, shard_of,
)
from ..core import frame_event, new_epoch
from ..exceptions import ProtocolError
from ..history import Record
from .tasks import cancel

if TYPE_CHECKING:
    from ..config import Settings
    from ..hub import Event, Hub

__all__ = ["RedisBroker", "BrokerStats"]

log = logging.getLogger("fastws.redis")

#: seconds a channel stays subscribed after its last local subscriber left
LINGER = 5.0
#: seconds between canary probes, and how long one may take
CANARY_INTERVAL = 1.0
CANARY_TIMEOUT = 2.0
#: reconnect backoff: first wait, doubling to the most
BACKOFF_START, BACKOFF_MAX = 0.05, 2.0
#: events in one script call at most (a group, one REST batch, is never split: it may pass this)
MAX_BATCH = 512
#: connections per Redis for scripts and commands (the pub/sub connection is one of them)
MAX_CONNECTIONS = 64
#: events a gap repair reads at most; past it the rest of the gap is reported missed
MAX_REPAIR = 10_000

Done = Callable[[int, "ProtocolError | None"], None]
Position = tuple[bool, str, int, bool, list[Record]]


def unavailable(what: str) -> ProtocolError:
    return ProtocolError(codes.BROKER_UNAVAILABLE, f"Redis did not answer in time ({what}): retry")


class BrokerStats:
    """What the status API shows of a worker's broker."""

    __slots__ = ("connected", "reconnects", "deaf", "errors", "timeouts", "gaps_repaired", "missed",
                 "resets", "round_trips", "events", "canary_ms")

    def __init__(self) -> None:
        self.connected = 0
        self.reconnects = 0
        #: canary probes that found the pub/sub connection deaf (it was replaced)
        self.deaf = 0
        self.errors = 0
        self.timeouts = 0
        self.gaps_repaired = 0
        #: events reported missed to subscribers (gaps the stream could not fill)
        self.missed = 0
        #: channels whose stream restarted under their subscribers (closed with 4009)
        self.resets = 0
        #: PUBLISH_SCRIPT calls and the events they carried
        self.round_trips = 0
        self.events = 0
        #: the last canary's round trip, milliseconds
        self.canary_ms = 0.0

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class _Publish:
    """One event waiting for its offset."""

    __slots__ = ("keys", "args", "done", "deadline", "answered", "sequence")

    def __init__(self, keys: tuple[str, str, str], args: list, done: Done, deadline: float, sequence: int) -> None:
        self.keys = keys
        self.args = args
        self.done = done
        self.deadline = deadline
        self.answered = False
        self.sequence = sequence


class _Watch:
    """A channel this worker is subscribed to: local interest and the position delivered up to."""

    __slots__ = ("channel", "redis_channel", "shard", "count", "subscribed", "waiters", "epoch", "last",
                 "queue", "idle_since", "answers")

    def __init__(self, channel: str, redis_channel: str, shard: "_Shard") -> None:
        self.channel = channel
        self.redis_channel = redis_channel
        self.shard = shard
        self.count = 0
        #: the current pub/sub connection confirmed the subscription
        self.subscribed = False
        #: position reads waiting for that confirmation: (deadline, (channel, epoch, since, done))
        self.waiters: list[tuple[float, tuple]] = []
        #: the stream's epoch and the last offset delivered here (None: not known yet)
        self.epoch: str | None = None
        self.last = 0
        #: messages held while a gap is being filled (None: delivering)
        self.queue: list[Message] | None = None
        self.idle_since = 0.0
        #: position answers waiting for this worker to deliver up to their offset:
        #: (offset, deadline, answer) (see _position)
        self.answers: list[tuple[int, float, Callable[[], None]]] = []


class _Shard:
    def __init__(self, index: int, url: str, timeout: float) -> None:
        self.index = index
        self.url = url
        # no retries inside redis-py: this module decides (bounded by timeout) and reconnects itself.
        # A bounded pool that queues: a burst of welcomes (position reads) waits its turn for a
        # connection, within the timeout, instead of failing past redis-py's default limit
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
        self.client = aioredis.Redis(connection_pool=pool)
        self.queue: list[_Publish] = []
        self.in_flight = False
        self.pubsub: Any = None
        self.connected = False
        #: redis channel -> watch
        self.watches: dict[bytes, _Watch] = {}
        self.canary_sent = 0.0
        self.canary_seen = True
        self.deaf = False
        #: barrier probes that came back (RedisBroker.barrier)
        self.barrier_seen = 0


class RedisBroker:
    """Sequencing, history and delivery through Redis for one worker (see the module docstring)."""

    #: the hub takes the asynchronous path (fastws.hub): offsets and positions arrive later
    asynchronous = True

    def __init__(
        self,
        settings: "Settings",
        hub: "Hub",
        host_id: str,
        worker: int,
        on_control: Callable[[dict], None] | None = None,
        on_reset: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.host_id = host_id
        self.worker = worker
        self.keys = Keys(settings.redis_prefix)
        self.timeout = settings.broker_timeout
        self.ttl_ms = int(settings.history_ttl * 1000)
        self.shards = [_Shard(index, url, self.timeout) for index, url in enumerate(settings.broker_urls)]
        self.on_control = on_control
        #: called with a channel whose stream restarted (the server closes its subscribers with 4009)
        self.on_reset = on_reset
        self.tag = new_tag()
        self._canary_bytes = self.keys.canary(host_id, worker).encode()
        self._control_bytes = self.keys.control.encode()
        self._sequence = itertools.count(1)
        #: sequence -> publish waiting for its answer (answered by the script or by its own message)
        self._waiting: dict[int, _Publish] = {}
        self._watches: dict[str, _Watch] = {}
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._scripts: dict[str, str] = {}
        self._closing = False
        self.stats = BrokerStats()
        #: events held in history, cluster-wide (refreshed by the worker's rows task)
        self.held = 0
        # the channel keys of recently used channels: building them costs more than the lookup
        self._key_cache: dict[str, tuple[_Shard, tuple[str, str, str], str]] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to every shard (failing after ``timeout`` per try if none answers: the server
        starts anyway and keeps trying), and start the readers and the watchdog."""
        self._loop = asyncio.get_running_loop()
        for script in (PUBLISH_SCRIPT, POSITION_SCRIPT, READ_SCRIPT):
            self._scripts[script] = _sha1(script)
        for shard in self.shards:
            self._spawn(self._read_forever(shard))
        self._timer = self._loop.call_later(0.1, self._watchdog)
        # wait (bounded) for the pub/sub connections, so the first subscribers lose nothing
        deadline = self._loop.time() + max(self.timeout * 3, 2.0)
        while self._loop.time() < deadline and not all(shard.connected for shard in self.shards):
            await asyncio.sleep(0.01)
        if not all(shard.connected for shard in self.shards):
            log.error("Redis is not reachable (%s): serving anyway; publishes answer broker_unavailable "
                      "until it is", self.describe())

    def describe(self) -> str:
        """The shards' addresses, without passwords."""
        return ", ".join(redact_url(shard.url) for shard in self.shards)

    async def close(self) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        await cancel(self._tasks)
        for shard in self.shards:
            if shard.pubsub is not None:
                try:
                    await shard.pubsub.aclose()
                except (RedisError, OSError):
                    pass
            await shard.client.aclose()
        for publish in list(self._waiting.values()):
            self._answer(publish, 0, ProtocolError(codes.SERVICE_UNAVAILABLE, "the server is shutting down"))

    async def barrier(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) until this worker's publishes are answered and everything
        Redis published before now has reached this worker: a probe on each shard's canary comes
        back after every message Redis sent the connection before it. For a draining worker, so
        its subscribers get every acknowledged event before their close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._waiting and loop.time() < deadline:
            await asyncio.sleep(0.005)
        marks = {}
        for shard in self.shards:
            if shard.connected:
                marks[shard.index] = shard.barrier_seen
                try:
                    await asyncio.wait_for(
                        shard.client.publish(self.keys.canary(self.host_id, self.worker), b"barrier"),
                        max(0.01, deadline - loop.time()))
                except (RedisError, OSError, asyncio.TimeoutError):
                    return False
        while loop.time() < deadline:
            if all(self.shards[index].barrier_seen > seen for index, seen in marks.items()):
                return True
            await asyncio.sleep(0.005)
        return False

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the Broker seam (fastws.broker.Broker), as far as the hub uses it --------------------

    def __contains__(self, channel: str) -> bool:
        return True  # admission is the script's (too_many_channels): the hub need not ask

    def __len__(self) -> int:
        return self.held

    def admit(self, tenant_id: str, channels: Any) -> None:
        """Checked by PUBLISH_SCRIPT, per group, atomically with the publish."""

    def _keys_of(self, channel: str) -> tuple[_Shard, tuple[str, str, str], str]:
        cached = self._key_cache.get(channel)
        if cached is None:
            shard = self.shards[shard_of(channel, len(self.shards))]
            cached = (shard, self.keys.script_keys(channel), self.keys.channel(channel))
            if len(self._key_cache) >= 65536:
                self._key_cache.clear()
            self._key_cache[channel] = cached
        return cached

    # -- publishing -------------------------------------------------------------------------

    def submit(self, event: "Event", done: Done, group: int = 0) -> None:
        """Queue an event; ``done(offset, None)`` once Redis numbered it, or ``done(0, error)``.

        Events of one ``group`` (a REST batch) are refused together when they would start
        more streams than their tenant may have.
        """
        shard, keys, redis_channel = self._keys_of(event.channel)
        sequence = next(self._sequence)
        tail = encode_tail(time.time(), event.priority, event.event_type, event.source, event.publisher,
                           event.target_user, self.tag, sequence, event.payload)
        publish = _Publish(keys, [redis_channel, group or sequence, tail], done,
                           time.monotonic() + self.timeout, sequence)
        self._waiting[sequence] = publish
        shard.queue.append(publish)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]

    def publish_all(self, events: list["Event"]) -> "asyncio.Future[list[int]]":
        """Publish a REST call's events as one group; a future of their offsets (or the error)."""
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[list[int]] = loop.create_future()
        offsets = [0] * len(events)
        remaining = [len(events)]
        group = -next(self._sequence)  # negative: never a sequence number of a single publish

        def answer(index: int) -> Done:
            def done(offset: int, error: ProtocolError | None) -> None:
                if future.done():
                    return
                if error is not None:
                    future.set_exception(error)
                    return
                offsets[index] = offset
                remaining[0] -= 1
                if not remaining[0]:
                    future.set_result(offsets)
            return done

        for index, event in enumerate(events):
            self.submit(event, answer(index), group)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        for shard in self.shards:
            if shard.queue and not shard.in_flight:
                self._send(shard)

    def _send(self, shard: _Shard) -> None:
        now = time.monotonic()
        batch: list[_Publish] = []
        queue = shard.queue
        taken = 0
        for publish in queue:
            if len(batch) >= MAX_BATCH and publish.args[1] != batch[-1].args[1]:
                break  # full, and not in the middle of a group (a REST batch goes in one call)
            taken += 1
            if publish.answered:
                continue  # timed out while queued: never sent
            batch.append(publish)
        del queue[:taken]
        if not batch:
            return
        limits = self.settings.limits
        keys: list[str] = []
        args: list[Any] = [int(time.time() * 1000), self.ttl_ms, limits.history_size, limits.history_bytes,
                           limits.max_channels_per_tenant, new_epoch()]
        for publish in batch:
            keys.extend(publish.keys)
            args.extend(publish.args)
        keys.append(self.keys.held)
        shard.in_flight = True
        self.stats.round_trips += 1
        self.stats.events += len(batch)
        self._spawn(self._run_batch(shard, batch, keys, args, now))

    async def _run_batch(self, shard: _Shard, batch: list[_Publish], keys: list[str], args: list[Any],
                         started: float) -> None:
        try:
            try:
                offsets = await asyncio.wait_for(
                    self._script(shard, PUBLISH_SCRIPT, keys, args), max(0.01, started + self.timeout - time.monotonic()))
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self._note_error(shard, exc)
                for publish in batch:
                    self._answer(publish, 0, unavailable("publish"))
                return
            for publish, offset in zip(batch, offsets):
                if offset:
                    self._answer(publish, int(offset), None)
                else:
                    self._answer(publish, 0, ProtocolError(
                        codes.TOO_MANY_CHANNELS,
                        f"the tenant has {self.settings.limits.max_channels_per_tenant} channels with history, "
                        f"at most {self.settings.limits.max_channels_per_tenant}"))
        finally:
            shard.in_flight = False
            if shard.queue:
                self._send(shard)

    def _answer(self, publish: _Publish, offset: int, error: ProtocolError | None) -> None:
        if publish.answered:
            return
        publish.answered = True
        self._waiting.pop(publish.sequence, None)
        try:
            publish.done(offset, error)
        except Exception:  # pragma: no cover - a bug in a callback must not stop the others
            log.exception("error answering a publish")

    async def _script(self, shard: _Shard, script: str, keys: list[str], args: list[Any]) -> Any:
        sha = self._scripts[script]
        try:
            return await shard.client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return await shard.client.eval(script, len(keys), *keys, *args)

    def _note_error(self, shard: _Shard, exc: BaseException) -> None:
        if isinstance(exc, asyncio.TimeoutError):
            self.stats.timeouts += 1
        else:
            self.stats.errors += 1
        if isinstance(exc, ResponseError):
            log.error("Redis %s refused a script: %s", redact_url(shard.url), exc)
        else:
            log.warning("Redis %s: %s", redact_url(shard.url), type(exc).__name__ if isinstance(exc, asyncio.TimeoutError) else exc)

    # -- interest and positions --------------------------------------------------------------

    def watch(self, channel: str) -> None:
        """A local connection subscribed to ``channel`` (reference-counted)."""
        watch = self._watches.get(channel)
        if watch is None:
            shard, _, redis_channel = self._keys_of(channel)
            watch = self._watches[channel] = _Watch(channel, redis_channel, shard)
            shard.watches[redis_channel.encode()] = watch
            if shard.connected:
                self._spawn(self._subscribe(shard, [redis_channel]))
        watch.count += 1

    def unwatch(self, channel: str) -> None:
        watch = self._watches.get(channel)
        if watch is not None:
            watch.count -= 1
            if watch.count <= 0:
                watch.idle_since = time.monotonic()  # unsubscribed by the watchdog after LINGER

    async def _subscribe(self, shard: _Shard, channels: list[str]) -> None:
        pubsub = shard.pubsub
        try:
            await pubsub.subscribe(*channels)
        except (RedisError, OSError) as exc:
            self._note_error(shard, exc)  # the reader sees the connection fail and subscribes again

    def request(self, channel: str, epoch: str | None, since: int | None,
                done: Callable[["Position | ProtocolError"], None]) -> None:
        """Read a channel's position (and, with ``since``, what its stream holds after it) once this
        worker's subscription to it is confirmed, so nothing published after the answer is missed.
        ``done((kept, epoch, last, recovered, records))`` or ``done(error)`` within ``timeout``."""
        watch = self._watches.get(channel)
        deadline = time.monotonic() + self.timeout
        if watch is None or watch.subscribed:
            self._spawn(self._position(channel, epoch, since, done, deadline))
        else:
            watch.waiters.append((deadline, (channel, epoch, since, done)))

    async def _position(self, channel: str, epoch: str | None, since: int | None,
                        done: Callable[[Any], None], deadline: float) -> None:
        shard, keys, _ = self._keys_of(channel)
        args = [int(time.time() * 1000), self.ttl_ms, self.settings.limits.max_channels_per_tenant, new_epoch(),
                epoch or "", -1 if since is None else since]
        try:
            reply = await asyncio.wait_for(self._script(shard, POSITION_SCRIPT, list(keys), args),
                                           max(0.01, deadline - time.monotonic()))
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._note_error(shard, exc)
            done(unavailable("position"))
            return
        stream_epoch, last, kept, recovered = reply[0].decode(), int(reply[1]), bool(reply[2]), bool(reply[3])
        records = [record_of(m, frame_event(m.payload, m.offset))
                   for m in (decode_tail(since + 1 + i, stream_epoch, tail) for i, tail in enumerate(reply[4:]))] \
            if since is not None else []
        answer = (kept, stream_epoch, last, recovered, records)
        watch = self._watches.get(channel)
        if watch is not None and kept:
            if watch.epoch is None:
                watch.epoch, watch.last = stream_epoch, last
            elif watch.epoch == stream_epoch and watch.last < last:
                # Events up to the position may still be on their way to this worker over
                # pub/sub (Redis wrote them to that connection before this answer, which can be
                # read first). The answer waits until they are delivered: the session's frames
                # are held meanwhile and those at or before the position left out (HeldSink),
                # so none reaches it after the position, or twice after a replay. Bounded: past
                # the timeout it is given anyway.
                watch.answers.append((last, time.monotonic() + self.timeout, lambda: done(answer)))
                return
        done(answer)

    def _release(self, watch: _Watch, now: float | None = None) -> None:
        """Give the position answers that waited for the watch to reach their offset (all of them
        after a reset; with ``now``, also those past their deadline)."""
        ready = [entry for entry in watch.answers
                 if entry[0] <= watch.last or (now is not None and now > entry[1])]
        if ready:
            watch.answers = [entry for entry in watch.answers if entry not in ready]
            for _, _, answer in ready:
                answer()

    async def read(self, channel: str, since: int, limit: int) -> tuple[str, int, list[Record]]:
        """GET /api/websocket/history: (epoch, last offset, up to limit records after since); starts nothing."""
        shard, keys, _ = self._keys_of(channel)
        try:
            reply = await asyncio.wait_for(self._script(shard, READ_SCRIPT, list(keys[:2]), [since, limit]),
                                           self.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._note_error(shard, exc)
            raise unavailable("history") from None
        if not reply[0]:
            return new_epoch(), 0, []
        epoch, last, first = reply[0].decode(), int(reply[1]), int(reply[2])
        return epoch, last, [record_of(m, frame_event(m.payload, m.offset))
                             for m in (decode_tail(first + i, epoch, tail) for i, tail in enumerate(reply[3:]))]

    # -- pub/sub ------------------------------------------------------------------------------

    async def _read_forever(self, shard: _Shard) -> None:
        backoff = BACKOFF_START
        first = True
        while not self._closing:
            pubsub = shard.client.pubsub()
            shard.pubsub = pubsub
            shard.deaf = False
            try:
                fixed = [self.keys.canary(self.host_id, self.worker)]
                if shard.index == 0:
                    fixed.append(self.keys.control)
                for watch in shard.watches.values():
                    watch.subscribed = False
                    if watch.epoch is not None:
                        watch.queue = watch.queue if watch.queue is not None else []
                sent = [w.redis_channel for w in shard.watches.values()]
                await asyncio.wait_for(pubsub.subscribe(*fixed, *sent), self.timeout)
                shard.connected = True
                # channels watched while the subscription above was on its way
                sent_set = set(sent)
                late = [w.redis_channel for w in shard.watches.values() if w.redis_channel not in sent_set]
                if late:
                    await asyncio.wait_for(pubsub.subscribe(*late), self.timeout)
                self.stats.connected = sum(s.connected for s in self.shards)
                if not first:
                    self.stats.reconnects += 1
                    log.warning("Redis %s: pub/sub connected again; checking %d channels for missed events",
                                redact_url(shard.url), len(shard.watches))
                first = False
                backoff = BACKOFF_START
                shard.canary_seen = True
                while not shard.deaf:
                    message = await pubsub.get_message(timeout=CANARY_INTERVAL)
                    if message is not None:
                        self._on_pubsub(shard, message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                if not self._closing:
                    self._note_error(shard, exc)
            finally:
                shard.connected = False
                self.stats.connected = sum(s.connected for s in self.shards)
                try:
                    await asyncio.wait_for(pubsub.aclose(), 0.5)
                except (RedisError, OSError, asyncio.TimeoutError):
                    pass
            if self._closing:
                return
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _on_pubsub(self, shard: _Shard, message: dict) -> None:
        kind = message["type"]
        channel = message["channel"]
        if kind == "message":
            watch = shard.watches.get(channel)
            if watch is not None:
                try:
                    events = decode_messages(message["data"])
                except (ValueError, struct.error, UnicodeDecodeError):
                    # not written by PUBLISH_SCRIPT (something else published on the channel):
                    # dropped, never fatal to the reader; a real gap is found by the next event
                    self.stats.errors += 1
                    log.warning("%s: dropped a pub/sub message that is not an event", watch.channel)
                    return
                for event in events:
                    self._on_event(watch, event)
            elif channel == self._canary_bytes:
                if message["data"] == b"barrier":
                    shard.barrier_seen += 1
                    return
                shard.canary_seen = True
                self.stats.canary_ms = round((time.monotonic() - shard.canary_sent) * 1000, 3)
            elif channel == self._control_bytes and self.on_control is not None:
                try:
                    self.on_control(orjson.loads(message["data"]))
                except Exception:
                    log.exception("error applying a control message")
        elif kind == "subscribe":
            watch = shard.watches.get(channel)
            if watch is not None and not watch.subscribed:
                watch.subscribed = True
                waiters, watch.waiters = watch.waiters, []
                for deadline, (name, epoch, since, done) in waiters:
                    self._spawn(self._position(name, epoch, since, done, deadline))
                if watch.queue is not None and watch.epoch is not None:
                    # subscribed again after a lost connection: fill what was missed meanwhile
                    self._spawn(self._repair(watch, None))

    def _on_event(self, watch: _Watch, message: Message) -> None:
        if message.tag == self.tag:
            publish = self._waiting.get(message.sequence)
            if publish is not None:  # the message came before the script's answer: ack first
                self._answer(publish, message.offset, None)
        if watch.queue is not None:
            watch.queue.append(message)
            return
        self._accept(watch, message)

    def _accept(self, watch: _Watch, message: Message) -> None:
        """Deliver a message in order, or start filling the gap before it."""
        if watch.epoch is None:
            watch.epoch = message.epoch
        elif message.epoch != watch.epoch:
            self._reset(watch, message.epoch)
        elif message.offset <= watch.last:
            return  # delivered already (a repair read it from the stream)
        elif message.offset != watch.last + 1:
            watch.queue = [message]
            self._spawn(self._repair(watch, message.offset - 1))
            return
        watch.last = message.offset
        self._deliver(watch.channel, message)
        if watch.answers:
            self._release(watch)

    def _deliver(self, channel: str, message: Message) -> None:
        frame = frame_event(message.payload, message.offset)
        self.hub.fan_out(channel, message.event_type, message.source, message.priority, message.publisher,
                         message.target, frame, message.offset, message.published_at)

    def _reset(self, watch: _Watch, epoch: str | None, last: int = 0) -> None:
        """The channel's stream restarted (Redis lost it): its subscribers' positions mean nothing
        now. They are closed with 4009, resume, and are answered recovered:false.

        The watch follows the stream as Redis has it now: ``epoch`` and ``last``, the position a
        resume is answered from, so no event at or before it is delivered afterwards; or, when
        Redis has no stream for the channel yet (``epoch`` None), the epoch that the next position
        read or message brings (the stream the resuming subscribers are given)."""
        log.warning("the stream of %s restarted (epoch %s, was %s): closing its subscribers with 4009",
                    watch.channel, epoch, watch.epoch)
        self.stats.resets += 1
        watch.epoch, watch.last = epoch, last
        if self.on_reset is not None:
            self.on_reset(watch.channel)
        if watch.answers:  # positions of the old stream: their subscribers are closed
            self._release(watch, float("inf"))

    async def _repair(self, watch: _Watch, until: int | None) -> None:
        """Deliver what the stream holds after the last delivered offset (up to ``until``, or all it
        has when None: after a reconnection), then the messages held meanwhile."""
        shard, keys, _ = self._keys_of(watch.channel)
        since = watch.last
        reply = None
        for attempt in range(3):
            try:
                limit = MAX_REPAIR if until is None else min(MAX_REPAIR, until - since)
                reply = await asyncio.wait_for(self._script(shard, READ_SCRIPT, list(keys[:2]), [since, max(limit, 1)]),
                                               self.timeout)
                break
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self._note_error(shard, exc)
                await asyncio.sleep(0.05 * (attempt + 1))
        if self._watches.get(watch.channel) is not watch:
            return
        if reply is not None:
            epoch = reply[0].decode() if reply[0] else None
            if epoch != watch.epoch:
                if epoch is not None or until is not None or watch.last:
                    self._reset(watch, epoch, int(reply[1]))
            else:
                last, first = int(reply[1]), int(reply[2])
                end = last if until is None else min(until, last)
                messages = [decode_tail(first + i, epoch, tail) for i, tail in enumerate(reply[3:])]
                expected = watch.last + 1
                for message in messages:
                    if message.offset > end:
                        break
                    if message.offset <= watch.last:
                        continue  # delivered meanwhile
                    if message.offset != expected:
                        self._missed(watch, expected, message.offset - 1)
                    watch.last = message.offset
                    self._deliver(watch.channel, message)
                    expected = message.offset + 1
                if expected <= end and end > watch.last:
                    self._missed(watch, expected, end)
                    watch.last = end
                self.stats.gaps_repaired += 1
        elif until is not None:
            self._missed(watch, since + 1, until)
            watch.last = until
        if watch.answers:
            self._release(watch)
        queue, watch.queue = watch.queue or [], None
        for index, message in enumerate(queue):
            self._accept(watch, message)
            if watch.queue is not None:  # another gap: the rest waits behind it
                watch.queue.extend(queue[index + 1:])
                return

    def _missed(self, watch: _Watch, first: int, last: int) -> None:
        count = last - first + 1
        self.stats.missed += count
        log.warning("%s: events %d-%d are no longer in the stream: telling its subscribers", watch.channel, first, last)
        self.hub.notify_missed(watch.channel, first, last)

    # -- the watchdog: timeouts, linger, canary ---------------------------------------------

    def _watchdog(self) -> None:
        now = time.monotonic()
        for publish in list(self._waiting.values()):
            if now > publish.deadline:
                self._answer(publish, 0, unavailable("publish"))
        for watch in list(self._watches.values()):
            if watch.waiters:
                late = [waiter for waiter in watch.waiters if now > waiter[0]]
                if late:
                    watch.waiters = [waiter for waiter in watch.waiters if now <= waiter[0]]
                    for _, (_, _, _, done) in late:
                        done(unavailable("subscribe"))
            if watch.answers:
                self._release(watch, now)
            if watch.count <= 0 and now - watch.idle_since > LINGER and not watch.waiters:
                self._drop_watch(watch)
        for shard in self.shards:
            if shard.connected and now - shard.canary_sent >= CANARY_INTERVAL:
                if not shard.canary_seen and now - shard.canary_sent >= CANARY_TIMEOUT:
                    self._deafened(shard, "its canary did not come back")
                elif shard.canary_seen:
                    shard.canary_seen = False
                    shard.canary_sent = now
                    self._spawn(self._probe(shard))
        self._timer = self._loop.call_later(0.1, self._watchdog)  # type: ignore[union-attr]

    async def _probe(self, shard: _Shard) -> None:
        try:
            receivers = await asyncio.wait_for(
                shard.client.publish(self.keys.canary(self.host_id, self.worker), b"1"), CANARY_TIMEOUT)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._note_error(shard, exc)
            return
        if receivers == 0 and shard.connected:
            self._deafened(shard, "Redis counts no subscriber on its connection")

    def _deafened(self, shard: _Shard, why: str) -> None:
        """Replace a pub/sub connection that hears nothing: its reader leaves its loop within
        CANARY_INTERVAL (its read times out), closes it, and connects again."""
        log.error("Redis %s: this worker's pub/sub connection is deaf (%s): replacing it", redact_url(shard.url), why)
        self.stats.deaf += 1
        shard.deaf = True
        shard.canary_seen = True
        shard.canary_sent = time.monotonic()

    def _drop_watch(self, watch: _Watch) -> None:
        del self._watches[watch.channel]
        shard = watch.shard
        shard.watches.pop(watch.redis_channel.encode(), None)
        if shard.connected and shard.pubsub is not None:
            self._spawn(self._unsubscribe(shard, watch.redis_channel))

    async def _unsubscribe(self, shard: _Shard, channel: str) -> None:
        try:
            await shard.pubsub.unsubscribe(channel)
        except (RedisError, OSError) as exc:
            self._note_error(shard, exc)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()
