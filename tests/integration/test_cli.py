"""`fastws serve` as a user runs it: a real process, real signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import pytest

from tests.helpers import Client

URL_LINE = re.compile(rb"WebSocket (ws://\S+?)\?")


async def start(*args: str, env: dict[str, str] | None = None) -> tuple[asyncio.subprocess.Process, str, list[bytes]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "serve", "--port", "0", *args,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    lines: list[bytes] = []
    while True:
        line = await asyncio.wait_for(process.stderr.readline(), 30)
        assert line, b"".join(lines).decode()
        lines.append(line)
        match = URL_LINE.search(line)
        if match:
            return process, match.group(1).decode(), lines


async def finish(process: asyncio.subprocess.Process, lines: list[bytes]) -> str:
    try:
        rest = await asyncio.wait_for(process.stderr.read(), 30)
        await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:  # never leave a server behind, even when the test fails
            process.kill()
            await process.wait()
    return (b"".join(lines) + rest).decode()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_closes_clients_with_1001_and_exits_0(signum):
    """SIGTERM and SIGINT stop the server cleanly: clients get close 1001, the process exits 0."""
    process, url, lines = await start()
    client = await Client.connect(url)
    process.send_signal(signum)
    await asyncio.wait_for(client.ws.wait_closed(), 10)
    assert client.ws.close_code == 1001
    log = await finish(process, lines)
    assert process.returncode == 0, log
    assert "stopped" in log


async def test_startup_log_names_urls_version_and_core():
    """The startup log gives the WebSocket URL, the REST base URL, the version and the core in use."""
    process, url, lines = await start("--legacy-url", "wss://legacy.example/ws")
    process.send_signal(signal.SIGTERM)
    log = await finish(process, lines)
    from fastws import IMPLEMENTATION, __version__

    assert f"fastws {__version__} (core: {IMPLEMENTATION}" in log
    assert "REST http://127.0.0.1:" in log and "/api/websocket" in log
    assert "legacy endpoint wss://legacy.example/ws" in log


async def test_debug_env_turns_on_debug_logs():
    """DEBUG=websocket:* (as the seed used) logs connections and commands at debug level."""
    process, url, lines = await start(env={"DEBUG": "websocket:*"})
    client = await Client.connect(url, "dbg", "alice")
    await client.request({"type": "nope"})
    await client.close()
    process.send_signal(signal.SIGTERM)
    log = await finish(process, lines)
    assert re.search(r"DEBUG fastws\.hub(\[w\d+ pid \d+\])?: connected user=alice tenant=dbg connection=\S+", log), log
    assert "unknown_type" in log


async def test_environment_sets_the_port():
    """FASTWS_PORT and FASTWS_HOST are read when no flag is given."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "serve",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "FASTWS_PORT": "0", "FASTWS_HOST": "127.0.0.1"},
    )
    line = b""
    while not URL_LINE.search(line):
        line = await asyncio.wait_for(process.stderr.readline(), 30)
        assert line
    assert URL_LINE.search(line).group(1).startswith(b"ws://127.0.0.1:")
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0


async def test_bad_setting_is_a_clear_error():
    """An invalid setting exits 2 with a message, not a traceback."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "serve",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "FASTWS_MAX_MESSAGE_SIZE": "lots"},
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"max_message_size" in err and b"Traceback" not in err


async def test_selftest_passes_against_a_fresh_server():
    """`fastws selftest` checks a running `fastws serve` end to end: every line PASS, 'N passed, 0 failed', exit 0."""
    process, url, lines = await start()
    base = url.replace("ws://", "http://").removesuffix("/ws")
    try:
        check = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastws", "selftest", "--base-url", base, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(check.communicate(), 60)
    finally:
        process.send_signal(signal.SIGTERM)
        await finish(process, lines)
    report = out.decode().splitlines()
    assert check.returncode == 0, out.decode()
    assert re.fullmatch(r"(\d+) passed, 0 failed", report[-1]) and int(report[-1].split()[0]) >= 10
    assert all(line.startswith("PASS ") for line in report[1:-1])


async def test_selftest_fails_without_a_server():
    """Against nothing, `fastws selftest` reports failures and exits non-zero."""
    import socket

    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "selftest", "--base-url", f"http://127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(check.communicate(), 60)
    assert check.returncode == 1
    assert out.decode().splitlines()[-1].endswith("failed") and "FAIL status" in out.decode()


async def test_publish_command():
    """`fastws publish` sends one event over REST and prints its id; a refused one exits 1."""
    process, url, lines = await start()
    base = url.replace("ws://", "http://").removesuffix("/ws")
    try:
        subscriber = await Client.connect(url, "cli", "sub")
        ok = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastws", "publish", "--tenant", "cli", "--user", "u", "--event", "hello",
            "--data", '{"x": 1}', "--base-url", base, stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(ok.communicate(), 30)
        assert ok.returncode == 0
        event = await subscriber.recv()
        assert event["id"] in out.decode() and event["data"] == {"x": 1}
        refused = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastws", "publish", "--tenant", "cli", "--user", "u", "--event", "hello",
            "--channel", "x:other", "--base-url", base, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(refused.communicate(), 30)
        assert refused.returncode == 1 and b"forbidden_channel" in err
        await subscriber.close()
    finally:
        process.send_signal(signal.SIGTERM)
        await finish(process, lines)


async def test_listen_prints_the_welcome_the_ack_and_events_as_json_lines():
    """`fastws listen` (the README's example): a WebSocket client that prints one JSON per line."""
    import orjson

    process, url, lines = await start("--workers", "0")
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "listen", "--ws-url", url, "--tenant", "acme", "--user", "alice@example.com",
        "--channel", "ideas", "--event-types", "idea_created", stdout=asyncio.subprocess.PIPE,
    )
    try:
        welcome = orjson.loads(await asyncio.wait_for(listener.stdout.readline(), 20))
        ack = orjson.loads(await asyncio.wait_for(listener.stdout.readline(), 20))
        assert welcome["eventType"] == "connection" and welcome["userId"] == "alice@example.com"
        assert ack["type"] == "ack" and ack["channel"] == "ideas:acme"
        publisher = await Client.connect(url, "acme", "bob")
        await publisher.publish("other", {}, channel="ideas")  # filtered out
        sent = await publisher.publish("idea_created", {"title": "New Idea"}, channel="ideas")
        event = orjson.loads(await asyncio.wait_for(listener.stdout.readline(), 20))
        assert (event["id"], event["data"], event["channel"]) == (sent["id"], {"title": "New Idea"}, "ideas:acme")
        await publisher.close()
    finally:
        listener.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(listener.wait(), 20) == 0
        process.send_signal(signal.SIGTERM)
        await finish(process, lines)


@pytest.mark.parametrize("workers", ["0", "2"])
async def test_startup_log_says_who_may_run_admin_operations(workers):
    process, _, lines = await start("--workers", workers)
    process.send_signal(signal.SIGTERM)
    text = await finish(process, lines)
    assert "OPEN development mode" in text and "accepted from loopback peers only" in text
    process, _, lines = await start("--workers", workers, env={"FASTWS_OPEN_ADMIN": "any", "FASTWS_TRUSTED_PROXIES": "10.0.0.0/8"})
    process.send_signal(signal.SIGTERM)
    text = await finish(process, lines)
    assert "from ANY peer" in text and "X-Forwarded-For believed from: 10.0.0.0/8" in text
