"""Every format: byte-identical to cv2.imwrite, and lossless ones round-trip through Pillow."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from PIL import Image

import shmsave
from shmsave.codec import writable_extensions

# dtype and channels each extension is tested with
PIXELS = {
    ".pgm": ("uint8", 1),
    ".pbm": ("uint8", 1),
    ".ppm": ("uint8", 3),
    ".pnm": ("uint16", 3),
    ".pfm": ("float32", 3),
    ".hdr": ("float32", 3),
    ".pic": ("float32", 1),
    ".exr": ("float32", 3),
    ".gif": ("uint8", 3),
    ".avif": ("uint8", 3),
    ".jp2": ("uint16", 1),
    ".tif": ("float64", 4),
    ".tiff": ("int16", 1),
    ".png": ("uint16", 4),
    ".pam": ("uint8", 4),
}


def stack_for(ext, photos):
    dtype, channels = PIXELS.get(ext, ("uint8", 3))
    base = (
        photos
        if channels == 3
        else photos[..., :1]
        if channels == 1
        else np.concatenate([photos, photos[..., :1]], axis=3)
    )
    if dtype == "uint16":
        return base.astype(np.uint16) * 257
    if dtype == "int16":
        return base.astype(np.int16) - 128
    if dtype.startswith("float"):
        return (base / 255.0).astype(dtype)
    return base.copy()


@pytest.mark.parametrize("ext", writable_extensions())
def test_every_format_is_byte_identical_to_imwrite(ext, photos, tmp_path, writer):
    stack = stack_for(ext, photos)
    report = writer.save(stack, str(tmp_path / "shm" / ("{index}" + ext)))
    assert report.count == len(stack) and not report.failed
    for i, image in enumerate(stack):
        reference = str(tmp_path / f"ref{i}{ext}")
        assert cv2.imwrite(reference, image)
        with open(reference, "rb") as a, open(tmp_path / "shm" / f"{i}{ext}", "rb") as b:
            assert a.read() == b.read(), f"{ext} image {i} differs from cv2.imwrite"
    assert report.bytes == sum(os.path.getsize(tmp_path / "shm" / f"{i}{ext}") for i in range(len(stack)))


@pytest.mark.parametrize(
    "ext, dtype, channels",
    [
        (".png", "uint8", 1),
        (".png", "uint8", 3),
        (".png", "uint8", 4),
        (".png", "uint16", 1),
        (".bmp", "uint8", 3),
        (".tif", "uint8", 3),
        (".ppm", "uint8", 3),
        (".pgm", "uint8", 1),
        (".webp", "uint8", 3),
    ],
)
def test_lossless_formats_round_trip_through_pillow(ext, dtype, channels, photos, tmp_path):
    stack = photos[..., :channels] if channels != 4 else np.concatenate([photos, photos[..., :1]], axis=3)
    stack = stack.astype(dtype) * (257 if dtype == "uint16" else 1)
    params = {"IMWRITE_WEBP_QUALITY": 101} if ext == ".webp" else None  # > 100 is lossless WebP
    shmsave.save(stack, str(tmp_path / ("{index}" + ext)), params=params, workers=2)
    for i, image in enumerate(stack):
        decoded = np.asarray(Image.open(tmp_path / f"{i}{ext}"))
        if channels == 1:
            expected = image[..., 0]
        elif channels == 3:
            expected = image[..., ::-1]  # OpenCV writes BGR arrays as RGB files
        else:
            expected = image[..., [2, 1, 0, 3]]
        np.testing.assert_array_equal(decoded.astype(expected.dtype), expected)
