"""tests/redisutil.py against a real redis-server: the server's lifecycle."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import redis

from tests.redisutil import RedisServer, RedisServerMissing

pytestmark = pytest.mark.timeout(15)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# --- RedisServer -----------------------------------------------------------------------------


def test_server_answers_on_its_port_with_persistence_off(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis.Redis.from_url(redis_server.url, socket_timeout=2).ping() is True
    client = redis_server.client()
    assert client.ping() is True
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    assert client.info("server")["process_id"] == redis_server.pid
    assert redis_server.running and not redis_server.paused


def test_missing_redis_server_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RedisServerMissing, match=r"install the Debian package redis-server"):
        RedisServer()


def test_stop_is_idempotent_resumes_a_paused_server_and_cleans_up() -> None:
    server = RedisServer().start()
    pid, port, directory = server.pid, server.port, server.log_path.parent
    assert directory.is_dir()
    server.pause()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2.0  # SIGTERM was not left pending behind SIGSTOP
    server.stop()
    assert server.pid is None and not server.running
    assert not directory.exists()
    assert refused(port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_context_manager_starts_and_stops() -> None:
    with RedisServer() as server:
        assert server.client().ping() is True
        port = server.port
    assert not server.running
    assert refused(port)


def test_pause_makes_commands_time_out_and_resume_answers_them(redis_server: RedisServer) -> None:
    client = redis_server.client(socket_timeout=0.5)
    assert client.set("key", "value") is True
    redis_server.pause()
    assert redis_server.paused
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.get("key")
    assert 0.4 < time.monotonic() - started < 1.5
    with pytest.raises(redis.TimeoutError):  # a new connection is accepted by the kernel, then nothing
        redis_server.client(socket_timeout=0.5).ping()
    redis_server.resume()
    assert not redis_server.paused
    assert client.get("key") == "value"


def test_kill_and_restart_on_the_same_port_loses_the_data(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("key", "value")
    port, pid = redis_server.port, redis_server.pid
    redis_server.kill()
    assert redis_server.pid is None and not redis_server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(redis.ConnectionError):
        client.get("key")
    assert refused(port)
    redis_server.restart()
    assert redis_server.port == port and redis_server.pid not in (None, pid)
    assert client.get("key") is None  # persistence is off: nothing survived
    assert client.dbsize() == 0
    assert client.set("key", "again") is True


def test_restart_of_a_running_server_kills_it_first(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("key", "value")
    pid = redis_server.pid
    redis_server.restart()
    assert redis_server.pid != pid
    assert client.exists("key") == 0


def test_commandstats_count_commands_and_reset(redis_server: RedisServer) -> None:
    client = redis_server.client()
    redis_server.reset_stats()
    client.set("counter", 1)
    client.incr("counter")
    client.incr("counter")
    client.publish("channel", "hello")
    stats = redis_server.info_commandstats()
    assert stats["set"] == 1
    assert stats["incrby"] == 2  # redis-py's incr() sends INCRBY
    assert stats["publish"] == 1
    assert stats["config|resetstat"] == 1
    assert "info" not in stats  # this helper's own INFO counts from the next call on
    assert redis_server.info_commandstats()["info"] == 1
    redis_server.reset_stats()
    stats = redis_server.info_commandstats()
    assert "set" not in stats and "incrby" not in stats and "publish" not in stats


def test_redis_pair_is_two_independent_servers(redis_pair: tuple[RedisServer, RedisServer]) -> None:
    first, second = redis_pair
    assert first.port != second.port and first.pid != second.pid
    first.client().set("key", "first")
    assert second.client().get("key") is None
    assert first.client().get("key") == "first"
