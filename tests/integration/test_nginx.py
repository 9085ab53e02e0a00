"""fastws behind a real nginx, configured by the server block of docs/deploy.md as written.

The block is read from the documentation (its first ``nginx`` code block) and
only its listening address and upstream ports are changed, so the documented
configuration is the tested one. In front of it: `fastws serve --workers 2`
with FASTWS_TRUSTED_PROXIES=127.0.0.1, and a tiny HTTP server as the
application. A second listener of the same server block takes the PROXY
protocol, so a test can come from an address other than loopback
(203.0.113.9) as a remote browser would.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import os
import re
import shutil
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import orjson
import pytest
import websockets

from tests.helpers import Client
from tests.cluster_util import Cluster

pytestmark = pytest.mark.uvloop_only  # the servers are processes: the test's own loop matters little

DEPLOY_DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
TIMEOUT = 10.0
REMOTE = "203.0.113.9"  # the address a PROXY-protocol request claims: a client that is not loopback


def nginx_binary() -> str:
    """nginx from PATH or Debian's /usr/sbin/nginx; the test fails (not skips) without it."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        pytest.fail("nginx is required for tests/integration/test_nginx.py: apt-get install nginx")
    return found


def documented_block() -> str:
    """The first ```nginx block of docs/deploy.md: the configuration the documentation gives."""
    match = re.search(r"^```nginx\n(.*?)^```", DEPLOY_DOC.read_text(), re.S | re.M)
    assert match, "docs/deploy.md has no ```nginx block"
    return match.group(1)


def substitute(text: str, old: str, new: str) -> str:
    """Replace what must appear exactly once, so a change in the documentation fails here loudly."""
    assert text.count(old) == 1, f"expected {old!r} once in the block of docs/deploy.md"
    return text.replace(old, new)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_conf(directory: Path, port: int, remote_port: int, fastws_port: int, app_port: int) -> str:
    """nginx.conf: the documented block, run unprivileged-style under `directory`."""
    block = substitute(documented_block(), "server 127.0.0.1:8765;", f"server 127.0.0.1:{fastws_port};")
    block = substitute(block, "server 127.0.0.1:3000;", f"server 127.0.0.1:{app_port};")
    server = block[block.index("\nserver {"):]
    block = substitute(block, "    listen 80;\n", f"    listen 127.0.0.1:{port};\n")
    # the same server block once more, for clients that say who they are with the PROXY protocol
    remote = substitute(server, "    listen 80;\n", (
        f"    listen 127.0.0.1:{remote_port} proxy_protocol;\n"
        "    set_real_ip_from 127.0.0.1;\n    real_ip_header proxy_protocol;\n"
    ))
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # as root, workers would run as nobody and could not write the temp paths under a private directory
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}pid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} warn;\n"
        "worker_processes 1;\nevents { worker_connections 256; }\n"
        f"http {{\n    access_log off;\n{temp}\n{block}\n{remote}\n}}\n"
    )


class App(http.server.BaseHTTPRequestHandler):
    """The application beside fastws: answers "app" to everything, with keep-alive."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"app"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Stack:
    """nginx (documented block) -> fastws serve --workers 2, and the app."""

    def __init__(self, nginx: subprocess.Popen, cluster: Cluster, port: int, remote_port: int,
                 directory: Path) -> None:
        self.nginx, self.cluster, self.port, self.remote_port = nginx, cluster, port, remote_port
        self.directory = directory
        self.base = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
async def stack(tmp_path):
    nginx = nginx_binary()
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
    app.daemon_threads = True
    threading.Thread(target=app.serve_forever, daemon=True).start()
    cluster = await Cluster.start(2, env={
        "FASTWS_TRUSTED_PROXIES": "127.0.0.1", "FASTWS_MAX_CONNECTIONS_PER_ADDRESS": "2",
    })
    port, remote_port = free_port(), free_port()
    (tmp_path / "nginx.conf").write_text(
        nginx_conf(tmp_path, port, remote_port, int(cluster.port), app.server_address[1]))
    process = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(tmp_path / "nginx.conf"),
         "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    running = Stack(process, cluster, port, remote_port, tmp_path)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:  # nginx says nothing when it is ready: wait until both listeners accept
            assert process.poll() is None, f"nginx exited: {process.stderr.read().decode()}{running.error_log()}"
            try:
                for listener in (port, remote_port):
                    socket.create_connection(("127.0.0.1", listener), timeout=1).close()
                break
            except OSError:
                assert loop.time() < deadline, "nginx did not start listening"
                await asyncio.sleep(0.02)
        yield running
    finally:
        process.terminate()
        process.wait(TIMEOUT)
        process.stderr.close()
        await cluster.stop()
        app.shutdown()
        app.server_close()


def call(stack: Stack, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None, port: int | None = None, remote: str | None = None):
    """One request through nginx on a new connection: (status, parsed JSON or text, headers)."""
    with socket.create_connection(("127.0.0.1", port or stack.port), timeout=TIMEOUT) as sock:
        if remote is not None:
            sock.sendall(f"PROXY TCP4 {remote} 127.0.0.1 40000 80\r\n".encode())
        connection = http.client.HTTPConnection("127.0.0.1", port or stack.port, timeout=TIMEOUT)
        connection.sock = sock
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, (orjson.loads(data) if "json" in kind else data.decode()), response


async def blocking(function, *args, **kwargs):
    return await asyncio.to_thread(function, *args, **kwargs)


def publish_body(channel: str, event: str, payload: object, **more: object) -> bytes:
    return orjson.dumps({"channel": channel, "event": event, "payload": payload, **more})


JSON = {"Content-Type": "application/json"}


async def test_websocket_upgrade_through_nginx(stack):
    """A WebSocket opens through nginx, gets its welcome, subscribes and receives a REST publish."""
    client = await Client.connect(stack.ws_url, "ngx", "alice")
    assert client.welcome["data"]["channels"] == ["tenant:ngx"]
    ack = await client.request({"type": "subscribe", "channel": "ideas"})
    assert ack["type"] == "ack" and ack["channel"] == "ideas:ngx"
    status, answer, _ = await blocking(call, stack, "POST", "/api/websocket", {
        **JSON, "X-Tenant-ID": "ngx", "X-User-ID": "bob"}, publish_body("ideas:ngx", "idea_created", {"n": 1}))
    assert status == 200 and answer["success"] is True
    event = await client.recv()
    assert (event["id"], event["eventType"], event["data"], event["userId"]) == (
        answer["id"], "idea_created", {"n": 1}, "bob")
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    await client.close()


async def test_rest_keeps_the_connection_alive_through_nginx(stack):
    """Several REST requests (publish, info, status, history) go over one client connection."""

    def session() -> list[tuple[int, dict]]:
        connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=TIMEOUT)
        answers, sockets = [], set()
        for method, path, body in [
            ("POST", "/api/websocket", publish_body("ideas:keep", "e", {"i": 1})),
            ("GET", "/api/websocket", None),
            ("GET", "/api/websocket/status", None),
            ("POST", "/api/websocket", publish_body("ideas:keep", "e", {"i": 2})),
            ("GET", "/api/websocket/history?channel=ideas:keep", None),
        ]:
            connection.request(method, path, body=body, headers={**JSON, "X-Tenant-ID": "keep", "X-User-ID": "u"})
            response = connection.getresponse()
            answers.append((response.status, orjson.loads(response.read())))
            assert not response.will_close, "nginx closed the client connection"
            sockets.add(id(connection.sock))
        connection.close()
        assert len(sockets) == 1, "a new connection was opened"
        return answers

    answers = await blocking(session)
    assert [status for status, _ in answers] == [200] * 5
    assert answers[1][1]["websocket"]["tenant_id"] == "keep"
    assert answers[2][1]["websocket"]["server_running"] is True
    history = answers[4][1]
    assert [event["data"] for event in history["events"]] == [{"i": 1}, {"i": 2}], history


async def test_a_large_publish_passes_nginx(stack):
    """A publish of about 900 KB is accepted through nginx and delivered; over 1 MiB, nginx answers 413."""
    client = await Client.connect(stack.ws_url, "big", "alice")
    payload = {"blob": "x" * 900_000}
    body = publish_body("tenant:big", "large", payload)
    assert 850_000 < len(body) < 1024 * 1024
    status, answer, _ = await blocking(call, stack, "POST", "/api/websocket",
                                       {**JSON, "X-Tenant-ID": "big", "X-User-ID": "svc"}, body)
    assert status == 200 and answer["success"] is True, answer
    event = await client.recv()
    assert event["eventType"] == "large" and event["data"] == payload
    too_big = publish_body("tenant:big", "large", {"blob": "x" * (1024 * 1024)})
    status, _, _ = await blocking(call, stack, "POST", "/api/websocket",
                                  {**JSON, "X-Tenant-ID": "big", "X-User-ID": "svc"}, too_big)
    assert status == 413
    await client.close()


async def test_paths_go_to_fastws_or_the_app(stack):
    """The documented paths reach fastws (dashboard, its files, the API); the rest reach the app."""
    for path in ("/", "/ideas/123", "/api/other", "/api/websocketx", "/_next/static/chunk.js"):
        status, text, _ = await blocking(call, stack, "GET", path)
        assert (status, text) == (200, "app"), path
    for path in ("/dashboard", "/websocket-test"):
        status, text, response = await blocking(call, stack, "GET", path)
        assert status == 200 and "/static/dashboard.js" in text, path
        assert "default-src 'self'" in response.getheader("Content-Security-Policy", "")
    for path in ("/static/dashboard.js", "/static/fastws-client.js", "/static/vendor/uplot/uPlot.min.css"):
        status, _, _ = await blocking(call, stack, "GET", path)
        assert status == 200, path
    assert (await blocking(call, stack, "GET", "/api/websocket/status"))[0] == 200
    # a GET of /ws without upgrade headers is fastws's answer (426), not the app's
    assert (await blocking(call, stack, "GET", "/ws?tenant_id=a&user_id=b"))[0] == 426


ADMIN_PUT = ("PUT", "/api/websocket", {**JSON}, b'{"flags":{"rollout_percent":100}}')


async def test_forwarded_addresses_as_documented(stack):
    """docs/deploy.md's table: nginx overwrites X-Forwarded-For, so a client's claim never counts;
    open-mode admin is served for the host and refused for a remote client, whatever it claims."""
    method, path, headers, body = ADMIN_PUT
    status, answer, _ = await blocking(call, stack, method, path, headers, body)
    assert status == 200, answer
    status, answer, _ = await blocking(call, stack, method, path, {**headers, "X-Forwarded-For": REMOTE}, body)
    assert status == 200, answer  # the claim is dropped: the host is still the host
    status, answer, _ = await blocking(call, stack, method, path, {**headers, "X-Forwarded-For": "127.0.0.1"},
                                       body, port=stack.remote_port, remote=REMOTE)
    assert status == 403 and answer["error"]["code"] == "forbidden", answer
    status, answer, _ = await blocking(call, stack, "GET", "/api/websocket/status?detailed=true",
                                       {"X-Forwarded-For": "127.0.0.1"}, port=stack.remote_port, remote=REMOTE)
    assert status == 403, answer
    # not admin: the remote client may read basic status and publish
    status, answer, _ = await blocking(call, stack, "GET", "/api/websocket/status", port=stack.remote_port,
                                       remote=REMOTE)
    assert status == 200 and answer["websocket"]["server_running"] is True


async def test_per_address_limits_count_the_forwarded_client(stack):
    """With max_connections_per_address=2, the limit counts each remote client, not nginx's address."""

    async def connect_as(address: str, user: str):
        sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", stack.remote_port), TIMEOUT)
        sock.sendall(f"PROXY TCP4 {address} 127.0.0.1 40000 80\r\n".encode())
        sock.setblocking(False)
        url = f"ws://127.0.0.1:{stack.remote_port}/ws?tenant_id=lim&user_id={user}"
        return await websockets.connect(url, sock=sock, open_timeout=TIMEOUT)

    opened = [await connect_as("198.51.100.1", "a1"), await connect_as("198.51.100.1", "a2")]
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect_as("198.51.100.1", "a3")
    assert refused.value.response.status_code == 429
    opened.append(await connect_as("198.51.100.2", "b1"))  # another client: its own count
    opened.append(await websockets.connect(f"{stack.ws_url}?tenant_id=lim&user_id=local", open_timeout=TIMEOUT))
    for connection in opened:
        await connection.close()


# The seed README's examples (websocket-module-7.md), as written there; only the origin
# (http://localhost:3000, ws://localhost:3000) becomes nginx's.
SEED_CONNECT = "ws://localhost:3000/ws?tenant_id=your-tenant&user_id=your-user"
SEED_FILTERS = """{
  "type": "filters",
  "filters": {
    "eventTypes": ["idea_created", "user_update"],
    "sources": ["idea_service"],
    "priority": ["high", "critical"]
  }
}"""
SEED_POST_BODY = """{
  "channel": "tenant:tenant-123",
  "event": "idea_created",
  "payload": { "idea_id": "123", "title": "New Idea" },
  "source": "idea_service",
  "priority": "normal"
}"""
SEED_EVENT_KEYS = {"id", "eventType", "data", "timestamp", "source", "priority", "tenantId", "userId"}
SEED_STATUS_CURL = "curl http://localhost:3000/api/websocket/status"
SEED_METRICS_KEYS = {"total_connections", "active_connections", "events_sent", "last_activity",
                     "event_history_size", "client_count"}


async def test_the_seed_readme_examples_through_nginx(stack):
    """The seed's connect URL, filters message, GET and POST /api/websocket, detailed status and the
    troubleshooting curl work through nginx as on the seed's own origin, with the seed's shapes."""
    origin = f"localhost:{stack.port}"

    def seed(text: str) -> str:
        return text.replace("localhost:3000", origin)

    # Connection: the URL as written (localhost, which may resolve to ::1 first: nginx listens on 127.0.0.1)
    ws = await websockets.connect(seed(SEED_CONNECT).replace("localhost", "127.0.0.1"), open_timeout=TIMEOUT)
    welcome = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert welcome["eventType"] == "connection" and welcome["tenantId"] == "your-tenant"
    assert SEED_EVENT_KEYS <= welcome.keys()
    await ws.close()

    # The filters message, on a connection of the tenant the POST example publishes to
    filtered = await Client.connect(stack.ws_url, "tenant-123", "user-456")
    await filtered.send(SEED_FILTERS)  # no ref, as written: no ack, and no error before the pong
    assert (await filtered.request({"type": "ping"}))["type"] == "pong"
    assert not filtered.backlog, filtered.backlog
    everything = await Client.connect(stack.ws_url, "tenant-123", "user-789")

    # GET /api/websocket with X-Tenant-ID
    status, info, _ = await blocking(call, stack, "GET", "/api/websocket", {"X-Tenant-ID": "tenant-123"})
    assert status == 200 and info["success"] is True
    websocket = info["websocket"]
    assert {"nextjs", "supabase", "tenant_id", "channels", "event_types", "sources"} <= websocket.keys()
    assert websocket["nextjs"]["url"] == f"ws://127.0.0.1:{stack.port}/ws"  # nginx's origin, kept in Host
    assert websocket["nextjs"]["status"] == "active" and isinstance(websocket["nextjs"]["metrics"], dict)
    assert websocket["tenant_id"] == "tenant-123" and "tenant:tenant-123" in websocket["channels"]

    # POST /api/websocket: the body as written, with the two headers
    status, posted, _ = await blocking(call, stack, "POST", "/api/websocket", {
        **JSON, "X-Tenant-ID": "tenant-123", "X-User-ID": "user-456"}, SEED_POST_BODY.encode())
    assert status == 200 and posted["success"] is True
    event = await everything.recv()
    assert SEED_EVENT_KEYS <= event.keys() and event["id"] == posted["id"]
    assert (event["eventType"], event["data"], event["source"], event["priority"], event["tenantId"],
            event["userId"]) == ("idea_created", {"idea_id": "123", "title": "New Idea"}, "idea_service",
                                 "normal", "tenant-123", "user-456")
    # the seed's filters ask for high and critical: the normal event passed them by, a high one arrives
    high = SEED_POST_BODY.replace('"normal"', '"high"').encode()
    status, posted_high, _ = await blocking(call, stack, "POST", "/api/websocket", {
        **JSON, "X-Tenant-ID": "tenant-123", "X-User-ID": "user-456"}, high)
    assert status == 200
    received = await filtered.recv()
    assert received["id"] == posted_high["id"] and received["priority"] == "high"

    # GET /api/websocket/status?detailed=true, from the host: open mode serves it on loopback
    status, detailed, _ = await blocking(call, stack, "GET", "/api/websocket/status?detailed=true")
    assert status == 200 and detailed["success"] is True
    assert detailed["websocket"]["server_running"] is True and detailed["websocket"]["health"] == "healthy"
    assert SEED_METRICS_KEYS <= detailed["websocket"]["metrics"].keys()

    # Troubleshooting: the curl command as written, with the real curl when the host has it
    command = seed(SEED_STATUS_CURL)
    curl = shutil.which("curl")
    if curl:
        output = await blocking(subprocess.run, [curl, "-s", "--max-time", "10", *command.split()[1:]],
                                capture_output=True, check=True)
        body = output.stdout
    else:
        body = await blocking(lambda: urllib.request.urlopen(command.split()[1], timeout=TIMEOUT).read())
    basic = orjson.loads(body)
    assert basic["success"] is True and basic["websocket"]["status"] == "active"
    assert SEED_METRICS_KEYS <= basic["websocket"]["metrics"].keys()
    await filtered.close()
    await everything.close()
