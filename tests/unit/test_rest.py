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
