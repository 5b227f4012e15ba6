"""Child processes that cannot outlive the process that started them.

On Linux, ``prctl(PR_SET_PDEATHSIG)`` asks the kernel to signal a child when
its parent dies, however it dies (SIGKILL included), so neither the broker nor
a worker is ever left orphaned by a supervisor that was killed. The request is
made in the child between fork and exec; if the parent died before that, the
child has already been re-parented and kills itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable, Optional

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Optional[Callable[..., int]]:
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Looked up once in the parent: the child, between fork and exec, only calls it.
_prctl = _load_prctl()


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess``: the child receives ``sig`` when the
    calling process dies (Linux). Elsewhere only the start-up race is covered."""
    parent = os.getpid()
    prctl = _prctl

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            # The parent died between fork and prctl: nobody will signal us.
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
