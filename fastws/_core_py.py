"""Pure-Python twin of :mod:`fastws._core`: the same API and behaviour.

It is the reference the compiled module is tested against, and the fallback
when the extension is not built (or ``FASTWS_NO_EXTENSIONS=1``). The algorithm
is the same as the compiled one: dict and set indexes, no linear scans over
all connections.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["IMPLEMENTATION", "frame_text", "Matcher"]

IMPLEMENTATION = "python"

_ANY = None


def frame_text(payload: bytes) -> bytes:
    """A complete, unmasked server->client WebSocket text frame (FIN set) carrying ``payload``."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126, size >> 8, size & 0xFF)) + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


class Matcher:
    """Who receives an event: channel subscriptions and per-connection filters.

    Connections are small integers chosen by the caller. A connection receives
    an event published on channel C when it is subscribed to C, the event type
    is in the subscription's event types (if it has any), the event passes the
    connection's filters (event types, sources, priorities, publisher users:
    each non-empty set must contain the event's value), and, for an event
    targeted at one user, the connection belongs to that user.
    """

    __slots__ = ("_channels", "_filters", "_users", "_subscriptions", "_by_user")

    def __init__(self) -> None:
        # channel -> {connection: subscription event types or None}
        self._channels: dict[str, dict[int, frozenset[str] | None]] = {}
        # connection -> (event_types, sources, priorities, users); absent: no filters
        self._filters: dict[int, tuple[frozenset[str], frozenset[str], frozenset[int], frozenset[str]]] = {}
        self._users: dict[int, str] = {}
        self._subscriptions: dict[int, set[str]] = {}
        # user -> connections, for targeted events
        self._by_user: dict[str, set[int]] = {}

    # -- connections -----------------------------------------------------------

    def add(self, connection: int, user_id: str) -> None:
        if connection in self._users:
            raise KeyError(f"connection {connection} already added")
        self._users[connection] = user_id
        self._subscriptions[connection] = set()
        self._by_user.setdefault(user_id, set()).add(connection)

    def remove(self, connection: int) -> None:
        user_id = self._users.pop(connection)
        for channel in self._subscriptions.pop(connection):
            subscribers = self._channels[channel]
            del subscribers[connection]
            if not subscribers:
                del self._channels[channel]
        self._filters.pop(connection, None)
        same_user = self._by_user[user_id]
        same_user.discard(connection)
        if not same_user:
            del self._by_user[user_id]

    def __contains__(self, connection: int) -> bool:
        return connection in self._users

    def __len__(self) -> int:
        return len(self._users)

    def set_filters(
        self,
        connection: int,
        event_types: Iterable[str] = (),
        sources: Iterable[str] = (),
        priorities: Iterable[int] = (),
        users: Iterable[str] = (),
    ) -> None:
        if connection not in self._users:
            raise KeyError(connection)
        compiled = (frozenset(event_types), frozenset(sources), frozenset(priorities), frozenset(users))
        if any(compiled):
            self._filters[connection] = compiled
        else:
            self._filters.pop(connection, None)

    # -- subscriptions ---------------------------------------------------------

    def subscribe(self, connection: int, channel: str, event_types: Iterable[str] | None = None) -> bool:
        """Subscribe (or replace the subscription's event types). True if it is new."""
        channels = self._subscriptions[connection]
        types = frozenset(event_types) if event_types else _ANY
        self._channels.setdefault(channel, {})[connection] = types
        if channel in channels:
            return False
        channels.add(channel)
        return True

    def unsubscribe(self, connection: int, channel: str) -> bool:
        """Unsubscribe. True if the connection was subscribed."""
        channels = self._subscriptions[connection]
        if channel not in channels:
            return False
        channels.remove(channel)
        subscribers = self._channels[channel]
        del subscribers[connection]
        if not subscribers:
            del self._channels[channel]
        return True

    def subscriptions(self, connection: int) -> list[str]:
        return sorted(self._subscriptions[connection])

    def subscription_count(self, connection: int) -> int:
        return len(self._subscriptions[connection])

    def channels(self) -> list[str]:
        return list(self._channels)

    def subscriber_count(self, channel: str) -> int:
        subscribers = self._channels.get(channel)
        return 0 if subscribers is None else len(subscribers)

    # -- matching --------------------------------------------------------------

    def match(
        self,
        channel: str,
        event_type: str,
        source: str,
        priority: int,
        publisher: str,
        target_user: str | None = None,
    ) -> list[int]:
        """The connections that receive this event, in no particular order."""
        subscribers = self._channels.get(channel)
        if not subscribers:
            return []
        filters = self._filters
        if target_user is not None:
            candidates = self._by_user.get(target_user)
            if not candidates:
                return []
            if len(candidates) < len(subscribers):
                pairs = [(c, subscribers[c]) for c in candidates if c in subscribers]
            else:
                users = self._users
                pairs = [(c, t) for c, t in subscribers.items() if users[c] == target_user]
        else:
            pairs = subscribers.items()  # type: ignore[assignment]
        matched = []
        for connection, types in pairs:
            if types is not None and event_type not in types:
                continue
            compiled = filters.get(connection)
            if compiled is not None:
                event_types, sources, priorities, users = compiled
                if (
                    (event_types and event_type not in event_types)
                    or (sources and source not in sources)
                    or (priorities and priority not in priorities)
                    or (users and publisher not in users)
                ):
                    continue
            matched.append(connection)
        return matched
