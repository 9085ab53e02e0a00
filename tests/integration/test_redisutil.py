"""tests/redisutil.py against a real redis-server: the server's lifecycle and the proxy's faults."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.redisutil import FaultProxy, RedisServer, RedisServerMissing, _CommandNames

pytestmark = pytest.mark.timeout(15)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met within the timeout"
        time.sleep(0.01)


def subscribed(client: redis.Redis, *channels: str) -> redis.client.PubSub:
    """A PubSub of `client` subscribed to `channels`, once Redis has confirmed each."""
    pubsub = client.pubsub()
    pubsub.subscribe(*channels)
    for channel in channels:
        message = pubsub.get_message(timeout=2.0)
        assert message is not None and message["type"] == "subscribe", message
        assert message["channel"] == channel
    return pubsub


def messages(pubsub: redis.client.PubSub, wait: float) -> list[str]:
    """The data of the messages `pubsub` receives within `wait` seconds (the first may end the wait early)."""
    received = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=left, ignore_subscribe_messages=True)
        if message is not None:
            received.append(message["data"])
    return received


def next_message(pubsub: redis.client.PubSub, timeout: float = 2.0) -> str | None:
    message = pubsub.get_message(timeout=timeout, ignore_subscribe_messages=True)
    return None if message is None else message["data"]


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


# --- the command-name reader -----------------------------------------------------------------


def test_command_names_are_read_across_chunks_and_pipelines() -> None:
    big = b"x" * 200_000
    stream = (
        b"*2\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n"
        b"*3\r\n$7\r\nPUBLISH\r\n$9\r\nSUBSCRIBE\r\n$200000\r\n" + big + b"\r\n"
        b"PING\r\n"
        b"*1\r\n$10\r\nPSUBSCRIBE\r\n"
    )
    expected = [b"SUBSCRIBE", b"PUBLISH", b"PING", b"PSUBSCRIBE"]
    whole = _CommandNames()
    assert whole.feed(stream) == expected
    one_by_one = _CommandNames()
    names = []
    for index in range(len(stream)):
        names += one_by_one.feed(stream[index:index + 1])
    assert names == expected
    assert len(one_by_one._buf) == 0 and not one_by_one.broken


def test_command_names_give_up_on_a_protocol_error() -> None:
    reader = _CommandNames()
    assert reader.feed(b"*2\r\n:1\r\n") == []
    assert reader.broken
    assert reader.feed(b"*1\r\n$9\r\nSUBSCRIBE\r\n") == []


# --- FaultProxy ------------------------------------------------------------------------------


def test_proxy_forwards_commands(redis_server: RedisServer, redis_proxy: FaultProxy) -> None:
    assert redis_proxy.url == f"redis://127.0.0.1:{redis_proxy.port}/0"
    assert redis_proxy.port != redis_server.port
    through = redis_proxy.client()
    assert through.set("key", "value") is True
    assert redis_server.client().get("key") == "value"
    pipe = through.pipeline(transaction=False)
    for index in range(100):
        pipe.rpush("list", "x" * index * 100)
    pipe.lrange("list", 0, -1)
    assert len(pipe.execute()[-1]) == 100
    assert redis.Redis.from_url(redis_proxy.url, socket_timeout=2).ping() is True
    assert redis_proxy.connections == 2
    assert redis_proxy.pubsub_connections == 0


def test_proxy_classifies_every_subscribe_command_case_insensitively(
    redis_server: RedisServer, redis_proxy: FaultProxy
) -> None:
    plain = socket.create_connection(("127.0.0.1", redis_proxy.port), timeout=2)
    plain.sendall(b"*3\r\n$3\r\nSET\r\n$9\r\nsubscribe\r\n$10\r\nPSUBSCRIBE\r\n")  # the names as arguments only
    assert plain.recv(100) == b"+OK\r\n"
    sockets = [plain]
    for expected, request in enumerate(
        [b"*2\r\n$9\r\nsubscribe\r\n$1\r\na\r\n", b"psubscribe a*\r\n", b"*2\r\n$10\r\nSsUbScRiBe\r\n$1\r\nb\r\n"],
        start=1,
    ):
        sock = socket.create_connection(("127.0.0.1", redis_proxy.port), timeout=2)
        sockets.append(sock)
        sock.sendall(request)
        assert b"subscribe" in sock.recv(100)  # Redis confirmed: the proxy had classified it before forwarding
        assert redis_proxy.pubsub_connections == expected
    redis_proxy.wait_for_pubsub(3, timeout=0.1)
    with pytest.raises(AssertionError, match="expected 4"):
        redis_proxy.wait_for_pubsub(4, timeout=0.1)
    sockets.pop().close()
    eventually(lambda: redis_proxy.pubsub_connections == 2)  # closed ones are no longer counted
    for sock in sockets:
        sock.close()


def test_deafen_silences_existing_pubsub_connections_only(
    redis_server: RedisServer, redis_proxy: FaultProxy
) -> None:
    direct = redis_server.client()
    deaf = subscribed(redis_proxy.client(), "news")
    assert redis_proxy.pubsub_connections == 1
    assert direct.publish("news", "one") == 1
    assert next_message(deaf) == "one"

    assert redis_proxy.deafen() == 1
    assert direct.publish("news", "two") == 1  # Redis still has the subscriber
    deaf.ping()  # the client keeps sending; the answer is dropped too
    assert messages(deaf, 0.5) == []
    assert redis_proxy.client().ping() is True  # connections that did not subscribe are unaffected

    fresh = subscribed(redis_proxy.client(), "news")  # made after deafen(): hears
    assert redis_proxy.pubsub_connections == 2
    assert direct.publish("news", "three") == 2
    assert next_message(fresh) == "three"
    assert messages(deaf, 0.3) == []

    assert redis_proxy.heal() == 1
    assert direct.publish("news", "four") == 2
    assert next_message(fresh) == "four"
    assert messages(deaf, 0.3) == ["four"]  # what was dropped while deaf stays lost


def test_sever_breaks_open_connections_and_new_ones_work(
    redis_server: RedisServer, redis_proxy: FaultProxy
) -> None:
    # one connection held by the client: a pooled one that the peer closed is silently replaced
    # by redis-py before it is used (ConnectionPool.get_connection checks can_read())
    client = redis_proxy.client(single_connection_client=True)
    client.set("key", "value")
    pubsub = subscribed(redis_proxy.client(), "news")
    raw = socket.create_connection(("127.0.0.1", redis_proxy.port), timeout=2)
    raw.sendall(b"PING\r\n")
    assert raw.recv(100) == b"+PONG\r\n"
    assert redis_proxy.sever() == 3
    assert redis_proxy.pubsub_connections == 0
    with pytest.raises(ConnectionResetError):  # abruptly: a reset, not an orderly close
        raw.recv(100)
    raw.close()
    with pytest.raises(redis.ConnectionError):
        client.get("key")
    with pytest.raises(redis.ConnectionError):
        pubsub.get_message(timeout=1.0)
    pubsub.close()  # redis-py has reconnected it (and subscribed again) before raising
    assert redis_proxy.client().get("key") == "value"
    assert client.get("key") == "value"  # a new connection on the next use
    fresh = subscribed(redis_proxy.client(), "news")  # held: a PubSub collected closes its connection
    eventually(lambda: redis_proxy.pubsub_connections == 1)
    assert redis_server.client().pubsub_numsub("news") == [("news", 1)]
    fresh.close()


def test_block_closes_new_connections_until_unblock(redis_server: RedisServer, redis_proxy: FaultProxy) -> None:
    before = redis_proxy.client()
    assert before.ping() is True
    redis_proxy.block()
    accepted = redis_proxy.connections
    blocked = redis_proxy.client()
    with pytest.raises(redis.ConnectionError):
        blocked.ping()
    assert redis_proxy.connections > accepted  # accepted, then closed
    assert before.ping() is True  # the open connection was left alone
    redis_proxy.unblock()
    assert blocked.ping() is True


def test_proxy_follows_the_server_through_kill_and_restart(
    redis_server: RedisServer, redis_proxy: FaultProxy
) -> None:
    client = redis_proxy.client()
    client.set("key", "value")
    redis_server.kill()
    with pytest.raises(redis.ConnectionError):
        client.get("key")
    with pytest.raises(redis.ConnectionError):  # the proxy accepts, finds Redis down and closes
        redis_proxy.client().ping()
    redis_server.restart()
    assert client.get("key") is None
    assert client.set("key", "again") is True


def test_proxy_close_is_idempotent_and_refuses_afterwards(redis_server: RedisServer) -> None:
    with FaultProxy(redis_server) as proxy:
        client = proxy.client()
        assert client.ping() is True
        port = proxy.port
    assert refused(port)
    proxy.close()
    with pytest.raises(RuntimeError, match="not running"):
        proxy.deafen()
    assert not proxy.errors
