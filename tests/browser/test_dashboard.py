"""The dashboard in headless Chromium against a real two-worker server with authentication on.

One walk through the page, in the order a person would use it: connect, filters, a channel, publishes
from the page and over REST (exactly the matching events reach the log), live charts, the
websocket_v2 flag with an admin token, a server restart (the page reconnects, and an event published
meanwhile is shown once), phone width, and a screenshot in tests/artifacts/. The browser console
must stay free of errors, except the refused connections of the restart while the server is down.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.browser.conftest import ServerProcess, token

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TENANT, USER = "acme", "alice"
WAIT_MS = 15_000
#: console errors expected while the server is down for its restart (and the browser offline), and only then
DOWNTIME_ERRORS = re.compile(
    r"WebSocket connection to .* failed|ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_INTERNET_DISCONNECTED|ERR_EMPTY_RESPONSE|Failed to fetch"
)


class Console:
    """Console errors and uncaught page errors, each tagged with the test's phase."""

    def __init__(self, page: Any) -> None:
        self.phase = "start"
        self.errors: list[tuple[str, str]] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append((self.phase, message.text)))
        page.on("pageerror", lambda error: self.errors.append((self.phase, f"pageerror: {error}")))

    def unexpected(self) -> list[tuple[str, str]]:
        return [
            (phase, text) for phase, text in self.errors
            if not (phase == "restart" and not text.startswith("pageerror") and DOWNTIME_ERRORS.search(text))
        ]


def rest_publish(server: ServerProcess, admin: str, **event: Any) -> str:
    status, body = server.request(
        "POST", "/api/websocket", event,
        {"Authorization": f"Bearer {admin}", "X-Tenant-ID": TENANT, "X-User-ID": "svc"},
    )
    assert status == 200, body
    return body["id"]


def logged(page: Any) -> list[dict[str, str]]:
    """The log's event entries (not the welcome or the page's own notes), newest first."""
    entries = page.evaluate("window.__dashboard.log()")
    return [e for e in entries if e.get("id") and e.get("event") != "connection"]


def wait_logged(page: Any, event_id: str) -> None:
    page.wait_for_function(
        "id => window.__dashboard.log().some(e => e.id === id)", arg=event_id, timeout=WAIT_MS
    )


def flags(server: ServerProcess, admin: str, **expected: Any) -> dict[str, Any]:
    """The flags as every worker has them (each applies a change within a tick: asked until all agree)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        answers = []
        for _ in range(6):  # new connections land on either worker
            status, body = server.request("GET", "/api/websocket/status?detailed=true", headers={"Authorization": f"Bearer {admin}"})
            assert status == 200, body
            answers.append(body["websocket"]["flags"])
        if all(all(answer[key] == value for key, value in expected.items()) for answer in answers):
            return answers[0]
        assert time.monotonic() < deadline, (expected, answers)
        time.sleep(0.05)


def test_dashboard_end_to_end(browser, server):
    """Link to the API description, connect, filter, subscribe, publish, chart, flag, survive a restart, fit a
    phone: no console errors."""
    user_token = token(TENANT, USER)
    admin_token = token("ops", "root", admin=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    # The connection settings as the page keeps them for the tab: the first status poll carries the token.
    settings = orjson.dumps({"tenant": TENANT, "user": USER, "token": user_token}).decode()
    context.add_init_script(f"sessionStorage.setItem('fastws.dashboard.connection', {settings!r});")
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    console = Console(page)
    try:
        page.goto(f"{server.base}/websocket-test")
        assert page.input_value("#url") == f"ws://{server.netloc}/ws"

        # -- the header links to the API's OpenAPI description; followed, it opens without a token
        link = page.locator("#api-link")
        assert link.is_visible() and link.text_content().strip() == "API (OpenAPI)"
        assert link.evaluate("a => a.href") == f"{server.base}/api/openapi.json"
        with context.expect_page() as opened:
            link.click()
        description = opened.value
        description.wait_for_load_state()
        assert description.url == f"{server.base}/api/openapi.json"
        spec = orjson.loads(description.inner_text("body"))
        assert spec["openapi"].startswith("3.1.") and "/api/websocket" in spec["paths"]
        description.close()

        # -- authentication is detected, the admin token unlocks the per-worker rows
        page.wait_for_selector("#auth-mode:has-text('auth: jwt')")
        assert page.is_visible("#admin-token")
        page.fill("#admin-token", admin_token)
        page.wait_for_function("() => document.querySelectorAll('#workers tbody tr').length === 2")

        # -- connect
        page.click("#connect")
        page.wait_for_selector("#status[data-status='connected']")

        # -- filters: event type keep, priority high or critical
        page.fill("#filter-event-types", "keep")
        page.check("#filter-priority-high")
        page.check("#filter-priority-critical")
        page.click("#filters-apply")
        page.wait_for_selector("#filters-result.ok")

        # -- a channel
        page.fill("#channel-input", "ideas")
        page.click("#subscribe")
        page.wait_for_selector("#channels-list li[data-channel='ideas:acme'] button.unsubscribe")

        # -- publish from the page: bad JSON is refused before sending; a reserved name is the server's error code
        page.fill("#pub-payload", "{not json")
        assert "invalid JSON" in page.text_content("#pub-payload-error")
        page.click("#publish")
        page.wait_for_selector("#publish-result.bad")
        page.fill("#pub-event", "connection")
        page.fill("#pub-payload", '{"n": 0}')
        page.click("#publish")
        page.wait_for_selector("#publish-result.bad:has-text('reserved_type')")
        page.fill("#pub-event", "keep")
        page.fill("#pub-channel", "ideas")
        page.select_option("#pub-priority", "high")
        page.fill("#pub-payload", '{"n": 1}')
        page.click("#publish")
        page.wait_for_selector("#publish-result.ok")
        from_page = page.get_attribute("#publish-result", "data-id")
        assert from_page

        # -- publish over REST: two match, four do not (type, priority, a channel not subscribed, another user)
        matching = [
            from_page,
            rest_publish(server, admin_token, event="keep", priority="high", payload={"n": 2}),
            rest_publish(server, admin_token, event="keep", priority="critical", channel="ideas", payload={"n": 3}),
        ]
        rest_publish(server, admin_token, event="keep", priority="low", channel="ideas")
        rest_publish(server, admin_token, event="drop", priority="critical", channel="ideas")
        rest_publish(server, admin_token, event="keep", priority="high", channel="other")
        rest_publish(server, admin_token, event="keep", priority="high", targetUserId="bob")
        barrier = rest_publish(server, admin_token, event="keep", priority="high", channel="ideas", payload={"barrier": 1})
        wait_logged(page, barrier)
        assert sorted(e["id"] for e in logged(page)) == sorted(matching + [barrier])
        assert {e["event"] for e in logged(page)} == {"keep"}

        # -- the charts move: events per second and connections, read from uPlot's own data
        page.wait_for_function(
            "() => { const d = window.__dashboard.charts.rate.data; return d[2].some(v => v > 0); }"
        )
        page.wait_for_function(
            "() => { const d = window.__dashboard.charts.connections.data; return d[1].length > 1 && d[1][d[1].length - 1] >= 1; }"
        )
        series = page.evaluate("window.__dashboard.charts.connections.series.map(s => s.label)")
        assert series[1:] == ["total", "worker 0", "worker 1"]

        # -- websocket_v2 off and on again from the page, with the admin token
        page.wait_for_selector("#flag-v2:has-text('on')")
        page.click("#flag-v2-toggle")
        page.wait_for_selector("#flag-v2:has-text('off')")
        flags(server, admin_token, websocket_v2=False)
        page.click("#flag-v2-toggle")
        page.wait_for_selector("#flag-v2:has-text('on')")
        flags(server, admin_token, websocket_v2=True)
        page.fill("#override-tenant", "beta")
        page.select_option("#override-state", "off")
        page.click("#override-add")
        page.wait_for_selector("#overrides li[data-tenant='beta']")
        flags(server, admin_token, tenants={"beta": "off"})
        page.click("#overrides li[data-tenant='beta'] button.remove-override")
        page.wait_for_selector("#overrides li[data-tenant='beta']", state="detached")

        # -- restart the server on the same port: the page reconnects; an event published meanwhile shows once
        # (the browser is kept offline until the event is published, so the page comes back after it: the
        # server, restarted, cannot replay it, and the page reads it from history)
        console.phase = "restart"
        context.set_offline(True)
        server.stop()
        page.wait_for_selector("#status[data-status='reconnecting']")
        server.start(server.port)
        while_away = rest_publish(server, admin_token, event="keep", priority="critical", payload={"away": 1})
        context.set_offline(False)
        page.wait_for_selector("#status[data-status='connected']")
        wait_logged(page, while_away)
        assert [e["origin"] for e in logged(page) if e["id"] == while_away] == ["history"]
        console.phase = "after restart"
        after = rest_publish(server, admin_token, event="keep", priority="high", channel="ideas", payload={"after": 1})
        wait_logged(page, after)  # the channel subscription came back with the connection
        ids = [e["id"] for e in logged(page)]
        assert ids.count(while_away) == 1 and ids.count(after) == 1

        # -- history of the channel since the restart
        page.fill("#history-channel", "ideas")
        page.click("#history-load")
        page.wait_for_selector("#history-result.ok")
        assert after in page.eval_on_selector_all("#history-events li", "items => items.map(li => li.dataset.id)")

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # -- phone width: nothing wider than the screen
        page.set_viewport_size({"width": 390, "height": 844})
        # (the workers table scrolls inside its own box, which is checked with the rest; the charts
        # follow their box's width when it changes)
        wider = (
            "() => [...document.querySelectorAll('body *')].filter(e => !e.closest('.scroll *'))"
            ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
            ".map(e => e.id || e.className || e.tagName).slice(0, 10)"
        )
        try:
            page.wait_for_function(f"() => ({wider})().length === 0", timeout=5000)
        finally:
            assert page.evaluate(wider) == []
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)

        # -- the log pauses and clears
        page.click("#log-pause")
        paused = rest_publish(server, admin_token, event="keep", priority="high", payload={"paused": 1})
        page.wait_for_selector("#log-pending:has-text('1 waiting')")
        assert paused not in [e["id"] for e in logged(page)]
        page.click("#log-pause")
        wait_logged(page, paused)
        page.click("#log-clear")
        assert logged(page) == [] and page.text_content("#log-count") == "0"
    finally:
        context.close()
    assert console.unexpected() == [], console.errors


@pytest.fixture
def open_server() -> Any:
    """A two-worker server in open mode (no key): the page needs no token, admin works from loopback."""
    running = ServerProcess(workers=2)
    running.start()
    yield running
    running.stop()


def test_dashboard_without_authentication(browser, open_server):
    """Open mode: no token field is needed; connect, publish from the page and from REST, see the
    worker rows and flip websocket_v2 off and on without an admin token (the browser is on loopback)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    console = Console(page)
    try:
        page.goto(f"{open_server.base}/websocket-test")
        page.wait_for_selector("#auth-mode:has-text('auth: open')")
        answer = page.request.get(page.locator("#api-link").evaluate("a => a.href"))
        assert answer.status == 200 and answer.json()["openapi"].startswith("3.1.")
        page.wait_for_function("() => document.querySelectorAll('#workers tbody tr').length === 2")
        page.fill("#tenant", TENANT)
        page.fill("#user", USER)
        page.click("#connect")
        page.wait_for_selector("#status[data-status='connected']")
        page.fill("#pub-event", "keep")
        page.fill("#pub-payload", '{"n": 1}')
        page.click("#publish")
        page.wait_for_selector("#publish-result.ok")
        status, body = open_server.request("POST", "/api/websocket", {"event": "from_rest", "payload": {}},
                                           {"X-Tenant-ID": TENANT, "X-User-ID": "svc"})
        assert status == 200, body
        wait_logged(page, body["id"])
        assert {"keep", "from_rest"} <= {e["event"] for e in logged(page)}
        page.click("#flag-v2-toggle")
        page.wait_for_selector("#flag-v2:has-text('off')")
        page.click("#flag-v2-toggle")
        page.wait_for_selector("#flag-v2:has-text('on')")
        assert console.unexpected() == []
    finally:
        context.close()
