"""Frames out of a video, pages out of a TIFF: the shmsave command against ffmpeg and the cv2 loops.

    python -m benchmarks.frames                # 3 repetitions, results/frames.md
    python -m benchmarks.frames --repeat 5
    python -m benchmarks.frames --quick        # short inputs, 1 repetition: does it run?

Inputs, made here first (untimed):
    h264-1080p    300 frames 1920x1080, H.264 (ffmpeg's libx264, crf 20; skipped without ffmpeg)
    mpeg4-1080p   300 frames 1920x1080, MPEG-4 part 2 ("mp4v", cv2.VideoWriter)
    mjpeg-720p    300 frames 1280x720, Motion JPEG in .avi (cv2.VideoWriter)
    tiff-200      200 pages 512x512 uint16, uncompressed (cv2.imwritemulti) -> .png

Methods, each a whole process (interpreter start, imports and all), timed from the outside:
    decode alone      the cv2.VideoCapture.read loop (cv2.imreadmulti for the TIFF), nothing written:
                      the ceiling of any method that decodes with OpenCV in one thread
    cv2 loop          read, then cv2.imwrite, frame after frame
    cv2 + ThreadPool  read in the main thread, cv2.imwrite submitted to a ThreadPoolExecutor (one
                      thread per core)
    shmsave           the command: shmsave INPUT -o out/{index:06d}.jpg --quiet
    ffmpeg -q:v 2     ffmpeg -i INPUT -q:v 2 out/%06d.jpg (and with -threads 0), where ffmpeg is installed

Frames go to .jpg at OpenCV's default quality (95) for the cv2 methods and shmsave, whose files are
the same bytes; ffmpeg's are its own encoder's at -q:v 2. Both are compared with the frame OpenCV
decodes: total JPEG bytes, and PSNR over every 10th frame. Repetitions run every method in a fresh
random order; medians; speed-up = the cv2 loop's median / the method's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks import machine
from benchmarks.targets import tmpfs_target

RESULTS = Path(__file__).resolve().parent / "results"
SHMSAVE = Path(sys.executable).with_name("shmsave")

_VIDEO_LOOP = """
import sys, cv2
source, out, pool = sys.argv[1], sys.argv[2], sys.argv[3] == "pool"
capture = cv2.VideoCapture(source)
if pool:
    import os
    from concurrent.futures import ThreadPoolExecutor
    executor = ThreadPoolExecutor(len(os.sched_getaffinity(0)))
i = 0
while True:
    ok, frame = capture.read()
    if not ok:
        break
    if out == "-":
        pass
    elif pool:
        executor.submit(cv2.imwrite, f"{out}/{i:06d}.jpg", frame)
    else:
        cv2.imwrite(f"{out}/{i:06d}.jpg", frame)
    i += 1
if pool:
    executor.shutdown(wait=True)
"""

_TIFF_LOOP = """
import sys, cv2
source, out, pool = sys.argv[1], sys.argv[2], sys.argv[3] == "pool"
ok, pages = cv2.imreadmulti(source, flags=cv2.IMREAD_UNCHANGED)
if out != "-" and pool:
    import os
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as executor:
        for i, page in enumerate(pages):
            executor.submit(cv2.imwrite, f"{out}/{i:06d}.png", page)
elif out != "-":
    for i, page in enumerate(pages):
        cv2.imwrite(f"{out}/{i:06d}.png", page)
"""

METHODS = ("decode alone", "cv2 loop", "cv2 + ThreadPool", "shmsave", "ffmpeg -q:v 2", "ffmpeg -q:v 2 -threads 0")


def _scene(i: int, base: np.ndarray) -> np.ndarray:
    """A frame of moving content: a textured gradient panning, a disc circling, a frame number."""
    height, width = base.shape[:2]
    frame = np.roll(base, 4 * i, axis=1)
    centre = (int(width / 2 + width / 3 * np.sin(i / 20)), int(height / 2 + height / 3 * np.cos(i / 25)))
    cv2.circle(frame, centre, height // 8, (40, 200, 90), -1)
    cv2.putText(frame, f"frame {i}", (50, height // 6), cv2.FONT_HERSHEY_SIMPLEX, height / 400, (255, 255, 255), 3)
    return frame


def _base(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 128 // (width + height)], -1).astype(np.uint8)
    return cv2.GaussianBlur(cv2.add(base, rng.integers(0, 24, base.shape, dtype=np.uint8)), (3, 3), 0)


def _write_video(path: Path, fourcc: str, count: int, width: int, height: int) -> None:
    base = _base(height, width)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"this OpenCV cannot write {fourcc} to {path.suffix}")
    for i in range(count):
        writer.write(_scene(i, base))
    writer.release()


def make_inputs(folder: Path, frames: int, pages: int) -> tuple[dict[str, Path], list[str]]:
    """The inputs by workload name, and notes on those skipped."""
    inputs, notes = {}, []
    inputs["mpeg4-1080p"] = folder / "mpeg4-1080p.mp4"
    _write_video(inputs["mpeg4-1080p"], "mp4v", frames, 1920, 1080)
    if shutil.which("ffmpeg"):
        # H.264 from the same frames: a lossless intermediate would be huge; re-encode the MPEG-4 file
        h264 = folder / "h264-1080p.mp4"
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-i", str(inputs["mpeg4-1080p"])]
            + ["-c:v", "libx264", "-crf", "20", "-pix_fmt", "yuv420p", str(h264)],
            check=True,
        )
        inputs = {"h264-1080p": h264, **inputs}
    else:
        notes.append("h264-1080p skipped: ffmpeg is not installed (it makes the H.264 input)")
    inputs["mjpeg-720p"] = folder / "mjpeg-720p.avi"
    _write_video(inputs["mjpeg-720p"], "MJPG", frames, 1280, 720)
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:512, 0:512]
    stack = [
        ((x * (1 + i % 7) + y * 3) % 4096 + rng.integers(0, 200, (512, 512))).astype(np.uint16) for i in range(pages)
    ]
    inputs[f"tiff-{pages}"] = folder / f"tiff-{pages}.tif"
    if not cv2.imwritemulti(str(inputs[f"tiff-{pages}"]), stack, [cv2.IMWRITE_TIFF_COMPRESSION, 1]):
        raise SystemExit("cv2.imwritemulti failed")
    return inputs, notes


def _command(method: str, source: Path, out: Path) -> list[str] | None:
    tiff = source.suffix == ".tif"
    extension = ".png" if tiff else ".jpg"
    if method == "shmsave":
        return [str(SHMSAVE), str(source), "-o", f"{out}/{{index:06d}}{extension}", "--quiet"]
    if method.startswith("ffmpeg"):
        if tiff or not shutil.which("ffmpeg"):
            return None
        threads = ["-threads", "0"] if method.endswith("-threads 0") else []
        return ["ffmpeg", "-loglevel", "error", "-i", str(source), "-q:v", "2", *threads, f"{out}/%06d.jpg"]
    script = _TIFF_LOOP if tiff else _VIDEO_LOOP
    target = "-" if method == "decode alone" else str(out)
    return [sys.executable, "-c", script, str(source), target, "pool" if "ThreadPool" in method else "loop"]


def _run(command: list[str], out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its threads and children)."""
    out.mkdir()
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _quality(source: Path, folder: Path, first: int) -> tuple[int, float, int]:
    """(total bytes, mean PSNR in dB over every 10th frame, files) of ``folder``'s JPEGs against the
    frames OpenCV decodes; file names count from ``first``."""
    files = sorted(folder.iterdir())
    nbytes = sum(path.stat().st_size for path in files)
    capture = cv2.VideoCapture(str(source))
    scores, i = [], 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if i % 10 == 0:
            scores.append(cv2.PSNR(frame, cv2.imread(str(folder / f"{i + first:06d}.jpg"))))
        i += 1
    capture.release()
    return nbytes, float(np.mean(scores)), len(files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="60 frames, 40 pages, 1 repetition")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    frames, pages = (60, 40) if args.quick else (300, 200)
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(tmpfs_target())
        notes = []
        if isinstance(target, str):
            notes.append(f"{target}; wrote to {tempfile.gettempdir()}")
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shmsave-bench-frames-")))
            where = machine_filesystem(root)
        else:
            root, where = target.root, target.filesystem
        print(f"making the inputs in {root} ...", file=sys.stderr)
        inputs, skipped = make_inputs(root, frames, pages)
        notes += skipped
        if not shutil.which("ffmpeg"):
            notes.append("ffmpeg rows skipped: ffmpeg is not installed (apt-get install ffmpeg)")
        runs = [(w, m) for w in inputs for m in METHODS if _command(m, inputs[w], root / "x") is not None]
        times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
        cpu: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
        _run(_command("shmsave", inputs["mjpeg-720p"], root / "warm"), root / "warm")  # untimed: page cache, imports
        for _ in range(repeat):
            random.shuffle(runs)
            for workload, method in runs:
                seconds, used = _run(_command(method, inputs[workload], root / "out"), root / "out")
                times[workload, method].append(seconds)
                cpu[workload, method].append(used)
                print(f"{workload:12} {method:26} {seconds:.3f} s, CPU {used:.3f} s", file=sys.stderr)
        quality = {}
        for workload, source in inputs.items():  # untimed: the files of shmsave and ffmpeg, compared
            if source.suffix == ".tif":
                continue
            for method, first in (("shmsave", 0), ("ffmpeg -q:v 2", 1)):
                command = _command(method, source, root / "q")
                if command is None:
                    continue
                (root / "q").mkdir()
                subprocess.run(command, check=True)
                quality[workload, method] = _quality(source, root / "q", first)
                shutil.rmtree(root / "q")
    text = _report(inputs, times, cpu, quality, notes, repeat, where, frames, pages, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("frames-quick.md" if args.quick else "frames.md")).write_text(text)
    print(text)
    return 0


def machine_filesystem(path: Path) -> str:
    from benchmarks.targets import filesystem_of

    return filesystem_of(path)


def _report(inputs, times, cpu, quality, notes, repeat, where, frames, pages, args) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m benchmarks.frames" + (" --quick" if args.quick else f" --repeat {repeat}")
    lines = [
        "# Frames out of a video, pages out of a TIFF",
        "",
        f"`{command}`, {when}. {machine.usable_cores()} cores, {machine.cpu_model()}; files on {where};",
        f"OpenCV {cv2.__version__}; {_ffmpeg_version()}.",
        f"Each method a whole process; median seconds (min-max) of {repeat} interleaved repetitions,",
        "frames (pages) per second, and speed-up over the cv2 loop. JPEG MB and PSNR (dB, against the frame",
        "OpenCV decodes, every 10th frame): the files of shmsave (the same bytes as the cv2 loop's) and ffmpeg's.",
        "CPU s: the median CPU time of the process (user + system, all its threads), which other load on the",
        "machine disturbs far less than the wall time; on n cores a method's best wall time is its CPU s / n.",
        "",
        "| input | method | median s | frames/s | vs cv2 loop | CPU s | JPEG MB | PSNR dB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for workload, source in inputs.items():
        count = pages if source.suffix == ".tif" else frames
        loop = statistics.median(times[workload, "cv2 loop"])
        for method in METHODS:
            if (workload, method) not in times:
                continue
            seconds = times[workload, method]
            median = statistics.median(seconds)
            size = psnr = ""
            if (workload, method) in quality:
                nbytes, score, files = quality[workload, method]
                size, psnr = f"{nbytes / 1e6:.1f}", f"{score:.2f}" + ("" if files == count else f" ({files} files)")
            speed = f"**{loop / median:.2f}x**" if method == "shmsave" else f"{loop / median:.2f}x"
            lines.append(
                f"| {workload} | {method} | {median:.3f} ({min(seconds):.2f}-{max(seconds):.2f}) | "
                f"{count / median:.1f} | {speed} | {statistics.median(cpu[workload, method]):.2f} | {size} | {psnr} |"
            )
    lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines).rstrip() + "\n"


def _ffmpeg_version() -> str:
    if not shutil.which("ffmpeg"):
        return "no ffmpeg"
    first = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    return " ".join(first.split()[:3])


if __name__ == "__main__":
    sys.exit(main())
