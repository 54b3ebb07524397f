"""Keeping the encoders' freed buffers in the process, where glibc would give them back to the kernel.

``cv2.imencode`` grows each file's bytes in a buffer that doubles, and Python gets a copy of it: a
1080p JPEG of 0.4 MB allocates about three times that and frees it again. glibc serves blocks that
big from its heap only after the process has freed a mapped block at least as big (its dynamic
"mmap threshold", which also sets the heap's trim threshold at twice it); until then every image's
buffers are fresh pages from the kernel: ~220 page faults per 1080p JPEG, and two threads encoding
1080p JPEGs took ~127 ms where they take ~114 ms once the threshold is up (median of 16 runs each,
2 cores). Freeing one 16 MB block raises the threshold to 16 MB, as numpy's first 16 MB temporary
would: what glibc does by itself, done once per process, before the first big image. Freed
memory is then kept up to 32 MB per malloc arena. A process that set its own malloc options
(``MALLOC_*_`` variables, ``mallopt``) keeps them: glibc then adjusts nothing. Elsewhere
(musl, macOS) this is one short-lived allocation and nothing more.
"""

from __future__ import annotations

import numpy as np

_BLOCK_BYTES = 16 * 2**20  # glibc adjusts only for blocks up to 32 MB (64-bit)
_FROM_IMAGE_BYTES = 64 * 1024  # smaller images' buffers stay below glibc's first threshold (128 KB)
kept = False


def keep_freed_buffers(image_nbytes: int) -> None:
    """Before encoding images of ``image_nbytes`` each: raise glibc's threshold once per process."""
    global kept
    if kept or image_nbytes < _FROM_IMAGE_BYTES:
        return
    kept = True
    np.empty(_BLOCK_BYTES, np.uint8)  # allocated (mapped: above the threshold) and freed at once
