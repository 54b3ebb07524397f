"""The write functions the alternatives to shmsave run, at module level so process pools can pickle them."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def write_one(path: str, image: np.ndarray, params: list[int]) -> None:
    """Write one image with cv2.imwrite; raise OSError if OpenCV reports failure."""
    if not cv2.imwrite(path, image, params):
        raise OSError(f"cv2.imwrite failed: {path}")


def write_chunk(start: int, images: Sequence[np.ndarray], pattern: str, params: list[int]) -> int:
    """Write images[k] to pattern.format(index=start + k) for every k, in order; return the count."""
    for index, image in enumerate(images, start):
        write_one(pattern.format(index=index), image, params)
    return len(images)


def chunk_bounds(count: int, parts: int) -> list[tuple[int, int]]:
    """Split range(count) into `parts` contiguous (start, stop) ranges of near-equal size, like np.array_split."""
    parts = max(1, min(parts, count))
    size, extra = divmod(count, parts)
    bounds, start = [], 0
    for k in range(parts):
        stop = start + size + (k < extra)
        bounds.append((start, stop))
        start = stop
    return bounds
