"""glibc allocator settings for a long-running process that decodes video on many threads.

Decoded frames are large (a 1080p BGR frame is about 6 MB) and short-lived, and
they are allocated on reader, decoder and processing threads. glibc gives threads
their own heaps (arenas), up to eight per core on 64-bit systems. A heap that held
frames keeps its free space instead of returning it to the system, so the resident
size of the daemon creeps up for hours without any object leaking. Two arenas and
a periodic ``malloc_trim`` keep it flat, and neither costs measurable throughput.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # the mallopt parameter number from glibc's <malloc.h>
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    """Load the C library, or return None when it is not glibc."""
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
    """Cap glibc at ``ARENAS`` heaps for all threads created from now on.

    Return True when ``mallopt`` accepted the setting, and False on other C libraries.
    """
    if _LIBC is None:
        return False
    accepted = bool(_LIBC.mallopt(M_ARENA_MAX, ARENAS))
    if accepted:
        logger.debug("malloc: at most %d arenas", ARENAS)
    return accepted


def trim() -> None:
    """Release free heap memory to the system with ``malloc_trim`` on glibc, and do nothing elsewhere."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
