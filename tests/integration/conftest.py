"""Fixtures of the integration tests: real redis-server processes and a fault-injecting proxy.

They fail (never skip) without redis-server: install the Debian package redis-server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redisutil import FaultProxy, RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started redis-server on a free loopback port (persistence off), stopped after the test."""
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def redis_pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """Two started redis-servers on different ports, for sharding tests."""
    first, second = RedisServer(), RedisServer()
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        first.stop()
        second.stop()


@pytest.fixture
def redis_proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of `redis_server`; the test fails if the proxy itself hit an error."""
    proxy = FaultProxy(redis_server).start()
    try:
        yield proxy
    finally:
        proxy.close()
    assert not proxy.errors, f"errors inside the FaultProxy: {proxy.errors!r}"
