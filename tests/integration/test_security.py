"""Tokens, origins and limits against a real server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import orjson
import pytest
import websockets

from fastws.config import Limits, Settings
from fastws.server import Server
from tests.helpers import Client

SECRET = "s" * 40
OTHER = "o" * 40
ROTATED = {"k1": "1" * 40, "k2": "2" * 40}


def token(claims: dict | None = None, key: str = SECRET, headers: dict | None = None, algorithm: str = "HS256", **extra) -> str:
    body = {"tenant_id": "acme", "sub": "alice", "exp": int(time.time()) + 300, **(claims or {}), **extra}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def forged(header: dict, claims: dict, signature: bytes = b"") -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@pytest.fixture
def settings(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(ROTATED))
    return Settings(host="127.0.0.1", port=0, drain_timeout=2.0, jwt_secret=SECRET, jwt_keys_file=str(keys),
                    allowed_origins="https://app.example.com, https://*.example.org:8443")


async def http(server, method: str, path: str, headers: dict | None = None, body: object = None):
    reader, writer = await asyncio.open_connection(server.host, server.port)
    data = b"" if body is None else orjson.dumps(body)
    lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
                 f"Content-Type: application/json\r\n{lines}\r\n".encode() + data)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    header_map = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in head.decode().split("\r\n")[1:])}
    return status, orjson.loads(payload), header_map


async def connect(server, query: str = "", headers: dict | None = None):
    return await websockets.connect(f"{server.ws_url}?{query}", additional_headers=headers or {}, open_timeout=10)


now = int(time.time())
REFUSED = [
    ("no token", None, 401),
    ("garbage", "not.a.token", 401),
    ("alg none", forged({"alg": "none", "typ": "JWT"}, {"tenant_id": "acme", "sub": "alice", "exp": now + 300})),
    ("alg none, no signature part", forged({"alg": "none"}, {"tenant_id": "acme", "sub": "alice", "exp": now + 300})[:-1]),
    ("HS512 (not allowed)", token(algorithm="HS512", key=SECRET * 2)),
    ("algorithm confusion (RS256 header, HMAC with the secret)", None),
    ("bad signature", token(key=OTHER)),
    ("tampered claims", None),
    ("expired", token(exp=now - 10)),
    ("not yet valid", token(nbf=now + 3600)),
    ("missing exp", token(exp=None)),
    ("missing sub", token(sub=None)),
    ("missing tenant", token(tenant_id=None)),
    ("claims are not ids", token(tenant_id="a:b")),
    ("unknown kid", token(headers={"kid": "k3"}, key="3" * 40)),
    ("known kid, wrong key", token(headers={"kid": "k1"}, key=ROTATED["k2"])),
]


def _confusion() -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').rstrip(b"=")
    claims = base64.urlsafe_b64encode(json.dumps({"tenant_id": "acme", "sub": "alice", "exp": now + 300}).encode()).rstrip(b"=")
    signature = hmac.new(SECRET.encode(), header + b"." + claims, hashlib.sha256).digest()
    return (header + b"." + claims + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def _tampered() -> str:
    good = token()
    header, claims, signature = good.split(".")
    body = json.loads(base64.urlsafe_b64decode(claims + "=="))
    body["tenant_id"] = "other"
    return ".".join([header, base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode(), signature])


REFUSED = [(name, _confusion() if "confusion" in name else _tampered() if name == "tampered claims" else value, *rest)
           for name, value, *rest in REFUSED]


@pytest.mark.parametrize(("name", "bad"), [(case[0], case[1]) for case in REFUSED])
async def test_token_matrix_refuses_every_bad_token(server, name, bad):
    """None, alg none, algorithm confusion, bad signature, tampering, expiry, nbf, missing claims, unknown kid: 0 accepted, WS and REST."""
    query = "" if bad is None else f"token={bad}"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(server, query)
    assert refused.value.response.status_code == 401, name
    headers = {} if bad is None else {"Authorization": f"Bearer {bad}"}
    status, body, _ = await http(server, "GET", "/api/websocket", headers)
    assert status == 401 and body["error"]["code"] in ("unauthorized", "token_expired"), name


@pytest.mark.parametrize("good", [token(), token(headers={"kid": "k1"}, key=ROTATED["k1"]), token(headers={"kid": "k2"}, key=ROTATED["k2"])])
async def test_valid_tokens_by_query_header_and_rotated_keys(server, good):
    """A valid token (default key, or any listed kid) is accepted by query string or Authorization header; ids come from it."""
    async with await connect(server, f"token={good}") as ws:
        welcome = orjson.loads(await ws.recv())
        assert (welcome["tenantId"], welcome["userId"]) == ("acme", "alice")
    async with await connect(server, "", {"Authorization": f"Bearer {good}"}) as ws:
        assert orjson.loads(await ws.recv())["tenantId"] == "acme"


async def test_query_disagreeing_with_the_token_is_refused(server):
    """tenant_id or user_id in the query that differ from the claims: 403; equal ones are fine."""
    for query in ("tenant_id=other", "user_id=mallory"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connect(server, f"token={token()}&{query}")
        assert refused.value.response.status_code == 403
    async with await connect(server, f"token={token()}&tenant_id=acme&user_id=alice") as ws:
        await ws.recv()


async def test_empty_query_ids_are_the_tokens_for_every_token(server):
    """tenant_id= and user_id= given empty are absent, for a user's token as for an admin's: the token's ids."""
    for good in (token(), token(role="admin")):
        async with await connect(server, f"token={good}&tenant_id=&user_id=") as ws:
            welcome = orjson.loads(await ws.recv())
            assert (welcome["tenantId"], welcome["userId"]) == ("acme", "alice")


async def test_rest_identity_and_admin(server):
    """REST takes tenant and user from the token; other headers are 403 unless admin; admin-only calls need role admin."""
    user = {"Authorization": f"Bearer {token()}"}
    admin = {"Authorization": f"Bearer {token(role='admin', tenant_id='ops', sub='root')}"}
    status, body, _ = await http(server, "POST", "/api/websocket", user, {"event": "e"})
    assert status == 200
    status, body, _ = await http(server, "POST", "/api/websocket", {**user, "X-Tenant-ID": "other"}, {"event": "e"})
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, _, _ = await http(server, "POST", "/api/websocket", {**admin, "X-Tenant-ID": "acme", "X-User-ID": "svc"}, {"event": "e"})
    assert status == 200
    for method, path, payload in (("PUT", "/api/websocket", {"flags": {"websocket_v2": True}}),
                                  ("DELETE", "/api/websocket?tenant_id=acme", None),
                                  ("GET", "/api/websocket/status?detailed=true", None)):
        status, body, _ = await http(server, method, path, user, payload)
        assert (status, body["error"]["code"]) == (403, "forbidden"), path
        status, _, _ = await http(server, method, path, admin, payload)
        assert status == 200, path
    status, body, _ = await http(server, "GET", "/api/websocket/status")
    assert status == 401
    for public in ("/healthz", "/readyz"):
        assert (await http(server, "GET", public))[0] == 200


async def test_refresh_extends_and_expiry_closes_4101(server):
    """A connection closes with 4101 when its token expires, unless it refreshes first with a token of the same identity."""
    short = token(exp=int(time.time()) + 2)
    async with await connect(server, f"token={short}") as refreshed, await connect(server, f"token={short}") as lapsing:
        await refreshed.recv(), await lapsing.recv()
        await refreshed.send(orjson.dumps({"type": "refresh", "token": token(sub="bob"), "ref": 1}).decode())
        assert orjson.loads(await refreshed.recv())["code"] == "forbidden"
        await refreshed.send(orjson.dumps({"type": "refresh", "token": token(), "ref": 2}).decode())
        ack = orjson.loads(await refreshed.recv())
        assert ack["type"] == "ack" and ack["expiresAt"].endswith("Z")
        await asyncio.wait_for(lapsing.wait_closed(), 10)
        assert lapsing.close_code == 4101
        await refreshed.send(orjson.dumps({"type": "ping", "ref": 3}).decode())
        assert orjson.loads(await refreshed.recv())["type"] == "pong"


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://app.example.com:443", True),
        ("http://app.example.com", False),
        ("https://app.example.com:8443", False),
        ("https://evil-app.example.com", False),
        ("https://a.example.org:8443", True),
        ("https://example.org:8443", False),
        ("https://a.b.example.org:8443", False),
        ("https://aexample.org:8443", False),
        ("null", False),
    ],
)
async def test_origin_allow_list(server, origin, allowed):
    """Exact scheme, host and port; '*.' matches exactly one whole label."""
    query = f"token={token()}"
    if allowed:
        async with await connect(server, query, {"Origin": origin}) as ws:
            await ws.recv()
    else:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connect(server, query, {"Origin": origin})
        assert refused.value.response.status_code == 403


async def test_open_mode_is_reported():
    """Without keys the server says it runs in open mode."""
    async with Server(Settings(host="127.0.0.1", port=0)) as server:
        status, body, _ = await http(server, "GET", "/api/websocket/status")
        assert body["websocket"]["auth"] == "open"


async def test_rate_limits_answer_then_disconnect_sustained_abuse():
    """Over the publish rate: rate_limited errors (REST 429 with Retry-After); sustained abuse: close 4029."""
    settings = Settings(host="127.0.0.1", port=0, limits=Limits(publish_rate=5, publish_burst=5,
                                                                tenant_publish_rate=50, tenant_publish_burst=50))
    async with Server(settings) as server:
        client = await Client.connect(server.ws_url, "rl", "u")
        replies = [await client.publish("e") for _ in range(8)]
        assert [r["type"] for r in replies] == ["ack"] * 5 + ["error"] * 3
        assert replies[-1]["code"] == "rate_limited"
        for _ in range(10):  # keep going: more refusals than the rate allows in a second
            await client.send({"type": "publish", "event": "e"})
        await asyncio.wait_for(client.ws.wait_closed(), 10)
        assert client.ws.close_code == 4029
        statuses = [(await http(server, "POST", "/api/websocket", {"X-Tenant-ID": "rl2", "X-User-ID": "u"}, [{"event": "e"}] * 20))
                    for _ in range(3)]
        assert [s[0] for s in statuses] == [200, 200, 429]
        assert statuses[2][1]["error"]["code"] == "rate_limited" and int(statuses[2][2]["retry-after"]) >= 1


async def test_connection_limits_per_address_and_tenant():
    """Past the per-address or per-tenant connection limit, upgrades get 429 too_many_connections; closing frees room."""
    settings = Settings(host="127.0.0.1", port=0, limits=Limits(max_connections_per_address=3, max_connections_per_tenant=2))
    async with Server(settings) as server:
        a = [await Client.connect(server.ws_url, "t1", f"u{i}") for i in range(2)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(server.ws_url, "t1", "u3")
        assert refused.value.response.status_code == 429
        b = await Client.connect(server.ws_url, "t2", "u")
        with pytest.raises(websockets.InvalidStatus):
            await Client.connect(server.ws_url, "t3", "u")  # the address is full
        await a[0].close()
        await asyncio.wait_for(_until(lambda: server.hub.metrics.active_connections == 2), 5)
        c = await Client.connect(server.ws_url, "t1", "again")
        for client in (a[1], b, c):
            await client.close()


async def test_connect_rate_limit():
    """Past the connect rate of an address, upgrades get 429 rate_limited with Retry-After."""
    settings = Settings(host="127.0.0.1", port=0, limits=Limits(connect_rate=1, connect_burst=3))
    async with Server(settings) as server:
        clients = [await Client.connect(server.ws_url, "cr", f"u{i}") for i in range(3)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(server.ws_url, "cr", "u4")
        assert refused.value.response.status_code == 429
        assert int(refused.value.response.headers["Retry-After"]) >= 1
        for client in clients:
            await client.close()


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def test_server_pings_close_dead_peers():
    """A peer that stops answering pings is closed with 1001 (server pings when the connection is idle)."""
    settings = Settings(host="127.0.0.1", port=0, ping_interval=0.3, ping_timeout=0.3)
    async with Server(settings) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /ws?tenant_id=t&user_id=dead HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        alive = await Client.connect(server.ws_url, "t", "alive")  # websockets answers pings
        data = await asyncio.wait_for(reader.read(), 10)  # welcome, pings, then a close frame and EOF
        close_at = data.rfind(b"\x88")
        assert close_at >= 0 and int.from_bytes(data[close_at + 2:close_at + 4], "big") == 1001
        assert (await alive.request({"type": "ping"}))["type"] == "pong"
        await alive.close()
        writer.close()


async def test_delete_by_user_and_by_connection_id():
    """DELETE narrows to a user, or to one connection by the id its welcome gave; any other spelling
    of an id (upper case, no dashes, garbage) matches nothing."""
    async with Server(Settings(host="127.0.0.1", port=0)) as server:
        a, b = await Client.connect(server.ws_url, "d", "u1"), await Client.connect(server.ws_url, "d", "u1")
        c = await Client.connect(server.ws_url, "d", "u2")
        a_id = a.welcome["data"]["connectionId"]
        for other in (a_id.upper(), a_id.replace("-", ""), "not-an-id"):
            status, body, _ = await http(server, "DELETE", f"/api/websocket?tenant_id=d&connection_id={other}")
            assert (status, body["disconnected"]) == (200, 0), other
        status, body, _ = await http(server, "DELETE", f"/api/websocket?tenant_id=d&connection_id={a_id}")
        assert (status, body["disconnected"]) == (200, 1)
        await asyncio.wait_for(a.ws.wait_closed(), 5)
        assert a.ws.close_code == 4001
        status, body, _ = await http(server, "DELETE", "/api/websocket?tenant_id=d&user_id=u2")
        assert (status, body["disconnected"]) == (200, 1)
        await asyncio.wait_for(c.ws.wait_closed(), 5)
        assert (await b.request({"type": "ping"}))["type"] == "pong"  # the other connection of u1 stays
        await b.close()
