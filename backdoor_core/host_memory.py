"""Opt-in host-memory setting for CPU runs: keep freed memory in the process (BACKDOOR_MALLOC=keep).

XLA:CPU allocates a step's intermediates with the C library's malloc, from its worker threads.
glibc serves requests above 32 MB with fresh mmap's and returns freed memory to the kernel, so
every step page-faults them again: measured on the 2-core CPU, 1.6 GB of minor faults and ~0.9 s
of kernel time per SGD step of ResNet-18 at width 1, batch 128 (docs/performance.md).
`keep_freed_memory` makes glibc keep what it frees: one arena (M_ARENA_MAX = 1, the worker
threads share the heap), no mmap'ed chunks (M_MMAP_MAX = 0), no trimming (M_TRIM_THRESHOLD =
-1). After a few steps a step page-faults nothing.

It is off by default because it does not pay everywhere. Measured quiet on the 2-core CPU
(docs/performance.md): at width 1, batch 128, PGD-7 17.7 s instead of 21.5 and a DHBE iteration
55.5 s instead of 66.0 (PyTorch in the same process gains as much), the SGD step even; but the
`cpu` config's DHBE iteration (PreAct-ResNet-18 width 1/4, batch 64) 5.3 s instead of 4.6 (the
threads then contend for the one arena), and freed memory is never returned: in one DHBE run
at width 1/4, batch 64 the resident memory grew to 4.8 GB (2.4 GB without) before it levelled off
after ~15 iterations; in another it stayed at 2.2.

It must run before XLA's threads first allocate (M_ARENA_MAX does not move a thread off an
arena it already has): the command-line entry points call it first thing, and a script calls it
before its first JAX computation. It does nothing outside glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import os
import platform

from backdoor_core.errors import InputError

ENV = "BACKDOOR_MALLOC"
CHOICES = ("system", "keep")

# mallopt(3) parameter numbers (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied = False


def malloc_choice() -> str:
    """BACKDOOR_MALLOC if set (one of CHOICES), else 'system' (malloc left as it is)."""
    choice = os.environ.get(ENV, "system")
    if choice not in CHOICES:
        raise InputError(f"{ENV}={choice!r}; expected one of {CHOICES}")
    return choice


def keep_freed_memory() -> bool:
    """With BACKDOOR_MALLOC=keep, sets glibc's malloc to keep freed memory (module docstring).

    Returns whether it did; idempotent. Changes nothing (returns False) when BACKDOOR_MALLOC is
    unset or 'system', or the C library is not glibc.
    """
    global _applied
    if _applied:
        return True
    if malloc_choice() == "system" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = all(libc.mallopt(param, value) == 1
             for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
    _applied = ok
    return ok
