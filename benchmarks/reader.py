"""The load generator's frame reader: what a subscriber does with the bytes of each read.

    reader = load_reader()(expected_type=None, step=1, expected_tenant=None, latencies=[], max_latencies=N)
    delivered = reader.feed(data, now)     # whole frames of ``data`` (and of the last read's tail)

Per read it walks the frame headers (a frame cut by the read waits for the next one), finds
in each text frame an event of the load's publishes (``"eventType":"X","data":{"n":N,"t":T}``,
the protocol's field order; anything else, like the welcome or an ack, is not an event),
and checks it: its type and tenant when expected (else ``misrouted``), its sequence number
``step`` after the last one (a gap adds to ``lost``, a number not above the last to
``duplicated``), and keeps ``now - T`` as its latency. Frames other than text (ping, close,
anything unexpected) are appended to ``controls`` as ``(first byte, payload)`` for the
caller. It builds no Python object per event beyond the latency's float.

Two implementations with one behaviour (tests/integration/test_load_reader.py runs both):
``benchmarks/_reader.pyx``, compiled on first use with pyximport when Cython and a C
compiler are there, and ``Reader`` below, in Python. ``load_reader()`` picks the compiled
one unless ``FASTWS_BENCH_READER=python``; ``implementation(reader)`` names it.
"""

from __future__ import annotations

import os
import re

#: an event of the load's publishes: event type, sequence and publish time. It cannot match a
#: frame cut short: the time's closing brace comes last.
EVENT = re.compile(rb'"eventType":"([^"]*)","data":\{"n":(\d+),"t":([0-9.]+)[},]')
TENANT = re.compile(rb'"tenantId":"([^"]*)"')


class Reader:
    """The Python implementation (see the module's docstring)."""

    __slots__ = ("expected_type", "expected_tenant", "step", "latencies", "max_latencies", "last", "delivered",
                 "lost", "duplicated", "misrouted", "controls", "_tail")

    def __init__(self, expected_type: bytes | None = None, step: int = 1, expected_tenant: bytes | None = None,
                 latencies: list[float] | None = None, max_latencies: int = 2_000_000) -> None:
        self.expected_type = expected_type
        self.expected_tenant = expected_tenant
        self.step = step
        self.latencies = latencies if latencies is not None else []
        self.max_latencies = max_latencies
        self.last: int | None = None
        self.delivered = self.lost = self.duplicated = self.misrouted = 0
        self.controls: list[tuple[int, bytes]] = []
        self._tail = b""  # the start of a frame the last read cut

    def feed(self, data: bytes, now: float) -> int:
        buf = self._tail + data if self._tail else data
        size = len(buf)
        pos = 0
        delivered = 0
        while pos + 2 <= size:
            length = buf[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if pos + 4 > size:
                    break
                length, start = (buf[pos + 2] << 8) | buf[pos + 3], pos + 4
            else:
                if pos + 10 > size:
                    break
                length, start = int.from_bytes(buf[pos + 2:pos + 10], "big"), pos + 10
            end = start + length
            if end > size:
                break
            if buf[pos] == 0x81:
                match = EVENT.search(buf, start, end)
                if match is not None:
                    self._account(match, buf, end, now)
                    delivered += 1
            else:
                self.controls.append((buf[pos], buf[start:end]))
            pos = end
        self._tail = buf[pos:]
        self.delivered += delivered
        return delivered

    def _account(self, match: re.Match, buf: bytes, end: int, now: float) -> None:
        event_type, number, stamp = match.groups()
        if self.expected_type is not None and event_type != self.expected_type:
            self.misrouted += 1
        if self.expected_tenant is not None:
            tenant = TENANT.search(buf, match.end(), end)
            if tenant is None or tenant.group(1) != self.expected_tenant:
                self.misrouted += 1
        n = int(number)
        last = self.last
        if last is not None:
            if n <= last:
                self.duplicated += 1
                return
            if n != last + self.step:
                self.lost += (n - last) // self.step - 1
        self.last = n
        if len(self.latencies) < self.max_latencies:
            self.latencies.append(now - float(stamp))


def load_reader() -> type:
    """The compiled Reader when it builds (and FASTWS_BENCH_READER is not ``python``), else the Python one."""
    if os.environ.get("FASTWS_BENCH_READER") == "python":
        return Reader
    try:
        return compiled_reader()
    except Exception:  # no Cython or no C compiler here: the Python reader does the same, slower
        if os.environ.get("FASTWS_BENCH_READER") == "cython":
            raise
        return Reader


def implementation(reader: type) -> str:
    """``python`` for the Reader above, ``cython`` for the compiled one."""
    return "python" if reader is Reader else "cython"


def compiled_reader() -> type:
    """Build (once; pyximport keeps the build) and import benchmarks/_reader.pyx."""
    import pyximport

    importers = pyximport.install(language_level=3, inplace=False)
    try:
        from benchmarks import _reader
    finally:
        pyximport.uninstall(*importers)  # nothing else is built from its .pyx behind our back
    return _reader.Reader
