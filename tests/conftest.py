"""Shared fixtures: both core implementations, uvloop, and a real server on a free loopback port."""

from __future__ import annotations

import asyncio
import importlib
import os

import pytest
import uvloop

from fastws import _core_py

IMPLEMENTATIONS = ["python"]
try:
    from fastws import _core  # noqa: F401

    IMPLEMENTATIONS.insert(0, "cython")
except ImportError:  # pragma: no cover - CI requires the build (see .ci/run)
    if os.environ.get("FASTWS_REQUIRE_EXTENSIONS") == "1":
        raise


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run long soak, fuzz and load tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=IMPLEMENTATIONS)
def core(request: pytest.FixtureRequest):
    """Each core implementation in turn: the compiled module and the pure-Python twin."""
    if request.param == "python":
        return _core_py
    return importlib.import_module("fastws._core")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item):
    """Integration tests run on uvloop and on the stdlib loop; unit tests on uvloop."""
    if "integration" in str(item.path) and item.get_closest_marker("uvloop_only") is None:
        return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def loop_errors():
    """Fail the test if anything reached the event loop's exception handler."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        errors.append(context)
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    yield errors
    loop.set_exception_handler(None)
    assert not errors, f"the event loop's exception handler was called: {errors}"


@pytest.fixture
def settings():
    from fastws.config import Settings

    return Settings(host="127.0.0.1", port=0, drain_timeout=2.0)


@pytest.fixture
async def server(settings, loop_errors):
    """A real fastws server on a free loopback port."""
    from fastws.server import Server

    async with Server(settings) as running:
        yield running
