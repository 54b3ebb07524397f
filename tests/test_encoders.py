"""encoder="fast": the same pixels on decode as OpenCV's files, the fallback, the extra, every engine."""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

import shmsave
from shmsave import InvalidRequest
from shmsave._fast import encoder_for, missing_packages
from shmsave.cli import main

needs_fast = pytest.mark.skipif(bool(missing_packages()), reason="the fast extra is not installed")

_INTEGERS = ("uint8", "int8", "uint16", "int16", "int32")
# (extension, options) x dtype x channels the fast encoder claims; channels 0 means 2-D images
_CLAIMED = (
    [(".png", {}, dtype, channels) for dtype in ("uint8", "uint16") for channels in (0, 1, 3, 4)]
    + [(".webp", options, "uint8", channels) for options in ({}, {"quality": 101}) for channels in (0, 1, 3, 4)]
    + [
        (ext, {}, dtype, channels)
        for ext, dtype, channels in itertools.product(
            (".tif", ".tiff"), (*_INTEGERS, "float32", "float64"), (0, 1, 3, 4)
        )
    ]
    + [(".tiff", {"compression": code}, dtype, 3) for code in (1, 8, 32946) for dtype in ("uint16", "float32")]
    + [(".png", {"compression": level}, "uint8", 3) for level in range(10)]
)


def _images(dtype: str, channels: int, count: int = 3, seed: int = 0) -> np.ndarray:
    """Noise over the whole range of ``dtype`` (every bit matters), a smooth gradient on top."""
    rng = np.random.default_rng(seed)
    shape = (count, 37, 53) + ((channels,) if channels else ())
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype) * 1000
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _read(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def _flags(ext: str, options: dict) -> list[int]:
    if "quality" in options:
        return [cv2.IMWRITE_WEBP_QUALITY, options["quality"]]
    if "compression" in options:
        return [cv2.IMWRITE_PNG_COMPRESSION if ext == ".png" else cv2.IMWRITE_TIFF_COMPRESSION, options["compression"]]
    return []


def _opencv_decode(image: np.ndarray, ext: str, options: dict) -> np.ndarray:
    """What a reader gets back from OpenCV's own file of ``image``."""
    ok, data = cv2.imencode(ext, image, _flags(ext, options))
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def _decoded(image: np.ndarray, ext: str) -> np.ndarray:
    """What a lossless file of ``image`` decodes to: the image (gray as 2-D), but WebP holds no gray
    (3 equal channels come back, from OpenCV's file too)."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if ext == ".webp" and image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image


@needs_fast
@pytest.mark.parametrize(("ext", "options", "dtype", "channels"), _CLAIMED, ids=str)
def test_fast_files_decode_to_the_input_pixels(tmp_path, ext, options, dtype, channels):
    images = _images(dtype, channels)
    with shmsave.Writer(workers=2, engine="thread") as writer:
        report = writer.save(images, str(tmp_path / f"{{index}}{ext}"), encoder="fast", **options)
    assert report.encoder == "fast" and report.count == len(images)
    encode = encoder_for(ext, tuple(_flags(ext, options)))
    for i, image in enumerate(images):
        path = str(tmp_path / f"{i}{ext}")
        with open(path, "rb") as file:  # written by the fast encoder
            assert file.read() == encode(image).tobytes()
        back, expected = _read(path), _decoded(image, ext)
        assert back.dtype == expected.dtype and back.shape == expected.shape
        assert np.array_equal(back, expected)  # OpenCV's own file does not always (4-channel WebP, see below)


@needs_fast
def test_fast_webp_keeps_the_colour_of_transparent_pixels(tmp_path):
    """libwebp's lossless encoder as OpenCV calls it drops the colour under alpha 0; the fast one keeps it."""
    images = _images("uint8", 4)
    images[..., 3] = np.where(images[..., 3] < 128, 0, 255)
    shmsave.save(images, str(tmp_path / "{index}.webp"), encoder="fast", workers=1)
    for i, image in enumerate(images):
        assert np.array_equal(_read(str(tmp_path / f"{i}.webp")), image)
    assert not np.array_equal(_opencv_decode(images[0], ".webp", {}), images[0])


@needs_fast
@pytest.mark.parametrize(
    ("ext", "options", "dtype"),
    [
        (".jpg", {"quality": 90}, "uint8"),
        (".webp", {"quality": 90}, "uint8"),  # lossy WebP
        (".bmp", {}, "uint8"),
        (".tiff", {"compression": 5}, "uint16"),  # LZW, asked for by name
        (".pgm", {}, "uint16"),
        (".jpg", {"params": {cv2.IMWRITE_JPEG_PROGRESSIVE: 1}}, "uint8"),  # OpenCV writes it: its params apply
    ],
    ids=str,
)
def test_formats_without_a_faster_lossless_encoder_fall_back_to_opencv(tmp_path, ext, options, dtype):
    images = _images(dtype, 1 if ext == ".pgm" else 3)
    with shmsave.Writer(workers=2, engine="thread") as writer:
        report = writer.save(images, str(tmp_path / f"{{index}}{ext}"), encoder="fast", **options)
    assert report.encoder == "opencv"
    flags = (
        [cv2.IMWRITE_JPEG_QUALITY if ext == ".jpg" else cv2.IMWRITE_WEBP_QUALITY, 90] if "quality" in options else []
    )
    flags += [cv2.IMWRITE_TIFF_COMPRESSION, 5] if "compression" in options else []
    flags += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if "params" in options else []
    for i, image in enumerate(images):
        with open(tmp_path / f"{i}{ext}", "rb") as file:
            assert file.read() == cv2.imencode(ext, image, flags)[1].tobytes()


def test_opencv_stays_the_default_and_says_so(tmp_path, photos):
    report = shmsave.save(photos, str(tmp_path / "{index}.png"), workers=1)
    assert report.encoder == "opencv" and "encoder" not in str(report)
    with open(tmp_path / "0.png", "rb") as file:
        assert file.read() == cv2.imencode(".png", photos[0])[1].tobytes()


@pytest.mark.parametrize("blocked", ["isal", "imagecodecs"])
def test_without_the_extra_fast_is_refused_before_anything_is_written(tmp_path, monkeypatch, photos, blocked):
    monkeypatch.setitem(sys.modules, blocked, None)  # as if not installed: import and find_spec fail
    out = tmp_path / "out"
    with shmsave.Writer(workers=2) as writer:
        for call in (
            lambda: writer.save(photos, str(out / "{index}.png"), encoder="fast"),
            lambda: writer.save(photos, str(out / "{index}.jpg"), encoder="fast"),  # refused alike, any format
            lambda: writer.submit(photos, str(out / "{index}.tiff"), encoder="fast"),
            lambda: writer.stream(str(out / "{index}.png"), encoder="fast"),
        ):
            with pytest.raises(InvalidRequest, match=r'pip install "shmsave\[fast\]"') as caught:
                call()
            assert blocked in str(caught.value)
    assert not out.exists()


def test_the_command_refuses_fast_without_the_extra(tmp_path, monkeypatch, capsys, photos):
    monkeypatch.setitem(sys.modules, "isal", None)
    np.save(tmp_path / "in.npy", photos)
    code = main([str(tmp_path / "in.npy"), "-o", str(tmp_path / "out" / "{index}.png"), "--encoder", "fast"])
    assert code == 2
    assert 'pip install "shmsave[fast]"' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@needs_fast
@pytest.mark.parametrize("engine", ["inline", "thread", "process", "hybrid"])
def test_every_engine_writes_the_fast_encoders_bytes(tmp_path, engine, photos):
    images = np.concatenate([photos] * 4)
    with shmsave.Writer(workers=2, engine=engine) as writer:
        report = writer.save(images, str(tmp_path / "{index}.png"), encoder="fast", rgb=True)
    assert report.encoder == "fast" and report.engine == engine
    encode = encoder_for(".png", ())
    for i, image in enumerate(images):
        with open(tmp_path / f"{i}.png", "rb") as file:
            assert file.read() == encode(image[..., ::-1]).tobytes()
        assert np.array_equal(_read(str(tmp_path / f"{i}.png")), image[..., ::-1])  # rgb=True: stored as RGB


@needs_fast
@pytest.mark.parametrize("engine", ["thread", "process"])
def test_streams_and_submit_use_the_fast_encoder(tmp_path, engine):
    images = _images("uint16", 0, count=6)
    encode = encoder_for(".tiff", ())
    with shmsave.Writer(workers=2, engine=engine) as writer:
        with writer.stream(str(tmp_path / "s{index}.tiff"), encoder="fast") as stream:
            for image in images:
                stream.write(image)
        submitted = writer.submit(images, str(tmp_path / "f{index}.tiff"), encoder="fast").result()
    assert stream.report.encoder == submitted.encoder == "fast"
    for i, image in enumerate(images):
        for prefix in "sf":
            with open(tmp_path / f"{prefix}{i}.tiff", "rb") as file:
                assert file.read() == encode(image).tobytes()


@needs_fast
@pytest.mark.parametrize("engine", ["thread", "process"])
def test_a_call_of_several_formats_takes_the_fast_encoder_where_it_covers_the_format(tmp_path, engine, photos):
    paths = [str(tmp_path / f"{i}{ext}") for i, ext in enumerate([".png", ".jpg", ".webp", ".png", ".bmp"] * 2)]
    images = np.concatenate([photos, photos[:2]])
    with shmsave.Writer(workers=2, engine=engine) as writer:
        report = writer.save(images, paths, encoder="fast", quality=90)
    assert report.count == 10 and report.encoder == "fast"
    for path, image in zip(paths, images):
        ext = os.path.splitext(path)[1]
        if ext == ".png":  # fast; lossy WebP (quality 90) and the rest stay OpenCV's bytes
            expected = encoder_for(".png", ())(image)
        else:
            flags = {".jpg": [cv2.IMWRITE_JPEG_QUALITY, 90], ".webp": [cv2.IMWRITE_WEBP_QUALITY, 90]}.get(ext, [])
            expected = cv2.imencode(ext, image, flags)[1]
        with open(path, "rb") as file:
            assert file.read() == expected.tobytes(), path


def test_images_that_bring_their_own_paths_refuse_fast(tmp_path):
    with shmsave.Writer(workers=2) as writer, pytest.raises(InvalidRequest, match="goes with a path template"):
        writer.stream(None, encoder="fast")


@needs_fast
def test_integers_cast_for_the_format_go_through_the_fast_encoder(tmp_path):
    images = np.arange(2 * 40 * 30, dtype=np.int64).reshape(2, 40, 30) % 60000  # fits uint16
    report = shmsave.save(images, str(tmp_path / "{index}.png"), encoder="fast", workers=1)
    assert report.encoder == "fast"
    back = _read(str(tmp_path / "1.png"))
    assert back.dtype == np.uint16 and np.array_equal(back, images[1])


@needs_fast
def test_png_compression_levels_map_and_raw_params_are_refused(tmp_path, photos):
    sizes = []
    for level in (0, 9):
        shmsave.save(photos, str(tmp_path / f"{level}-{{index}}.png"), encoder="fast", compression=level, workers=1)
        sizes.append(sum(os.path.getsize(tmp_path / f"{level}-{i}.png") for i in range(len(photos))))
    assert sizes[1] < sizes[0]  # 9 compresses harder than 0
    for params in ({cv2.IMWRITE_PNG_COMPRESSION: 3}, {"PNG_STRATEGY": 1}):
        with pytest.raises(InvalidRequest, match="params are OpenCV's flags, and encoder='fast'"):
            shmsave.save(photos, str(tmp_path / "p{index}.png"), encoder="fast", params=params)
    with pytest.raises(InvalidRequest, match="compression for PNG must be an integer from 0 to 9"):
        shmsave.save(photos, str(tmp_path / "p{index}.png"), encoder="fast", compression=10)
    with pytest.raises(InvalidRequest, match="encoder must be 'opencv' or 'fast', got 'fpng'"):
        shmsave.save(photos, str(tmp_path / "p{index}.png"), encoder="fpng")
    assert not list(tmp_path.glob("p*"))


@needs_fast
def test_the_report_names_the_encoder_and_pickles(tmp_path, photos):
    report = shmsave.save(photos, str(tmp_path / "{index}.png"), encoder="fast", workers=1)
    assert "fast encoder" in str(report) and "encoder='fast'" in repr(report)
    assert pickle.loads(pickle.dumps(report)) == report


@needs_fast
def test_the_command_takes_encoder_fast(tmp_path, capsys):
    images = _images("uint16", 0, count=5)
    np.save(tmp_path / "in.npy", images)
    code = main([str(tmp_path / "in.npy"), "-o", str(tmp_path / "out" / "{index}.png"), "--encoder", "fast", "-q"])
    assert code == 0
    encode = encoder_for(".png", ())
    for i, image in enumerate(images):
        with open(tmp_path / "out" / f"{i}.png", "rb") as file:
            assert file.read() == encode(image).tobytes()
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "in.npy"), "-o", str(tmp_path / "x{index}.png"), "--encoder", "fpng"])
    assert exit_.value.code == 2 and "invalid choice: 'fpng'" in capsys.readouterr().err


@needs_fast
@pytest.mark.slow
@pytest.mark.parametrize("ext", [".png", ".tiff", ".webp"])
def test_the_fast_encoders_release_the_gil(ext):
    """While one thread encodes a big image, this thread keeps running (a GIL held through the
    encode would stop it: fpng, measured, let it run 3 times in 0.77 s)."""
    rng = np.random.default_rng(0)
    side = 2048 if ext == ".webp" else 4096
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    encode = encoder_for(ext, ())
    done = threading.Event()
    thread = threading.Thread(target=lambda: (encode(image), done.set()))
    ticks = 0
    thread.start()
    began = time.monotonic()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    thread.join()
    elapsed = time.monotonic() - began
    assert ticks >= min(20, elapsed / 0.01), f"{ticks} turns of this thread in {elapsed:.2f} s of encoding"


@needs_fast
def test_worker_processes_load_the_extra_only_for_a_fast_task(tmp_path, photos):
    def loaded(pid: int) -> set[str]:
        with open(f"/proc/{pid}/maps") as maps:
            return {name for name in ("isal", "imagecodecs") for line in maps if f"/{name}" in line}

    with shmsave.Writer(workers=2, engine="process") as writer:
        writer.start()
        writer.save(photos, str(tmp_path / "{index}.png"))
        writer.save(photos, str(tmp_path / "{index}.jpg"), encoder="fast")  # falls back to OpenCV
        assert [loaded(pid) for pid in writer.pids] == [set(), set()]
        writer.save(np.concatenate([photos] * 8), str(tmp_path / "{index}.png"), encoder="fast")
        assert {"isal"} <= set().union(*(loaded(pid) for pid in writer.pids))


def test_opencv_saves_do_not_import_the_extra(tmp_path):
    script = f"""
import sys, numpy as np, shmsave
images = np.zeros((4, 64, 64, 3), np.uint8)
with shmsave.Writer(workers=2, engine="thread") as w:
    w.save(images, {str(tmp_path)!r} + "/{{index}}.png")
print(sorted(name for name in ("isal", "imagecodecs") if name in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@needs_fast
def test_dask_save_takes_encoder_fast(tmp_path):
    da = pytest.importorskip("dask.array", reason="the dask extra is not installed")
    import shmsave.dask

    images = _images("uint16", 0, count=6)
    report = shmsave.dask.save(da.from_array(images, chunks=3), str(tmp_path / "{index}.png"), encoder="fast")
    assert report.encoder == "fast" and report.count == len(images)
    encode = encoder_for(".png", ())
    for i, image in enumerate(images):
        with open(tmp_path / f"{i}.png", "rb") as file:
            assert file.read() == encode(image).tobytes()


@needs_fast
def test_an_empty_request_reports_the_encoder_it_would_have_used(tmp_path):
    empty = np.zeros((0, 8, 8), np.uint8)
    assert shmsave.save(empty, str(tmp_path / "{index}.png"), encoder="fast").encoder == "fast"
    assert shmsave.save(empty, str(tmp_path / "{index}.jpg"), encoder="fast").encoder == "opencv"
