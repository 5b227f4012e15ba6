"""Declares the Cython extensions of wsrelay/_core; metadata is in pyproject.toml."""

import os
import sys

from setuptools import Extension, setup

# In dependency order: each module cimports only those before it.
CORE = ["errors", "units", "stats", "pid", "message", "mailbox", "runtime", "deflate", "frames", "relayspec",
        "remote", "picows_private", "writer", "relay", "group", "handshake"]
# C libraries a module links with (libz.so.1 is on manylinux's allowed list).
LIBRARIES = {"deflate": ["z"]}


def extensions():
    from Cython.Build import cythonize

    debug = os.environ.get("WSRELAY_DEBUG_BUILD") == "1"
    flags = ["-O0", "-g"] if debug else ["-O2"]
    if sys.platform != "win32":
        flags.append("-Wno-unreachable-code")
    modules = [
        Extension(f"wsrelay._core.{name}", [f"wsrelay/_core/{name}.pyx"], extra_compile_args=flags,
                  libraries=LIBRARIES.get(name, []))
        for name in CORE
    ]
    return cythonize(
        modules,
        language_level=3,
        # Bounds checking stays on but where a function turns it off itself.
        compiler_directives={"cdivision": True, "embedsignature": True},
        annotate=os.environ.get("WSRELAY_ANNOTATE") == "1",
    )


setup(ext_modules=extensions())
