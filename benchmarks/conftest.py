"""Benchmarks run only when asked for (they are outside testpaths): python -m benchmarks.core."""

from __future__ import annotations

import importlib

import pytest

IMPLEMENTATIONS = ["python"]
try:
    importlib.import_module("fastws._core")
    IMPLEMENTATIONS.insert(0, "cython")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(params=IMPLEMENTATIONS)
def core(request: pytest.FixtureRequest):
    return importlib.import_module("fastws._core" if request.param == "cython" else "fastws._core_py")
