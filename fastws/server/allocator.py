"""Giving memory back to the operating system after a wave of connections has gone.

Allocators keep freed memory for reuse: after 10,000 connections close, a
server's RSS would stay near its high mark. Two allocators are involved:

- glibc's heap (buffers, large objects): ``malloc_trim(0)`` returns the free
  pages it holds, from the middle of the heap too, not only its top; it costs
  about 1 ms after 10,000 connections here.
- CPython's small-object allocator: a 1 MiB arena goes back to the system
  only when every object in it is gone. A wave of connections fills dozens of
  arenas, and the objects that outlive it pin them. The interpreter's free
  lists are the main culprit: up to 2,000 freed tuples per length (and 80
  lists, 80 dicts, 100 floats) are kept for reuse, each where it was
  allocated, scattered over the wave's arenas. A full collection empties
  them. So does ``sys._clear_type_cache()`` for the type-attribute cache,
  which keeps alive the attribute names looked up through it (C code that
  looks a method up by a C string makes a new name string per call).

The server calls :func:`release` from its once-a-second sweep when the number
of open WebSocket connections has fallen by at least :data:`TRIM_AFTER`
since the last high mark. The full collection walks every tracked object, a
pause that grows with the connections still open (its duration is logged at
debug level), so it runs only when at most :data:`COLLECT_BELOW` remain; with
more, only the C heap is trimmed. Where the C library is not glibc,
:func:`trim` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
import time

__all__ = ["COLLECT_BELOW", "TRIM_AFTER", "release", "trim"]

log = logging.getLogger("fastws.allocator")

#: release memory once open connections have fallen by this many since the last high mark
TRIM_AFTER = 1000
#: ... and run a full collection only when at most this many remain (its pause grows with them)
COLLECT_BELOW = 2000


def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_TRIM = _malloc_trim()


def trim() -> bool:
    """Return the C heap's free pages to the operating system; False where that is not possible."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


def release(open_connections: int) -> None:
    """After a wave of closes: empty the free lists (when few connections remain) and trim the C heap."""
    if open_connections <= COLLECT_BELOW:
        started = time.perf_counter()
        gc.collect()  # a full collection also empties the interpreter's free lists
        sys._clear_type_cache()
        log.debug("full collection with %d connections open: %.1f ms", open_connections,
                  (time.perf_counter() - started) * 1000)
    trim()
