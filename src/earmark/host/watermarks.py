"""How big `mempool`'s emergency reserve is: Linux's min watermark.

The memory PF_MEMALLOC tasks (reclaim, the flusher, the receive path) may use
and nobody else may is what lies below the zones' min watermarks, min_free_kbytes
in all. calculate_min_free_kbytes (mm/page_alloc.c) sizes it as
int_sqrt(16 x lowmem KiB): it grows as the square root of memory, so small
machines keep a larger share back (256 KiB of 4 MiB, 6 %; 16 MiB of 16 GiB,
0.1 %). It is clamped to 128 KiB .. 256 MiB (older kernels stopped at 64 MiB).
"""

from __future__ import annotations

from math import isqrt

MIN_FREE_KBYTES_FLOOR = 128
MIN_FREE_KBYTES_CEILING = 256 * 1024


def min_free_kbytes(memory_kbytes: int) -> int:
    """calculate_min_free_kbytes for a machine of `memory_kbytes` KiB of lowmem."""
    return min(max(isqrt(memory_kbytes * 16), MIN_FREE_KBYTES_FLOOR), MIN_FREE_KBYTES_CEILING)


def emergency_bytes(memory_bytes: int) -> int:
    """`mempool`'s emergency pool for an arena of `memory_bytes`: the min watermark."""
    return min_free_kbytes(memory_bytes // 1024) * 1024
