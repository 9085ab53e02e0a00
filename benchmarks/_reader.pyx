# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The load generator's frame reader, compiled: the behaviour is benchmarks/reader.py's (its
docstring), which tests/integration/test_load_reader.py checks on both implementations."""

from libc.stdlib cimport strtod
from libc.string cimport memcmp


cdef extern from "string.h":
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)

cdef bytes EVENT_TYPE = b'"eventType":"'
cdef bytes DATA_N = b'","data":{"n":'
cdef bytes STAMP = b',"t":'
cdef bytes TENANT = b'"tenantId":"'


cdef class Reader:
    cdef public object expected_type, expected_tenant
    cdef public long long step
    cdef public list latencies
    cdef public Py_ssize_t max_latencies
    cdef public long long delivered, lost, duplicated, misrouted
    cdef public list controls
    cdef bytes _tail
    cdef long long _last
    cdef bint _started

    def __init__(self, expected_type=None, long long step=1, expected_tenant=None, list latencies=None,
                 Py_ssize_t max_latencies=2_000_000):
        self.expected_type = expected_type
        self.expected_tenant = expected_tenant
        self.step = step
        self.latencies = latencies if latencies is not None else []
        self.max_latencies = max_latencies
        self.delivered = self.lost = self.duplicated = self.misrouted = 0
        self.controls = []
        self._tail = b""
        self._started = False

    @property
    def last(self):
        """The last sequence number accounted, or None."""
        return self._last if self._started else None

    def feed(self, bytes data, double now):
        cdef bytes buf = self._tail + data if self._tail else data
        cdef const unsigned char *p = buf
        cdef Py_ssize_t size = len(buf), pos = 0, start, end, length
        cdef long long delivered = 0
        while pos + 2 <= size:
            length = p[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if pos + 4 > size:
                    break
                length = (p[pos + 2] << 8) | p[pos + 3]
                start = pos + 4
            else:
                if pos + 10 > size:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            if p[pos] == 0x81:
                delivered += self._event(p, start, end, now)
            else:
                self.controls.append((p[pos], buf[start:end]))
            pos = end
        self._tail = buf[pos:]
        self.delivered += delivered
        return delivered

    cdef int _event(self, const unsigned char *p, Py_ssize_t start, Py_ssize_t end, double now) except -1:
        """1 if the frame p[start:end] is an event of the load's publishes (then checked), else 0."""
        cdef const unsigned char *at = <const unsigned char *>memmem(p + start, end - start, <const char *>EVENT_TYPE, len(EVENT_TYPE))
        cdef const unsigned char *stop = p + end
        cdef const unsigned char *type_start
        cdef const unsigned char *type_end
        cdef char *stamp_end
        cdef long long n = 0
        cdef double stamp
        if at == NULL:
            return 0
        type_start = at + len(EVENT_TYPE)
        type_end = type_start
        while type_end < stop and type_end[0] != 34:  # '"'
            type_end += 1
        at = type_end
        if stop - at < len(DATA_N) or memcmp(at, <const char *>DATA_N, len(DATA_N)) != 0:
            return 0
        at += len(DATA_N)
        if at >= stop or not (48 <= at[0] <= 57):
            return 0
        while at < stop and 48 <= at[0] <= 57:
            n = n * 10 + (at[0] - 48)
            at += 1
        if stop - at < len(STAMP) or memcmp(at, <const char *>STAMP, len(STAMP)) != 0:
            return 0
        at += len(STAMP)
        if at >= stop or not (48 <= at[0] <= 57):
            return 0
        # bytes end in a NUL and the frame's JSON goes on past the number: strtod stops in the frame
        stamp = strtod(<const char *>at, &stamp_end)
        # the payload ends there, or goes on with more fields (benchmarks.slow pads its events)
        if <const unsigned char *>stamp_end >= stop or (stamp_end[0] != 125 and stamp_end[0] != 44):  # '}' ','
            return 0
        if self.expected_type is not None:
            if (type_end - type_start != len(self.expected_type)
                    or memcmp(type_start, <const char *>self.expected_type, type_end - type_start) != 0):
                self.misrouted += 1
        if self.expected_tenant is not None and not self._tenant_is(<const unsigned char *>stamp_end, stop):
            self.misrouted += 1
        if self._started:
            if n <= self._last:
                self.duplicated += 1
                return 1
            if n != self._last + self.step:
                self.lost += (n - self._last) // self.step - 1
        self._started = True
        self._last = n
        if len(self.latencies) < self.max_latencies:
            self.latencies.append(now - stamp)
        return 1

    cdef bint _tenant_is(self, const unsigned char *at, const unsigned char *stop):
        cdef bytes expected = self.expected_tenant
        cdef Py_ssize_t size = len(expected)
        at = <const unsigned char *>memmem(at, stop - at, <const char *>TENANT, len(TENANT))
        if at == NULL:
            return False
        at += len(TENANT)
        return stop - at > size and memcmp(at, <const char *>expected, size) == 0 and at[size] == 34
