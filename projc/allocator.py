"""Keep freed memory in the process, so that each training step does not fault it in again.

XLA on CPU allocates a step's state and temporaries afresh on every call and frees them at the
end. glibc returns such large blocks to the kernel (each is its own ``mmap``, or a thread's
heap is trimmed), so the next call touches new pages: for the MNIST 784-128-10 MLP at batch 256
that is about 400 MiB of page faults per minibatch, 0.4 s of kernel time where one DR
iteration costs 20 ms. With one arena, no ``mmap`` for large blocks and no trimming, freed
blocks are reused as they are: most steps then fault nothing in (a one-iteration step: 330
against 100 ms), though some still fault part of it in, for reasons not found yet.

The cost: the process keeps its peak memory until it exits. ``PROJC_MALLOC=system`` leaves
the C library's defaults alone. Only glibc (Linux) is tuned; elsewhere nothing changes.
Arenas are per thread and chosen when a thread first allocates, so this must run before XLA
starts its thread pool: ``import projc`` does it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Tune glibc's allocator as the module says (once); whether it is now in effect."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("PROJC_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)


__all__ = ["retain_freed_memory"]
