"""The log of a real `fastws serve`: JSON lines, the access log, no secrets, no floods.

Each test runs the server as a user does (a subprocess on a free loopback port),
reads everything it writes, stops it with SIGTERM (which also says what the log's
rate limit held back) and checks the lines.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time

import jwt
import orjson
import pytest
import websockets

from fastws.auth import Authenticator
from fastws.config import Settings
from tests.helpers import TIMEOUT
from tests.rawws import TEXT, RawClient, upgrade_request, ws_frame

pytestmark = pytest.mark.uvloop_only  # the server runs in its own process, on its own loop

URL_LINE = re.compile(r"WebSocket (ws://\S+?)\?")
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SECRET = "logs-test-jwt-secret-0123456789-abcdef"


class Served:
    """`python -m fastws serve --port 0 ARGS` with its stdout and stderr read to the end."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self.url = ""
        #: stderr lines written before the URL line (startup)
        self.started = 0
        self._readers = [asyncio.ensure_future(self._read(process.stderr, self.stderr)),
                         asyncio.ensure_future(self._read(process.stdout, self.stdout))]

    @staticmethod
    async def _read(stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():
            into.append(line.decode("utf-8", "replace"))

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> "Served":
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastws", "serve", "--port", "0", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})},
        )
        served = cls(process)
        deadline = time.monotonic() + 30
        while not served.url:
            assert process.returncode is None, "the server exited:\n" + "".join(served.stderr)
            assert time.monotonic() < deadline, "the server did not start:\n" + "".join(served.stderr)
            for line in list(served.stderr):
                match = URL_LINE.search(line)
                if match:
                    served.url = match.group(1)
            await asyncio.sleep(0.02)
        served.started = len(served.stderr)
        return served

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("ws://").removesuffix("/ws").rsplit(":", 1)
        return host, int(port)

    async def stop(self) -> str:
        """SIGTERM, wait, and everything written (stdout and stderr)."""
        try:
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 30)
            await asyncio.wait_for(asyncio.gather(*self._readers), 10)
        finally:
            if self.process.returncode is None:  # never leave a server behind
                self.process.kill()
                await self.process.wait()
        assert self.process.returncode == 0, "".join(self.stderr)
        return "".join(self.stdout) + "".join(self.stderr)

    def records(self, since_start: bool = False) -> list[dict]:
        """stderr as JSON records (each line must parse)."""
        lines = self.stderr[self.started:] if since_start else self.stderr
        return [orjson.loads(line) for line in lines]

    async def http(self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"") -> int:
        """One request on its own connection; the status."""
        reader, writer = await asyncio.open_connection(*self.host_port)
        head = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
                     f"Content-Type: application/json\r\n{head}\r\n".encode() + body)
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        return int(raw.split()[1])


async def oversize_frame(host: str, port: int) -> None:
    """Upgrade, then a frame announcing more than max_message_size: the server closes with 1009."""
    reader, writer = await asyncio.open_connection(host, port)
    request, _ = upgrade_request(host=f"{host}:{port}")
    writer.write(request + ws_frame(TEXT, b"", length=70_000)[:14])
    await asyncio.wait_for(reader.read(), TIMEOUT)  # the 101, the close frame, then EOF
    writer.close()


def counted(records: list[dict], code: object) -> int:
    """Records of a client-fault code: those written plus those a summary says were held back."""
    return sum(r.get("suppressed", 1) for r in records if r.get("code") == code)


async def test_every_line_is_json_with_the_fields():
    """--log-format json: every stderr line, supervisor's and workers', is one object with time, level,
    logger, worker and message; records about a connection carry tenant and connection."""
    served = await Served.start("--workers", "2", "--log-format", "json")
    raw = await RawClient.connect(served.url, "acme", "alice")
    raw.send_text(b'{"type":"nope"}')
    reply = await raw.recv_reply()
    assert reply["code"] == "unknown_type"
    raw.writer.close()
    await served.stop()
    records = served.records()
    assert len(records) > 10
    for record in records:
        assert ISO_MS.match(record["time"]), record
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), record
        assert record["logger"].startswith("fastws"), record
        assert record["worker"] in (None, 0, 1), record
        assert isinstance(record["message"], str), record
    assert {r["worker"] for r in records if r["logger"] == "fastws.supervisor"} == {None}
    assert {r["worker"] for r in records if r["logger"] == "fastws.worker"} == {0, 1}
    (refused,) = [r for r in records if r.get("code") == "unknown_type"]
    connection = raw.welcome["data"]["connectionId"]
    assert (refused["tenant"], refused["connection"], refused["level"]) == ("acme", connection, "INFO")
    (upgrade,) = [r for r in records if r["logger"] == "fastws.access" and r["status"] == 101]
    assert (upgrade["tenant"], upgrade["connection"]) == ("acme", connection)


async def test_a_flood_of_client_errors_makes_a_bounded_log():
    """2000 bad commands from one client and 500 oversize frames: at most 50 lines (the access log aside),
    all INFO or below, and summaries account for every one held back."""
    served = await Served.start("--workers", "2", "--log-format", "json")
    host, port = served.host_port
    raw = await RawClient.connect(served.url, "acme", "mallory")
    raw.send_raw(b"".join(ws_frame(TEXT, b"not json %d" % i) for i in range(2000)))
    raw.send_text({"type": "ping", "ref": "barrier"})
    errors = 0
    while (reply := await raw.recv_reply()).get("type") != "pong":
        errors += reply["code"] == "invalid_json"
    assert errors == 2000
    raw.writer.close()
    for batch in range(10):
        await asyncio.gather(*(oversize_frame(host, port) for _ in range(50)))
    await served.stop()
    records = served.records(since_start=True)
    access = [r for r in records if r["logger"] == "fastws.access"]
    rest = [r for r in records if r["logger"] != "fastws.access"]
    assert len(rest) <= 50, "\n".join(r["message"] for r in rest)
    assert all(r["level"] in ("DEBUG", "INFO") for r in rest), [r for r in rest if r["level"] not in ("DEBUG", "INFO")]
    assert any(r.get("suppressed") for r in rest)
    assert counted(rest, "invalid_json") == 2000
    assert counted(rest, 1009) == 500
    assert sum(r["status"] == 101 for r in access) == 501  # one access record per upgrade, not rate-limited


async def test_access_log_fields_behind_a_trusted_proxy():
    """Each HTTP response, upgrades and refusals included, is one fastws.access record with method, path,
    status, duration, bytes and the forwarded client address; the query's token is masked."""
    served = await Served.start("--workers", "2", "--log-format", "json", "--trusted-proxies", "127.0.0.1")
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    assert await served.http("GET", "/api/websocket/status?token=abc.def.ghi&x=1", forwarded) == 200
    assert await served.http("POST", "/api/websocket", forwarded, b'{"event":"e"}') == 400  # no X-Tenant-ID
    assert await served.http("HEAD", "/healthz") == 200
    ws = await websockets.connect(f"{served.url}?tenant_id=acme&user_id=alice", additional_headers=forwarded,
                                  open_timeout=TIMEOUT)
    await ws.close()
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(f"{served.url}?tenant_id=no%20spaces&user_id=alice", additional_headers=forwarded,
                                 open_timeout=TIMEOUT)
    reader, writer = await asyncio.open_connection(*served.host_port)
    writer.write(b"NOT A REQUEST\r\n\r\n")
    await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    await served.stop()
    access = [r for r in served.records() if r["logger"] == "fastws.access"]
    for record in access:
        assert record["level"] == "INFO" and record["worker"] in (0, 1)
        assert isinstance(record["duration_ms"], float) and 0 <= record["duration_ms"] < 10_000
        assert record["bytes"] >= 0 and isinstance(record["status"], int)
    by_path = {(r["method"], r["path"], r["status"]): r for r in access}
    status = by_path["GET", "/api/websocket/status", 200]
    assert status["client"] == "203.0.113.7" and status["query"] == "token=***&x=1" and status["bytes"] > 0
    assert "abc.def.ghi" not in status["message"] and "203.0.113.7" in status["message"]
    assert by_path["POST", "/api/websocket", 400]["client"] == "203.0.113.7"
    assert by_path["HEAD", "/healthz", 200]["client"] == "127.0.0.1"
    upgrade = by_path["GET", "/ws", 101]
    assert (upgrade["client"], upgrade["tenant"]) == ("203.0.113.7", "acme") and upgrade["connection"]
    refused = by_path["GET", "/ws", 400]
    assert refused["client"] == "203.0.113.7" and "connection" not in refused
    assert by_path["-", "-", 400]["client"] == "127.0.0.1"  # malformed: nothing of the request was read
    assert len(access) == 6


async def test_no_access_log_turns_it_off():
    """--no-access-log: requests and upgrades leave no fastws.access line."""
    served = await Served.start("--workers", "1", "--no-access-log")
    assert await served.http("GET", "/api/websocket/status") == 200
    ws = await websockets.connect(f"{served.url}?tenant_id=acme&user_id=alice", open_timeout=TIMEOUT)
    await ws.close()
    log = await served.stop()
    assert "fastws.access" not in log and '"GET ' not in log


async def test_no_secret_reaches_the_log(redis_server):
    """Tokens (good and bad, in headers and in queries, over REST and WebSocket, refused upgrades
    included), the JWT secret and the Redis password appear nowhere in what the server writes,
    at debug level, while the access log records every request."""
    password = "redis-pass-for-the-logs-test"
    redis_server.client().config_set("requirepass", password)
    broker = f"redis://:{password}@127.0.0.1:{redis_server.port}/0"
    served = await Served.start("--workers", "2", "--log-level", "debug", "--log-format", "json",
                                "--broker", broker, "--redis-prefix", "logs", env={"FASTWS_JWT_SECRET": SECRET})
    authenticator = Authenticator.from_settings(Settings(jwt_secret=SECRET))
    good = authenticator.mint("acme", "alice", ttl=300)
    admin = authenticator.mint("ops", "root", admin=True, ttl=300)
    forged = jwt.encode({"tenant_id": "acme", "sub": "alice", "exp": int(time.time()) + 300},
                        "another-secret-that-is-not-the-server-one", algorithm="HS256")
    opaque = "opaque-bad-token-7f3a9c"
    tokens = [good, admin, forged, opaque]

    assert await served.http("GET", "/api/websocket/status?detailed=true", {"Authorization": f"Bearer {admin}"}) == 200
    assert await served.http("GET", f"/api/websocket?token={good}") == 200
    assert await served.http("POST", "/api/websocket", {"Authorization": f"Bearer {good}"}, b'{"event":"e"}') == 200
    assert await served.http("GET", "/api/websocket", {"Authorization": f"Bearer {forged}"}) == 401
    assert await served.http("GET", f"/api/websocket?token={forged}") == 401
    assert await served.http("GET", f"/api/websocket?token={opaque}") == 401
    assert await served.http("GET", "/api/websocket", {"Authorization": f"Basic {opaque}"}) == 401

    ws = await websockets.connect(f"{served.url}?token={good}", open_timeout=TIMEOUT)
    assert orjson.loads(await ws.recv())["eventType"] == "connection"
    await ws.send(orjson.dumps({"type": "refresh", "token": forged, "ref": 1}).decode())
    await ws.send(orjson.dumps({"type": "refresh", "token": opaque, "ref": 2}).decode())
    await ws.send(orjson.dumps({"type": "publish", "event": "e", "ref": 3}).decode())
    replies: dict[int, dict] = {}
    while len(replies) < 3:
        message = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if message.get("ref") in (1, 2, 3):
            replies[message["ref"]] = message
    assert [replies[1].get("code"), replies[2].get("code"), replies[3]["type"]] == ["unauthorized", "unauthorized", "ack"]
    await ws.close()
    ws = await websockets.connect(served.url, additional_headers={"Authorization": f"Bearer {good}"},
                                  open_timeout=TIMEOUT)
    await ws.close()
    for url, headers in ((f"{served.url}?token={forged}", {}), (f"{served.url}?token={opaque}", {}),
                         (served.url, {"Authorization": f"Bearer {forged}"}),
                         (f"{served.url}?tenant_id=acme&user_id=alice", {"Authorization": f"Bearer {opaque}"})):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, additional_headers=headers, open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 401

    log = await served.stop()
    for secret in [SECRET, password, *tokens]:
        assert secret not in log, f"{secret[:12]}... is in the log"
    records = served.records()
    assert any(r["level"] == "DEBUG" for r in records)  # debug logging was on
    access = [r for r in records if r["logger"] == "fastws.access"]
    assert sum(r["status"] == 401 for r in access) == 8
    assert sum(r["status"] == 101 for r in access) == 2
    assert {r["query"] for r in access if "query" in r} >= {"token=***", "detailed=true"}
    assert all(r["method"] in ("GET", "POST") and r["path"] in ("/ws", "/api/websocket", "/api/websocket/status")
               for r in access)
    assert "redis://***@127.0.0.1" in log  # the Redis is named, without its password
