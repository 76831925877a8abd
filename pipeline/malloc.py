"""glibc allocator settings for a long-running process that decodes video on many threads.

Decoded frames are large (a 1080p BGR frame is about 6 MB) and short-lived, and
they are allocated on reader, decoder and processing threads. glibc gives threads
their own heaps (arenas), up to eight per core, and a heap that held frames keeps
its free space instead of returning it, so the resident size of the daemon creeps
up for hours without any object leaking. Two arenas and a periodic ``malloc_trim``
keep it flat; neither costs measurable throughput.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc (musl, macOS)
    return libc


_LIBC = _libc()


def limit_arenas() -> bool:
    """Cap glibc at two heaps for all threads created from now on; True when the allocator took it."""
    if _LIBC is None:
        return False
    taken = bool(_LIBC.mallopt(M_ARENA_MAX, ARENAS))
    if taken:
        logger.debug("malloc: at most %d arenas", ARENAS)
    return taken


def trim() -> None:
    """Return free heap memory to the system (glibc only; a no-op elsewhere)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
