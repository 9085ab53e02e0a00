"""Build the compiled core, fastws/_core.pyx, with Cython.

Cython is a build-time dependency only (pinned in pyproject.toml). Set
FASTWS_DEBUG_BUILD=1 for an annotated build with line tracing (profiling).
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTWS_DEBUG_BUILD") == "1"

compiler_directives = {
    "language_level": 3,
    # Indexes and sizes are checked by the code itself; skip Cython's checks.
    "boundscheck": False,
    "wraparound": False,
    # Keep Python semantics for `/` and `%` on C ints (no surprises in ports from the twin).
    "cdivision": False,
    # Debug builds: profiling hooks for py-spy/line_profiler.
    "linetrace": debug,
    "profile": debug,
    # The extension is used from one thread (the worker's event loop).
    "freethreading_compatible": False,
}

extensions = [
    Extension(
        "fastws._core",
        ["fastws/_core.pyx"],
        extra_compile_args=["-O2"] if not debug else ["-O0", "-g"],
        define_macros=[("CYTHON_TRACE", "1")] if debug else [],
    )
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=compiler_directives, annotate=debug),
)
