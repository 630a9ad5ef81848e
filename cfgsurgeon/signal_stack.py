"""Keeping the calling thread's alternate signal stack across OpenVINO calls.

OpenVINO's CPU plugin (2026.4) gives the thread that loads it an alternate signal stack of its own and, when
the ``Core`` that loaded it is released, puts back the one it found. Released out of order (two compiled
models, the first freed first), the last release puts back a stack that is already freed. Every later signal
whose handler runs on the alternate stack — all of Python's own handlers (SIGINT, a SIGCHLD handler such as
torch's data loader installs) and faulthandler's — then cannot be delivered, and the kernel kills the process
with SIGSEGV and no traceback: e.g. the next ``subprocess.run`` when its child exits.
:func:`kept_signal_stack` around each OpenVINO call puts the thread's own stack back at once, so whatever the
plugin later restores is that same stack.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _SignalStack(ctypes.Structure):
    """Linux's ``stack_t`` (macOS orders the fields differently; the plugin's behaviour is Linux's)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def current_signal_stack() -> tuple[int, int, int]:
    """The calling thread's alternate signal stack: (address, size, flags); (0, 0, 0) off Linux."""
    if not sys.platform.startswith("linux"):
        return 0, 0, 0
    stack = _SignalStack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
    return stack.ss_sp or 0, stack.ss_size, stack.ss_flags


@contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the block, then give the calling thread back the alternate signal stack it had before."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None)
    before = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)
