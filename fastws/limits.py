"""Rate limits, sans I/O: token buckets, and the rule that turns sustained abuse into a disconnect.

Publishing is limited per connection and per tenant (per worker), connecting
per client address (per worker); open connections per address and per tenant
are counted over every worker (fastws.control.layout). Excess publishes are
answered ``rate_limited`` (REST: 429 with Retry-After) and cost the publisher
nothing else; a connection that keeps publishing into a closed bucket, more
rejected publishes in ``ABUSE_WINDOW`` seconds than its rate allows in one
second, is disconnected with 4029.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket", "AbuseMeter", "ABUSE_WINDOW"]

#: seconds over which rejected publishes are counted toward a disconnect
ABUSE_WINDOW = 10.0


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, count: int = 1) -> bool:
        """Take ``count`` tokens if there are that many; False (taking none) otherwise."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= count:
            self.tokens = tokens - count
            return True
        self.tokens = tokens
        return False

    def retry_after(self, count: int = 1) -> int:
        """Whole seconds until ``count`` tokens will be there (at least 1)."""
        if count > self.burst:
            return math.ceil(count / self.rate)
        return max(1, math.ceil((count - self.tokens) / self.rate))


class AbuseMeter:
    """Counts a connection's rejected publishes per window."""

    __slots__ = ("limit", "window_start", "rejected")

    def __init__(self, limit: float, now: float) -> None:
        self.limit = limit
        self.window_start = now
        self.rejected = 0

    def reject(self, now: float) -> bool:
        """Count one rejection; True when the connection should be disconnected."""
        if now - self.window_start > ABUSE_WINDOW:
            self.window_start = now
            self.rejected = 0
        self.rejected += 1
        return self.rejected > self.limit
