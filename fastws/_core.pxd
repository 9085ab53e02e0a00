cpdef bytes frame_text(bytes payload)


cdef class Matcher:
    cdef dict _channels
    cdef dict _filters
    cdef dict _users
    cdef dict _subscriptions
    cdef dict _by_user

    cpdef list match(self, str channel, str event_type, str source, int priority,
                     str publisher, object target_user=*)
