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
from typing import Any, Callable, Iterator

import orjson

from . import codes
from .channels import resolve_channel, tenant_channel
from .config import Limits
from .broker import Broker
from .history import History
from .core import Matcher
from .exceptions import ProtocolError
from .messages import (
    PRIORITIES,
    Filters,
    Publish,
    encode_ack,
    encode_event,
    iso_timestamp,
    new_event_id,
    utc_timestamp,
)
from .session import Session, Sink
from .limits import AbuseMeter, TokenBucket
from .auth import Authenticator
from .exceptions import ConnectionClosedError

__all__ = ["Hub", "Event", "Metrics", "TenantState"]

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


@dataclass(slots=True)
class Metrics:
    """Counters of one worker, as the status API reports them."""

    total_connections: int = 0
    active_connections: int = 0
    #: frames of events delivered to connections (one event to 10 connections counts 10)
    events_sent: int = 0
    events_published: int = 0
    messages_received: int = 0
    #: bytes of client messages received, and of frames written to connections
    bytes_received: int = 0
    bytes_sent: int = 0
    #: recoveries answered with replayed history (one per resume, however many events)
    replays: int = 0
    #: events dropped for slow connections, by priority rank (low, normal, high, critical)
    drops: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    errors: int = 0
    #: unix time of the last connection or event
    last_activity: float = 0.0


@dataclass(slots=True)
class TenantState:
    connections: int = 0
    events_published: int = 0
    #: channel -> local subscribers
    channels: dict[str, int] = field(default_factory=dict)
    #: distinct event types and sources seen (bounded by Limits.max_tracked_names)
    event_types: dict[str, None] = field(default_factory=dict)
    sources: dict[str, None] = field(default_factory=dict)
    #: the tenant's publish rate limit on this worker
    bucket: TokenBucket | None = None
    #: ``tenant:T``, one string for all of the tenant's connections
    home: str = ""


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
        #: numbers, keeps and carries events (fastws.broker); in one process, its own History
        self.broker: Broker = History(self.limits)
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
        records: list = []
        if since is None:
            data["epoch"], data["offset"] = self.broker.position(channel)
        else:
            data["recovered"], data["epoch"], data["offset"], records = self.broker.recover(channel, epoch, since)
        welcome = encode_event(
            new_event_id(), "connection", data, utc_timestamp(), "system", "normal", tenant_id, user_id, channel
        )
        session.send_json(welcome)
        self.replay(session, channel, records, None)
        if self.debug:
            log.debug("connected %r%s", session, "" if since is None else f" resuming after {since}")
        return session

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
            log.debug("disconnected %r", session)

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
        self._add_subscription(session, name, event_types)
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
        filters = session.filters
        f_types, f_sources, f_users = filters.event_types, filters.sources, filters.users
        f_priorities = {PRIORITIES[name] for name in filters.priorities}
        user_id = session.user_id
        send = session.sink.send_event
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
            send(frame, priority, channel, offset)
        self.metrics.replays += 1

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

    @staticmethod
    def _count_channel(tenant: TenantState, channel: str, delta: int) -> None:
        count = tenant.channels.get(channel, 0) + delta
        if count > 0:
            tenant.channels[channel] = count
        else:
            tenant.channels.pop(channel, None)

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
        else:
            retry = session.bucket.retry_after()
        if session.abuse.reject(now):  # type: ignore[union-attr]
            raise ConnectionClosedError(codes.RATE_LIMITED_CLOSE)
        raise ProtocolError(codes.RATE_LIMITED, f"publish rate limit: retry in {retry} s", ref, retry)

    def take_tenant_publishes(self, tenant_id: str, count: int) -> None:
        """Take ``count`` publishes (a REST call) from the tenant's bucket, or raise rate_limited."""
        now = self.clock()
        bucket = self._tenant_bucket(tenant_id, now)
        if not bucket.take(now, count):
            retry = bucket.retry_after(count)
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
        if event.channel not in broker:  # a new stream: within the tenant's cap?
            try:
                broker.admit(tenant_id, (event.channel,))
            except ProtocolError as exc:
                exc.ref = publish.ref
                raise
        self.deliver(event, ack_to if publish.ref is not None else None, publish.ref)
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
        self.metrics.events_published += 1
        self.fan_out(
            event.channel, event.event_type, event.source, event.priority, event.publisher, event.target_user, frame, offset
        )
        return offset

    def fan_out(
        self, channel: str, event_type: str, source: str, priority: int, publisher: str, target: str | None,
        frame: bytes, offset: int,
    ) -> int:
        """Hand a numbered event's frame to every matching local connection (events of any worker)."""
        matched = self.matcher.match(channel, event_type, source, priority, publisher, target)
        senders = self._senders
        for number in matched:
            senders[number](frame, priority, channel, offset)
        metrics = self.metrics
        metrics.events_sent += len(matched)
        metrics.last_activity = time.time()
        tenant = self._tenant(channel.rpartition(":")[2])
        tenant.events_published += 1
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
