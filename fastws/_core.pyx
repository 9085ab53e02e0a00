# cython: language_level=3
"""Compiled hot paths: WebSocket framing, the subscription matcher, the ring-buffer history.

Declarations live in _core.pxd, the Python-visible API is typed in _core.pyi,
and fastws/_core_py.py is the pure-Python twin with the same behaviour (and,
for RingBuffer, the same bytes).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_New, PyList_SET_ITEM


cdef extern from "Python.h":
    void Py_SET_SIZE(object o, Py_ssize_t size)
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memcmp, memset

import os

IMPLEMENTATION = "cython"


cdef inline Py_ssize_t _header_size(Py_ssize_t size) noexcept:
    return 2 if size < 126 else (4 if size < 65536 else 10)


cdef inline uint8_t* _write_header(uint8_t* out, Py_ssize_t size) noexcept:
    """Write a FIN text frame header for a payload of ``size`` bytes; where the payload goes."""
    cdef int i
    out[0] = 0x81
    if size < 126:
        out[1] = <uint8_t>size
        return out + 2
    if size < 65536:
        out[1] = 126
        out[2] = <uint8_t>(size >> 8)
        out[3] = <uint8_t>(size & 0xFF)
        return out + 4
    out[1] = 127
    for i in range(8):
        out[2 + i] = <uint8_t>((size >> (8 * (7 - i))) & 0xFF)
    return out + 10


cpdef bytes frame_text(bytes payload):
    """A complete, unmasked server->client WebSocket text frame (FIN set) carrying ``payload``."""
    cdef Py_ssize_t size = len(payload)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, _header_size(size) + size)
    cdef uint8_t* out = _write_header(<uint8_t*>PyBytes_AS_STRING(frame), size)
    memcpy(out, PyBytes_AS_STRING(payload), size)
    return frame


cpdef bytes frame_event(bytes payload, long long offset):
    """The frame of an event: ``payload`` (a JSON object) with ``"offset":N`` added as its last key.

    One allocation: the frame header, the payload and the offset are written
    straight into the result.
    """
    cdef Py_ssize_t length = len(payload)
    if length == 0 or (<char*>payload)[length - 1] != b"}" or offset < 0:
        raise ValueError("payload must be a JSON object and offset non-negative")
    cdef char digits[24]
    cdef int n_digits = 0
    cdef long long value = offset
    while True:
        digits[n_digits] = <char>(48 + value % 10)
        n_digits += 1
        value //= 10
        if value == 0:
            break
    # ,"offset":N}  (no comma after an empty object)
    cdef Py_ssize_t comma = 1 if length > 2 else 0
    cdef Py_ssize_t size = length - 1 + comma + 10 + n_digits
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, _header_size(size) + size)
    cdef uint8_t* out = _write_header(<uint8_t*>PyBytes_AS_STRING(frame), size)
    cdef int i
    memcpy(out, PyBytes_AS_STRING(payload), length - 1)
    out += length - 1
    if comma:
        out[0] = b","
        out += 1
    memcpy(out, b'"offset":', 9)
    out += 9
    for i in range(n_digits):
        out[i] = digits[n_digits - 1 - i]
    out[n_digits] = b"}"
    return frame


# =============================================================================
# CloseScanner: where the first CLOSE frame of a client's byte stream ends
# =============================================================================


cdef class CloseScanner:
    """Follows frame boundaries in a client's byte stream to find where its first CLOSE frame ends.

    The same contract as fastws._core_py.CloseScanner: ``scan(data)`` answers
    how many bytes of each chunk to pass on (all, or up to the end of the
    first CLOSE frame, which sets ``done``). Attributes: _core.pxd.
    """

    def scan(self, data):
        cdef Py_buffer view
        cdef const uint8_t* p
        cdef Py_ssize_t size, at = 0, need, take
        cdef uint64_t length, step
        cdef int i
        if self.done:
            return 0
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const uint8_t*>view.buf
            size = view.len
            while at < size:
                if self._remaining:
                    step = self._remaining if self._remaining < <uint64_t>(size - at) else <uint64_t>(size - at)
                    at += <Py_ssize_t>step
                    self._remaining -= step
                else:
                    need = 2
                    if self._header_len >= 2:
                        length = self._header[1] & 0x7F
                        need += (2 if length == 126 else 8 if length == 127 else 0) + (4 if self._header[1] & 0x80 else 0)
                    if self._header_len < need:
                        take = need - self._header_len
                        if take > size - at:
                            take = size - at
                        memcpy(&self._header[self._header_len], p + at, take)
                        self._header_len += take
                        at += take
                        if self._header_len < need or need == 2:
                            continue  # more header to come (or its length bytes now known: loop again)
                    length = self._header[1] & 0x7F
                    if length == 126:
                        length = (<uint64_t>self._header[2] << 8) | self._header[3]
                    elif length == 127:
                        length = 0
                        for i in range(8):
                            length = (length << 8) | self._header[2 + i]
                    self._close = (self._header[0] & 0x0F) == 0x8
                    self._remaining = length
                    self._header_len = 0
                if not self._remaining and not self._header_len and self._close:
                    self.done = True
                    return at
            return size
        finally:
            PyBuffer_Release(&view)


# =============================================================================
# Matcher
#
# Theory of operation:
#   1. Names that appear in filters or subscriptions (event types, sources,
#      users) are interned to small ints, reference counted, and released when
#      no filter uses them; an event's names are looked up once per publish,
#      and a name nobody filters on gets -1, which no list contains.
#   2. Each channel holds a C array of Sub entries (connection, its
#      subscription's event types, a pointer to the connection's Filter).
#      match() walks that array in C: no Python object is touched per
#      subscriber except to append a matching connection to the result.
#   3. Targeted events go through the user index (user -> connections) and the
#      channel's position map, so they cost in proportion to the user's
#      connections.
# =============================================================================


cdef class _Interner:
    """str <-> small int, reference counted; freed ids are reused."""

    def __cinit__(self):
        self.ids = {}
        self.names = []
        self.counts = []
        self.free = []

    cdef int32_t acquire(self, str name) except -2:
        cdef object key = self.ids.get(name)
        cdef int32_t k
        if key is not None:
            k = <int32_t>key
            self.counts[k] = <Py_ssize_t>self.counts[k] + 1
            return k
        if self.free:
            k = <int32_t>self.free.pop()
            self.names[k] = name
            self.counts[k] = 1
        else:
            k = <int32_t>len(self.names)
            self.names.append(name)
            self.counts.append(1)
        self.ids[name] = k
        return k

    cdef void release(self, int32_t key):
        cdef Py_ssize_t count = <Py_ssize_t>self.counts[key] - 1
        self.counts[key] = count
        if count == 0:
            del self.ids[self.names[key]]
            self.names[key] = None
            self.free.append(key)

    cdef inline int32_t lookup(self, str name):
        cdef PyObject* key = PyDict_GetItem(self.ids, name)
        return -1 if key == NULL else <int32_t><object>key


cdef int32_t* _intern_list(_Interner names, object values, int* size) except? NULL:
    """Intern a list of distinct names into a new C array (NULL and size 0 when empty)."""
    cdef list unique = sorted(set(values))
    cdef Py_ssize_t n = len(unique)
    size[0] = <int>n
    if n == 0:
        return NULL
    cdef int32_t* array = <int32_t*>PyMem_Malloc(n * sizeof(int32_t))
    if array == NULL:
        raise MemoryError()
    cdef Py_ssize_t i
    for i in range(n):
        array[i] = names.acquire(<str>unique[i])
    return array


cdef void _release_list(_Interner names, int32_t* array, int size):
    cdef int i
    for i in range(size):
        names.release(array[i])
    PyMem_Free(array)


cdef inline bint _has(const int32_t* array, int size, int32_t key) noexcept nogil:
    cdef int i
    for i in range(size):
        if array[i] == key:
            return True
    return False


cdef inline bint _passes(const Sub* sub, int32_t event_type, int32_t source, uint8_t priority_bit,
                         int32_t publisher) noexcept nogil:
    if sub.types != NULL and not _has(sub.types, sub.n_types, event_type):
        return False
    cdef const Filter* f = &sub.filter
    if f.any:
        return True
    if f.n_event_types and not _has(f.event_types, f.n_event_types, event_type):
        return False
    if f.n_sources and not _has(f.sources, f.n_sources, source):
        return False
    if f.priority_mask and not (f.priority_mask & priority_bit):
        return False
    if f.n_users and not _has(f.users, f.n_users, publisher):
        return False
    return True


cdef class _Connection:
    def __cinit__(self):
        memset(&self.filter, 0, sizeof(Filter))
        self.filter.any = True
        # a tuple, rebuilt on (rare) changes: 48 bytes for the usual one channel, where a set takes 216
        self.channels = ()


cdef void _clear_filter(Filter* f, _Interner names):
    _release_list(names, f.event_types, f.n_event_types)
    _release_list(names, f.sources, f.n_sources)
    _release_list(names, f.users, f.n_users)
    memset(f, 0, sizeof(Filter))
    f.any = True


cdef class _Channel:
    def __cinit__(self):
        self.subs = NULL
        self.size = 0
        self.capacity = 0
        self.positions = {}

    def __dealloc__(self):
        # the owner releases each Sub's names before dropping a channel
        cdef Py_ssize_t i
        for i in range(self.size):
            Py_DECREF(<object>self.subs[i].connection_object)
        PyMem_Free(self.subs)

    cdef Sub* add(self, Py_ssize_t connection) except NULL:
        cdef Sub* grown
        if self.size == self.capacity:
            self.capacity = 4 if self.capacity == 0 else self.capacity * 2
            grown = <Sub*>PyMem_Realloc(self.subs, self.capacity * sizeof(Sub))
            if grown == NULL:
                raise MemoryError()
            self.subs = grown
        cdef Sub* sub = &self.subs[self.size]
        memset(sub, 0, sizeof(Sub))
        sub.connection = connection
        cdef object key = connection
        Py_INCREF(key)
        sub.connection_object = <PyObject*>key
        self.positions[key] = self.size
        self.size += 1
        return sub

    cdef void remove_at(self, Py_ssize_t position):
        """Swap-remove; the caller has released the Sub's names."""
        cdef Py_ssize_t last = self.size - 1
        del self.positions[self.subs[position].connection]
        Py_DECREF(<object>self.subs[position].connection_object)
        if position != last:
            self.subs[position] = self.subs[last]
            self.positions[self.subs[position].connection] = position
        self.size = last


cdef class Matcher:
    """Who receives an event: channel subscriptions and per-connection filters.

    The same contract as fastws._core_py.Matcher (see its docstring).
    """

    def __cinit__(self):
        self._channels = {}
        self._connections = {}
        self._by_user = {}
        self._names = _Interner()

    def __dealloc__(self):
        cdef _Channel channel
        cdef Py_ssize_t i
        if self._channels is None:
            return
        for channel in self._channels.values():
            for i in range(channel.size):
                PyMem_Free(channel.subs[i].types)
        for state in self._connections.values():
            PyMem_Free((<_Connection>state).filter.event_types)
            PyMem_Free((<_Connection>state).filter.sources)
            PyMem_Free((<_Connection>state).filter.users)

    # -- connections -----------------------------------------------------------

    def add(self, Py_ssize_t connection, str user_id):
        if connection in self._connections:
            raise KeyError(f"connection {connection} already added")
        cdef _Connection state = _Connection()
        cdef object key = connection
        state.user_id = user_id
        self._connections[key] = state
        # a user's connections: the connection itself while it is the only one, then a set
        same_user = self._by_user.get(user_id)
        if same_user is None:
            self._by_user[user_id] = key
        elif type(same_user) is set:
            (<set>same_user).add(key)
        else:
            self._by_user[user_id] = {same_user, key}

    def remove(self, Py_ssize_t connection):
        cdef _Connection state = <_Connection>self._connections.pop(connection)
        for channel in state.channels:
            self._unsubscribe(state, connection, <str>channel)
        _clear_filter(&state.filter, self._names)  # no subscription holds a copy any more
        same_user = self._by_user[state.user_id]
        if type(same_user) is set:
            (<set>same_user).discard(connection)
            if len(<set>same_user) == 1:
                self._by_user[state.user_id] = next(iter(<set>same_user))
        else:
            del self._by_user[state.user_id]

    def __contains__(self, connection):
        return connection in self._connections

    def __len__(self):
        return len(self._connections)

    def set_filters(self, Py_ssize_t connection, event_types=(), sources=(), priorities=(), users=()):
        cdef _Connection state = <_Connection>self._connections[connection]
        cdef uint8_t mask = 0
        for priority in priorities:
            if not 0 <= priority <= 7:
                raise ValueError("priorities are ranks 0-7")
            mask |= <uint8_t>(1 << <int>priority)
        cdef Filter* f = &state.filter
        # Build the new lists before releasing the old ones (shared names keep their ids).
        cdef int n_types, n_sources, n_users
        cdef int32_t* new_types = _intern_list(self._names, event_types, &n_types)
        cdef int32_t* new_sources = _intern_list(self._names, sources, &n_sources)
        cdef int32_t* new_users = _intern_list(self._names, users, &n_users)
        _clear_filter(f, self._names)
        f.event_types, f.n_event_types = new_types, n_types
        f.sources, f.n_sources = new_sources, n_sources
        f.users, f.n_users = new_users, n_users
        f.priority_mask = mask
        f.any = n_types == 0 and n_sources == 0 and n_users == 0 and mask == 0
        # refresh the copies next to each subscription
        cdef _Channel entry
        for channel in state.channels:
            entry = <_Channel>self._channels[channel]
            entry.subs[<Py_ssize_t>entry.positions[connection]].filter = state.filter

    # -- subscriptions ---------------------------------------------------------

    def subscribe(self, Py_ssize_t connection, str channel, event_types=None):
        cdef _Connection state = <_Connection>self._connections[connection]
        cdef int n_types = 0
        cdef int32_t* types = NULL
        if event_types:
            types = _intern_list(self._names, event_types, &n_types)
        cdef _Channel entry = <_Channel>self._channels.get(channel)
        cdef Sub* sub
        if entry is None:
            entry = _Channel()
            self._channels[channel] = entry
        position = entry.positions.get(connection)
        if position is not None:
            sub = &entry.subs[<Py_ssize_t>position]
            _release_list(self._names, sub.types, sub.n_types)
            sub.types, sub.n_types = types, n_types
            return False
        sub = entry.add(connection)
        sub.types, sub.n_types = types, n_types
        sub.filter = state.filter
        state.channels = state.channels + (channel,)
        return True

    def unsubscribe(self, Py_ssize_t connection, str channel):
        cdef _Connection state = <_Connection>self._connections[connection]
        if channel not in state.channels:
            return False
        self._unsubscribe(state, connection, channel)
        return True

    cdef _unsubscribe(self, _Connection state, Py_ssize_t connection, str channel):
        cdef _Channel entry = <_Channel>self._channels[channel]
        cdef Py_ssize_t position = <Py_ssize_t>entry.positions[connection]
        cdef Sub* sub = &entry.subs[position]
        _release_list(self._names, sub.types, sub.n_types)
        entry.remove_at(position)
        state.channels = tuple([name for name in state.channels if name != channel])
        if entry.size == 0:
            del self._channels[channel]

    def subscriptions(self, Py_ssize_t connection):
        return sorted((<_Connection>self._connections[connection]).channels)

    def subscription_count(self, Py_ssize_t connection):
        return len((<_Connection>self._connections[connection]).channels)

    def channels(self):
        return list(self._channels)

    def subscriber_count(self, str channel):
        entry = self._channels.get(channel)
        return 0 if entry is None else (<_Channel>entry).size

    # -- matching --------------------------------------------------------------

    cpdef list match(self, str channel, str event_type, str source, int priority,
                     str publisher, object target_user=None):
        """The connections that receive this event, in no particular order."""
        cdef PyObject* entry_ptr = PyDict_GetItem(self._channels, channel)
        if entry_ptr == NULL:
            return []
        cdef _Channel entry = <_Channel>entry_ptr
        cdef list matched
        cdef _Interner names = self._names
        cdef int32_t type_key = names.lookup(event_type)
        cdef int32_t source_key = names.lookup(source)
        cdef int32_t publisher_key = names.lookup(publisher)
        cdef uint8_t priority_bit = <uint8_t>(1 << priority) if 0 <= priority <= 7 else 0
        cdef Py_ssize_t i
        cdef Sub* sub
        cdef Py_ssize_t count = 0
        cdef object connection_object
        if target_user is not None:
            matched = []
            candidates = self._by_user.get(target_user)
            if candidates is None:
                return matched
            if type(candidates) is not set:
                candidates = (candidates,)
            for connection in candidates:
                position = entry.positions.get(connection)
                if position is None:
                    continue
                sub = &entry.subs[<Py_ssize_t>position]
                if _passes(sub, type_key, source_key, priority_bit, publisher_key):
                    matched.append(connection)
            return matched
        # Room for every subscriber, filled in C, then cut to what matched:
        # no reallocation while appending.
        matched = PyList_New(entry.size)
        for i in range(entry.size):
            sub = &entry.subs[i]
            if _passes(sub, type_key, source_key, priority_bit, publisher_key):
                connection_object = <object>sub.connection_object
                Py_INCREF(connection_object)
                PyList_SET_ITEM(matched, count, connection_object)
                count += 1
        Py_SET_SIZE(matched, count)
        return matched


# =============================================================================
# RingBuffer: the layout is described in fastws/_core_py.py, and the two
# implementations write the same bytes.
# =============================================================================

cdef enum:
    HEADER_SIZE = 80
    SLOT_SIZE = 16
    META_SIZE = 5
    # header field offsets
    H_CAPACITY = 8
    H_MAX_EVENTS = 16
    H_FIRST = 24
    H_NEXT = 32
    H_HEAD = 40
    H_TAIL = 48
    H_COUNT = 56
    H_EPOCH = 64


def new_epoch():
    """A random stream epoch: 16 hex characters, never a counter that repeats after a restart."""
    return os.urandom(8).hex()


cdef extern from *:
    """
    static inline void fastws_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    """
    void _fence "fastws_fence" () noexcept nogil


cdef inline uint64_t _get(const unsigned char* p) noexcept nogil:
    cdef uint64_t value
    memcpy(&value, p, 8)  # little-endian hosts only (x86-64, aarch64)
    return value


cdef inline void _put(unsigned char* p, uint64_t value) noexcept nogil:
    memcpy(p, &value, 8)


cdef class RingBuffer:
    """One channel's recent events, bounded by count and by bytes, numbered by offset.

    The same contract and byte layout as fastws._core_py.RingBuffer.
    """

    def __cinit__(self, buffer, capacity=None, max_events=None, epoch=None, next_offset=1):
        cdef Py_buffer view
        PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE | PyBUF_SIMPLE)
        self._buffer = buffer
        self._base = <unsigned char*>view.buf
        self._size = view.len
        # The exporter (bytearray, mmap, SharedMemory) stays alive through
        # self._buffer; release the view so a bytearray keeps its own rules.
        PyBuffer_Release(&view)
        cdef bytes epoch_bytes
        if capacity is not None:
            if max_events is None or capacity <= 0 or max_events <= 0 or next_offset < 1:
                raise ValueError("capacity and max_events must be positive, next_offset at least 1")
            if self._size < RingBuffer.layout_size(capacity, max_events):
                raise ValueError("the buffer is smaller than the layout")
            epoch_bytes = (epoch or new_epoch()).encode("ascii")
            if len(epoch_bytes) != 16:
                raise ValueError("an epoch is 16 ASCII characters")
            memset(self._base, 0, HEADER_SIZE)
            memcpy(self._base, b"FWRB", 4)
            self._base[4] = 1
            _put(self._base + H_CAPACITY, capacity)
            _put(self._base + H_MAX_EVENTS, max_events)
            _put(self._base + H_FIRST, next_offset)
            _put(self._base + H_NEXT, next_offset)
            memcpy(self._base + H_EPOCH, PyBytes_AS_STRING(epoch_bytes), 16)
        if self._size < HEADER_SIZE or memcmp(self._base, b"FWRB", 4) != 0 or self._base[4] != 1 or self._base[5] != 0:
            raise ValueError("not a fastws ring buffer (or another layout version)")
        self._capacity = _get(self._base + H_CAPACITY)
        self._max_events = _get(self._base + H_MAX_EVENTS)
        if <uint64_t>self._size < HEADER_SIZE + SLOT_SIZE * self._max_events + self._capacity:
            raise ValueError("the buffer is smaller than its layout")
        self._index = self._base + HEADER_SIZE
        self._data = self._index + SLOT_SIZE * self._max_events

    @staticmethod
    def layout_size(capacity, max_events):
        return HEADER_SIZE + SLOT_SIZE * max_events + capacity

    @classmethod
    def create(cls, capacity, max_events, epoch=None, next_offset=1):
        return cls(bytearray(HEADER_SIZE + SLOT_SIZE * max_events + capacity), capacity, max_events, epoch, next_offset)

    @property
    def buffer(self):
        return self._buffer

    @property
    def capacity(self):
        return self._capacity

    @property
    def max_events(self):
        return self._max_events

    @property
    def epoch(self):
        return PyBytes_FromStringAndSize(<char*>self._base + H_EPOCH, 16).decode("ascii")

    @property
    def first_offset(self):
        return _get(self._base + H_FIRST)

    @property
    def next_offset(self):
        return _get(self._base + H_NEXT)

    @property
    def last_offset(self):
        return _get(self._base + H_NEXT) - 1

    def __len__(self):
        return _get(self._base + H_COUNT)

    @property
    def nbytes(self):
        return _get(self._base + H_TAIL) - _get(self._base + H_HEAD)

    def covers(self, long long since):
        cdef long long first = <long long>_get(self._base + H_FIRST)
        cdef long long last = <long long>_get(self._base + H_NEXT) - 1
        return first - 1 <= since <= last

    cdef inline unsigned char* _slot(self, uint64_t offset) noexcept:
        return self._index + SLOT_SIZE * ((offset - 1) % self._max_events)

    cdef void _evict_oldest(self) noexcept:
        cdef unsigned char* base = self._base
        cdef uint64_t first = _get(base + H_FIRST)
        cdef uint64_t count = _get(base + H_COUNT) - 1
        _put(base + H_FIRST, first + 1)
        _put(base + H_COUNT, count)
        if count:
            _put(base + H_HEAD, _get(self._slot(first + 1)))
        else:
            _put(base + H_HEAD, _get(base + H_TAIL))

    def append(self, uint64_t offset, bytes frame, str event_type, str source, int priority,
               str publisher, target=None):
        cdef unsigned char* base = self._base
        if offset != _get(base + H_NEXT):
            raise ValueError(f"offset {offset} is not the next offset {_get(base + H_NEXT)}")
        cdef bytes b_type = event_type.encode()
        cdef bytes b_source = source.encode()
        cdef bytes b_publisher = publisher.encode()
        cdef bytes b_target = (<str>target).encode() if target else b""
        if (len(b_type) > 255 or len(b_source) > 255 or len(b_publisher) > 255 or len(b_target) > 255
                or not 0 <= priority <= 255):
            raise ValueError("names are at most 255 bytes, priority a byte")
        cdef uint64_t length = (META_SIZE + len(b_type) + len(b_source) + len(b_publisher)
                                + len(b_target) + len(frame))
        cdef uint64_t capacity = self._capacity
        if length > capacity:
            _put(base + H_FIRST, offset + 1)
            _put(base + H_HEAD, _get(base + H_TAIL))
            _put(base + H_COUNT, 0)
            _fence()
            _put(base + H_NEXT, offset + 1)
            return False
        if _get(base + H_COUNT) == self._max_events:
            self._evict_oldest()
        cdef uint64_t start = _get(base + H_TAIL)
        if start % capacity + length > capacity:
            start += capacity - start % capacity
        while _get(base + H_COUNT) and start + length - _get(base + H_HEAD) > capacity:
            self._evict_oldest()
        if not _get(base + H_COUNT):
            _put(base + H_FIRST, offset)
            _put(base + H_HEAD, start)
        # Readers take no lock (read): what they may be copying is evicted (H_FIRST moved past
        # it) before a byte of it is overwritten, and the record is published (H_NEXT) last.
        _fence()
        cdef unsigned char* at = self._data + start % capacity
        at[0] = <uint8_t>priority
        at[1] = <uint8_t>len(b_type)
        at[2] = <uint8_t>len(b_source)
        at[3] = <uint8_t>len(b_publisher)
        at[4] = <uint8_t>len(b_target)
        at += META_SIZE
        for part in (b_type, b_source, b_publisher, b_target, frame):
            memcpy(at, PyBytes_AS_STRING(<bytes>part), len(<bytes>part))
            at += len(<bytes>part)
        cdef unsigned char* slot = self._slot(offset)
        _put(slot, start)
        cdef uint32_t length32 = <uint32_t>length
        memcpy(slot + 8, &length32, 4)
        memset(slot + 12, 0, 4)
        _put(base + H_TAIL, start + length)
        _put(base + H_COUNT, _get(base + H_COUNT) + 1)
        _fence()
        _put(base + H_NEXT, offset + 1)
        return True

    def read(self, long long since, long long limit):
        """Up to ``limit`` events after ``since``, oldest first, without a lock.

        A writer may be appending meanwhile, in this or another process: the records
        are copied first, then H_FIRST is read again, and any record it has moved
        past (so perhaps overwritten while being copied) is left out. So the events
        returned start later than ``since + 1`` when some were lost to the reader.
        """
        cdef unsigned char* base = self._base
        cdef uint64_t stop = _get(base + H_NEXT)
        _fence()
        cdef uint64_t first = _get(base + H_FIRST)
        if since + 1 > <long long>first:
            first = <uint64_t>(since + 1)
        if limit < 0:
            limit = 0
        if first + <uint64_t>limit < stop:
            stop = first + <uint64_t>limit
        cdef uint64_t capacity = self._capacity
        cdef list raw = []
        cdef uint64_t offset, position
        cdef uint32_t length
        offset = first
        while offset < stop:
            position = _get(self._slot(offset))
            memcpy(&length, self._slot(offset) + 8, 4)
            if length < META_SIZE or position % capacity + length > capacity:
                break  # being overwritten: the check below leaves it out
            raw.append(PyBytes_FromStringAndSize(<char*>self._data + position % capacity, length))
            offset += 1
        _fence()
        cdef uint64_t valid = _get(base + H_FIRST)
        cdef list events = []
        cdef unsigned char* at
        cdef unsigned char* end
        cdef int l_type, l_source, l_publisher, l_target
        offset = first
        for record in raw:
            if offset >= valid:
                at = <unsigned char*>PyBytes_AS_STRING(<bytes>record)
                end = at + len(<bytes>record)
                l_type, l_source, l_publisher, l_target = at[1], at[2], at[3], at[4]
                if META_SIZE + l_type + l_source + l_publisher + l_target > end - at:
                    raise ValueError(f"record {offset} of the ring is corrupt")
                priority = at[0]
                at += META_SIZE
                event_type = (<char*>at)[:l_type].decode()
                at += l_type
                source = (<char*>at)[:l_source].decode()
                at += l_source
                publisher = (<char*>at)[:l_publisher].decode()
                at += l_publisher
                target = (<char*>at)[:l_target].decode() if l_target else None
                at += l_target
                events.append((offset, event_type, source, priority, publisher, target,
                               PyBytes_FromStringAndSize(<char*>at, end - at)))
            offset += 1
        return events
