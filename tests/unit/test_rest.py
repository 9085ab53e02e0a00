"""The REST API without sockets: Request in, Response out."""

import orjson

from fastws.config import Settings
from fastws.hub import Hub
from fastws.rest import Request, RestAPI


def api(**limits):
    settings = Settings.from_dict(limits)
    return RestAPI(Hub(settings.limits), settings)


def post(rest, body, headers=None):
    headers = {"x-tenant-id": "t", "x-user-id": "u", "content-type": "application/json", **(headers or {})}
    return rest.handle(Request("POST", "/api/websocket", {}, headers, orjson.dumps(body)))


def test_exception_text_never_reaches_the_client(monkeypatch, caplog):
    """An unexpected exception is logged and answered 500 internal_error, without its text."""
    rest = api()

    def explode(*args, **kwargs):
        raise RuntimeError("secret database password")

    monkeypatch.setattr(rest.hub, "deliver", explode)
    response = post(rest, {"event": "e"})
    assert response.status == 500
    assert b"secret" not in response.body
    assert orjson.loads(response.body)["error"]["code"] == "internal_error"
    assert "secret database password" in caplog.text


def test_batch_is_validated_whole_before_publishing():
    """One bad item in a batch publishes nothing."""
    rest = api()
    response = post(rest, [{"event": "a"}, {"event": "b", "channel": "x:other"}])
    assert response.status == 403
    assert rest.hub.metrics.events_published == 0
    response = post(rest, [{"event": "a"}, {"event": "b", "priority": "nope"}])
    assert response.status == 400 and b"item 1" in response.body
    assert rest.hub.metrics.events_published == 0


def test_batch_limit():
    """More than max_batch events is batch_too_large."""
    rest = api(max_batch=2)
    assert post(rest, [{"event": "a"}] * 3).status == 400
    assert orjson.loads(post(rest, [{"event": "a"}] * 2).body)["ids"].__len__() == 2


def test_status_counts():
    """status reports the hub's metrics; detailed adds the implementation and tenants."""
    rest = api()
    post(rest, {"event": "a"})
    body = orjson.loads(rest.handle(Request("GET", "/api/websocket/status", {"detailed": "true"}, {}, b"", "127.0.0.1")).body)
    assert body["websocket"]["metrics"]["events_published"] == 1
    assert body["websocket"]["implementation"] in ("cython", "python")
    assert body["websocket"]["tenants"]["t"]["events_published"] == 1


class _Control:
    """What RestAPI asks of a worker's control, recording the disconnections asked for."""

    worker = 0

    def __init__(self):
        from fastws.control import Flags

        self.flags = Flags()
        self.disconnects = []

    def v2_enabled(self, tenant_id):
        return True

    async def disconnect(self, tenant_id, user_id, connection_id):
        self.disconnects.append((tenant_id, user_id, connection_id))
        return 0


def _authenticated_api():
    from fastws.auth import Authenticator

    settings = Settings.from_dict({"jwt_secret": "unit-test-secret-0123456789abcdef"})
    authenticator = Authenticator.from_settings(settings)
    control = _Control()
    return RestAPI(Hub(settings.limits, authenticator=authenticator), settings, control=control), authenticator, control


async def test_admin_delete_closes_the_named_tenant_not_as_the_token_user():
    """An admin token's own tenant and user never narrow a DELETE: ?tenant_id=T selects every user of T."""
    rest, authenticator, control = _authenticated_api()
    admin = {"authorization": f"Bearer {authenticator.mint('ops', 'root', admin=True)}"}
    response = await rest.handle(Request("DELETE", "/api/websocket", {"tenant_id": "acme"}, dict(admin)))
    assert response.status == 200
    assert control.disconnects == [("acme", None, None)]
    response = rest.handle(Request("DELETE", "/api/websocket", {}, dict(admin)))
    assert (response.status, orjson.loads(response.body)["error"]["code"]) == (400, "missing_field")


async def test_delete_checks_the_identity_header_even_where_the_query_wins():
    """DELETE takes the tenant and user from the query over the headers, but a malformed header is still 400."""
    rest = RestAPI(Hub(Settings().limits), Settings(), control=_Control())
    request = Request("DELETE", "/api/websocket", {"tenant_id": "a", "user_id": "u"}, {"x-user-id": "bad\x9b"}, b"", "127.0.0.1")
    response = rest.handle(request)
    assert (response.status, orjson.loads(response.body)["error"]["code"]) == (400, "invalid_user_id")
    request = Request("DELETE", "/api/websocket", {"tenant_id": "a"}, {"x-tenant-id": "no way"}, b"", "127.0.0.1")
    assert orjson.loads(rest.handle(request).body)["error"]["code"] == "invalid_tenant_id"
    request = Request("DELETE", "/api/websocket", {"tenant_id": "a", "user_id": ""}, {"x-user-id": "h"}, b"", "127.0.0.1")
    assert (await rest.handle(request)).status == 200
    assert rest.control.disconnects == [("a", "h", None)]


def test_history_bounds_refuse_non_ascii_and_overlong_digits():
    """?since= and ?limit= of Unicode digits or thousands of digits are 400 invalid_field, never a 500."""
    rest = api()
    for query in ({"since": "\u00b2"}, {"limit": "\u0663"}, {"since": "9" * 5000}, {"limit": "0" * 5000 + "5"}):
        response = rest.handle(Request("GET", "/api/websocket/history", query, {"x-tenant-id": "t"}))
        assert (response.status, orjson.loads(response.body)["error"]["code"]) == (400, "invalid_field"), query
