"""The Redis broker over a password-protected Redis and over TLS (rediss://), in-process servers.

Passwords never show: not in status, not in the log.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import orjson
import pytest

from fastws.config import Settings
from fastws.server.app import Server
from tests.helpers import Client
from tests.redisutil import RedisServer, free_port

pytestmark = pytest.mark.uvloop_only

SECRET = "s3cret-Redis-pw"


async def _status(server: Server) -> dict:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /api/websocket/status?detailed=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return orjson.loads(raw.partition(b"\r\n\r\n")[2])


async def _two_hosts_talk(url: str, prefix: str) -> list[Server]:
    settings = Settings(port=0, broker=url, redis_prefix=prefix)
    one, two = Server(settings), Server(settings)
    await one.start()
    await two.start()
    try:
        listener = await Client.connect(two.ws_url, "acme", "u2")
        publisher = await Client.connect(one.ws_url, "acme", "u1")
        ack = await publisher.publish("note", {"n": 1})
        assert ack["type"] == "ack" and ack["offset"] == listener.welcome["data"]["offset"] + 1
        event = await listener.recv()
        assert event["eventType"] == "note" and event["offset"] == ack["offset"]
        await listener.close()
        await publisher.close()
    except BaseException:
        await one.close()
        await two.close()
        raise
    return [one, two]


async def test_a_password_in_the_url_works_and_never_shows(caplog):
    with RedisServer() as redis_server:
        redis_server.client().config_set("requirepass", SECRET)
        url = f"redis://:{SECRET}@127.0.0.1:{redis_server.port}/0"
        with caplog.at_level(logging.DEBUG, logger="fastws"):
            servers = await _two_hosts_talk(url, "pw")
            try:
                status = await _status(servers[0])
                broker = status["websocket"]["cluster"]["broker"]
                assert broker["redis"] == f"redis://***@127.0.0.1:{redis_server.port}/0"
                assert SECRET not in orjson.dumps(status).decode()
            finally:
                for server in servers:
                    await server.close()
        assert SECRET not in caplog.text
        assert f"127.0.0.1:{redis_server.port}" in caplog.text  # the log names the Redis, without the password


async def test_a_wrong_password_refuses_publishes_clearly():
    with RedisServer() as redis_server:
        redis_server.client().config_set("requirepass", SECRET)
        settings = Settings(port=0, broker=f"redis://:wrong@127.0.0.1:{redis_server.port}/0", broker_timeout=0.5)
        async with Server(settings) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            body = b'{"event":"x"}'
            writer.write(b"POST /api/websocket HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                         b"X-Tenant-ID: acme\r\nX-User-ID: svc\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            raw = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            head, _, payload = raw.partition(b"\r\n\r\n")
            assert head.split()[1] == b"503"
            assert orjson.loads(payload)["error"]["code"] == "broker_unavailable"


def _certificates(directory: Path) -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
        "-extfile", "ext.cnf", "-out", "server.crt")
    return {name: str(directory / f"{name}") for name in ("ca.crt", "server.crt", "server.key")}


async def test_rediss_with_the_servers_ca(tmp_path):
    files = _certificates(tmp_path)
    tls_port = free_port()
    extra = ["--tls-port", str(tls_port), "--tls-cert-file", files["server.crt"], "--tls-key-file", files["server.key"],
             "--tls-ca-cert-file", files["ca.crt"], "--tls-auth-clients", "no"]
    with RedisServer(extra_args=extra):
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={files['ca.crt']}"
        servers = await _two_hosts_talk(url, "tls")
        try:
            status = await _status(servers[1])
            assert status["websocket"]["cluster"]["broker"]["connected"] == 1
        finally:
            for server in servers:
                await server.close()
