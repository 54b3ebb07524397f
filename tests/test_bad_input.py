"""Wrong requests, as a new user would make them.

Each must raise a documented exception (InvalidRequest or WriterClosed, both
ShmsaveError) whose message says what to do, before any file is written and
before any worker process starts.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

import shmsave
from shmsave import api
from shmsave.codec import writable_extensions

from .conftest import children


def _u8(*shape):
    return np.zeros(shape, np.uint8)


def _stack(dtype="uint8", n=3, channels=3):
    shape = (n, 20, 30) if channels == 1 else (n, 20, 30, channels)
    return np.zeros(shape, dtype)


def _wide(dtype, value):
    """A stack of ``dtype`` (a type the format does not hold) with one value out of every range it holds."""
    images = _stack(dtype)
    images[1, 2, 3, 0] = value
    return images


def _nan(value):
    images = np.zeros((3, 20, 30, 3), np.float32)
    images[1, 4, 5, 2] = value
    return images


def _pil():
    from PIL import Image

    return Image.new("RGB", (30, 20))


def _closed(writer):
    writer.close()
    return writer


IR, WC = shmsave.InvalidRequest, shmsave.WriterClosed

# (id, call(writer, folder), exception, key phrase of the message)
CASES = [
    # shapes
    ("one-gray-image-2d", lambda w, d: w.save(_u8(20, 30), d + "/{index}.png"), IR, "image[None]"),
    ("one-color-image-3d", lambda w, d: w.save(_u8(480, 640, 3), d + "/{index}.png"), IR, "is ambiguous"),
    ("small-color-image-3d", lambda w, d: w.save(_u8(12, 12, 3), d + "/{index}.png"), IR, "images[None]"),
    ("gray-stack-4-wide", lambda w, d: w.save(_u8(5, 20, 4), d + "/{index}.png"), IR, "images[..., None]"),
    ("pil-image", lambda w, d: w.save(_pil(), d + "/{index}.png"), IR, "np.asarray"),
    (
        "pil-image-in-list",
        lambda w, d: w.save([_pil()], d + "/{index}.png"),
        IR,
        "image 0 is a PIL.Image.Image, not a numpy array; convert it with np.asarray",
    ),
    ("webp-wider-than-16383", lambda w, d: w.save(_u8(1, 4, 16384), d + "/{index}.webp"), IR, "at most 16383 pixels"),
    ("jpeg-taller-than-65500", lambda w, d: w.save([_u8(65501, 2)], d + "/{index}.jpg"), IR, "at most 65500 pixels"),
    ("5d-array", lambda w, d: w.save(_u8(2, 3, 20, 30, 3), d + "/{index}.png"), IR, "(N, H, W, C)"),
    ("1d-array", lambda w, d: w.save(_u8(30), d + "/{index}.png"), IR, "(N, H, W) or (N, H, W, C)"),
    ("channels-first", lambda w, d: w.save(_u8(2, 3, 20, 30), d + "/{index}.png"), IR, "np.moveaxis"),
    ("zero-height", lambda w, d: w.save(_u8(3, 0, 30), d + "/{index}.png"), IR, "no pixels"),
    ("zero-width-in-list", lambda w, d: w.save([_u8(20, 30), _u8(20, 0)], d + "/{index}.png"), IR, "no pixels"),
    ("4d-image-in-list", lambda w, d: w.save([_u8(1, 20, 30, 3)], d + "/{index}.png"), IR, "(H, W) or (H, W, C)"),
    # dtypes
    ("int64-to-png", lambda w, d: w.save(_wide("int64", 70_000), d + "/{index}.png"), IR, "np.clip(images, 0, 255)"),
    (
        "int64-to-png-names-image",
        lambda w, d: w.save(_wide("int64", -1), d + "/{index}.png"),
        IR,
        "image 1 is int64 with values from -1 to 0",
    ),
    (
        "int64-to-jpg-names-range",
        lambda w, d: w.save(_wide("int64", 256), d + "/{index}.jpg"),
        IR,
        "image 1 is int64 with values from 0 to 256, which JPEG (.jpg) cannot hold",
    ),
    ("int64-to-tiff", lambda w, d: w.save(_wide("int64", 2**40), d + "/{index}.tiff"), IR, "astype(np.int32)"),
    (
        "float64-unit-to-jpg",
        lambda w, d: w.save(np.full((3, 20, 30, 3), 0.5), d + "/{index}.jpg"),
        IR,
        "* 255).round().astype(np.uint8)",
    ),
    ("float16-to-tiff", lambda w, d: w.save(_stack("float16"), d + "/{index}.tiff"), IR, "astype(np.float32)"),
    ("bool-to-png", lambda w, d: w.save(_stack("bool"), d + "/{index}.png"), IR, "astype(np.uint8) * 255"),
    ("complex-to-png", lambda w, d: w.save(_stack("complex64"), d + "/{index}.png"), IR, "Cast"),
    ("uint16-to-jpg", lambda w, d: w.save(_wide("uint16", 1000), d + "/{index}.jpg"), IR, "cannot hold"),
    ("big-endian-uint16", lambda w, d: w.save(_stack(">u2"), d + "/{index}.png"), IR, "byte order"),
    (
        "mixed-dtypes-in-list",
        lambda w, d: w.save([_u8(20, 30), np.zeros((20, 30), np.uint16)], d + "/{index}.png"),
        IR,
        "share a dtype",
    ),
    ("nan-in-float32", lambda w, d: w.save(_nan(np.nan), d + "/{index}.tiff"), IR, "np.nan_to_num"),
    ("inf-in-float32-list-pfm", lambda w, d: w.save(list(_nan(np.inf)), d + "/{index}.pfm"), IR, "NaN or infinity"),
    # channels
    ("2-channels", lambda w, d: w.save(_stack(channels=2), d + "/{index}.png"), IR, "1 (gray), 3 (BGR) or 4"),
    ("5-channels", lambda w, d: w.save(_stack(channels=5), d + "/{index}.png"), IR, "1 (gray), 3 (BGR) or 4"),
    ("4-channels-to-ppm", lambda w, d: w.save(_stack(channels=4), d + "/{index}.ppm"), IR, "takes 3"),
    ("gray-to-gif", lambda w, d: w.save(_stack(channels=1), d + "/{index}.gif"), IR, "takes 3 or 4"),
    # not arrays
    ("none", lambda w, d: w.save(None, d + "/{index}.png"), IR, "numpy array or a list of arrays"),
    (
        "generator",
        lambda w, d: w.save((im for im in _stack()), d + "/{index}.png"),
        IR,
        "numpy array or a list of arrays",
    ),
    ("nested-python-lists", lambda w, d: w.save([[[0, 1], [2, 3]]], d + "/{index}.png"), IR, "not a numpy array"),
    ("non-array-in-list", lambda w, d: w.save([_u8(20, 30), "frame.png"], d + "/{index}.png"), IR, "image 1 is a str"),
    # templates
    ("no-index", lambda w, d: w.save(_stack(), d + "/frame.png"), IR, "add one, e.g."),
    ("index-precision", lambda w, d: w.save(_stack(), d + "/{index:.1}.png"), IR, "cannot format index"),
    ("index-hides-digits", lambda w, d: w.save(_stack(n=20), d + "/{index:.0e}.png"), IR, "same path"),
    ("index-str-truncated", lambda w, d: w.save(_stack(n=12), d + "/{index!s:.1}.png"), IR, "same path"),
    ("index-digit-fill-left", lambda w, d: w.save(_stack(n=101), d + "/{index:0<3}.png"), IR, "same path"),
    ("index-fill-is-a-slash", lambda w, d: w.save(_stack(n=12), d + "/{index:/>5}.png"), IR, "path separator"),
    ("index-digit-fill-right", lambda w, d: w.save(_stack(n=12), d + "/{index:1>2}.png"), IR, "same path"),
    ("unknown-field", lambda w, d: w.save(_stack(), d + "/{frame}.png"), IR, "it may use {index}"),
    ("positional-field", lambda w, d: w.save(_stack(), d + "/{}.png"), IR, "it may use {index}"),
    ("unbalanced-brace", lambda w, d: w.save(_stack(), d + "/{index.png"), IR, "write literal braces"),
    ("empty-template", lambda w, d: w.save(_stack(), ""), IR, "non-empty string like"),
    ("bytes-template", lambda w, d: w.save(_stack(), (d + "/{index}.png").encode()), IR, "non-empty string"),
    ("nul-in-template", lambda w, d: w.save(_stack(), d + "/\0{index}.png"), IR, "NUL"),
    ("unknown-extension", lambda w, d: w.save(_stack(), d + "/{index}.xyz"), IR, "this OpenCV build writes"),
    ("no-extension", lambda w, d: w.save(_stack(), d + "/{index}"), IR, "no extension"),
    # options
    ("quality-101-jpg", lambda w, d: w.save(_stack(), d + "/{index}.jpg", quality=101), IR, "from 0 to 100"),
    ("quality-float", lambda w, d: w.save(_stack(), d + "/{index}.jpg", quality=90.5), IR, "an integer"),
    (
        "quality-on-png",
        lambda w, d: w.save(_stack(), d + "/{index}.png", quality=90),
        IR,
        "for PNG use compression=0..9",
    ),
    (
        "compression-on-jpg",
        lambda w, d: w.save(_stack(), d + "/{index}.jpg", compression=3),
        IR,
        "compression does not apply to JPEG",
    ),
    ("compression-10-png", lambda w, d: w.save(_stack(), d + "/{index}.png", compression=10), IR, "from 0 to 9"),
    (
        "params-jpeg-quality-500",
        lambda w, d: w.save(_stack(), d + "/{index}.jpg", params={cv2.IMWRITE_JPEG_QUALITY: 500}),
        IR,
        "from 0 to 100",
    ),
    (
        "params-png-compression-12",
        lambda w, d: w.save(_stack(), d + "/{index}.png", params={"PNG_COMPRESSION": 12}),
        IR,
        "from 0 to 9",
    ),
    (
        "params-png-compression-on-jpg",
        lambda w, d: w.save(_stack(), d + "/{index}.jpg", params={cv2.IMWRITE_PNG_COMPRESSION: 3}),
        IR,
        "not of JPEG",
    ),
    (
        "params-odd-length",
        lambda w, d: w.save(_stack(), d + "/{index}.png", params=[cv2.IMWRITE_PNG_COMPRESSION]),
        IR,
        "of even length",
    ),
    (
        "params-unknown-name",
        lambda w, d: w.save(_stack(), d + "/{index}.png", params={"PNG_SPEED": 1}),
        IR,
        "use a cv2.IMWRITE_* constant",
    ),
    (
        "params-value-not-int",
        lambda w, d: w.save(_stack(), d + "/{index}.png", params={"IMWRITE_PNG_STRATEGY": "fast"}),
        IR,
        "must be an integer",
    ),
    (
        "avif-8-bit-depth-10",
        lambda w, d: w.save(_stack(), d + "/{index}.avif", params={"AVIF_DEPTH": 10}),
        IR,
        "8 bits deep",
    ),
    ("avif-16-bit-no-depth", lambda w, d: w.save(_stack("uint16"), d + "/{index}.avif"), IR, "IMWRITE_AVIF_DEPTH"),
    ("negative-start", lambda w, d: w.save(_stack(), d + "/{index}.png", start=-1), IR, "non-negative integer"),
    ("float-start", lambda w, d: w.save(_stack(), d + "/{index}.png", start=1.0), IR, "non-negative integer"),
    ("errors-ignore", lambda w, d: w.save(_stack(), d + "/{index}.png", errors="ignore"), IR, "'raise' or 'collect'"),
    (
        "unknown-fields-value",
        lambda w, d: w.save(_stack(), d + "/{stem}/{index}.png", fields={"name": "a"}),
        IR,
        "it may use",
    ),
    ("submit-bad-input", lambda w, d: w.submit(_wide("int64", 70_000), d + "/{index}.png"), IR, "Cast explicitly"),
    # Writer construction and lifetime
    ("workers-0", lambda w, d: shmsave.Writer(workers=0), IR, "positive integer"),
    ("workers-negative", lambda w, d: shmsave.Writer(workers=-2), IR, "positive integer"),
    ("workers-string", lambda w, d: shmsave.Writer(workers="4"), IR, "positive integer"),
    ("engine-gpu", lambda w, d: shmsave.Writer(engine="gpu"), IR, "engine must be one of"),
    ("save-workers-0", lambda w, d: shmsave.save(_stack(), d + "/{index}.png", workers=0), IR, "positive integer"),
    (
        "closed-writer-save",
        lambda w, d: _closed(w).save(_stack(), d + "/{index}.png"),
        WC,
        "create a new shmsave.Writer()",
    ),
    ("closed-writer-submit", lambda w, d: _closed(w).submit(_stack(), d + "/{index}.png"), WC, "Writer is closed"),
    ("closed-writer-empty", lambda w, d: _closed(w).empty((2, 20, 30)), WC, "Writer is closed"),
]


# cases about a format that older OpenCV builds do not write at all (4.6: no GIF, no AVIF)
_NEEDS_FORMAT = {"gray-to-gif": ".gif", "avif-16-bit-no-depth": ".avif", "avif-8-bit-depth-10": ".avif"}


def _case(name, *rest):
    ext = _NEEDS_FORMAT.get(name)
    marks = [
        pytest.mark.skipif(
            ext is not None and ext not in writable_extensions(), reason=f"this OpenCV build does not write {ext}"
        )
    ]
    return pytest.param(*rest, id=name, marks=marks)


@pytest.mark.parametrize("call, exception, phrase", [_case(*case) for case in CASES])
def test_bad_request_is_refused_before_anything_happens(call, exception, phrase, tmp_path):
    folder = str(tmp_path / "out")
    before = children()
    with shmsave.Writer(workers=2, engine="process") as writer:
        with pytest.raises(exception) as info:
            call(writer, folder)
        assert isinstance(info.value, shmsave.ShmsaveError)
        assert phrase in str(info.value), f"the message should say {phrase!r}: {info.value}"
        assert writer.pids == [], "no worker may start for a bad request"
        assert api._shared is None or api._shared.pids == []
        assert children() == before, "no process may start for a bad request"
    assert not os.path.exists(folder), "nothing may be written for a bad request"
    assert os.listdir(tmp_path) == []


def test_bad_request_leaves_existing_files_alone(tmp_path):
    (tmp_path / "0.png").write_bytes(b"keep")
    with shmsave.Writer(2, engine="process") as writer:
        with pytest.raises(shmsave.InvalidRequest):
            writer.save(_wide("int64", -7), str(tmp_path / "{index}.png"))
        assert writer.pids == []
    assert os.listdir(tmp_path) == ["0.png"] and (tmp_path / "0.png").read_bytes() == b"keep"


def test_a_list_is_refused_at_its_first_bad_image(tmp_path):
    """A list's checks run once per shape (a list of 10,000 crops has few), and NaN is still looked
    for in every image: the message names the first image that fails, as an image-by-image check would."""
    gray, odd = np.zeros((20, 30), np.uint8), np.zeros((20, 30, 2), np.uint8)
    with pytest.raises(shmsave.InvalidRequest, match="^image 3 has 2 channels"):
        shmsave.save([gray, gray, gray[:10], odd, gray, odd], tmp_path / "{index}.png")
    floats = [np.zeros((20, 30), np.float32) for _ in range(5)]
    floats[3][4, 5] = np.nan
    with pytest.raises(shmsave.InvalidRequest, match="^image 3 contains NaN"):
        shmsave.save(floats, tmp_path / "{index}.tiff")
    assert os.listdir(tmp_path) == []


def test_a_bad_workers_value_does_not_break_later_saves(tmp_path):
    """shmsave.save(..., workers=0) refuses; the next shmsave.save still works."""
    images = _u8(2, 20, 30)
    assert shmsave.save(images, str(tmp_path / "a" / "{index}.png"), workers=1).count == 2
    with pytest.raises(shmsave.InvalidRequest):
        shmsave.save(images, str(tmp_path / "b" / "{index}.png"), workers=0)
    assert shmsave.save(images, str(tmp_path / "c" / "{index}.png")).count == 2
    assert not os.path.exists(tmp_path / "b")


def test_a_good_request_after_bad_ones_works(tmp_path):
    with shmsave.Writer(2, engine="process") as writer:
        for bad in (_wide("int64", -7), _stack(channels=2), None):
            with pytest.raises(shmsave.InvalidRequest):
                writer.save(bad, str(tmp_path / "{index}.png"))
        report = writer.save(_stack(), str(tmp_path / "{index}.png"))
    assert report.count == 3 and sorted(os.listdir(tmp_path)) == ["0.png", "1.png", "2.png"]


def test_more_than_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize(
    "dtype, low, high, ext, narrowest",
    [
        ("int64", 0, 255, ".jpg", "uint8"),
        ("int64", 0, 256, ".png", "uint16"),
        ("int16", 0, 255, ".png", "uint8"),
        ("uint64", 0, 65535, ".png", "uint16"),
        ("int8", -1, 5, ".tiff", "int8"),
        ("int64", -300, 5, ".tiff", "int16"),
        ("int64", 0, 2**31 - 1, ".tiff", "int32"),
    ],
)
def test_integer_stacks_are_cast_to_the_narrowest_type_that_holds_them(dtype, low, high, ext, narrowest, tmp_path):
    """The one-pass check of non-negative stacks and the exact check of the others choose alike."""
    images = np.zeros((3, 4, 5), dtype)
    images[1, 0, 0], images[2, 3, 4] = low, high
    with shmsave.Writer(2, engine="thread") as writer:
        writer.save(images, str(tmp_path / "{index}" / f"a{ext}"))
    for index, image in enumerate(images):
        cv2.imwrite(str(tmp_path / f"{index}{ext}"), image.astype(narrowest))
        assert (tmp_path / str(index) / f"a{ext}").read_bytes() == (tmp_path / f"{index}{ext}").read_bytes()
