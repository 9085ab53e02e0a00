import subprocess
import sys

import fastws


def test_public_names_resolve():
    """Every name in fastws.__all__ is importable (the client ones lazily)."""
    for name in fastws.__all__:
        assert getattr(fastws, name) is not None


def test_core_imports_no_event_loop_or_picows():
    """Importing the sans-I/O core (messages, channels, session, hub, history, logs) loads neither asyncio nor picows."""
    code = (
        "import sys; import fastws.hub, fastws.messages, fastws.channels, fastws.session, fastws.history, fastws.logs; "
        "print(sorted(m for m in ('asyncio', 'picows', 'uvloop') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
