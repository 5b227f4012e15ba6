"""Declares the Cython extensions of wsrelay/_core; metadata is in pyproject.toml."""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Cython and the C compiler run one job per core (WSRELAY_BUILD_JOBS overrides):
# the modules are independent once cythonized, and a serial build was most of
# a fresh `make run`.
JOBS = int(os.environ.get("WSRELAY_BUILD_JOBS") or os.cpu_count() or 1)

# In dependency order: each module cimports only those before it.
CORE = ["errors", "vocab", "signals", "units", "stats", "pid", "message", "mailbox", "runtime", "deflate", "frames",
        "relayspec", "history", "remote", "call", "picows_private", "writer", "relay", "group", "presence", "channels",
        "apiproto", "handshake"]
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
        nthreads=JOBS if JOBS > 1 else 0,
    )


class ParallelBuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        if not self.parallel and JOBS > 1:
            self.parallel = JOBS


# The Makefile builds the modules in place (incrementally) and then installs the
# tree as editable with WSRELAY_SKIP_EXTENSIONS=1: that install links the
# package and the command, and compiles nothing a second time.
SKIP = os.environ.get("WSRELAY_SKIP_EXTENSIONS") == "1"
setup(ext_modules=[] if SKIP else extensions(), cmdclass={"build_ext": ParallelBuildExt})
