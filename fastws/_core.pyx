# cython: language_level=3
"""Compiled hot paths: WebSocket framing and the subscription matcher.

Declarations live in _core.pxd, the Python-visible API is typed in _core.pyi,
and fastws/_core_py.py is the pure-Python twin with the same behaviour.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.string cimport memcpy
from libc.stdint cimport uint8_t

IMPLEMENTATION = "cython"


cpdef bytes frame_text(bytes payload):
    """A complete, unmasked server->client WebSocket text frame (FIN set) carrying ``payload``."""
    cdef Py_ssize_t size = len(payload)
    cdef Py_ssize_t header
    if size < 126:
        header = 2
    elif size < 65536:
        header = 4
    else:
        header = 10
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, header + size)
    cdef uint8_t* out = <uint8_t*>PyBytes_AS_STRING(frame)
    cdef int i
    out[0] = 0x81
    if header == 2:
        out[1] = <uint8_t>size
    elif header == 4:
        out[1] = 126
        out[2] = <uint8_t>(size >> 8)
        out[3] = <uint8_t>(size & 0xFF)
    else:
        out[1] = 127
        for i in range(8):
            out[2 + i] = <uint8_t>((size >> (8 * (7 - i))) & 0xFF)
    memcpy(out + header, PyBytes_AS_STRING(payload), size)
    return frame


cdef class Matcher:
    """Who receives an event: channel subscriptions and per-connection filters.

    The same contract as fastws._core_py.Matcher (see its docstring).
    """

    def __cinit__(self):
        self._channels = {}
        self._filters = {}
        self._users = {}
        self._subscriptions = {}
        self._by_user = {}

    # -- connections -----------------------------------------------------------

    def add(self, Py_ssize_t connection, str user_id):
        if connection in self._users:
            raise KeyError(f"connection {connection} already added")
        self._users[connection] = user_id
        self._subscriptions[connection] = set()
        same_user = self._by_user.get(user_id)
        if same_user is None:
            self._by_user[user_id] = {connection}
        else:
            (<set>same_user).add(connection)

    def remove(self, Py_ssize_t connection):
        cdef str user_id = self._users.pop(connection)
        cdef dict subscribers
        for channel in <set>self._subscriptions.pop(connection):
            subscribers = <dict>self._channels[channel]
            del subscribers[connection]
            if not subscribers:
                del self._channels[channel]
        self._filters.pop(connection, None)
        cdef set same_user = <set>self._by_user[user_id]
        same_user.discard(connection)
        if not same_user:
            del self._by_user[user_id]

    def __contains__(self, connection):
        return connection in self._users

    def __len__(self):
        return len(self._users)

    def set_filters(self, Py_ssize_t connection, event_types=(), sources=(), priorities=(), users=()):
        if connection not in self._users:
            raise KeyError(connection)
        compiled = (frozenset(event_types), frozenset(sources), frozenset(priorities), frozenset(users))
        if any(compiled):
            self._filters[connection] = compiled
        else:
            self._filters.pop(connection, None)

    # -- subscriptions ---------------------------------------------------------

    def subscribe(self, Py_ssize_t connection, str channel, event_types=None):
        cdef set channels = <set>self._subscriptions[connection]
        types = frozenset(event_types) if event_types else None
        subscribers = self._channels.get(channel)
        if subscribers is None:
            self._channels[channel] = {connection: types}
        else:
            (<dict>subscribers)[connection] = types
        if channel in channels:
            return False
        channels.add(channel)
        return True

    def unsubscribe(self, Py_ssize_t connection, str channel):
        cdef set channels = <set>self._subscriptions[connection]
        if channel not in channels:
            return False
        channels.remove(channel)
        cdef dict subscribers = <dict>self._channels[channel]
        del subscribers[connection]
        if not subscribers:
            del self._channels[channel]
        return True

    def subscriptions(self, Py_ssize_t connection):
        return sorted(self._subscriptions[connection])

    def subscription_count(self, Py_ssize_t connection):
        return len(<set>self._subscriptions[connection])

    def channels(self):
        return list(self._channels)

    def subscriber_count(self, str channel):
        subscribers = self._channels.get(channel)
        return 0 if subscribers is None else len(<dict>subscribers)

    # -- matching --------------------------------------------------------------

    cpdef list match(self, str channel, str event_type, str source, int priority,
                     str publisher, object target_user=None):
        """The connections that receive this event, in no particular order."""
        cdef list matched = []
        subscribers_obj = self._channels.get(channel)
        if subscribers_obj is None:
            return matched
        cdef dict subscribers = <dict>subscribers_obj
        cdef dict filters = self._filters
        cdef object candidates
        cdef object types
        cdef object compiled
        cdef tuple ftuple
        if target_user is not None:
            candidates = self._by_user.get(target_user)
            if candidates is None:
                return matched
            for connection in <set>candidates:
                types = subscribers.get(connection, _MISSING)
                if types is _MISSING:
                    continue
                if _passes(connection, types, filters, event_type, source, priority, publisher):
                    matched.append(connection)
            return matched
        for connection, types in subscribers.items():
            if _passes(connection, types, filters, event_type, source, priority, publisher):
                matched.append(connection)
        return matched


cdef object _MISSING = object()


cdef inline bint _passes(object connection, object types, dict filters, str event_type,
                         str source, int priority, str publisher):
    if types is not None and event_type not in <frozenset>types:
        return False
    compiled = filters.get(connection)
    if compiled is None:
        return True
    cdef tuple ftuple = <tuple>compiled
    cdef frozenset event_types = <frozenset>ftuple[0]
    cdef frozenset sources = <frozenset>ftuple[1]
    cdef frozenset priorities = <frozenset>ftuple[2]
    cdef frozenset users = <frozenset>ftuple[3]
    if event_types and event_type not in event_types:
        return False
    if sources and source not in sources:
        return False
    if priorities and priority not in priorities:
        return False
    if users and publisher not in users:
        return False
    return True
