"""Local connections and channels of one worker; fan-out through the matcher. Sans I/O.

Invariants:

1. Each event is encoded once and framed once; every matching connection is
   handed the same frame bytes.
2. A connection only ever receives events of its own tenant: every channel
   is ``NAME:TENANT`` and connections can only subscribe to their tenant's.
3. Per channel, every subscriber receives events in publish order.
4. Fan-out never waits on a connection: Sink.send queues and returns.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

import orjson

from . import codes, logs
from .channels import resolve_channel, tenant_channel
from .config import Limits
from .control.layout import CLOSE_SLOTS, DROP_REASONS, RATE_LIMITS, close_slot
from .broker import Broker
from .history import History
from .core import Matcher, frame_text
from .exceptions import ProtocolError
from .messages import (
    PRIORITIES,
    Filters,
    Publish,
    encode_ack,
    encode_error,
    encode_event,
    iso_timestamp,
    new_event_id,
    utc_timestamp,
)
from .session import Session, Sink
from .limits import AbuseMeter, TokenBucket
from .auth import Authenticator
from .exceptions import ConnectionClosedError

if TYPE_CHECKING:
    from .history import Record

    #: a remote broker's answer to a position request: (kept, epoch, last offset, recovered, records)
    Position = tuple[bool, str, int, bool, list[Record]]

__all__ = ["Hub", "Event", "Metrics", "TenantState", "HeldSink", "Slot"]

log = logging.getLogger("fastws.hub")


@dataclass(slots=True)  # not frozen: made on every publish (see fastws.messages' docstring)
class Event:
    """One published event, encoded and framed once, with what the matcher needs (not changed once made)."""

    id: str
    tenant_id: str
    channel: str
    event_type: str
    source: str
    #: rank from messages.PRIORITIES
    priority: int
    #: the publisher's user id
    publisher: str
    target_user: str | None
    #: the event's JSON, without its offset (given when it is delivered)
    payload: bytes


#: one delivered event in this many has its publish-to-write latency measured
SAMPLE_EVERY = 16


@dataclass(slots=True)
class Metrics:
    """Counters of one worker, as the status API reports them."""

    total_connections: int = 0
    active_connections: int = 0
    #: frames of events delivered to connections (one event to 10 connections counts 10)
    events_sent: int = 0
    messages_received: int = 0
    #: bytes of client messages received, and of frames written to connections
    bytes_received: int = 0
    bytes_sent: int = 0
    #: recoveries answered with replayed history (one per resume, however many events)
    replays: int = 0
    #: events dropped for slow connections, by reason (fastws.control.DROP_REASONS: the
    #: connection's buffer, the host's budget, closed holding them), each by priority rank
    #: (low, normal, high, critical)
    drop_reasons: list[list[int]] = field(default_factory=lambda: [[0, 0, 0, 0] for _ in DROP_REASONS])
    errors: int = 0
    #: events published by WebSocket clients and over the REST API
    published_ws: int = 0
    published_rest: int = 0
    #: refusals by rate limit (fastws.control.RATE_LIMITS: publish, tenant_publish, connect)
    rate_limited: list[int] = field(default_factory=lambda: [0] * len(RATE_LIMITS))
    #: connections ended, by close code slot then initiator (fastws.control.layout.close_slot)
    disconnects: list[int] = field(default_factory=lambda: [0] * (2 * (len(CLOSE_SLOTS) + 1)))
    #: unix time of the last connection or event
    last_activity: float = 0.0

    @property
    def drops(self) -> list[int]:
        """Events dropped by priority rank, whatever the reason."""
        return [sum(column) for column in zip(*self.drop_reasons)]

    @property
    def events_published(self) -> int:
        """Events this worker's clients published (WebSocket and REST)."""
        return self.published_ws + self.published_rest

    def record_close(self, code: int, by_server: bool) -> None:
        """A connection ended with ``code`` (1006: no close frame), the first close frame sent by the
        server or (``by_server`` false) by the client."""
        self.disconnects[2 * close_slot(code) + (0 if by_server else 1)] += 1


@dataclass(slots=True)
class TenantState:
    connections: int = 0
    #: the tenant's events this worker has fanned out (with the embedded broker: all of the host's)
    events_published: int = 0
    #: events this worker's clients (WebSocket and REST) published, and frames of the tenant's
    #: events it delivered: additive over workers (the per-tenant series of /metrics)
    published_here: int = 0
    events_sent: int = 0
    #: channel -> local subscribers
    channels: dict[str, int] = field(default_factory=dict)
    #: distinct event types and sources seen (bounded by Limits.max_tracked_names)
    event_types: dict[str, None] = field(default_factory=dict)
    sources: dict[str, None] = field(default_factory=dict)
    #: the tenant's publish rate limit on this worker
    bucket: TokenBucket | None = None
    #: ``tenant:T``, one string for all of the tenant's connections
    home: str = ""


class Slot:
    """A place in a HeldSink's order for an answer that has not come yet."""

    __slots__ = ()


Entry = tuple[bytes, int, str, int]


class HeldSink:
    """A session's Sink while answers from a remote broker are awaited (Hub._hold).

    Frames are kept in the order they were produced, with a Slot where an
    answer (an ack, an error, a welcome and its replay) will go; everything
    before the first open slot is passed on at once, so the connection sees
    exactly the order an embedded broker gives: a publisher its ack before
    the events that follow it, a subscriber its ack, then the replay, then
    the channel's events past the position (those at or before it are in
    the position, or in the replay, and are left out). Bounded: past
    ``limit`` bytes the connection is closed (4008).
    """

    __slots__ = ("sink", "entries", "nbytes", "limit", "open", "overflowed")

    def __init__(self, sink: Sink, limit: int) -> None:
        self.sink = sink
        #: (frame, priority, channel, offset) (replies have priority -1), or a Slot
        self.entries: list[Entry | Slot] = []
        self.nbytes = 0
        self.limit = limit
        #: slots not filled yet
        self.open = 0
        self.overflowed = False

    def send(self, frame: bytes) -> None:
        self._keep((frame, -1, "", 0))

    def send_event(self, frame: bytes, priority: int, channel: str, offset: int) -> None:
        self._keep((frame, priority, channel, offset))

    def _keep(self, entry: Entry) -> None:
        if self.overflowed:
            return
        if not self.entries:  # nothing waits before it
            if entry[1] < 0:
                self.sink.send(entry[0])
            else:
                self.sink.send_event(*entry)
            return
        self.entries.append(entry)
        self.nbytes += len(entry[0])
        if self.nbytes > self.limit:
            self.overflowed = True
            self.entries = []
            self.open = 0
            self.sink.close(codes.SLOW_CONSUMER, "slow consumer: too much waiting for the cluster's Redis")

    def close(self, close_code: int, reason: str) -> None:
        self.sink.close(close_code, reason)

    def slot(self) -> Slot:
        slot = Slot()
        self.entries.append(slot)
        self.open += 1
        return slot

    def fill(self, slot: Slot, entries: list[Entry], channel: str = "", last: int = 0) -> None:
        """Put the answer in its place; with ``channel``, leave out that channel's events after it
        at or before ``last``. Then pass on everything up to the next open slot."""
        if self.overflowed:
            return
        try:
            index = self.entries.index(slot)
        except ValueError:  # pragma: no cover - filled twice
            return
        after = self.entries[index + 1:]
        if channel:
            kept = [e for e in after if type(e) is Slot or e[2] != channel or e[3] > last]  # type: ignore[index]
            if len(kept) != len(after):
                self.nbytes -= sum(len(e[0]) for e in after if type(e) is not Slot) - sum(  # type: ignore[index]
                    len(e[0]) for e in kept if type(e) is not Slot)  # type: ignore[index]
                after = kept
        self.entries = self.entries[:index] + entries + after  # type: ignore[operator]
        self.nbytes += sum(len(e[0]) for e in entries)
        self.open -= 1
        self._pass_on()

    def _pass_on(self) -> None:
        entries = self.entries
        sink = self.sink
        count = 0
        for entry in entries:
            if type(entry) is Slot:
                break
            frame, priority, channel, offset = entry  # type: ignore[misc]
            self.nbytes -= len(frame)
            if priority < 0:
                sink.send(frame)
            else:
                sink.send_event(frame, priority, channel, offset)
            count += 1
        del entries[:count]


class Hub:
    """The connections of one worker, their subscriptions, and local fan-out."""

    def __init__(
        self,
        limits: Limits | None = None,
        debug: bool = False,
        worker: int = 0,
        authenticator: Authenticator | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or Limits()
        #: verifies tokens (refresh); None in open development mode
        self.authenticator = authenticator
        #: monotonic seconds, for the rate limits
        self.clock = clock
        self.matcher = Matcher()
        self.metrics = Metrics()
        #: unix times of sampled deliveries' publishes (fan_out), taken by the server once it
        #: has written their frames (publish-to-write latency); bounded
        self.latency_samples: list[float] = []
        self._sample_countdown = 1
        #: numbers, keeps and carries events (fastws.broker); in one process, its own History
        self._broker: Broker = History(self.limits)
        #: the broker answers later (Redis: fastws.server.redis_broker): positions and offsets come
        #: through callbacks, and every event, this worker's own too, arrives through fan_out
        self.remote = False
        #: which worker of the host this hub is (named in welcome events)
        self.worker = worker
        #: cached debug flag: the hot path never formats log lines unless set
        self.debug = debug
        #: the worker is shutting down: publishes are refused (Server.close)
        self.draining = False
        self._sessions: dict[int, Session] = {}
        #: number -> its sink's send_event, bound once: the fan-out loop's only lookup
        self._senders: dict[int, Callable[[bytes, int, str, int], None]] = {}
        self._tenants: dict[str, TenantState] = {}
        # tenants with no local connection, oldest first; bounded by max_idle_tenants
        self._idle_tenants: dict[str, None] = {}
        self._numbers = itertools.count(1)

    @property
    def broker(self) -> Broker:
        return self._broker

    @broker.setter
    def broker(self, broker: Broker) -> None:
        self._broker = broker
        self.remote = bool(getattr(broker, "asynchronous", False))

    # -- connections ---------------------------------------------------------------

    def connect(
        self,
        sink: Sink,
        tenant_id: str,
        user_id: str,
        filters: Filters | None = None,
        since: int | None = None,
        epoch: str | None = None,
        expires_at: float | None = None,
    ) -> Session:
        """Register a new connection, subscribe it to ``tenant:T`` and send its welcome event.

        ``tenant_id``, ``user_id``, ``filters`` and the position must already be
        validated. With ``since`` the connection resumes ``tenant:T`` after that
        offset of ``epoch``: the welcome says ``recovered`` and the missed
        events that pass the filters follow it, before anything live.
        """
        number = next(self._numbers)
        session = Session(self, sink, number, str(uuid.UUID(bytes=os.urandom(16), version=4)), tenant_id, user_id)
        session.expires_at = expires_at
        self._sessions[number] = session
        self._senders[number] = sink.send_event
        self.matcher.add(number, user_id)
        if filters is not None:
            self.set_filters(session, filters)
        tenant = self._tenant(tenant_id)
        tenant.connections += 1
        self._idle_tenants.pop(tenant_id, None)
        channel = tenant.home
        if not channel:
            channel = tenant.home = tenant_channel(tenant_id)
        self._add_subscription(session, channel, None)
        metrics = self.metrics
        metrics.total_connections += 1
        metrics.active_connections += 1
        metrics.last_activity = time.time()
        data: dict[str, Any] = {
            "connectionId": session.connection_id,
            "worker": self.worker,
            "channels": [channel],
            "limits": self.limits.to_json(),
        }
        if self.remote:
            held, slot = self._hold(session)

            def answered(result: "Position | ProtocolError") -> None:
                if session.closed or held.overflowed:
                    return
                if isinstance(result, ProtocolError):
                    held.fill(slot, [])
                    session.sink.close(codes.TRY_AGAIN_LATER, "the cluster's Redis did not answer: reconnect")
                    return
                kept, data["epoch"], data["offset"], recovered, records = result
                if since is not None:
                    data["recovered"] = recovered and kept
                welcome = (frame_text(self._welcome(session, data, channel)), -1, "", 0)
                held.fill(slot, [welcome, *self._replayable(session, channel, records, None)], channel, data["offset"])
                self._unhold(session)

            self.broker.request(channel, epoch, since, answered)  # type: ignore[attr-defined]
        else:
            records: list = []
            if since is None:
                data["epoch"], data["offset"] = self.broker.position(channel)
            else:
                data["recovered"], data["epoch"], data["offset"], records = self.broker.recover(channel, epoch, since)
            session.send_json(self._welcome(session, data, channel))
            self.replay(session, channel, records, None)
        if self.debug:
            log.debug("connected user=%s%s", session.user_id, "" if since is None else f" resuming after {since}",
                      extra=logs.about(session.tenant_id, session.connection_id))
        return session

    @staticmethod
    def _welcome(session: Session, data: dict[str, Any], channel: str) -> bytes:
        return encode_event(
            new_event_id(), "connection", data, utc_timestamp(), "system", "normal", session.tenant_id,
            session.user_id, channel,
        )

    # -- waiting for a position (remote brokers) -----------------------------------------
    #
    # With a remote broker, a welcome or a subscribe's ack waits for Redis to answer with the
    # channel's position, while events of the channel may already arrive. Until it answers,
    # everything for the session is held (HeldSink), in order; then the answer goes out, the
    # replayed history after it, and the held events of that channel past the position after
    # those (the ones at or before it are in the position, or in the replay). The hold is
    # bounded by max_send_buffer: past it the connection is closed with 4008.

    def _hold(self, session: Session) -> tuple[HeldSink, Slot]:
        """Hold the session's frames behind a new slot (see HeldSink)."""
        held = session.sink
        if type(held) is not HeldSink:
            held = HeldSink(held, self.limits.max_send_buffer)
            session.sink = held
            self._senders[session.number] = held.send_event
        return held, held.slot()  # type: ignore[union-attr]

    def _unhold(self, session: Session) -> None:
        """Back to the connection's own sink once nothing waits (the fan-out's fast path)."""
        held = session.sink
        if type(held) is HeldSink and not held.open and not held.entries:
            session.sink = held.sink
            if not session.closed:
                self._senders[session.number] = held.sink.send_event

    def notify_missed(self, channel: str, first: int, last: int) -> None:
        """Tell the channel's local subscribers that its events first..last are lost to them
        (a remote broker could not fill a gap): the ``missed`` message, as for a slow consumer."""
        count = last - first + 1
        notice = frame_text(orjson.dumps(
            {"type": "missed", "count": count, "channels": {channel: {"first": first, "last": last, "count": count}}}))
        for session in self.subscribers(channel):
            session.sink.send(notice)

    def subscribers(self, channel: str) -> list[Session]:
        """The local sessions subscribed to ``channel`` (whatever their filters)."""
        return [s for s in self._sessions.values() if channel in self.matcher.subscriptions(s.number)]

    def disconnect(self, session: Session) -> None:
        """Forget a connection (idempotent)."""
        if session.closed:
            return
        session.closed = True
        del self._sessions[session.number]
        del self._senders[session.number]
        tenant = self._tenants[session.tenant_id]
        for channel in self.matcher.subscriptions(session.number):
            self._count_channel(tenant, channel, -1)
        self.matcher.remove(session.number)
        tenant.connections -= 1
        if tenant.connections == 0:
            self._mark_idle(session.tenant_id)
        self.metrics.active_connections -= 1
        if self.debug:
            log.debug("disconnected user=%s", session.user_id, extra=logs.about(session.tenant_id, session.connection_id))

    def sessions(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    # -- subscriptions and filters -------------------------------------------------

    def subscribe(
        self,
        session: Session,
        channel: object,
        event_types: frozenset[str] | None,
        ref: Any = None,
        since: int | None = None,
        epoch: str | None = None,
    ) -> None:
        """Subscribe (or replace the subscription's event types) and acknowledge.

        The ack (sent when there is a ref, or when recovery was asked for)
        carries the channel, its epoch and latest offset, and ``recovered``;
        the recovered events follow it, before anything live.
        """
        try:
            name = resolve_channel(channel, session.tenant_id)
        except ProtocolError as exc:
            exc.ref = ref
            raise
        matcher = self.matcher
        number = session.number
        if (
            name not in matcher.subscriptions(number)
            and matcher.subscription_count(number) >= self.limits.max_subscriptions
        ):
            raise ProtocolError(
                codes.TOO_MANY_SUBSCRIPTIONS, f"at most {self.limits.max_subscriptions} subscriptions", ref
            )
        already = name in matcher.subscriptions(number)
        self._add_subscription(session, name, event_types)
        if self.remote:
            if since is None and ref is None:
                return
            held, slot = self._hold(session)

            def answered(result: "Position | ProtocolError") -> None:
                if session.closed or held.overflowed:
                    return
                if isinstance(result, ProtocolError):
                    if not already and self.matcher.unsubscribe(number, name):  # a failed command changes nothing
                        self._count_channel(self._tenants[session.tenant_id], name, -1)
                    held.fill(slot, [(frame_text(encode_error(result.code, result.message, ref)), -1, "", 0)])
                    self._unhold(session)
                    return
                kept, stream_epoch, offset, recovered, records = result
                if since is None:
                    ack = encode_ack(ref, channel=name, epoch=stream_epoch, offset=offset)
                else:
                    ack = encode_ack(ref, channel=name, epoch=stream_epoch, offset=offset, recovered=recovered and kept)
                held.fill(slot, [(frame_text(ack), -1, "", 0), *self._replayable(session, name, records, event_types)],
                          name, offset)
                self._unhold(session)

            self.broker.request(name, epoch, since, answered)  # type: ignore[attr-defined]
            return
        if since is None:
            if ref is not None:
                stream_epoch, offset = self.broker.position(name)
                session.send_json(encode_ack(ref, channel=name, epoch=stream_epoch, offset=offset))
            return
        recovered, stream_epoch, offset, records = self.broker.recover(name, epoch, since)
        session.send_json(encode_ack(ref, channel=name, epoch=stream_epoch, offset=offset, recovered=recovered))
        self.replay(session, name, records, event_types)

    def replay(self, session: Session, channel: str, records: list, event_types: frozenset[str] | None) -> None:
        """Send a session the history records that it would have received live."""
        if not records:
            return
        send = session.sink.send_event
        for entry in self._replayable(session, channel, records, event_types):
            send(*entry)

    def _replayable(self, session: Session, channel: str, records: list,
                    event_types: frozenset[str] | None) -> list[tuple[bytes, int, str, int]]:
        """The (frame, priority, channel, offset) of the records the session would have received live."""
        if not records:
            return []
        filters = session.filters
        f_types, f_sources, f_users = filters.event_types, filters.sources, filters.users
        f_priorities = {PRIORITIES[name] for name in filters.priorities}
        user_id = session.user_id
        entries = []
        for offset, event_type, source, priority, publisher, target, frame in records:
            if (
                (target is not None and target != user_id)
                or (event_types and event_type not in event_types)
                or (f_types and event_type not in f_types)
                or (f_sources and source not in f_sources)
                or (f_priorities and priority not in f_priorities)
                or (f_users and publisher not in f_users)
            ):
                continue
            entries.append((frame, priority, channel, offset))
        self.metrics.replays += 1
        return entries

    def unsubscribe(self, session: Session, channel: object, ref: Any = None) -> str:
        try:
            name = resolve_channel(channel, session.tenant_id)
        except ProtocolError as exc:
            exc.ref = ref
            raise
        if self.matcher.unsubscribe(session.number, name):
            self._count_channel(self._tenants[session.tenant_id], name, -1)
        return name

    def _add_subscription(self, session: Session, channel: str, event_types: frozenset[str] | None) -> None:
        if self.matcher.subscribe(session.number, channel, event_types):
            self._count_channel(self._tenants[session.tenant_id], channel, +1)

    def _count_channel(self, tenant: TenantState, channel: str, delta: int) -> None:
        count = tenant.channels.get(channel, 0) + delta
        if count > 0:
            tenant.channels[channel] = count
        else:
            tenant.channels.pop(channel, None)
        if self.remote:  # the worker's interest in the channel, as Redis subscriptions
            if delta > 0 and count == delta:
                self._broker.watch(channel)  # type: ignore[attr-defined]
            elif delta < 0 and count <= 0:
                self._broker.unwatch(channel)  # type: ignore[attr-defined]

    def set_filters(self, session: Session, filters: Filters) -> None:
        session.filters = filters
        self.matcher.set_filters(
            session.number,
            filters.event_types,
            filters.sources,
            [PRIORITIES[name] for name in filters.priorities],
            filters.users,
        )

    def channels_of(self, session: Session) -> list[str]:
        return self.matcher.subscriptions(session.number)

    # -- limits and tokens -----------------------------------------------------------

    def check_publish(self, session: Session, ref: Any = None) -> None:
        """Take a publish from the connection's and the tenant's buckets, or refuse it.

        Raises ProtocolError(rate_limited); ConnectionClosedError(4029) when the
        connection has been refused more than its rate allows in a second,
        within the abuse window.
        """
        now = self.clock()
        if session.bucket is None:
            session.bucket = TokenBucket(self.limits.publish_rate, self.limits.publish_burst, now)
            session.abuse = AbuseMeter(self.limits.publish_rate, now)
        if session.bucket.take(now):
            tenant_bucket = self._tenant_bucket(session.tenant_id, now)
            if tenant_bucket.take(now):
                return
            retry = tenant_bucket.retry_after()
            self.metrics.rate_limited[1] += 1
        else:
            retry = session.bucket.retry_after()
            self.metrics.rate_limited[0] += 1
        if session.abuse.reject(now):  # type: ignore[union-attr]
            raise ConnectionClosedError(codes.RATE_LIMITED_CLOSE)
        raise ProtocolError(codes.RATE_LIMITED, f"publish rate limit: retry in {retry} s", ref, retry)

    def take_tenant_publishes(self, tenant_id: str, count: int) -> None:
        """Take ``count`` publishes (a REST call) from the tenant's bucket, or raise rate_limited."""
        now = self.clock()
        bucket = self._tenant_bucket(tenant_id, now)
        if not bucket.take(now, count):
            retry = bucket.retry_after(count)
            self.metrics.rate_limited[1] += 1
            raise ProtocolError(codes.RATE_LIMITED, f"tenant publish rate limit: retry in {retry} s", None, retry)

    def _tenant_bucket(self, tenant_id: str, now: float) -> TokenBucket:
        tenant = self._tenant(tenant_id)
        if tenant.bucket is None:
            tenant.bucket = TokenBucket(self.limits.tenant_publish_rate, self.limits.tenant_publish_burst, now)
        return tenant.bucket

    def refresh(self, session: Session, token: str, ref: Any = None) -> str | None:
        """Give a connection a new token; the new expiry (ISO-8601), None in open mode."""
        if self.authenticator is None:
            return None
        try:
            identity = self.authenticator.verify(token)
        except ProtocolError as exc:
            exc.ref = ref
            raise
        if (identity.tenant_id, identity.user_id) != (session.tenant_id, session.user_id):
            raise ProtocolError(codes.FORBIDDEN, "the new token is for another tenant or user", ref)
        session.expires_at = identity.expires_at
        return iso_timestamp(identity.expires_at)

    # -- publishing ----------------------------------------------------------------

    def prepare(self, tenant_id: str, user_id: str, publish: Publish) -> Event:
        """Check, number and encode one event from ``user_id`` of ``tenant_id``; delivers nothing.

        Raises ProtocolError (with the publish's ref) for another tenant's
        channel or a payload that cannot be encoded, so a caller can prepare a
        whole batch before delivering any of it. While the worker drains
        (``draining``), every publish is refused (service_unavailable, 503):
        what was acknowledged before is delivered before connections close.
        """
        if self.draining:
            raise ProtocolError(codes.SERVICE_UNAVAILABLE, "the server is shutting down", ref=publish.ref)
        if publish.channel is None:
            channel = tenant_channel(tenant_id)
        else:
            try:
                channel = resolve_channel(publish.channel, tenant_id)
            except ProtocolError as exc:
                exc.ref = publish.ref
                raise
        event_id = new_event_id()
        try:
            payload = encode_event(
                event_id,
                publish.event,
                publish.payload,
                utc_timestamp(),
                publish.source,
                publish.priority,
                tenant_id,
                user_id,
                channel,
            )
        except orjson.JSONEncodeError:
            raise ProtocolError(codes.INVALID_FIELD, "'payload' cannot be encoded (nested too deeply)", publish.ref) from None
        return Event(
            event_id,
            tenant_id,
            channel,
            publish.event,
            publish.source,
            PRIORITIES[publish.priority],
            user_id,
            publish.target_user_id,
            payload,
        )

    def publish(self, tenant_id: str, user_id: str, publish: Publish, ack_to: Session | None = None) -> str:
        """Prepare, admit (a new channel counts against max_channels_per_tenant) and deliver one event;
        returns its id.

        With ``ack_to`` and a ref, the ack is queued to that session before the
        event is delivered, so a publisher sees its ack first.
        """
        event = self.prepare(tenant_id, user_id, publish)
        broker = self.broker
        if self.remote:
            self._submit(event, ack_to, publish.ref)
            return event.id
        if event.channel not in broker:  # a new stream: within the tenant's cap?
            try:
                broker.admit(tenant_id, (event.channel,))
            except ProtocolError as exc:
                exc.ref = publish.ref
                raise
        self.deliver(event, ack_to if publish.ref is not None else None, publish.ref)
        self.metrics.published_ws += 1
        self._tenant(tenant_id).published_here += 1
        return event.id

    def admit(self, tenant_id: str, events: list[Event]) -> None:
        """Refuse (too_many_channels) prepared events of a tenant that would start more streams than
        it may have; nothing is published either way, so a batch is refused whole."""
        self.broker.admit(tenant_id, {event.channel for event in events})

    def deliver(self, event: Event, ack_to: Session | None = None, ref: Any = None) -> int:
        """Number a prepared event, keep it in its channel's history, and hand its frame
        to every matching local connection; returns its offset.

        With ``ack_to``, that session is sent the ack (``id`` and ``offset``)
        before any copy of the event.
        """
        offset, frame = self.broker.sequence(
            event.channel, event.payload, event.event_type, event.source, event.priority, event.publisher, event.target_user
        )
        if ack_to is not None:
            ack_to.send_json(encode_ack(ref, id=event.id, offset=offset))
        self.fan_out(
            event.channel, event.event_type, event.source, event.priority, event.publisher, event.target_user, frame, offset
        )
        return offset

    def _submit(self, event: Event, session: Session | None, ref: Any) -> None:
        """Publish through a remote broker. The publisher's ack (or error) takes its place in the
        connection's order when Redis answers (HeldSink); the event reaches local subscribers like
        any other, from the broker (fan_out)."""
        metrics = self.metrics
        if session is not None:
            held, slot = self._hold(session)

        def done(offset: int, error: ProtocolError | None) -> None:
            reply = None
            if error is not None:
                metrics.errors += 1
                reply = encode_error(error.code, error.message, ref)
            else:
                metrics.published_ws += 1
                self._tenant(event.tenant_id).published_here += 1
                if ref is not None:
                    reply = encode_ack(ref, id=event.id, offset=offset)
            if session is not None and not session.closed:
                held.fill(slot, [] if reply is None else [(frame_text(reply), -1, "", 0)])
                self._unhold(session)

        self._broker.submit(event, done)  # type: ignore[attr-defined]

    def deliver_all(self, events: list[Event]) -> "list[int] | Awaitable[list[int]]":
        """Number and deliver prepared events (a REST publish): their offsets, or with a remote
        broker an awaitable of them (refused whole, too_many_channels, like an embedded batch)."""
        if not self.remote:
            self.metrics.published_rest += len(events)
            self._tenant(events[0].tenant_id).published_here += len(events)
            return [self.deliver(event) for event in events]
        return self._deliver_remote(events)

    async def _deliver_remote(self, events: list[Event]) -> list[int]:
        offsets = await self._broker.publish_all(events)  # type: ignore[attr-defined]
        self.metrics.published_rest += len(offsets)
        self._tenant(events[0].tenant_id).published_here += len(offsets)
        return offsets

    def fan_out(
        self, channel: str, event_type: str, source: str, priority: int, publisher: str, target: str | None,
        frame: bytes, offset: int, published_at: float = 0.0,
    ) -> int:
        """Hand a numbered event's frame to every matching local connection (events of any worker).

        ``published_at``: the unix time the event was published, when it came from elsewhere (else
        now); one delivered event in SAMPLE_EVERY has it kept in ``latency_samples``, for the
        server to measure publish-to-write once the frames are written.
        """
        matched = self.matcher.match(channel, event_type, source, priority, publisher, target)
        senders = self._senders
        for number in matched:
            senders[number](frame, priority, channel, offset)
        metrics = self.metrics
        metrics.events_sent += len(matched)
        now = metrics.last_activity = time.time()
        tenant = self._tenant(channel.rpartition(":")[2])
        tenant.events_published += 1
        if matched:
            tenant.events_sent += len(matched)
            self._sample_countdown -= 1
            if self._sample_countdown <= 0 and len(self.latency_samples) < 1024:
                self._sample_countdown = SAMPLE_EVERY
                self.latency_samples.append(published_at or now)
        limit = self.limits.max_tracked_names
        if event_type not in tenant.event_types and len(tenant.event_types) < limit:
            tenant.event_types[event_type] = None
        if source not in tenant.sources and len(tenant.sources) < limit:
            tenant.sources[source] = None
        return len(matched)

    # -- introspection -------------------------------------------------------------

    def _tenant(self, tenant_id: str) -> TenantState:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = TenantState()
            self._mark_idle(tenant_id)
        return tenant

    def _mark_idle(self, tenant_id: str) -> None:
        """Remember a tenant without connections; forget the oldest idle ones past the limit."""
        idle = self._idle_tenants
        idle.pop(tenant_id, None)
        idle[tenant_id] = None
        while len(idle) > self.limits.max_idle_tenants:
            oldest = next(iter(idle))
            del idle[oldest]
            del self._tenants[oldest]

    def tenant(self, tenant_id: str) -> TenantState | None:
        return self._tenants.get(tenant_id)

    def tenants(self) -> dict[str, TenantState]:
        return self._tenants
