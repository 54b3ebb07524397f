"""The `shmsave` command, run as a real console script in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

import shmsave
from shmsave.codec import writable_extensions

from .conftest import sigint_as_in_a_terminal

SCRIPT = Path(sys.executable).with_name("shmsave")
TIMEOUT = 180  # seconds; generous: the test machine is shared and slow


def shmsave_segments(pid: int) -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"shmsave_{pid}_*")}


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def shmsave_cli(*args, cwd=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def same_bytes(path, image, params=()) -> bool:
    """Whether ``path`` holds exactly what cv2.imwrite writes for ``image``."""
    reference = str(Path(path).with_name("reference" + Path(path).suffix))
    assert cv2.imwrite(reference, image, list(params))
    try:
        return Path(path).read_bytes() == Path(reference).read_bytes()
    finally:
        os.unlink(reference)


def test_the_console_script_is_installed():
    assert SCRIPT.exists(), f"{SCRIPT} is missing: pip install -e . declares it"


# -- round trips --------------------------------------------------------------


@pytest.mark.parametrize(
    "ext, options, params, convert",
    [
        (".jpg", ["--quality", "80", "--rgb"], [cv2.IMWRITE_JPEG_QUALITY, 80], cv2.COLOR_RGB2BGR),
        (
            ".png",
            ["--compression", "3", "--param", "IMWRITE_PNG_STRATEGY=1"],
            [cv2.IMWRITE_PNG_COMPRESSION, 3, cv2.IMWRITE_PNG_STRATEGY, 1],
            None,
        ),
        (".bmp", [], [], None),
    ],
)
def test_npy_round_trip_is_byte_identical_to_imwrite(ext, options, params, convert, photos, tmp_path):
    np.save(tmp_path / "frames.npy", photos)
    result = shmsave_cli(tmp_path / "frames.npy", "-o", tmp_path / "out" / ("{stem}_{index:03d}" + ext), *options)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [f"frames_{i:03d}{ext}" for i in range(len(photos))]
    for i, image in enumerate(photos):
        expected = cv2.cvtColor(image, convert) if convert is not None else image
        assert same_bytes(tmp_path / "out" / f"frames_{i:03d}{ext}", expected, params), f"image {i}"


def test_npz_round_trip_saves_every_array(photos, tmp_path):
    gray = photos[:5, :, :, 0]
    deep = photos[:3].astype(np.uint16) * 257
    np.savez(tmp_path / "plain.npz", color=photos, gray=gray)
    np.savez_compressed(tmp_path / "packed.npz", deep=deep)
    result = shmsave_cli(
        tmp_path / "plain.npz",
        tmp_path / "packed.npz",
        "-o",
        tmp_path / "out" / "{stem}" / "{key}" / "{index}.png",
        "--compression",
        "1",
    )
    assert result.returncode == 0, result.stderr
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    for stem, key, stack in [("plain", "color", photos), ("plain", "gray", gray), ("packed", "deep", deep)]:
        folder = tmp_path / "out" / stem / key
        assert sorted(os.listdir(folder)) == sorted(f"{i}.png" for i in range(len(stack)))
        for i, image in enumerate(stack):
            assert same_bytes(folder / f"{i}.png", image, params), f"{stem}[{key}] image {i}"


def test_key_selects_one_array_of_an_npz(photos, tmp_path):
    np.savez(tmp_path / "a.npz", color=photos, gray=photos[..., 0])
    result = shmsave_cli(tmp_path / "a.npz", "--key", "gray", "-o", tmp_path / "out" / "{index}.pgm")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == sorted(f"{i}.pgm" for i in range(len(photos)))
    assert same_bytes(tmp_path / "out" / "3.pgm", photos[3, :, :, 0])


def test_numbering_restarts_per_input_unless_continued(photos, tmp_path):
    np.save(tmp_path / "a.npy", photos[:3])
    np.save(tmp_path / "b.npy", photos[3:5])
    restarted = shmsave_cli(
        tmp_path / "a.npy", tmp_path / "b.npy", "--start", "10", "-o", tmp_path / "r" / "{stem}-{index}.bmp"
    )
    assert restarted.returncode == 0, restarted.stderr
    assert sorted(os.listdir(tmp_path / "r")) == ["a-10.bmp", "a-11.bmp", "a-12.bmp", "b-10.bmp", "b-11.bmp"]
    continued = shmsave_cli(
        tmp_path / "a.npy",
        tmp_path / "b.npy",
        "--start",
        "10",
        "--continue-index",
        "-o",
        tmp_path / "c" / "{index}.bmp",
    )
    assert continued.returncode == 0, continued.stderr
    assert sorted(os.listdir(tmp_path / "c")) == [f"{i}.bmp" for i in range(10, 15)]
    assert same_bytes(tmp_path / "c" / "13.bmp", photos[3])


# -- output -------------------------------------------------------------------


def test_json_summary_on_stdout(photos, tmp_path):
    np.save(tmp_path / "a.npy", photos)
    np.savez(tmp_path / "b.npz", gray=photos[:2, :, :, 0])
    result = shmsave_cli(tmp_path / "a.npy", tmp_path / "b.npz", "-o", tmp_path / "out" / "{stem}{index}.png", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    files = list((tmp_path / "out").iterdir())
    assert summary["images"] == len(files) == len(photos) + 2
    assert summary["bytes"] == sum(f.stat().st_size for f in files)
    assert summary["skipped"] == 0 and summary["failed"] == []
    assert summary["seconds"] > 0 and summary["images_per_second"] > 0
    assert [(i["path"], i["key"], i["written"]) for i in summary["inputs"]] == [
        (str(tmp_path / "a.npy"), None, len(photos)),
        (str(tmp_path / "b.npz"), "gray", 2),
    ]
    assert result.stderr == ""  # no summary line, and no progress bar when stderr is not a terminal


def test_summary_line_says_where_the_images_went(photos, tmp_path):
    np.save(tmp_path / "a.npy", photos)
    result = shmsave_cli("a.npy", "-o", "pictures/{index:04d}.jpg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"shmsave: wrote {len(photos)} images") and " to pictures/ in " in line, line


def test_progress_bar_is_forced_by_progress_and_silenced_by_quiet(photos, tmp_path):
    np.save(tmp_path / "a.npy", photos)
    shown = shmsave_cli(tmp_path / "a.npy", "-o", tmp_path / "p" / "{index}.png", "--progress")
    assert shown.returncode == 0 and f"{len(photos)}/{len(photos)}" in shown.stderr and "img/s" in shown.stderr
    quiet = shmsave_cli(tmp_path / "a.npy", "-o", tmp_path / "q" / "{index}.png", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == quiet.stdout == ""
    assert len(os.listdir(tmp_path / "q")) == len(photos)


def test_help_and_version():
    shown = shmsave_cli("--help")
    assert shown.returncode == 0
    assert shown.stdout.startswith("usage: shmsave INPUT")
    assert "examples:" in shown.stdout.split("options:")[0]  # the examples come first
    for flag in [
        "--output",
        "--key",
        "--start",
        "--stop",
        "--step",
        "--continue-index",
        "--workers",
        "--quality",
        "--compression",
        "--param",
        "--rgb",
        "--no-overwrite",
        "--errors",
        "--json",
        "--progress",
        "--quiet",
    ]:
        assert flag in shown.stdout
    assert re.search(r"-j( N)?, --workers N", shown.stdout)  # Python 3.13 writes the metavar once


def test_version_names_opencv_and_the_formats_it_writes():
    version = shmsave_cli("--version")
    assert version.returncode == 0 and version.stderr == ""
    line = version.stdout.strip()
    assert line.startswith(f"shmsave {shmsave.__version__} (OpenCV {cv2.__version__}; writes .jpg .jpeg .jpe .png ")
    listed = line.split("; writes ")[1].rstrip(")").split()
    assert listed == writable_extensions() and ".xyz" not in listed


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no threads of its own on one core")
@pytest.mark.parametrize("theirs", [None, "2"])
def test_the_command_starts_no_blas_threads_unless_told(theirs):
    """numpy's and OpenCV's OpenBLAS start a thread per core at import (each spins ~0.1 s); the command
    does no linear algebra, so it sets OPENBLAS_NUM_THREADS=1 first, unless the user set it."""
    code = (
        "import os, sys\n"
        "from shmsave.__main__ import main\n"
        "sys.argv = ['shmsave', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "import cv2, numpy\n"  # --version loaded both
        "print(len(os.listdir('/proc/self/task')), os.environ['OPENBLAS_NUM_THREADS'], file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if theirs is not None:
        env["OPENBLAS_NUM_THREADS"] = theirs
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    threads, setting = done.stderr.split()
    assert done.stdout.startswith("shmsave ") and setting == (theirs or "1")
    assert int(threads) == 1 if theirs is None else int(threads) > 1


def test_dash_j_is_workers(photos, tmp_path):
    np.save(tmp_path / "a.npy", photos)
    result = shmsave_cli(tmp_path / "a.npy", "-o", tmp_path / "out" / "{index}.png", "-j", "0")
    assert result.returncode == 2 and "--workers must be 1 or more" in result.stderr
    result = shmsave_cli(tmp_path / "a.npy", "-o", tmp_path / "out" / "{index}.png", "-j", "1", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["images"] == len(photos)


def test_python_dash_m_runs_the_same_command(photos, tmp_path):
    np.save(tmp_path / "a.npy", photos)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmsave",
            str(tmp_path / "a.npy"),
            "-o",
            str(tmp_path / "out" / "{index}.bmp"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == len(photos) == len(os.listdir(tmp_path / "out"))


def test_the_make_demo_commands(tmp_path):
    sample = subprocess.run(
        [sys.executable, "-m", "shmsave._sample", "demo-out/frames.npy", "--count", "240"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert sample.returncode == 0, sample.stderr
    result = shmsave_cli(
        "demo-out/frames.npy", "-o", "demo-out/images/{index:04d}.jpg", "--quality", "90", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 240 images" in result.stderr and "demo-out/images/" in result.stderr
    assert sorted(os.listdir(tmp_path / "demo-out" / "images")) == [f"{i:04d}.jpg" for i in range(240)]


# -- usage errors: exit 2, one line, nothing written ----------------------------


@pytest.fixture
def inputs(photos, tmp_path):
    """A folder of good and bad inputs, by name."""
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "good.npy", photos)
    np.save(folder / "other.npy", photos[:2])
    np.savez(folder / "pair.npz", color=photos, gray=photos[..., 0])
    np.save(folder / "fortran.npy", np.asfortranarray(photos))
    np.save(folder / "objects.npy", np.array([photos[0], photos[1, :5]], dtype=object), allow_pickle=True)
    np.save(folder / "floats.npy", photos.astype(np.float32) / 255)
    np.save(folder / "complex.npy", photos.astype(np.complex64))
    np.save(folder / "bigendian.npy", photos.astype(">u2"))
    np.save(folder / "one.npy", photos[0, :, :, 0])
    (folder / "garbage.npy").write_bytes(b"not an array at all")
    (folder / "garbage.npz").write_bytes(b"not a zip file")
    (folder / "truncated.npy").write_bytes((folder / "good.npy").read_bytes()[:-100])
    (folder / "notes.txt").write_text("hello")
    np.savez(folder / "labels.npz", color=photos, labels=np.arange(len(photos)))
    return folder


USAGE_ERRORS = [
    (["missing.npy"], "missing.npy: no such file"),
    (["notes.txt"], "notes.txt: OpenCV cannot open it as a video"),
    (["notes.txt"], "shmsave reads .npy, .npz, .zarr, videos and TIFFs"),
    (["good.npy", "-o", "{out}/{index.png"], "malformed"),
    (["good.npy", "-o", "{out}/{frame}.png"], "unknown field(s) {frame}"),
    (["good.npy", "-o", "{out}/{key}/{index}.png"], "unknown field(s) {key}"),
    (["good.npy", "-o", "{out}/{index}.xyz"], "cannot write images with '.xyz'"),
    (["good.npy", "-o", "{out}/all.png"], "has no {index} field"),
    (["good.npy", "-o", "{out}/%06d.png"], "%06d is a printf field, which shmsave does not expand; write '"),
    (["good.npy", "--worker", "1"], "unrecognized arguments: --worker 1"),  # no abbreviations: --workers only
    (["good.npy", "--qual", "90"], "unrecognized arguments: --qual 90"),
    (["fortran.npy"], "Fortran order"),
    (["objects.npy"], "Python objects"),
    (["complex.npy"], "complex64 values"),
    (["bigendian.npy"], "big-endian"),
    (["floats.npy"], "float32, which PNG (.png) cannot hold"),
    (["one.npy"], "for a single image, save image[None]"),
    (["garbage.npy"], "not a valid .npy array"),
    (["garbage.npz"], "not a readable .npz archive"),
    (["truncated.npy"], "truncated"),
    (["good.npy", "other.npy"], "would write the same files"),
    (["pair.npz", "-o", "{out}/{stem}/{index}.png"], "put {key} in the template"),
    (["good.npy", "good.npy", "-o", "{out}/{stem}/{index}.png"], "the same input is given twice"),
    (["pair.npz", "--key", "depth"], "has no array named 'depth'; it holds color, gray"),
    (["good.npy", "--key", "color"], "no .npz input was given"),
    (["good.npy", "--param", "IMWRITE_NOPE=1"], "unknown OpenCV write flag"),
    (["good.npy", "--param", "IMWRITE_PNG_STRATEGY"], "FLAG=VALUE"),
    (["good.npy", "--quality", "90"], "quality does not apply to PNG"),
    (["good.npy", "--quality", "90"], "for PNG use --compression 0..9"),
    (["labels.npz", "-o", "{out}/{key}/{index}.png"], "name them with --key (it holds color, labels)"),
    (["good.npy", "-o", "{out}/{index}.jpg", "--quality", "101"], "quality for JPEG must be"),
    (["good.npy", "--compression", "12"], "compression for PNG must be"),
    (["good.npy", "--workers", "0"], "--workers must be 1 or more"),
    (["good.npy", "--start", "-1"], "--start must be 0 or more"),
    (["good.npy", "--errors", "ignore"], "invalid choice: 'ignore'"),
    (["good.npy", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["good.npy", "NO -o"], "say where the images go: -o TEMPLATE, or --names FILE"),
]


@pytest.mark.parametrize("args, message", USAGE_ERRORS, ids=[m for _, m in USAGE_ERRORS])
def test_usage_errors_exit_2_with_one_line_and_write_nothing(args, message, inputs, tmp_path):
    out = tmp_path / "out"
    if args[-1] == "NO -o":
        args = args[:-1]
    elif "-o" not in args:
        args = [*args, "-o", "{out}/{index}.png"]
    args = [a.replace("{out}", str(out)) for a in args]
    result = shmsave_cli(*args, cwd=inputs)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("shmsave: error: ") and message in line, line
    assert result.stdout == ""
    assert not out.exists()


def test_every_input_is_checked_before_anything_is_written(inputs, tmp_path):
    result = shmsave_cli(
        "good.npy",
        "pair.npz",
        "fortran.npy",
        "-o",
        tmp_path / "out" / "{stem}/{index}.png",
        "--key",
        "gray",
        cwd=inputs,
    )
    assert result.returncode == 2 and "fortran.npy is stored in Fortran order" in result.stderr
    assert not (tmp_path / "out").exists()


# -- failures: exit 1 -----------------------------------------------------------


def _corrupt_member(path, key: str) -> None:
    """Flip the last data byte of an uncompressed .npz member: its header reads, its CRC fails."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(key + ".npy")
    with open(path, "r+b") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(file.read(4), "<u2")
        last = info.header_offset + 30 + int(name_length) + int(extra_length) + info.file_size - 1
        file.seek(last)
        byte = file.read(1)[0]
        file.seek(last)
        file.write(bytes([byte ^ 0xFF]))


@pytest.mark.parametrize("errors", ["raise", "collect"])
@pytest.mark.parametrize("bad", ["nan", "corrupt-npz-member"])
def test_an_input_found_bad_while_saving_is_named_and_exits_1(bad, errors, photos, tmp_path):
    """What only reading the data shows (NaN, a corrupt .npz member) fails that input, by name, with
    exit 1; the inputs before it are written; with --errors collect the inputs after it are too."""
    floats = photos.astype(np.float32) / 255
    np.save(tmp_path / "a.npy", floats)
    if bad == "nan":
        broken = floats.copy()
        broken[3, 4, 5, 1] = np.nan
        np.save(tmp_path / "b.npy", broken)
        label = "b.npy"
    else:
        np.savez(tmp_path / "b.npz", frames=floats)
        _corrupt_member(tmp_path / "b.npz", "frames")
        label = "b.npz[frames]"
    np.save(tmp_path / "c.npy", floats)
    second = "b.npy" if bad == "nan" else "b.npz"
    result = shmsave_cli(
        "a.npy", second, "c.npy", "-o", tmp_path / "out" / "{stem}/{index}.tiff", "--errors", errors, cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"failed: {label}: " in result.stderr and "none of its 8 images was written" in result.stderr
    assert ("NaN" if bad == "nan" else "cannot read it") in result.stderr
    assert len(os.listdir(tmp_path / "out" / "a")) == 8
    assert not (tmp_path / "out" / "b").exists()
    assert (tmp_path / "out" / "c").exists() == (errors == "collect")


def test_failed_images_are_listed_and_exit_1_when_collected(photos, tmp_path):
    np.save(tmp_path / "a.npy", photos)
    (tmp_path / "out" / "0002.png").mkdir(parents=True)  # a folder where image 2 should go
    result = shmsave_cli(
        tmp_path / "a.npy", "-o", tmp_path / "out" / "{index:04d}.png", "--errors", "collect", "--json"
    )
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    (failure,) = summary["failed"]
    assert failure["index"] == 2 and failure["path"] == str(tmp_path / "out" / "0002.png")
    assert summary["images"] == len(photos) - 1
    assert f"image 2 -> {tmp_path / 'out' / '0002.png'}" in result.stderr and "Traceback" not in result.stderr
    for i in set(range(len(photos))) - {2}:
        assert same_bytes(tmp_path / "out" / f"{i:04d}.png", photos[i])


def test_the_first_failure_stops_the_run_and_exits_1(photos, tmp_path):
    np.save(tmp_path / "a.npy", photos)
    np.save(tmp_path / "b.npy", photos)
    (tmp_path / "out" / "a" / "0002.png").mkdir(parents=True)
    result = shmsave_cli(
        tmp_path / "a.npy", tmp_path / "b.npy", "-o", tmp_path / "out" / "{stem}/{index:04d}.png", "--workers", "1"
    )
    assert result.returncode == 1
    assert f"shmsave: failed: image 2 -> {tmp_path / 'out' / 'a' / '0002.png'}: EISDIR" in result.stderr
    assert "shmsave: error: stopped at the first failure" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "b").exists()  # the run stopped before the second input


# -- resume ---------------------------------------------------------------------


def test_no_overwrite_writes_only_what_is_missing(photos, tmp_path):
    np.save(tmp_path / "a.npy", photos)
    template = tmp_path / "out" / "{index}.png"
    assert shmsave_cli(tmp_path / "a.npy", "-o", template).returncode == 0
    for i in (1, 4, 6):
        os.unlink(tmp_path / "out" / f"{i}.png")
    (tmp_path / "out" / "0.png").write_bytes(b"left alone")
    result = shmsave_cli(tmp_path / "a.npy", "-o", template, "--no-overwrite", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 3 and summary["skipped"] == len(photos) - 3
    assert (tmp_path / "out" / "0.png").read_bytes() == b"left alone"
    for i in range(1, len(photos)):
        assert same_bytes(tmp_path / "out" / f"{i}.png", photos[i])


# -- Ctrl-C -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_inputs(tmp_path_factory):
    """300 noisy 480x640x3 frames as .npy and .npz: seconds of PNG work at --compression 9."""
    folder = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:480, 0:640]
    stack = np.lib.format.open_memmap(folder / "frames.npy", "w+", np.uint8, (300, 480, 640, 3))
    for i in range(len(stack)):
        stack[i] = ((x + y * (i % 5 + 1))[..., None] + np.arange(3) * 40) % 256
        stack[i] ^= rng.integers(0, 64, (480, 640, 3), dtype=np.uint8)
    stack.flush()
    np.savez(folder / "frames.npz", frames=stack)
    del stack
    yield folder
    shutil.rmtree(folder)  # 0.5 GB of generated input, not worth keeping for a failure


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("name", ["frames.npy", "frames.npz"])
def test_ctrl_c_stops_cleanly(name, big_inputs, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            str(SCRIPT),
            str(big_inputs / name),
            "-o",
            str(out / "{index:04d}.png"),
            "--compression",
            "9",
            "--workers",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_in_a_terminal,
    )
    try:
        assert wait_until(lambda: any(out.glob("*.png")) or process.poll() is not None, TIMEOUT)
        assert process.poll() is None, f"finished before it could be interrupted: {process.communicate()}"
        workers = psutil.Process(process.pid).children(recursive=True)
        segments = shmsave_segments(process.pid)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "shmsave: interrupted" in stderr
    # big images are written by threads (a .npy read where it is mapped, an .npz array where it was
    # loaded); any worker process started meanwhile must end with the command
    assert wait_until(lambda: not any(_alive(w) for w in workers), 30), "workers outlived the command"
    if name.endswith(".npz"):
        assert segments, "the .npz array should have been loaded into shared memory"
    else:
        assert not segments, f"a .npy is mapped by the workers, never copied into shared memory: {segments}"
    assert not shmsave_segments(process.pid)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part")]
    written = sorted(out.glob("*.png"))
    assert 0 < len(written) < 300
    for path in written:
        assert cv2.imread(str(path)) is not None, f"{path} is not a complete PNG"


# -- memory ---------------------------------------------------------------------------

# Runs the command's main() and reads this process's peak RSS (VmHWM: the parent alone, never its
# workers; unlike getrusage's ru_maxrss, it does not inherit the peak of the process that forked it).
_MEASURED = """\
import sys
from shmsave.cli import main

def peak_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

before = peak_kb()
code = main(sys.argv[1:])
print("rss_kb", before, peak_kb(), file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def big_npy(tmp_path_factory):
    """2000 256x256x3 uint8 gradients, ~393 MB, written without holding them in memory."""
    path = tmp_path_factory.mktemp("rss") / "big.npy"
    stack = np.lib.format.open_memmap(path, "w+", np.uint8, (2000, 256, 256, 3))
    y, x = np.mgrid[0:256, 0:256]
    for i in range(len(stack)):
        stack[i] = ((x * (1 + i % 3) + y + i)[..., None] + np.arange(3) * 50) % 256
    stack.flush()
    del stack
    yield path
    shutil.rmtree(path.parent)  # 0.4 GB of generated input, not worth keeping for a failure


def _parent_peak_growth(args) -> tuple[int, int]:
    """Run the command measured; return (peak RSS after imports, peak RSS at the end), in bytes."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURED, *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    before_kb, peak_kb = map(int, result.stderr.split("rss_kb")[1].split())
    return before_kb * 1024, peak_kb * 1024


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["--workers", "1"]], ids=["all-cpus", "one-worker"])
def test_parent_memory_stays_small_for_a_big_npy(workers, big_npy, tmp_path, capsys):
    """The command's memory does not grow with a .npy: mapped, and each task's pages let go once written."""
    size = os.path.getsize(big_npy)
    before, peak = _parent_peak_growth([big_npy, "-o", tmp_path / "out" / "{index:05d}.jpg", "--quiet", *workers])
    assert len(os.listdir(tmp_path / "out")) == 2000
    with capsys.disabled():
        print(
            f"\nshmsave {' '.join(workers)}: {size / 1e6:.0f} MB .npy -> 2000 .jpg: parent peak RSS "
            f"{peak / 2**20:.0f} MiB ({before / 2**20:.0f} MiB after imports, "
            f"+{(peak - before) / 2**20:.1f} MiB while saving = {100 * (peak - before) / size:.1f}% of the file)"
        )
    assert peak - before < 0.25 * size


@pytest.mark.slow
def test_an_npz_array_is_held_once(big_npy, tmp_path, capsys):
    """An .npz array is read into shared memory once: never a second copy (np.load, then copy, would be 2x)."""
    np.savez(tmp_path / "big.npz", frames=np.load(big_npy, mmap_mode="r"))
    size = os.path.getsize(big_npy)
    before, peak = _parent_peak_growth([tmp_path / "big.npz", "-o", tmp_path / "out" / "{index:05d}.bmp", "--quiet"])
    assert len(os.listdir(tmp_path / "out")) == 2000
    with capsys.disabled():
        print(
            f"\nshmsave: {size / 1e6:.0f} MB array in an .npz -> 2000 .bmp: parent peak RSS +"
            f"{(peak - before) / 2**20:.0f} MiB while saving = {(peak - before) / size:.2f}x the array"
        )
    assert peak - before < 1.5 * size
    shutil.rmtree(tmp_path / "out")  # passed: 0.75 GB the temporary folder need not keep
    os.remove(tmp_path / "big.npz")
