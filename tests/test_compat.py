"""Behaviour that depends on the environment: the OpenCV build, a missing OpenCV, cgroup CPU quotas."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import shmsave
from shmsave import _cpus, codec
from shmsave.naming import parse_template, printf_to_format

TIMEOUT = 120


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, **env}
    )


# -- which formats this OpenCV writes ---------------------------------------------


@pytest.fixture
def fresh_probes(monkeypatch):
    """An empty probe cache, and a count of how often OpenCV is asked about each extension."""
    monkeypatch.setattr(codec, "_probed", {})
    asked = []
    real = cv2.haveImageWriter

    def counting(name):
        asked.append(name)
        return real(name)

    monkeypatch.setattr(cv2, "haveImageWriter", counting)
    return asked


def test_each_extension_is_probed_once(fresh_probes):
    first = codec.writable_extensions()
    assert codec.writable_extensions() == first
    codec.format_for(".png"), codec.format_for(".PNG")
    with pytest.raises(shmsave.InvalidRequest):
        codec.format_for(".exr" if ".exr" not in first else ".xyz")
    assert sorted(fresh_probes) == sorted(set(fresh_probes)), f"asked twice: {fresh_probes}"


def test_an_opencv_error_while_probing_means_cannot_write(fresh_probes, monkeypatch):
    def disabled(name):  # what OpenCV 4.x does for .exr unless OPENCV_IO_ENABLE_OPENEXR is set
        raise cv2.error("OpenEXR codec is disabled")

    monkeypatch.setattr(cv2, "haveImageWriter", disabled)
    with pytest.raises(shmsave.InvalidRequest, match=r"cannot write images with '\.png'; this OpenCV build writes: $"):
        codec.format_for(".png")
    assert codec.writable_extensions() == []


def test_unsupported_extensions_are_invalid_requests(tmp_path):
    unsupported = [ext for ext in [".xyz", ".exr", ".gif", ".avif"] if ext not in codec.writable_extensions()]
    assert ".xyz" in unsupported
    for ext in unsupported:
        with pytest.raises(shmsave.InvalidRequest, match="this OpenCV build writes: .jpg"):
            shmsave.save(np.zeros((2, 4, 5), np.float32), str(tmp_path / ("{index}" + ext)), workers=1)
    assert not any(tmp_path.iterdir())


def test_probing_every_format_and_saving_print_nothing(tmp_path):
    # in a fresh process: OpenCV 4.x logs "OpenEXR codec is disabled" on the first .exr probe
    code = f"""
import numpy as np, shmsave
from shmsave.codec import writable_extensions, format_for
writable_extensions()
for ext in (".exr", ".xyz"):
    try:
        format_for(ext)
    except shmsave.InvalidRequest:
        pass
shmsave.save(np.zeros((3, 8, 8), np.uint8), {str(tmp_path / "{index}.png")!r}, workers=1)
print("saved")
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "saved\n" and result.stderr == ""


def test_the_command_exits_2_for_an_unsupported_extension_and_prints_one_line(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 8, 8), np.float32))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmsave",
            str(tmp_path / "a.npy"),
            "-o",
            str(tmp_path / "{index}.exr" if ".exr" not in codec.writable_extensions() else tmp_path / "{index}.xyz"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("shmsave: error: ") and "cannot write images with" in line


# -- no OpenCV at all ------------------------------------------------------------


@pytest.mark.parametrize("statement", ["import shmsave", "from shmsave import codec"])
def test_importing_without_opencv_says_what_to_install(statement):
    result = run_python(f"import sys; sys.modules['cv2'] = None  # as if not installed\n{statement}")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: shmsave needs OpenCV (the cv2 module), and none is installed; ")
    assert 'pip install "shmsave[opencv]"' in last and "opencv-python" in last


@pytest.mark.parametrize(
    "version, ok",
    [
        ("4.6.0", False),
        ("4.7.0", False),
        ("4.8.0", True),
        ("4.14.0", True),
        ("5.0.0", True),
        ("4.10.0-dev", True),
        ("3.4.18", False),
    ],
)
def test_opencv_older_than_the_floor_is_refused_with_an_upgrade_hint(version, ok):
    from shmsave._opencv import check_version

    if ok:
        check_version(version)
    else:
        with pytest.raises(ImportError, match=rf"needs OpenCV 4\.8 or newer, and this is OpenCV {version}; upgrade"):
            check_version(version)


# -- printf templates ------------------------------------------------------------


@pytest.mark.parametrize(
    "printf, fmt",
    [
        ("out/%06d.png", "out/{index:06d}.png"),
        ("%d.jpg", "{index}.jpg"),
        ("out/{stem}/%4i.png", "out/{stem}/{index:4d}.png"),
        ("%-5d.png", "{index:<5d}.png"),
        ("%+d.png", "{index:+d}.png"),
        ("100%%_%03x.png", "100%_{index:03x}.png"),
        ("plain.png", None),
        ("100%%.png", None),
    ],
)
def test_printf_fields_convert_to_format_fields(printf, fmt):
    assert printf_to_format(printf) == fmt
    if fmt is not None and "{stem}" not in fmt:  # the conversion names the same files
        for index in (0, 7, 123456):
            assert fmt.format(index=index) == printf.replace("%i", "%d") % index


def test_a_printf_template_points_at_the_format_field():
    with pytest.raises(shmsave.InvalidRequest) as error:
        parse_template("out/%06d.png", count=10)
    assert str(error.value).endswith(
        "%06d is a printf field, which shmsave does not expand; write 'out/{index:06d}.png'"
    )


# -- cgroup CPU quotas -------------------------------------------------------------


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    "files, cpus",
    [
        ({}, None),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "400000 100000\n"}, 4),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu/cpu.cfs_quota_us": "250000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "50000\n"}, 2),
        ({"cpu/cpu.cfs_quota_us": "200000\n"}, None),  # no period: not a quota we can read
        ({"cpu.max": "garbage\n", "cpu/cpu.cfs_quota_us": "x\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "600000 100000\n", "cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),
    ],
    ids=[
        "none",
        "v2-max",
        "v2-1.5",
        "v2-0.5",
        "v2-4",
        "v1-unlimited",
        "v1-3",
        "v1-2.5",
        "v1-cpu,cpuacct",
        "v1-no-period",
        "unreadable",
        "smallest-wins",
    ],
)
def test_cgroup_cpu_limit(files, cpus, tmp_path):
    for name, text in files.items():
        write(tmp_path / name, text)
    assert _cpus.cgroup_cpu_limit(str(tmp_path)) == cpus


def test_usable_cpus_honours_the_cgroup_limit(monkeypatch):
    monkeypatch.setattr(_cpus, "cgroup_cpu_limit", lambda: 1)
    assert _cpus.usable_cpus() == 1
    monkeypatch.setattr(_cpus, "cgroup_cpu_limit", lambda: None)
    assert _cpus.usable_cpus() == len(os.sched_getaffinity(0))
