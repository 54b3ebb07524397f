"""Reading a memory-mapped file in this process without keeping it: pages are let go once written.

The in-process engines read an ``np.memmap`` where it is. Every page they touch
would stay in this process's resident memory until the array is gone, so a
10 GB ``.npy`` would make a 10 GB process. After each task, ``madvise(MADV_DONTNEED)``
drops that task's pages from this process's page tables: they stay in the
kernel's page cache (a later read maps them again, unchanged), and resident
memory stays near the tasks in flight.

Only for mappings shared with their file (``np.memmap`` modes ``r``, ``r+``,
``w+``): in a private copy-on-write mapping (mode ``c``) it would throw the
caller's changes away.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import mmap

try:
    from numpy.lib.array_utils import byte_bounds  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy import byte_bounds

_PAGE = os.sysconf("SC_PAGE_SIZE")


def page_dropper(stack: np.ndarray | None) -> Callable[[int, int], None] | None:
    """``drop(lo, hi)``: let go of the pages of images ``lo:hi`` of ``stack``; None where
    ``stack`` is not a memory-mapped file shared with the file."""
    mapping = getattr(stack, "_mmap", None)
    if not isinstance(stack, np.memmap) or mapping is None or stack.mode == "c":
        return None
    import mmap  # here: its import costs a script's first save ~0.3 ms, and np.memmap has loaded it

    if not hasattr(mmap, "MADV_DONTNEED"):
        return None
    base = mapping_address(mapping)
    if base is None:
        return None
    size = len(mapping)

    def drop(lo: int, hi: int) -> None:
        low, high = byte_bounds(stack[lo:hi])
        start = (low - base) // _PAGE * _PAGE  # a page shared with the next task only faults in again
        mapping.madvise(mmap.MADV_DONTNEED, start, min(high - base, size) - start)

    return drop


def mapping_address(mapping: mmap.mmap) -> int | None:
    """Where ``mapping`` starts in this process's memory; None once it is closed."""
    try:
        return np.frombuffer(mapping, np.uint8, count=1).ctypes.data
    except ValueError:
        return None
