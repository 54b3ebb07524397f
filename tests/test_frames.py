"""Frames of a video and pages of a multi-page TIFF: ``shmsave.save_frames`` and the command.

Every file is checked against what the plain loop writes: ``cv2.VideoCapture.read`` (or
``cv2.imreadmulti``) and ``cv2.imencode`` of the decoded frame.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import shmsave
from shmsave import ReadFailed
from shmsave._frames import open_frames

from .conftest import shmsave_segments, sigint_as_in_a_terminal, wait_until

SCRIPT = Path(sys.executable).with_name("shmsave")
TIMEOUT = 180  # seconds; generous: the test machine is shared and slow


def shmsave_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=TIMEOUT)


def make_video(path: Path, count: int, height: int, width: int, fourcc: str = "MJPG", fps: float = 25) -> Path:
    """A video of gradients, a moving disc and a little noise, written by OpenCV."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV cannot write {fourcc} video to {path.suffix}")
    for i in range(count):
        frame = np.stack([(x * 2 + i * 5) % 256, (y * 3 + i) % 256, (x + y) % 256], -1).astype(np.uint8)
        cv2.circle(frame, ((7 * i) % width, height // 2), max(3, height // 6), (30, 220, 90), -1)
        frame = cv2.add(frame, rng.integers(0, 12, frame.shape, dtype=np.uint8))
        writer.write(frame)
    writer.release()
    return path


def decoded(path: Path) -> list[np.ndarray]:
    """Every frame of a video as the plain loop gets it."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def encoded(image: np.ndarray, extension: str, params=()) -> bytes:
    ok, data = cv2.imencode(extension, image, list(params))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def small_avi(tmp_path_factory) -> Path:
    """40 frames of 96x128 (36 KB each: the tiny-image path of a stream)."""
    return make_video(tmp_path_factory.mktemp("videos") / "small.avi", 40, 96, 128)


@pytest.fixture(scope="module")
def big_avi(tmp_path_factory) -> Path:
    """30 frames of 240x320 (230 KB each: encoded on the Writer's threads one by one)."""
    return make_video(tmp_path_factory.mktemp("videos") / "big.avi", 30, 240, 320)


# -- the library call -----------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["small_avi", "big_avi"])
def test_every_frame_is_what_the_cv2_loop_writes(fixture, request, tmp_path):
    video = request.getfixturevalue(fixture)
    frames = decoded(video)
    with shmsave.Writer(workers=2) as writer:
        report = writer.save_frames(video, tmp_path / "out" / "{stem}_{index:04d}.jpg", quality=90)
    assert report.count == len(frames) and not report.failed
    assert sorted(os.listdir(tmp_path / "out")) == [f"{video.stem}_{i:04d}.jpg" for i in range(len(frames))]
    written = 0
    for i, frame in enumerate(frames):
        data = (tmp_path / "out" / f"{video.stem}_{i:04d}.jpg").read_bytes()
        assert data == encoded(frame, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]), f"frame {i}"
        written += len(data)
    assert report.bytes == written


def test_mp4v_video_through_the_process_wide_writer(tmp_path):
    video = make_video(tmp_path / "clip.mp4", 24, 120, 160, "mp4v")
    frames = decoded(video)
    report = shmsave.save_frames(video, tmp_path / "out" / "{index:03d}.png", compression=1)
    assert report.count == len(frames) == 24
    for i, frame in enumerate(frames):
        assert (tmp_path / "out" / f"{i:03d}.png").read_bytes() == encoded(
            frame, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]
        )


@pytest.mark.parametrize(
    "start, stop, step",
    [(0, None, 10), (3, 20, 4), (35, None, 1), (0, 1, 1), (5, 1000, 7)],
)
def test_start_stop_step_pick_frames_by_their_numbers(start, stop, step, small_avi, tmp_path):
    frames = decoded(small_avi)
    with shmsave.Writer(workers=2) as writer:
        report = writer.save_frames(small_avi, tmp_path / "{index}.bmp", start=start, stop=stop, step=step)
    picked = list(range(start, min(stop or len(frames), len(frames)), step))
    assert sorted(os.listdir(tmp_path), key=lambda name: int(name[:-4])) == [f"{i}.bmp" for i in picked]
    assert report.count == len(picked)
    for i in picked:
        assert (tmp_path / f"{i}.bmp").read_bytes() == encoded(frames[i], ".bmp"), f"frame {i}"


def test_frames_come_with_their_numbers_and_timestamps(small_avi):
    source = open_frames(small_avi)
    try:
        got = [(frame.number, frame.msec) for frame in source.frames(range(2, 12, 3))]
    finally:
        source.close()
    assert got == [(n, pytest.approx(n * 40.0)) for n in (2, 5, 8, 11)]  # 25 frames/s


def test_progress_counts_every_frame_and_resume_skips_the_written_ones(small_avi, tmp_path):
    frames = decoded(small_avi)
    template = tmp_path / "out" / "{index:03d}.png"
    ticks: list[int] = []
    with shmsave.Writer(workers=2) as writer:
        writer.save_frames(small_avi, template, progress=ticks.append)
        assert sum(ticks) == len(frames)
        for i in (0, 7, 39):
            os.unlink(tmp_path / "out" / f"{i:03d}.png")
        (tmp_path / "out" / "010.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")  # what a killed loop leaves
        (tmp_path / "out" / "011.png").write_bytes(b"")
        ticks.clear()
        report = writer.save_frames(small_avi, template, overwrite=False, progress=ticks.append)
    assert report.count == 5 and report.skipped == len(frames) - 5 and sum(ticks) == len(frames)
    for i, frame in enumerate(frames):
        assert (tmp_path / "out" / f"{i:03d}.png").read_bytes() == encoded(frame, ".png"), f"frame {i}"


def _timestamps(path: Path) -> list[float]:
    """Each frame's CAP_PROP_POS_MSEC, as the plain loop reads it after each read."""
    capture, stamps = cv2.VideoCapture(str(path)), []
    while capture.read()[0]:
        stamps.append(capture.get(cv2.CAP_PROP_POS_MSEC))
    capture.release()
    return stamps


def test_frames_named_by_their_timestamps_resume_and_are_the_loops_bytes(small_avi, tmp_path):
    frames, stamps = decoded(small_avi), _timestamps(small_avi)
    template = tmp_path / "out" / "{stem}_{msec:06.0f}.jpg"
    with shmsave.Writer(workers=2) as writer:
        report = writer.save_frames(small_avi, template, quality=90, step=2)
        assert report.count == 20 and not report.failed
        names = {f"small_{stamps[i]:06.0f}.jpg": i for i in range(0, 40, 2)}
        assert sorted(os.listdir(tmp_path / "out")) == sorted(names)
        for name, i in names.items():
            expected = encoded(frames[i], ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 90))
            assert (tmp_path / "out" / name).read_bytes() == expected, f"frame {i}"
        os.unlink(tmp_path / "out" / f"small_{stamps[6]:06.0f}.jpg")
        again = writer.save_frames(small_avi, template, quality=90, step=2, overwrite=False)
    assert (again.count, again.skipped) == (1, 19)


def test_a_timestamp_template_is_checked_whole_and_refused_for_a_tiff(small_avi, tmp_path):
    pages = [np.zeros((8, 8), np.uint8)] * 3
    assert cv2.imwritemulti(str(tmp_path / "scan.tif"), pages)
    with pytest.raises(shmsave.InvalidRequest, match=re.escape("a TIFF: its pages have none")):
        shmsave.save_frames(tmp_path / "scan.tif", tmp_path / "out" / "{msec}.png")
    with pytest.raises(shmsave.InvalidRequest, match="unknown"):
        shmsave.save_frames(small_avi, tmp_path / "out" / "{msec}_{nothing}.png")
    command = shmsave_cli(tmp_path / "scan.tif", "-o", tmp_path / "out" / "{msec}.png")
    assert command.returncode == 2 and "pages have none" in command.stderr
    assert not (tmp_path / "out").exists()
    named = shmsave_cli(small_avi, "-o", tmp_path / "cli" / "{msec:.0f}.png", "--step", "10")
    assert named.returncode == 0, named.stderr
    assert sorted(os.listdir(tmp_path / "cli")) == sorted(
        f"{_timestamps(small_avi)[i]:.0f}.png" for i in (0, 10, 20, 30)
    )


def test_bad_ranges_and_sources_are_refused_before_anything_is_written(small_avi, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "notes.txt").write_text("hello\nworld\n" * 50)
    cases = [
        (dict(source=small_avi, step=0), "step must be an integer of at least 1"),
        (dict(source=small_avi, start=10, stop=10), "must be greater than start=10"),
        (dict(source=small_avi, start=40), "has 40 frames (0 to 39); start=40 is past its end"),
        (dict(source=tmp_path / "missing.mp4"), "no such file"),
        (dict(source=tmp_path), "is a folder"),
        (dict(source=tmp_path / "notes.txt"), "it is a text file"),
    ]
    for options, message in cases:
        with pytest.raises(shmsave.InvalidRequest, match=re.escape(message)):
            shmsave.save_frames(template=out / "{index}.png", **options)
    assert not out.exists()


def test_a_truncated_video_raises_naming_the_last_frame_written(small_avi, tmp_path):
    truncated = tmp_path / "cut.avi"
    truncated.write_bytes(small_avi.read_bytes()[: small_avi.stat().st_size // 2])
    frames = decoded(truncated)
    assert 0 < len(frames) < 40
    with pytest.raises(ReadFailed) as caught:
        shmsave.save_frames(truncated, tmp_path / "out" / "{index:02d}.png")
    error = caught.value
    last = len(frames) - 1
    assert error.index == len(frames) and error.last_index == last
    assert error.last_path == str(tmp_path / "out" / f"{last:02d}.png")
    assert f"cannot read frame {len(frames)}" in str(error) and "announces 40 frames" in str(error)
    assert error.report.count == len(frames)
    for i, frame in enumerate(frames):
        assert (tmp_path / "out" / f"{i:02d}.png").read_bytes() == encoded(frame, ".png")


def test_stream_skip_to_leaves_gaps_and_never_goes_back(photos, tmp_path):
    with shmsave.Writer(workers=2) as writer, writer.stream(tmp_path / "{index}.png") as stream:
        stream.write(photos[0])
        stream.skip_to(5)
        stream.write(photos[1])
        stream.write(photos[2])
        stream.skip_to(6 + 1)
        stream.write(photos[3])
        with pytest.raises(shmsave.InvalidRequest, match="indices only grow"):
            stream.skip_to(3)
    assert sorted(os.listdir(tmp_path)) == ["0.png", "5.png", "6.png", "7.png"]
    for name, image in zip(["0.png", "5.png", "6.png", "7.png"], photos):
        assert (tmp_path / name).read_bytes() == encoded(image, ".png")


def test_frames_after_the_first_are_decoded_straight_into_the_ring(big_avi, tmp_path, monkeypatch):
    from shmsave._ring import Ring
    from shmsave.streaming import Stream

    taken = []  # per reservation: True taken by write, False given back to the ring
    take, give_back = Stream._take_reserved, Ring.give_back
    monkeypatch.setattr(Stream, "_take_reserved", lambda self: taken.append(True) or take(self))
    monkeypatch.setattr(Ring, "give_back", lambda self, *place: taken.append(False) or give_back(self, *place))
    frames = decoded(big_avi)
    with shmsave.Writer(workers=2) as writer:
        report = writer.save_frames(big_avi, tmp_path / "{index:04d}.png")
    assert report.count == len(frames) and not report.failed
    # the first frame is copied (its shape is not known before); each later one is decoded in place
    assert taken == [True] * (len(frames) - 1)
    for i, frame in enumerate(frames):
        assert (tmp_path / f"{i:04d}.png").read_bytes() == encoded(frame, ".png"), f"frame {i}"


def test_ring_space_reserved_for_a_decoder_is_taken_or_given_back(tmp_path):
    from shmsave._ring import aligned

    rng = np.random.default_rng(3)
    big = rng.integers(0, 256, (240, 320, 3), np.uint8)
    other = rng.integers(0, 256, (240, 320, 3), np.uint8)
    with shmsave.Writer(workers=2) as writer:
        stream = writer.stream(tmp_path / "{index}.png")
        assert stream._reserve((50, 50), np.uint8) is None  # tiny images may move to another ring
        out = stream._reserve(big.shape, big.dtype)
        out[...] = big
        stream.write(out)  # taken where it is
        out = stream._reserve(big.shape, big.dtype)
        head, size = stream._ring.head, aligned(big.nbytes)
        out[...] = 0  # a decoder that failed; the next image is another array
        stream.write(other)
        # the reserved space went back and the image took it (or, the first one written by then,
        # the ring started over): never both
        assert stream._reserved is None and stream._ring.head in (head, size)
        stream.close()
        assert stream._reserve(big.shape, big.dtype) is None
    assert (tmp_path / "0.png").read_bytes() == encoded(big, ".png")
    assert (tmp_path / "1.png").read_bytes() == encoded(other, ".png")


def test_a_ring_gives_back_only_its_last_reservation():
    from shmsave._ring import PrivateBlock, Ring

    ring = Ring(PrivateBlock(1024))
    assert ring.reserve(128) == (0, 128)
    assert ring.reserve(256) == (128, 384)
    ring.give_back(256, 384)
    assert ring.head == 128
    assert ring.reserve(512) == (128, 640)
    ring.give_back(128, 128)  # not the last one: nothing changes
    assert ring.head == 640


# -- multi-page TIFF ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_every_page_of_a_tiff_is_what_imreadmulti_gives(dtype, tmp_path):
    rng = np.random.default_rng(3)
    top = 255 if dtype == "uint8" else 65535
    pages = [rng.integers(0, top, (70, 90), dtype=dtype) for _ in range(12)]
    assert cv2.imwritemulti(str(tmp_path / "scan.tif"), pages)
    ok, expected = cv2.imreadmulti(str(tmp_path / "scan.tif"), flags=cv2.IMREAD_UNCHANGED)
    assert ok and len(expected) == 12 and expected[0].dtype == dtype
    result = shmsave_cli(tmp_path / "scan.tif", "-o", tmp_path / "out" / "{stem}_{index:02d}.png", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == 12
    assert sorted(os.listdir(tmp_path / "out")) == [f"scan_{i:02d}.png" for i in range(12)]
    for i, page in enumerate(expected):
        assert (tmp_path / "out" / f"scan_{i:02d}.png").read_bytes() == encoded(page, ".png"), f"page {i}"
    stepped = shmsave_cli(tmp_path / "scan.tif", "-o", tmp_path / "odd" / "{index}.tiff", "--start", "1", "--step", "3")
    assert stepped.returncode == 0, stepped.stderr
    assert sorted(os.listdir(tmp_path / "odd"), key=lambda n: int(n[:-5])) == ["1.tiff", "4.tiff", "7.tiff", "10.tiff"]
    assert (tmp_path / "odd" / "7.tiff").read_bytes() == encoded(expected[7], ".tiff")


def test_tiff_pages_are_read_in_runs_and_resumed_without_reading_the_written_ones(tmp_path, monkeypatch):
    from shmsave import _frames

    pages = [np.full((40, 50), i, np.uint8) for i in range(30)]
    assert cv2.imwritemulti(str(tmp_path / "s.tiff"), pages)
    monkeypatch.setattr(_frames, "_TIFF_RUN_BYTES", 40 * 50 * 8)  # runs of 8 pages
    calls = []
    real = cv2.imreadmulti

    def counted(path, *args, **kwargs):
        calls.append((kwargs.get("start"), kwargs.get("count")))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cv2, "imreadmulti", counted)
    with shmsave.Writer(workers=2) as writer:
        writer.save_frames(tmp_path / "s.tiff", tmp_path / "out" / "{index}.png")
        assert calls[1:] == [(0, 8), (8, 8), (16, 8), (24, 6)]  # after the first page, read for its shape
        for i in (3, 4, 20):
            os.unlink(tmp_path / "out" / f"{i}.png")
        calls.clear()
        report = writer.save_frames(tmp_path / "s.tiff", tmp_path / "out" / "{index}.png", overwrite=False)
    assert calls[1:] == [(3, 2), (20, 1)]
    assert report.count == 3 and report.skipped == 27
    for i, page in enumerate(pages):
        assert (tmp_path / "out" / f"{i}.png").read_bytes() == encoded(page, ".png")


# -- the command ---------------------------------------------------------------------------


def test_the_command_saves_a_video_with_a_step(big_avi, tmp_path):
    frames = decoded(big_avi)
    result = shmsave_cli(big_avi, "-o", tmp_path / "f" / "{stem}-{index:05d}.jpg", "--step", "10", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 3 and summary["inputs"][0]["shape"] == [3, 240, 320, 3]
    assert sorted(os.listdir(tmp_path / "f")) == ["big-00000.jpg", "big-00010.jpg", "big-00020.jpg"]
    for i in (0, 10, 20):
        assert (tmp_path / "f" / f"big-{i:05d}.jpg").read_bytes() == encoded(frames[i], ".jpg")


def test_the_command_shows_progress_in_frames_of_the_announced_total(small_avi, tmp_path):
    result = shmsave_cli(small_avi, "-o", tmp_path / "out" / "{index}.bmp", "--step", "3", "--progress")
    assert result.returncode == 0, result.stderr
    assert "14/14" in result.stderr and "img/s" in result.stderr  # frames 0, 3, ..., 39 of the 40 announced


def test_the_command_names_the_last_frame_written_of_a_truncated_video(small_avi, tmp_path):
    truncated = tmp_path / "cut.avi"
    truncated.write_bytes(small_avi.read_bytes()[: small_avi.stat().st_size // 2])
    frames = decoded(truncated)
    last = len(frames) - 1
    result = shmsave_cli(truncated, "-o", tmp_path / "out" / "{index:02d}.jpg")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        f"shmsave: failed: {truncated}: cannot read frame {len(frames)}: the video announces 40 frames and ends "
        f"after {len(frames)} (truncated or corrupt); the last frame written is {last} "
        f"({tmp_path / 'out' / f'{last:02d}.jpg'})"
    ) in result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [f"{i:02d}.jpg" for i in range(len(frames))]
    for i, frame in enumerate(frames):
        assert (tmp_path / "out" / f"{i:02d}.jpg").read_bytes() == encoded(frame, ".jpg")


NOT_VIDEOS = [
    ("notes.txt", b"hello\nworld\n" * 50, "notes.txt: it is a text file, which FFmpeg would draw as pictures of text"),
    ("noise.mp4", bytes(range(256)) * 400, "noise.mp4: OpenCV cannot open it as a video"),
    ("empty.avi", b"", "empty.avi: OpenCV cannot open it as a video"),
    ("photo.png", None, "photo.png: it is a single image"),
]


@pytest.mark.parametrize("name, content, message", NOT_VIDEOS, ids=[n for n, _, _ in NOT_VIDEOS])
def test_a_file_that_is_not_a_video_is_refused_with_one_line(name, content, message, tmp_path):
    if content is None:
        assert cv2.imwrite(str(tmp_path / name), np.zeros((20, 30, 3), np.uint8))
    else:
        (tmp_path / name).write_bytes(content)
    result = shmsave_cli(tmp_path / name, "-o", tmp_path / "out" / "{index}.png")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()  # FFmpeg's own complaints are part of the line, not lines of their own
    assert line.startswith("shmsave: error: ") and message in line, line
    assert not (tmp_path / "out").exists()


def test_a_truncated_mp4_is_refused_with_ffmpegs_reason(tmp_path):
    video = make_video(tmp_path / "clip.mp4", 10, 64, 80, "mp4v")
    video.write_bytes(video.read_bytes()[:2000])  # the index (moov atom) comes last: gone
    result = shmsave_cli(video, "-o", tmp_path / "out" / "{index}.png")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "cannot open it as a video" in line and "FFmpeg: " in line and "FFmpeg said nothing" not in line, line


@pytest.mark.parametrize(
    "args, message",
    [
        (["{stack}", "--step", "2"], "--stop and --step pick frames of a video or pages of a TIFF"),
        (["{video}", "{stack}", "--stop", "5"], "is a stack of images; save a part of it by slicing it in numpy"),
        (["{video}", "--continue-index"], "a video's frames and a TIFF's pages keep their own numbers"),
        (["{video}", "--step", "0"], "--step must be 1 or more"),
        (["{video}", "--start", "4", "--stop", "4"], "--stop 4 must be greater than --start 4"),
        (["{video}", "--start", "99"], "has 40 frames (0 to 39); --start 99 is past its end"),
        (["{video}", "{video}"], "the same input is given twice"),
    ],
)
def test_usage_errors_of_frame_ranges(args, message, small_avi, photos, tmp_path):
    np.save(tmp_path / "stack.npy", photos)
    args = [a.replace("{stack}", str(tmp_path / "stack.npy")).replace("{video}", str(small_avi)) for a in args]
    result = shmsave_cli(*args, "-o", tmp_path / "out" / "{index}.png")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert message in line, line
    assert not (tmp_path / "out").exists()


def test_a_stack_and_a_video_in_one_command(small_avi, photos, tmp_path):
    np.save(tmp_path / "stack.npy", photos)
    result = shmsave_cli(
        tmp_path / "stack.npy", small_avi, "-o", tmp_path / "out" / "{stem}" / "{index}.png", "--start", "30"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "out" / "stack")) == sorted(f"{i}.png" for i in range(30, 38))
    assert sorted(os.listdir(tmp_path / "out" / "small")) == sorted(f"{i}.png" for i in range(30, 40))


# -- interrupted: SIGKILL then resume, Ctrl-C -------------------------------------------------


@pytest.fixture(scope="module")
def long_avi(tmp_path_factory) -> Path:
    """120 frames of 360x480: seconds of PNG work at --compression 9."""
    return make_video(tmp_path_factory.mktemp("videos") / "long.avi", 120, 360, 480)


def _start(video: Path, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [str(SCRIPT), str(video), "-o", str(out / "{index:04d}.png"), "--compression", "9", *map(str, extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_in_a_terminal,
    )


def _stop_midway(process: subprocess.Popen, out: Path, sig: int) -> str:
    try:
        assert wait_until(lambda: len(list(out.glob("*.png"))) >= 3 or process.poll() is not None, TIMEOUT)
        assert process.poll() is None, f"finished before it could be stopped: {process.communicate()}"
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return stderr


@pytest.mark.slow
def test_resume_after_the_command_is_killed(long_avi, tmp_path):
    out = tmp_path / "out"
    process = _start(long_avi, out)
    _stop_midway(process, out, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    before = {path.name for path in out.iterdir()}
    assert 0 < len(before) < 120
    assert not [name for name in before if not name.endswith(".png")], before  # no temporary file left
    result = subprocess.run(
        [str(SCRIPT), str(long_avi), "-o", str(out / "{index:04d}.png"), "--compression", "9"]
        + ["--no-overwrite", "--json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["skipped"] == len(before) and summary["images"] == 120 - len(before)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 9]
    for i, frame in enumerate(decoded(long_avi)):
        path = out / f"{i:04d}.png"
        assert np.array_equal(cv2.imread(str(path)), frame), f"frame {i}"
        if path.name in before:  # a file the killed command left: whole, and cv2.imwrite's bytes
            assert path.read_bytes() == encoded(frame, ".png", params), f"frame {i}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers", [["--workers", "2"], ["--workers", "2", "--timeout", "60"]], ids=["threads", "processes"]
)
def test_ctrl_c_while_extracting_stops_cleanly(workers, long_avi, tmp_path):
    out = tmp_path / "out"
    process = _start(long_avi, out, *workers)
    stderr = _stop_midway(process, out, signal.SIGINT)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "shmsave: interrupted" in stderr
    assert not shmsave_segments(process.pid)
    written = sorted(out.iterdir())
    assert 0 < len(written) < 120 and all(path.suffix == ".png" for path in written)
    for path in written:
        assert cv2.imread(str(path)) is not None, f"{path} is not a complete PNG"
