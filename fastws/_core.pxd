from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint8_t, uint64_t


cpdef bytes frame_text(bytes payload)
cpdef bytes frame_event(bytes payload, long long offset)


# -- close scanner -------------------------------------------------------------

cdef class CloseScanner:
    # an unfinished frame header (at most 2 + 8 + 4 bytes)
    cdef uint8_t _header[14]
    cdef Py_ssize_t _header_len
    # payload bytes of the current frame still to come
    cdef uint64_t _remaining
    # the current frame is a CLOSE
    cdef bint _close
    # a whole CLOSE frame has been passed on
    cdef readonly bint done


# -- matcher -------------------------------------------------------------------

cdef struct Filter:
    # every list holds interned ids; an empty list means "any"
    int32_t* event_types
    int32_t* sources
    int32_t* users
    int n_event_types
    int n_sources
    int n_users
    # bit p set: priority p passes; 0 means any
    uint8_t priority_mask
    # no filter at all: the common case, checked first
    bint any


cdef struct Sub:
    Py_ssize_t connection
    # the connection as a Python int (a reference held by the channel), appended to results as is
    PyObject* connection_object
    # per-subscription event types (interned); NULL means any
    int32_t* types
    int n_types
    # a copy of the connection's filter (its lists are owned by the _Connection),
    # kept next to the subscription so the scan reads one contiguous array
    Filter filter


cdef class _Interner:
    cdef dict ids
    cdef list names
    cdef list counts
    cdef list free
    cdef int32_t acquire(self, str name) except -2
    cdef void release(self, int32_t key)
    cdef inline int32_t lookup(self, str name)


cdef class _Connection:
    cdef str user_id
    cdef tuple channels
    cdef Filter filter


cdef class _Channel:
    cdef Sub* subs
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity
    # connection -> index in subs
    cdef dict positions
    cdef Sub* add(self, Py_ssize_t connection) except NULL
    cdef void remove_at(self, Py_ssize_t position)


cdef class Matcher:
    cdef dict _channels
    cdef dict _connections
    cdef dict _by_user
    cdef _Interner _names

    cpdef list match(self, str channel, str event_type, str source, int priority,
                     str publisher, object target_user=*)
    cdef _unsubscribe(self, _Connection state, Py_ssize_t connection, str channel)


# -- history -------------------------------------------------------------------

cdef class RingBuffer:
    cdef object _buffer
    cdef unsigned char* _base
    cdef Py_ssize_t _size
    cdef uint64_t _capacity
    cdef uint64_t _max_events
    cdef unsigned char* _index
    cdef unsigned char* _data
    cdef inline unsigned char* _slot(self, uint64_t offset) noexcept
    cdef void _evict_oldest(self) noexcept
