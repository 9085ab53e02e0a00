"""What trips a team migrating from the seed: silent mistakes, seed-style headers, event ids, tokens."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import orjson
import pytest

from fastws.auth import Authenticator
from fastws.config import Settings
from tests.helpers import Client
from tests.integration.test_http import fetch, make_server, publish  # noqa: F401 (fixture)

SECRET = "m" * 40


@pytest.mark.parametrize("filters, key", [({"events": ["a"]}, "events"), ({"eventTypes": ["a"], "userIds": ["u"]}, "userIds")])
async def test_an_unknown_filter_key_is_an_error_naming_it(server, filters, key):
    client = await Client.connect(server.ws_url, "mig", "alice")
    reply = await client.request({"type": "filters", "filters": filters})
    assert reply["type"] == "error" and reply["code"] == "invalid_filters" and key in reply["message"]
    assert (await client.request({"type": "ping"}))["type"] == "pong"  # the connection serves on
    await client.close()


async def test_an_unknown_subscribe_key_is_an_error_naming_it(server):
    client = await Client.connect(server.ws_url, "mig", "alice")
    reply = await client.request({"type": "subscribe", "channel": "ideas", "events": ["idea_created"]})
    assert reply["type"] == "error" and reply["code"] == "invalid_field" and "'events'" in reply["message"]
    ok = await client.request({"type": "subscribe", "channel": "ideas", "eventTypes": ["idea_created"]})
    assert ok["type"] == "ack"
    await client.close()


async def test_delete_takes_the_seed_style_headers(server):
    alice = await Client.connect(server.ws_url, "mig", "alice")
    bob = await Client.connect(server.ws_url, "mig", "bob")
    response = await fetch(server, "DELETE", "/api/websocket", {"X-Tenant-ID": "mig", "X-User-ID": "alice"})
    assert response.status == 200 and orjson.loads(response.body)["disconnected"] == 1
    await asyncio.wait_for(alice.ws.wait_closed(), 5)
    assert alice.ws.close_code == 4001
    assert (await bob.request({"type": "ping"}))["type"] == "pong"
    response = await fetch(server, "DELETE", "/api/websocket", {"X-Tenant-ID": "mig"})
    assert orjson.loads(response.body)["disconnected"] == 1
    missing = await fetch(server, "DELETE", "/api/websocket")
    error = orjson.loads(missing.body)["error"]
    assert missing.status == 400 and error["code"] == "missing_field" and "X-Tenant-ID" in error["message"]


async def test_a_form_body_is_told_which_content_type_to_send(server):
    response = await fetch(server, "POST", "/api/websocket", {
        "X-Tenant-ID": "mig", "X-User-ID": "svc", "Content-Type": "application/x-www-form-urlencoded",
    }, b'{"event":"e","payload":{}}')
    error = orjson.loads(response.body)["error"]
    assert response.status == 415 and "application/json" in error["message"]


async def test_event_ids_are_random_uuid4s(server):
    ids = [orjson.loads((await publish(server, {"event": "e", "payload": {"n": n}})).body)["id"] for n in range(20)]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(p.version == 4 and p.variant == uuid.RFC_4122 and str(p) == i for p, i in zip(parsed, ids))
    # no shared prefix or counting tail: consecutive ids reveal nothing about the traffic between them
    assert len({i[:8] for i in ids}) == len(ids)
    tails = [int(i[-12:], 16) for i in ids]
    assert sorted(tails) != tails or len(set(b - a for a, b in zip(tails, tails[1:]))) > 1


def test_fastws_token_mints_what_the_server_accepts(tmp_path):
    env = {**os.environ, "FASTWS_JWT_SECRET": SECRET}
    out = subprocess.run([sys.executable, "-m", "fastws", "token", "--tenant", "acme", "--user", "alice",
                          "--admin", "--ttl", "2h"], env=env, capture_output=True, text=True, check=True)
    identity = Authenticator.from_settings(Settings(jwt_secret=SECRET)).verify(out.stdout.strip())
    assert (identity.tenant_id, identity.user_id, identity.admin) == ("acme", "alice", True)
    keys = tmp_path / "keys.json"
    keys.write_text(orjson.dumps({"k1": "1" * 40}).decode())
    out = subprocess.run([sys.executable, "-m", "fastws", "token", "--tenant", "acme", "--user", "bob", "--kid", "k1"],
                         env={**os.environ, "FASTWS_JWT_KEYS_FILE": str(keys)}, capture_output=True, text=True,
                         check=True)
    identity = Authenticator.from_settings(Settings(jwt_keys_file=str(keys))).verify(out.stdout.strip())
    assert (identity.user_id, identity.admin) == ("bob", False)
    refused = subprocess.run([sys.executable, "-m", "fastws", "token", "--tenant", "a", "--user", "b"],
                             env={k: v for k, v in os.environ.items() if not k.startswith("FASTWS_JWT")},
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "FASTWS_JWT_SECRET" in refused.stderr
    bad = subprocess.run([sys.executable, "-m", "fastws", "token", "--tenant", "a", "--user", "b", "--ttl", "soon"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "not a duration" in bad.stderr


async def test_a_minted_token_opens_a_connection(make_server):
    server = await make_server(jwt_secret=SECRET)
    token = Authenticator.from_settings(server.settings).mint("acme", "alice", ttl=60)
    client = await Client.connect(server.ws_url, "acme", "alice", token=token)
    assert client.welcome["tenantId"] == "acme"
    await client.close()


async def test_reading_history_keeps_no_state(server):
    """GET /api/websocket/history of channels never published to answers no events and creates no stream."""
    for n in range(50):
        response = await fetch(server, "GET", f"/api/websocket/history?channel=empty{n}:mig",
                               {"X-Tenant-ID": "mig", "X-User-ID": "alice"})
        body = orjson.loads(response.body)
        assert response.status == 200 and body["events"] == [] and body["offset"] == 0
    assert not any(f"empty{n}:mig" in server.hub.broker for n in range(50))
    await publish(server, {"event": "e", "channel": "full:mig", "payload": {}}, tenant="mig")
    assert "full:mig" in server.hub.broker


ADMIN_CALLS = [
    ("PUT", "/api/websocket", b'{"flags":{"rollout_percent":100}}'),
    ("DELETE", "/api/websocket?tenant_id=mig", None),
    ("GET", "/api/websocket/status?detailed=true", None),
]


@pytest.mark.parametrize("method, path, body", ADMIN_CALLS)
async def test_open_mode_admin_only_from_loopback(make_server, method, path, body):
    """In open mode, admin operations are accepted from loopback peers only. The request here comes
    through a trusted proxy (127.0.0.1, as nginx beside the server would be) for a remote client:
    refused 403; the same request for a loopback client is served; a peer that is not a trusted
    proxy cannot claim an address with X-Forwarded-For."""
    headers = {"Content-Type": "application/json"}
    proxied = await make_server(trusted_proxies="127.0.0.1/32")
    refused = await fetch(proxied, method, path, {**headers, "X-Forwarded-For": "203.0.113.7"}, body)
    error = orjson.loads(refused.body)["error"]
    assert refused.status == 403 and error["code"] == "forbidden" and "loopback" in error["message"]
    served = await fetch(proxied, method, path, {**headers, "X-Forwarded-For": "127.0.0.1"}, body)
    assert served.status == 200, served.body
    direct = await make_server()  # no trusted proxy: the header is ignored, the loopback peer counts
    spoofed = await fetch(direct, method, path, {**headers, "X-Forwarded-For": "203.0.113.7"}, body)
    assert spoofed.status == 200, spoofed.body
    anywhere = await make_server(trusted_proxies="127.0.0.1", open_admin="any")
    assert (await fetch(anywhere, method, path, {**headers, "X-Forwarded-For": "203.0.113.7"}, body)).status == 200
    # basic status and publishing are not admin operations
    assert (await fetch(proxied, "GET", "/api/websocket/status", {"X-Forwarded-For": "203.0.113.7"})).status == 200


async def test_public_basic_status_with_tokens_on(make_server):
    closed = await make_server(jwt_secret=SECRET)
    assert (await fetch(closed, "GET", "/api/websocket/status")).status == 401
    public = await make_server(jwt_secret=SECRET, public_status=True)
    response = await fetch(public, "GET", "/api/websocket/status")
    assert response.status == 200 and orjson.loads(response.body)["websocket"]["server_running"] is True
    assert (await fetch(public, "GET", "/api/websocket/status?detailed=true")).status == 401
    assert (await fetch(public, "GET", "/api/websocket", {"X-Tenant-ID": "mig"})).status == 401


async def test_per_address_limits_use_the_forwarded_client(make_server):
    """Behind a trusted proxy, the connection limit per address counts the forwarded client."""
    import websockets

    from fastws.config import Limits

    server = await make_server(limits=Limits(max_connections_per_address=1), trusted_proxies="127.0.0.1")

    async def connect(user: str, client: str):
        return await websockets.connect(f"{server.ws_url}?tenant_id=mig&user_id={user}",
                                        additional_headers={"X-Forwarded-For": client})

    first, second = await connect("a", "198.51.100.1"), await connect("b", "198.51.100.2")
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect("c", "198.51.100.1")
    assert refused.value.response.status_code == 429
    await first.close(), await second.close()


APP = "https://app.example.com"


async def test_cors_preflight_and_responses_follow_the_allow_list(make_server):
    server = await make_server(allowed_origins=f"{APP}, https://*.example.org")
    preflight = await fetch(server, "OPTIONS", "/api/websocket", {
        "Origin": APP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-tenant-id",
    })
    assert preflight.status == 204 and preflight.header("Access-Control-Allow-Origin") == APP
    assert "POST" in preflight.header("Access-Control-Allow-Methods")
    assert "X-Tenant-ID" in preflight.header("Access-Control-Allow-Headers")
    assert preflight.header("Access-Control-Allow-Credentials") is None and preflight.header("Content-Length") is None
    posted = await fetch(server, "POST", "/api/websocket", {
        "Origin": "https://x.example.org", "X-Tenant-ID": "mig", "X-User-ID": "svc",
    }, json={"event": "e", "payload": {}})
    assert posted.status == 200 and posted.header("Access-Control-Allow-Origin") == "https://x.example.org"
    assert posted.header("Vary") == "Origin"
    # a refused origin: no CORS headers; its preflight is refused, and a POST is not acted on
    evil = "https://evil.example.net"
    refused = await fetch(server, "OPTIONS", "/api/websocket", {"Origin": evil, "Access-Control-Request-Method": "PUT"})
    assert refused.status == 403 and refused.header("Access-Control-Allow-Origin") is None
    before = server.hub.metrics.events_published
    blocked = await fetch(server, "POST", "/api/websocket", {"Origin": evil, "X-Tenant-ID": "mig", "X-User-ID": "x"},
                          json={"event": "e", "payload": {}})
    assert blocked.status == 403 and orjson.loads(blocked.body)["error"]["code"] == "origin_not_allowed"
    assert server.hub.metrics.events_published == before
    read = await fetch(server, "GET", "/api/websocket/status", {"Origin": evil})
    assert read.status == 200 and read.header("Access-Control-Allow-Origin") is None
    # same origin (the Origin names the Host): served as any request, no CORS headers needed
    host = f"{server.host}:{server.port}"
    same = await fetch(server, "POST", "/api/websocket", {"Origin": f"http://{host}", "Host": host,
                                                         "X-Tenant-ID": "mig", "X-User-ID": "x"},
                       json={"event": "e", "payload": {}})
    assert same.status == 200 and same.header("Access-Control-Allow-Origin") is None


async def test_cors_credentials_only_when_configured(make_server):
    server = await make_server(allowed_origins=APP, cors_credentials=True)
    response = await fetch(server, "GET", "/api/websocket/status", {"Origin": APP})
    assert response.header("Access-Control-Allow-Credentials") == "true"
    plain = await fetch(server, "OPTIONS", "/api/websocket")  # no Origin: a plain OPTIONS
    assert plain.status == 204 and "OPTIONS" in plain.header("Allow")


NAMES = ["alice@example.com", "user:update", "idea service", "café ユーザー", "x" * 128]


@pytest.mark.parametrize("name", NAMES)
async def test_names_as_the_seed_accepted_them_work_everywhere(server, name):
    """A user id, an event name and a source that is an email, has a colon, a space or any script:
    accepted on connect, by REST, through filters, history, targeted delivery and status."""
    from urllib.parse import quote

    alice = await Client.connect(server.ws_url, "names", quote(name, safe=""))
    assert alice.welcome["userId"] == name
    assert (await alice.request({"type": "filters", "filters": {"eventTypes": [name], "sources": [name]}}))["type"] == "ack"
    other = await Client.connect(server.ws_url, "names", "other")
    # over REST, with the name in the X-User-ID header (UTF-8), as event, source and target
    wire = name.encode().decode("latin-1")  # the header's bytes are the name's UTF-8
    response = await publish(server, {"event": name, "source": name, "payload": {"n": 1}, "targetUserId": name},
                             tenant="names", user=wire)
    assert response.status == 200, response.body
    event_id = orjson.loads(response.body)["id"]
    # filtered out for alice: another event type from another source
    await publish(server, {"event": "other", "payload": {}}, tenant="names")
    got = [e for e in await alice.drain() if e.get("eventType") != "connection"]
    assert [(e["id"], e["eventType"], e["source"], e["userId"]) for e in got] == [(event_id, name, name, name)]
    assert event_id not in [e.get("id") for e in await other.drain()]  # targeted at alice only
    history = await fetch(server, "GET", "/api/websocket/history?channel=tenant:names",
                          {"X-Tenant-ID": "names", "X-User-ID": wire})
    assert event_id in [e["id"] for e in orjson.loads(history.body)["events"]]
    info = await fetch(server, "GET", "/api/websocket", {"X-Tenant-ID": "names"})
    listed = orjson.loads(info.body)["websocket"]
    assert name in listed["event_types"] and name in listed["sources"]
    await alice.close(), await other.close()


@pytest.mark.parametrize("name", ["", "a\x00b", "tab\there", "x" * 129, "é" * 65, "next\u0085line"])
async def test_names_with_control_characters_or_too_long_are_refused(server, name):
    client = await Client.connect(server.ws_url, "names", "bob")
    reply = await client.request({"type": "publish", "event": "e", "source": name, "payload": {}})
    assert reply["type"] == "error" and reply["code"] == "invalid_source", reply
    await client.close()


async def test_selftest_runs_with_tokens_on_given_an_admin_token():
    """`fastws selftest --token ADMIN` against a server with authentication on: every check passes
    (an admin token may connect as the tenants and users the checks use)."""
    from tests.integration.test_cli import finish, start

    process, url, lines = await start("--workers", "2", env={"FASTWS_JWT_SECRET": SECRET})
    try:
        admin = Authenticator.from_settings(Settings(jwt_secret=SECRET)).mint("ops", "root", admin=True, ttl=300)
        base = url.replace("ws://", "http://").removesuffix("/ws")
        result = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastws", "selftest", "--base-url", base, "--token", admin,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        output = (await asyncio.wait_for(result.communicate(), 60))[0].decode()
        assert result.returncode == 0 and ", 0 failed" in output, output
        # a token that is not an admin's still may not connect as someone else
        user = Authenticator.from_settings(Settings(jwt_secret=SECRET)).mint("acme", "alice", ttl=300)
        import websockets

        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"{url}?tenant_id=other&user_id=alice&token={user}")
        assert refused.value.response.status_code == 403
    finally:
        process.send_signal(__import__("signal").SIGTERM)
        await finish(process, lines)


async def test_the_websocket_url_is_wss_when_a_trusted_proxy_ended_tls(make_server):
    server = await make_server(trusted_proxies="127.0.0.1")
    headers = {"X-Tenant-ID": "mig", "Host": "app.example.com"}
    secure = await fetch(server, "GET", "/api/websocket", {**headers, "X-Forwarded-Proto": "https"})
    assert orjson.loads(secure.body)["websocket"]["primary"]["url"] == "wss://app.example.com/ws"
    plain = await fetch(server, "GET", "/api/websocket", headers)
    assert orjson.loads(plain.body)["websocket"]["primary"]["url"] == "ws://app.example.com/ws"
    untrusted = await make_server()
    claimed = await fetch(untrusted, "GET", "/api/websocket", {**headers, "X-Forwarded-Proto": "https"})
    assert orjson.loads(claimed.body)["websocket"]["primary"]["url"] == "ws://app.example.com/ws"
