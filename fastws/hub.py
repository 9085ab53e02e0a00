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
from typing import Any, Iterator

import orjson

from . import codes
from .channels import resolve_channel, tenant_channel
from .config import Limits
from .core import Matcher, frame_text
from .exceptions import ProtocolError
from .messages import (
    PRIORITIES,
    Filters,
    Publish,
    encode_ack,
    encode_event,
    new_event_id,
    utc_timestamp,
)
from .session import Session, Sink

__all__ = ["Hub", "Event", "Metrics", "TenantState"]

log = logging.getLogger("fastws.hub")


@dataclass(frozen=True, slots=True)
class Event:
    """One published event, encoded and framed once, with what the matcher needs."""

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
    #: the complete WebSocket frame every recipient is sent
    frame: bytes


@dataclass(slots=True)
class Metrics:
    """Counters of one worker, as the status API reports them."""

    total_connections: int = 0
    active_connections: int = 0
    #: frames of events delivered to connections (one event to 10 connections counts 10)
    events_sent: int = 0
    events_published: int = 0
    messages_received: int = 0
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


class Hub:
    """The connections of one worker, their subscriptions, and local fan-out."""

    def __init__(self, limits: Limits | None = None, debug: bool = False) -> None:
        self.limits = limits or Limits()
        self.matcher = Matcher()
        self.metrics = Metrics()
        #: cached debug flag: the hot path never formats log lines unless set
        self.debug = debug
        self._sessions: dict[int, Session] = {}
        self._tenants: dict[str, TenantState] = {}
        # tenants with no local connection, oldest first; bounded by max_idle_tenants
        self._idle_tenants: dict[str, None] = {}
        self._numbers = itertools.count(1)

    # -- connections ---------------------------------------------------------------

    def connect(self, sink: Sink, tenant_id: str, user_id: str) -> Session:
        """Register a new connection, subscribe it to ``tenant:T`` and send its welcome event.

        ``tenant_id`` and ``user_id`` must already be validated.
        """
        number = next(self._numbers)
        session = Session(self, sink, number, str(uuid.UUID(bytes=os.urandom(16), version=4)), tenant_id, user_id)
        self._sessions[number] = session
        self.matcher.add(number, user_id)
        tenant = self._tenant(tenant_id)
        tenant.connections += 1
        self._idle_tenants.pop(tenant_id, None)
        channel = tenant_channel(tenant_id)
        self._add_subscription(session, channel, None)
        metrics = self.metrics
        metrics.total_connections += 1
        metrics.active_connections += 1
        metrics.last_activity = time.time()
        welcome = encode_event(
            new_event_id(),
            "connection",
            {
                "connectionId": session.connection_id,
                "channels": [channel],
                "limits": self.limits.to_json(),
            },
            utc_timestamp(),
            "system",
            "normal",
            tenant_id,
            user_id,
            channel,
        )
        session.send_json(welcome)
        if self.debug:
            log.debug("connected %r", session)
        return session

    def disconnect(self, session: Session) -> None:
        """Forget a connection (idempotent)."""
        if session.closed:
            return
        session.closed = True
        del self._sessions[session.number]
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
        self, session: Session, channel: object, event_types: frozenset[str] | None, ref: Any = None
    ) -> str:
        """Subscribe (or replace the subscription's event types); returns the canonical channel."""
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
        return name

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

    # -- publishing ----------------------------------------------------------------

    def prepare(self, tenant_id: str, user_id: str, publish: Publish) -> Event:
        """Check, number and encode one event from ``user_id`` of ``tenant_id``; delivers nothing.

        Raises ProtocolError (with the publish's ref) for another tenant's
        channel or a payload that cannot be encoded, so a caller can prepare a
        whole batch before delivering any of it.
        """
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
            frame_text(payload),
        )

    def publish(self, tenant_id: str, user_id: str, publish: Publish, ack_to: Session | None = None) -> str:
        """Prepare and deliver one event; returns its id.

        With ``ack_to`` and a ref, the ack is queued to that session before the
        event is delivered, so a publisher sees its ack first.
        """
        event = self.prepare(tenant_id, user_id, publish)
        if ack_to is not None and publish.ref is not None:
            ack_to.send_json(encode_ack(publish.ref, id=event.id))
        self.deliver(event)
        return event.id

    def deliver(self, event: Event) -> int:
        """Hand one prepared event's frame to every matching local connection; returns how many."""
        matched = self.matcher.match(
            event.channel, event.event_type, event.source, event.priority, event.publisher, event.target_user
        )
        sessions = self._sessions
        frame = event.frame
        for number in matched:
            sessions[number].sink.send(frame)
        metrics = self.metrics
        metrics.events_published += 1
        metrics.events_sent += len(matched)
        metrics.last_activity = time.time()
        tenant = self._tenant(event.tenant_id)
        tenant.events_published += 1
        limit = self.limits.max_tracked_names
        if event.event_type not in tenant.event_types and len(tenant.event_types) < limit:
            tenant.event_types[event.event_type] = None
        if event.source not in tenant.sources and len(tenant.sources) < limit:
            tenant.sources[event.source] = None
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
