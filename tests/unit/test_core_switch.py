import os
import subprocess
import sys

import pytest

from tests.conftest import IMPLEMENTATIONS


def implementation_with(env: dict[str, str]) -> str:
    code = "import fastws.core as c; print(c.IMPLEMENTATION, c.Matcher.__module__)"
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_no_extensions_forces_the_twin():
    """FASTWS_NO_EXTENSIONS=1 selects the pure-Python twin in fastws.core."""
    assert implementation_with({"FASTWS_NO_EXTENSIONS": "1"}) == "python fastws._core_py"


@pytest.mark.skipif("cython" not in IMPLEMENTATIONS, reason="the compiled core is not built")
def test_compiled_core_is_preferred():
    """With the extension built and no override, fastws.core uses it."""
    assert implementation_with({"FASTWS_NO_EXTENSIONS": ""}) == "cython fastws._core"
