"""The public API: save(), Writer, Report, templates, options, zero copy, and where it runs."""

from __future__ import annotations

import copy
import dataclasses
import gc
import mmap
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from multiprocessing import connection

import cv2
import numpy as np
import psutil
import pytest

import shmsave
from shmsave import _staging
from shmsave._plan import usable_cpus

from .conftest import children, shmsave_segments, wait_until


def read(path) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def imencode(image, ext=".png", params=()) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok
    return data.tobytes()


# -- the basic contract ------------------------------------------------------


def test_save_writes_one_file_per_image_and_reports(photos, tmp_path, writer):
    report = writer.save(photos, str(tmp_path / "out" / "{index:03d}.png"))
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == [f"{i:03d}.png" for i in range(len(photos))]
    assert report.count == len(photos) and report.failed == () and report.skipped == 0
    assert report.bytes == sum(os.path.getsize(tmp_path / "out" / n) for n in names)
    assert report.seconds > 0 and report.images_per_second == pytest.approx(report.count / report.seconds)
    assert report.engine == writer.engine


def test_start_offsets_the_index_and_folders_in_the_template_are_created(photos, tmp_path):
    shmsave.save(photos, str(tmp_path / "{index:02d}" / "frame_{index}.jpg"), start=10)
    for i in range(len(photos)):
        assert read(tmp_path / f"{10 + i:02d}" / f"frame_{10 + i}.jpg") == imencode(photos[i], ".jpg")


@pytest.mark.parametrize(
    "template, fields",
    [
        ("{index:06d}.png", {}),
        ("img_{index}.png", {}),
        ("{cam}_{index:>4}.png", {"cam": "left"}),
        ("{{x}}{index:x}.png", {}),
        ("{cam!r}-{index:+d}.png", {"cam": "c"}),
        ("{index}_{index:03d}.png", {}),
        ("{n:03d}/{index:04}.png", {"n": 7}),
        ("{index:{width}}.png", {"width": 5}),
    ],
)
def test_file_names_are_what_str_format_gives(template, fields, photos, tmp_path, writer):
    writer.save(photos[:3], str(tmp_path / template), start=8, fields=fields)
    expected = {template.format(index=i, **fields) for i in range(8, 11)}
    found = {
        os.path.relpath(os.path.join(root, name), tmp_path) for root, _, names in os.walk(tmp_path) for name in names
    }
    assert found == expected


def test_a_single_image_may_use_a_template_without_index(photos, tmp_path):
    shmsave.save(photos[:1], str(tmp_path / "cover.png"))
    assert read(tmp_path / "cover.png") == imencode(photos[0])


def test_empty_batch_is_a_no_op(tmp_path):
    report = shmsave.save(np.zeros((0, 8, 8), np.uint8), str(tmp_path / "x" / "{index}.png"))
    assert report.count == 0 and report.bytes == 0 and not (tmp_path / "x").exists()
    assert shmsave.save([], str(tmp_path / "{index}.png")).count == 0


@pytest.mark.parametrize(
    "ext, options, flags",
    [
        (".jpg", {"quality": 37}, [cv2.IMWRITE_JPEG_QUALITY, 37]),
        (".webp", {"quality": 55}, [cv2.IMWRITE_WEBP_QUALITY, 55]),
        (".png", {"compression": 9}, [cv2.IMWRITE_PNG_COMPRESSION, 9]),
        (".jp2", {"quality": 20}, [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, 200]),
        (
            ".png",
            {"params": {"IMWRITE_PNG_STRATEGY": cv2.IMWRITE_PNG_STRATEGY_RLE}},
            [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE],
        ),
        (".jpg", {"params": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]}, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    ],
)
def test_options_map_to_the_formats_opencv_flags(ext, options, flags, photos, tmp_path):
    shmsave.save(photos, str(tmp_path / ("{index}" + ext)), **options)
    for i, image in enumerate(photos):
        assert read(tmp_path / f"{i}{ext}") == imencode(image, ext, flags)


def test_options_change_the_output(photos, tmp_path):
    shmsave.save(photos[:1], str(tmp_path / "a.jpg"), quality=10)
    shmsave.save(photos[:1], str(tmp_path / "b.jpg"), quality=95)
    assert os.path.getsize(tmp_path / "a.jpg") < os.path.getsize(tmp_path / "b.jpg")


@pytest.mark.parametrize("channels, code", [(3, cv2.COLOR_RGB2BGR), (4, cv2.COLOR_RGBA2BGRA)])
def test_rgb_input_is_converted_to_opencv_order(channels, code, photos, tmp_path, writer):
    rgb = photos if channels == 3 else np.concatenate([photos, photos[..., :1]], axis=3)
    writer.save(rgb, str(tmp_path / "{index}.png"), rgb=True)
    for i, image in enumerate(rgb):
        assert read(tmp_path / f"{i}.png") == imencode(cv2.cvtColor(image, code))
        assert read(tmp_path / f"{i}.png") != imencode(image)


def test_gray_stacks_with_and_without_channel_axis(photos, tmp_path, writer):
    gray = np.ascontiguousarray(photos[..., 1])
    writer.save(gray, str(tmp_path / "a{index}.png"))
    writer.save(gray[..., None], str(tmp_path / "b{index}.png"))
    for i, image in enumerate(gray):
        assert read(tmp_path / f"a{i}.png") == read(tmp_path / f"b{i}.png") == imencode(image)


def test_non_contiguous_input(photos, tmp_path, writer):
    big = np.concatenate([photos, photos[:, ::-1]], axis=0)
    view = big[::3, 5:-3:2, ::-1, ::-1]  # strided, reversed, channel-reversed
    assert not view.flags.c_contiguous
    writer.save(view, str(tmp_path / "{index}.png"))
    for i, image in enumerate(view):
        assert read(tmp_path / f"{i}.png") == imencode(np.ascontiguousarray(image))


def test_list_of_different_sizes_and_channels(rng, tmp_path, writer):
    images = [
        rng.integers(0, 255, (h, w, c), np.uint8)
        for h, w, c in [(10, 20, 3), (300, 17, 1), (5, 5, 4), (64, 64, 3), (1, 1, 3)]
    ]
    images.append(rng.integers(0, 255, (33, 44), np.uint8))
    report = writer.save(images, str(tmp_path / "{index}.png"))
    assert report.count == len(images)
    for i, image in enumerate(images):
        assert read(tmp_path / f"{i}.png") == imencode(image)


def test_overwrite_false_skips_existing_files_and_says_how_many(photos, tmp_path):
    template = str(tmp_path / "{index}.png")
    shmsave.save(photos, template)
    os.remove(tmp_path / "2.png")
    (tmp_path / "5.png").write_bytes(b"keep me")
    report = shmsave.save(photos, template, overwrite=False)
    assert report.count == 1 and report.skipped == len(photos) - 1
    assert read(tmp_path / "2.png") == imencode(photos[2])
    assert read(tmp_path / "5.png") == b"keep me"
    assert "skipped" in str(report)


def test_overwrite_replaces_existing_files(photos, tmp_path):
    (tmp_path / "0.png").write_bytes(b"old")
    shmsave.save(photos[:2], str(tmp_path / "{index}.png"))
    assert read(tmp_path / "0.png") == imencode(photos[0])


def test_overwrite_false_rewrites_empty_files(photos, tmp_path):
    """An empty file is what a process killed between open() and write() leaves: not an image."""
    template = str(tmp_path / "{index}.png")
    (tmp_path / "1.png").write_bytes(b"")
    (tmp_path / "2.png").write_bytes(b"keep me")
    report = shmsave.save(photos[:3], template, overwrite=False)
    assert report.count == 2 and report.skipped == 1
    assert read(tmp_path / "1.png") == imencode(photos[1])
    assert read(tmp_path / "2.png") == b"keep me"


def test_small_files_are_written_whole_and_replace_old_ones(tmp_path, writer):
    """Files of up to a page are written under their final name with one write()."""
    y, x = np.mgrid[0:24, 0:24]
    small = np.stack([(x * i + y) % 256 for i in range(1, 9)]).astype(np.uint8)
    assert all(len(imencode(image, ".jpg")) <= mmap.PAGESIZE for image in small)
    template = str(tmp_path / "{index}.jpg")
    (tmp_path / "0.jpg").write_bytes(b"x" * 100_000)  # longer than what replaces it
    writer.save(small[:4], template)
    writer.save(small[4:], template)
    assert sorted(os.listdir(tmp_path)) == [f"{i}.jpg" for i in range(4)]
    for i in range(4):
        assert read(tmp_path / f"{i}.jpg") == imencode(small[4 + i], ".jpg")


def test_errors_collect_reports_each_failure_with_index_and_path(photos, tmp_path, writer):
    os.makedirs(tmp_path / "3.png")  # a folder where image 3 should go
    report = writer.save(photos, str(tmp_path / "{index}.png"), errors="collect")
    assert report.count == len(photos) - 1
    [failure] = report.failed
    assert failure.index == 3 and failure.path == str(tmp_path / "3.png") and "EISDIR" in failure.message


def test_errors_raise_names_the_index_and_path(photos, tmp_path, writer):
    os.makedirs(tmp_path / "3.png")
    with pytest.raises(shmsave.WriteFailed) as caught:
        writer.save(photos, str(tmp_path / "{index}.png"))
    assert caught.value.index == 3 and caught.value.filename == str(tmp_path / "3.png")
    assert "image 3" in str(caught.value) and isinstance(caught.value, OSError)


# -- workers, engines, reuse -----------------------------------------------------


def test_workers_default_to_usable_cpus():
    with shmsave.Writer() as writer:
        assert writer.workers == usable_cpus() == len(os.sched_getaffinity(0))


def test_usable_cpus_respects_cpu_affinity():
    code = "import os; os.sched_setaffinity(0, {0}); from shmsave._plan import usable_cpus; print(usable_cpus())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_writer_reuses_its_worker_processes(photos, tmp_path):
    with shmsave.Writer(workers=2, engine="process") as writer:
        writer.save(photos, str(tmp_path / "a{index}.png"))
        pids = writer.pids
        assert len(pids) == 2 and set(pids) <= children()
        writer.save(photos, str(tmp_path / "b{index}.png"))
        assert writer.pids == pids
    assert not set(pids) & children()


def test_one_shot_save_reuses_the_shared_writer(tmp_path, rng):
    stack = rng.integers(0, 255, (64, 32, 32), np.uint8)
    shmsave.save(stack, str(tmp_path / "a{index}.png"), workers=2)
    first = shmsave.api._shared
    shmsave.save(stack, str(tmp_path / "b{index}.png"), workers=2)
    assert shmsave.api._shared is first


def test_auto_engine_keeps_tiny_batches_in_process(tmp_path, rng):
    with shmsave.Writer(workers=2) as writer:
        report = writer.save(rng.integers(0, 255, (100, 50, 50, 1), np.uint8), str(tmp_path / "{index}.jpg"))
        assert report.engine == "inline" and writer.pids == []
        report = writer.save(rng.integers(0, 255, (20, 160, 160, 3), np.uint8), str(tmp_path / "{index}.jpg"))
        assert report.engine == "thread" and writer.pids == []  # big images: threads encode in parallel
        report = writer.save(rng.integers(0, 255, (15000, 50, 50, 1), np.uint8), str(tmp_path / "{index}.jpg"))
        assert report.engine == "thread"  # tiny ones too, while processes do not run (2 cores) ...
        assert len(writer.pids) == 2  # ... but a second such call starts them for the calls to come
        writer.start()
        report = writer.save(rng.integers(0, 255, (100, 50, 50, 1), np.uint8), str(tmp_path / "{index}.jpg"))
        assert report.engine == "process"  # once running, the workers take everything but trifles
        report = writer.save(rng.integers(0, 255, (20, 160, 160, 3), np.uint8), str(tmp_path / "{index}.jpg"))
        assert report.engine == "thread"  # except big images: threads need no copy


def test_inline_engine_tells_progress_while_it_runs(tmp_path, rng):
    images = rng.integers(0, 256, (3000, 8, 8), np.uint8)
    told = []
    with shmsave.Writer(2, engine="inline") as writer:
        writer.save(images, str(tmp_path / "{index}.png"), progress=told.append)
    assert sum(told) == 3000
    assert len(told) > 2, "progress came only at the end"


def test_report_and_failure_are_frozen_dataclasses():
    failure = shmsave.Failure(4, "out/4.png", "No space left on device", 28)
    report = shmsave.Report(9, 1234, 0.5, (failure,), skipped=1, engine="thread", workers=2)
    assert dataclasses.is_dataclass(report)
    assert [field.name for field in dataclasses.fields(shmsave.Failure)] == ["index", "path", "message", "errno"]
    as_dict = {"index": 4, "path": "out/4.png", "message": failure.message, "errno": 28}
    assert dataclasses.asdict(report)["failed"] == (as_dict,)
    changed = dataclasses.replace(report, skipped=3)
    assert (changed.skipped, changed.count, report.skipped) == (3, 9, 1)
    assert report == pickle.loads(pickle.dumps(report)) == copy.deepcopy(report) and report != changed
    assert hash(report) == hash(dataclasses.replace(report)) and len({report, dataclasses.replace(report)}) == 1
    assert report != (9, 1234, 0.5) and shmsave.Failure(1, "a", "m") == shmsave.Failure(1, "a", "m", None)
    assert repr(failure) == "Failure(index=4, path='out/4.png', message='No space left on device', errno=28)"
    assert repr(shmsave.Report(1, 2, 0.25)) == (
        "Report(count=1, bytes=2, seconds=0.25, failed=(), skipped=0, engine='inline', workers=1, encoder='opencv')"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.count = 10  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del failure.path  # type: ignore[misc]
    assert report.count == 9 and failure.path == "out/4.png"


def test_submit_returns_a_future_of_the_report(photos, tmp_path):
    with shmsave.Writer(workers=2, engine="process") as writer:
        futures = [writer.submit(photos, str(tmp_path / f"run{r}" / "{index}.png")) for r in range(3)]
        reports = [future.result(timeout=60) for future in futures]
    assert [r.count for r in reports] == [len(photos)] * 3
    assert read(tmp_path / "run2" / "7.png") == imencode(photos[7])


def test_submit_checks_the_request_at_once(photos, tmp_path):
    with shmsave.Writer(workers=2) as writer:
        with pytest.raises(shmsave.InvalidRequest):
            writer.submit(photos, str(tmp_path / "{index}.nope"))


def test_calls_after_close_raise_writer_closed(photos, tmp_path):
    writer = shmsave.Writer(workers=1)
    writer.close()
    writer.close()  # idempotent
    for call in (lambda: writer.save(photos, str(tmp_path / "{index}.png")), lambda: writer.empty((2, 2))):
        with pytest.raises(shmsave.WriterClosed, match="closed"):
            call()


# -- pixels never travel through pickling ------------------------------------------


@pytest.fixture
def sent_sizes(monkeypatch):
    """Sizes of every message the parent sends to a worker."""
    sizes = []
    original = connection.Connection._send_bytes

    def record(self, buf):
        sizes.append(len(buf))
        return original(self, buf)

    monkeypatch.setattr(connection.Connection, "_send_bytes", record)
    return sizes


@pytest.mark.parametrize("as_list", [False, True], ids=["stack", "list"])
def test_no_pixels_cross_the_pipe(as_list, sent_sizes, tmp_path, rng):
    stack = rng.integers(0, 255, (400, 128, 128, 3), np.uint8)  # 19.7 MB
    images = list(stack) if as_list else stack
    with shmsave.Writer(workers=2, engine="process") as writer:
        report = writer.save(images, str(tmp_path / "{index}.bmp"))
    assert report.count == 400
    assert sent_sizes, "the parent sent the workers no tasks"
    assert max(sent_sizes) < 16 * 1024 and sum(sent_sizes) < stack.nbytes / 200


def test_a_list_of_one_shape_reaches_the_workers_as_stacks(tmp_path, rng, monkeypatch):
    """A list's images of one shape, staged one after another, go to a worker as one strided stack
    per task (one view, not one array per image); a list of mixed shapes as entries."""
    from shmsave._protocol import ListSource, StackSource

    sources = []
    packed = _staging.packed_source
    monkeypatch.setattr(_staging, "packed_source", lambda *args: sources.append(packed(*args)) or sources[-1])
    frame = rng.integers(0, 255, (300, 400, 3), np.uint8)
    crops = [frame[i : i + 20, i : i + 30] for i in range(200)]  # views, not C-contiguous
    mixed = [frame[: 10 + i % 3, :12] for i in range(60)]
    with shmsave.Writer(workers=2, engine="process") as writer:
        writer.save(crops, tmp_path / "c" / "{index}.png")
        of_crops = len(sources)
        writer.save(mixed, tmp_path / "m" / "{index}.png")
    assert all(isinstance(source, StackSource) for source in sources[:of_crops])
    assert {(source.shape[1:], source.strides) for source in sources[:of_crops]} == {((20, 30, 3), (1856, 90, 3, 1))}
    assert sum(source.shape[0] for source in sources[:of_crops]) == 200
    assert sources[of_crops:] and all(isinstance(source, ListSource) for source in sources[of_crops:])
    for folder, images in (("c", crops), ("m", mixed)):
        for i, image in enumerate(images):
            assert read(tmp_path / folder / f"{i}.png") == imencode(image), (folder, i)


def test_arrays_from_empty_are_saved_without_a_copy(monkeypatch, photos, tmp_path):
    monkeypatch.setattr(_staging.Stager, "_staging_slots", _no_staging)
    with shmsave.Writer(workers=2, engine="process") as writer:
        buffer = writer.empty(photos.shape, photos.dtype)
        buffer[...] = photos
        writer.save(buffer, str(tmp_path / "a{index}.png"))
        writer.save(buffer[2:6, ::2], str(tmp_path / "b{index}.png"))  # views of it too
    for i in range(len(photos)):
        assert read(tmp_path / f"a{i}.png") == imencode(photos[i])
    for i in range(4):
        assert read(tmp_path / f"b{i}.png") == imencode(np.ascontiguousarray(photos[2 + i, ::2]))


def test_memory_mapped_files_are_saved_without_a_copy(monkeypatch, photos, tmp_path):
    monkeypatch.setattr(_staging.Stager, "_staging_slots", _no_staging)
    np.save(tmp_path / "stack.npy", photos)
    mapped = np.load(tmp_path / "stack.npy", mmap_mode="r")
    raw = np.memmap(tmp_path / "raw.bin", np.uint8, "w+", offset=4099, shape=photos.shape)
    raw[...] = photos
    with shmsave.Writer(workers=2, engine="process") as writer:
        writer.save(mapped, str(tmp_path / "a{index}.png"))
        writer.save(raw[1::3], str(tmp_path / "b{index}.png"))
    for i in range(len(photos)):
        assert read(tmp_path / f"a{i}.png") == imencode(photos[i])
    for i, image in enumerate(photos[1::3]):
        assert read(tmp_path / f"b{i}.png") == imencode(image)


def _no_staging(self, *args):
    raise AssertionError("pixels were copied into staging memory")


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_memory_mapped_files_read_in_process_let_their_pages_go_and_keep_their_values(mode, photos, tmp_path):
    np.save(tmp_path / "stack.npy", photos)
    mapped = np.load(tmp_path / "stack.npy", mmap_mode=mode)
    expected = photos.copy()
    if mode != "r":
        mapped[1::2] = 255 - mapped[1::2]  # unsaved changes: mode c keeps them private, r+ in the page cache
        expected[1::2] = 255 - expected[1::2]
    with shmsave.Writer(workers=2, engine="thread") as writer:
        writer.save(mapped[::-1], str(tmp_path / "a{index}.png"))  # any strides
        writer.save(mapped, str(tmp_path / "b{index}.png"))
    for i in range(len(photos)):
        assert read(tmp_path / f"a{i}.png") == imencode(expected[::-1][i])
        assert read(tmp_path / f"b{i}.png") == imencode(expected[i])
    np.testing.assert_array_equal(mapped, expected)  # the caller's changes are all there still


@pytest.mark.parametrize("engine", ["inline", "thread", "hybrid"])
def test_in_process_engines_let_go_of_a_mapped_files_pages(engine, tmp_path, rng):
    frames = rng.integers(0, 255, (160, 256, 256, 3), np.uint8)  # 31 MB
    np.save(tmp_path / "frames.npy", frames)
    mapped = np.load(tmp_path / "frames.npy", mmap_mode="r")
    with shmsave.Writer(workers=2, engine=engine) as writer:
        writer.save(mapped, str(tmp_path / "{index}.bmp"))
        assert _resident_bytes_of(tmp_path / "frames.npy") < 2**20  # was 31 MB before pages were let go
    assert read(tmp_path / "159.bmp") == imencode(frames[159], ".bmp")


def _resident_bytes_of(path) -> int:
    """This process's resident bytes of its mappings of the file ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def test_empty_buffers_are_freed_with_their_array():
    with shmsave.Writer(workers=1) as writer:
        before = shmsave_segments(os.getpid())
        buffer = writer.empty((4, 1000, 1000), "uint16")
        assert buffer.shape == (4, 1000, 1000) and buffer.dtype == np.uint16 and not buffer.any()
        assert len(shmsave_segments(os.getpid()) - before) == 1
        view = buffer[1]
        del buffer
        gc.collect()
        assert len(shmsave_segments(os.getpid()) - before) == 1, "freed while a view was alive"
        del view
        gc.collect()
        assert shmsave_segments(os.getpid()) == before


def test_large_batches_stream_through_small_staging_slots(monkeypatch, tmp_path, rng):
    monkeypatch.setattr(_staging, "_SLOT_BYTES", 64 * 1024)  # many windows, slots reused
    stack = rng.integers(0, 255, (300, 64, 64, 3), np.uint8)
    images = [rng.integers(0, 255, (rng.integers(8, 90), rng.integers(8, 90), 3), np.uint8) for _ in range(200)]
    with shmsave.Writer(workers=2, engine="process") as writer:
        writer.save(stack, str(tmp_path / "s{index}.png"))
        writer.save(images, str(tmp_path / "l{index}.png"))
    for i in range(0, 300, 7):
        assert read(tmp_path / f"s{i}.png") == imencode(stack[i])
    for i in range(0, 200, 7):
        assert read(tmp_path / f"l{i}.png") == imencode(images[i])


# -- it works wherever users call it ----------------------------------------------

UNGUARDED_SCRIPT = """
import numpy as np, shmsave, sys
images = np.full((40, 32, 32, 3), 7, np.uint8)
with shmsave.Writer(workers=2, engine="process") as w:
    print(w.save(images, sys.argv[1] + "/{index}.png").count)
print(shmsave.save(images, sys.argv[1] + "/b{index}.png", workers=2).count)
"""


def run_python(args, tmp_path, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path, **kwargs)


def test_works_from_a_script_without_main_guard(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    done = run_python([str(script), str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["40", "40"] and len(list(tmp_path.glob("*.png"))) == 80
    assert done.stderr == "", "warnings (resource_tracker?) were printed"


def test_works_from_a_repl_on_stdin(tmp_path):
    typed = UNGUARDED_SCRIPT.replace("sys.argv[1]", repr(str(tmp_path))).replace(".count)\nprint", ".count)\n\nprint")
    done = run_python(["-i", "-q"], tmp_path, input=typed)  # a blank line ends the with-block, as typed
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["40", "40"] and len(list(tmp_path.glob("*.png"))) == 80
    assert "Traceback" not in done.stderr and "resource_tracker" not in done.stderr


def test_works_from_an_interactive_main_without_file(tmp_path):
    """Like a Jupyter kernel: __main__ has no __file__, and spawn-based pools would fail."""
    code = "import __main__; assert not hasattr(__main__, '__file__')\n" + UNGUARDED_SCRIPT
    done = run_python(["-c", code, str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["40", "40"]


def test_a_script_run_again_over_its_files_loads_no_hashlib(tmp_path):
    """A script's second run replaces its files; the temporary names' hash must not cost the call
    hashlib's import (it loads OpenSSL: ~4 ms on the development machine)."""
    code = (
        "import sys, numpy as np, shmsave\n"
        "images = np.full((3, 8, 8), 7, np.uint8)\n"
        "loaded = 'hashlib' in sys.modules  # numpy 1.22 loads it itself\n"
        "report = shmsave.save(images, sys.argv[1] + '/{index}.png', overwrite=True)\n"
        "print(report.count, 'hashlib' in sys.modules and not loaded)\n"
    )
    for run in range(2):
        done = run_python(["-c", code, str(tmp_path)], tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["3", "False"], f"run {run}"
    assert read(tmp_path / "2.png") == imencode(np.full((8, 8), 7, np.uint8))


def test_works_from_threads(photos, tmp_path):
    errors = []

    def job(n):
        try:
            with shmsave.Writer(workers=2, engine="process") as writer:
                assert writer.save(photos, str(tmp_path / f"t{n}" / "{index}.png")).count == len(photos)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=job, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    for n in range(3):
        assert read(tmp_path / f"t{n}" / "3.png") == imencode(photos[3])


# -- cleanup ---------------------------------------------------------------------


def test_close_stops_workers_and_frees_segments(photos, tmp_path):
    writer = shmsave.Writer(workers=2, engine="process")
    writer.save(photos, str(tmp_path / "{index}.png"))
    pids = writer.pids
    assert shmsave_segments(os.getpid()), "expected warm staging segments while open"
    writer.close()
    assert not shmsave_segments(os.getpid())
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_a_forgotten_writer_is_cleaned_up_by_garbage_collection(photos, tmp_path):
    writer = shmsave.Writer(workers=2, engine="process")
    writer.save(photos, str(tmp_path / "{index}.png"))
    pids = set(writer.pids)
    del writer
    gc.collect()
    assert wait_until(lambda: not (pids & children()), 10)
    assert not shmsave_segments(os.getpid())


def test_an_exception_in_the_middle_leaves_nothing_behind(photos, tmp_path):
    os.makedirs(tmp_path / "4.png")
    with shmsave.Writer(workers=2, engine="process") as writer:
        with pytest.raises(shmsave.WriteFailed):
            writer.save(photos, str(tmp_path / "{index}.png"))
        assert writer.save(photos, str(tmp_path / "ok{index}.png")).count == len(photos)
    assert not list(tmp_path.glob(".*.part"))


def test_no_resource_tracker_warning_at_exit(tmp_path):
    code = textwrap.dedent("""
        import numpy as np, shmsave
        w = shmsave.Writer(workers=2, engine="process")
        b = w.empty((30, 64, 64), "uint8")
        w.save(b, "{index}.png")
        shmsave.save(np.ones((300, 64, 64), np.uint8), "s{index}.png", workers=2)
        print("done")
    """)
    done = run_python(["-W", "always", "-c", code], tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "rename"])
def test_both_ways_of_writing_atomically_create_and_replace_files(tmpfile, monkeypatch, photos, tmp_path):
    from shmsave import _files

    monkeypatch.setattr(_files, "_tmpfile_works", tmpfile and _files._tmpfile_works)
    with shmsave.Writer(engine="inline") as writer:
        writer.save(photos[:3], str(tmp_path / "{index}.png"))
        writer.save(photos[3:6], str(tmp_path / "{index}.png"))  # replaces the first three
    assert sorted(os.listdir(tmp_path)) == ["0.png", "1.png", "2.png"]  # no temporaries left
    for i in range(3):
        assert read(tmp_path / f"{i}.png") == imencode(photos[3 + i])


def mapped_segments(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split("/")[-1].strip() for line in maps if "/shmsave_" in line}


def test_workers_keep_segments_mapped_until_the_parent_releases_them(photos, tmp_path):
    with shmsave.Writer(workers=2, engine="process") as writer:
        buffer = writer.empty(photos.shape, photos.dtype)
        buffer[...] = photos
        [name] = shmsave_segments(os.getpid())
        writer.save(buffer, str(tmp_path / "a{index}.png"))
        writer.save(buffer, str(tmp_path / "b{index}.png"))
        assert any(name in mapped_segments(pid) for pid in writer.pids)
        del buffer
        gc.collect()
        writer.save(photos, str(tmp_path / "c{index}.png"))  # the next call tells the workers
        assert not any(name in mapped_segments(pid) for pid in writer.pids)


def test_a_writer_used_again_starts_its_workers_for_later_calls(tmp_path, rng):
    stack = rng.integers(0, 255, (300, 50, 50, 1), np.uint8)  # too little work to start workers for
    with shmsave.Writer(workers=2) as writer:
        assert writer.save(stack, str(tmp_path / "a{index}.jpg")).engine == "inline" and writer.pids == []
        assert writer.save(stack, str(tmp_path / "b{index}.jpg")).engine == "inline"
        assert len(writer.pids) == 2  # started in the background as the second call ended
        assert wait_until(writer._processes.ready, 30)  # they import for a moment: calls meanwhile stay inline
        assert writer.save(stack, str(tmp_path / "c{index}.jpg")).engine == "process"
    for i in range(0, 300, 37):
        assert read(tmp_path / f"c{i}.jpg") == imencode(stack[i], ".jpg")


def test_start_makes_the_workers_ready_before_the_first_call(tmp_path, rng):
    with shmsave.Writer(workers=2) as writer:
        assert writer.start() is writer and len(writer.pids) == 2 and writer._processes.ready()
        report = writer.save(rng.integers(0, 255, (100, 50, 50, 1), np.uint8), str(tmp_path / "{index}.jpg"))
        assert report.engine == "process"  # no call waits for the workers to import


def _count_images_written_here(monkeypatch, before_each=None) -> list[int]:
    """Record the images that this process's threads write (the hybrid engine's share)."""
    from shmsave import _engines

    written: list[int] = []
    real = _engines.write_images

    def counted(images, first_index, job):
        if before_each is not None:
            before_each()
        written.extend(range(first_index, first_index + len(images)))
        return real(images, first_index, job)

    monkeypatch.setattr(_engines, "write_images", counted)
    return written


def test_hybrid_threads_write_until_the_workers_are_ready_then_step_back(monkeypatch, tmp_path, rng):
    stack = rng.integers(0, 255, (6000, 50, 50, 1), np.uint8)
    with shmsave.Writer(workers=2, engine="hybrid") as writer:
        # each thread's first task waits until both workers are ready: after it, both threads step back
        written = _count_images_written_here(
            monkeypatch, lambda: wait_until(lambda: writer._processes.pool().ready_count() == 2, 60)
        )
        report = writer.save(stack, str(tmp_path / "{index}.jpg"))
    assert report.engine == "hybrid" and report.count == 6000 and report.ok
    assert 0 < len(written) < 6000 and len(set(written)) == len(written)
    assert sorted(os.listdir(tmp_path)) == sorted(f"{i}.jpg" for i in range(6000))
    for i in [*written[:3], *range(0, 6000, 499)]:  # threads' images and the processes'
        assert read(tmp_path / f"{i}.jpg") == imencode(stack[i], ".jpg")


def test_hybrid_with_ready_workers_leaves_everything_to_them(monkeypatch, tmp_path, rng):
    stack = rng.integers(0, 255, (2000, 50, 50, 1), np.uint8)
    with shmsave.Writer(workers=2, engine="hybrid") as writer:
        writer.start()
        written = _count_images_written_here(monkeypatch)
        assert writer.save(stack, str(tmp_path / "{index}.jpg")).count == 2000
    assert written == []
    assert read(tmp_path / "1999.jpg") == imencode(stack[1999], ".jpg")


def test_hybrid_threads_finish_alone_when_workers_never_start(monkeypatch, tmp_path, rng):
    from shmsave import pool

    monkeypatch.setattr(pool, "_WORKER_MAIN", "import sys; sys.exit(3)")  # a broken environment
    stack = rng.integers(0, 255, (3000, 50, 50, 1), np.uint8)
    with shmsave.Writer(workers=2, engine="hybrid") as writer:
        written = _count_images_written_here(monkeypatch)
        report = writer.save(stack, str(tmp_path / "{index}.jpg"))
    assert report.count == 3000 and report.ok and sorted(written) == list(range(3000))
    assert read(tmp_path / "2999.jpg") == imencode(stack[2999], ".jpg")


def test_hybrid_does_not_lose_an_exception_raised_in_a_thread(monkeypatch, tmp_path, rng):
    from shmsave import _engines

    def broken(images, first_index, job):
        raise RuntimeError("a bug in the thread's path")

    monkeypatch.setattr(_engines, "write_images", broken)  # threads only: processes write for real
    with shmsave.Writer(workers=2, engine="hybrid") as writer:
        with pytest.raises(RuntimeError, match="a bug in the thread's path"):
            writer.save(rng.integers(0, 255, (2000, 50, 50, 1), np.uint8), str(tmp_path / "{index}.jpg"))


def test_auto_engine_goes_hybrid_for_many_tiny_images_while_workers_are_cold(monkeypatch, tmp_path, rng):
    from shmsave import _plan

    monkeypatch.setattr(_plan, "_POOL_START_S", 0.002)  # as on a host where workers start 200x faster
    stack = rng.integers(0, 255, (1000, 50, 50, 1), np.uint8)
    with shmsave.Writer(workers=2) as writer:
        assert writer.save(stack, str(tmp_path / "{index}.jpg")).engine == "hybrid"
        assert wait_until(writer._processes.ready, 60)  # started by that call (threads may have finished first)
        assert writer.save(stack[:300], str(tmp_path / "{index}.jpg")).engine == "process"


# -- the question that started the project ---------------------------------------------

_QUESTION = """
import sys, tempfile
from pathlib import Path
import cv2, numpy as np
import shmsave

# The question's third program (shared/seed): its loop as written, then shmsave.save in place of
# the pools, with the question's own int64 arrays, unchanged.
def save_img(idx, image, dst):
    cv2.imwrite((Path(dst) / f'{idx}.jpg').as_posix(), image.astype(np.uint8))

if __name__ == '__main__':
    l1 = np.random.randint(0, 255, (100, 50, 50, 1))
    l2 = np.random.randint(0, 255, (1000, 50, 50, 1))
    l3 = np.random.randint(0, 255, (3000, 50, 50, 1))
    out = Path(sys.argv[1])
    for k, ll in enumerate((l1, l2, l3)):
        loop_dir, shm_dir = out / f"loop{k}", out / f"shmsave{k}"
        loop_dir.mkdir(parents=True)
        for i, img in enumerate(ll):
            save_img(i, img, loop_dir)
        report = shmsave.save(ll, str(shm_dir / "{index}.jpg"))
        assert report.count == len(ll), report
    print("ok")
"""


def test_the_questions_program_with_shmsave_in_place_of_the_pools(tmp_path):
    """The seed question saves np.random.randint(0, 255, (N, 50, 50, 1)) arrays: int64 whose values
    fit uint8. shmsave saves them exactly as cv2.imwrite saves the cast array (the loop here casts
    explicitly, as OpenCV 5 refuses int64)."""
    script = tmp_path / "question.py"
    script.write_text(_QUESTION)
    done = run_python([str(script), str(tmp_path / "out")], tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    for k, count in enumerate((100, 1000, 3000)):
        loop, ours = tmp_path / "out" / f"loop{k}", tmp_path / "out" / f"shmsave{k}"
        assert sorted(os.listdir(ours)) == sorted(os.listdir(loop)) and len(os.listdir(loop)) == count
        assert all((loop / name).read_bytes() == (ours / name).read_bytes() for name in os.listdir(loop))
