"""The built wheel, installed the two ways the README says, each into a fresh venv from the package index.

- next to an OpenCV the user already has (here the GUI build, opencv-python): that OpenCV stays
  as it was, GUI backend included, and no second OpenCV distribution appears;
- into an empty environment with the ``opencv`` extra: one install gives a working shmsave.

They need the package index (PyPI, or whatever pip is configured with); without it they skip.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.packaging]

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT = 240  # seconds for one pip command: the first run downloads OpenCV (~60 MB)
# What pip says when it cannot reach the index, as opposed to a real failure.
_OFFLINE = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
    r"Network is unreachable|No matching distribution found|Could not find a version"
)

GUI_LINE = r"GUI:\s*(.+)"
SAVE_WITH_WORKERS = """
import os, sys
import numpy as np
import shmsave
with shmsave.Writer(workers=2, engine="process") as writer:  # worker processes run the installed copy
    report = writer.save(np.zeros((6, 16, 16, 3), np.uint8), os.path.join(sys.argv[1], "{index}.png"))
assert report.count == 6 and sorted(os.listdir(sys.argv[1])) == [f"{i}.png" for i in range(6)], report
print("saved", shmsave.__file__)
"""


def run(*args, timeout=PIP_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a command in the folder of its venv (from this checkout, ``python -c`` would import the
    checkout's shmsave, not the installed one)."""
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=Path(args[0]).parent.parent
    )


def make_venv(folder: Path) -> Path:
    """A fresh venv (``python -m venv``, with pip); returns its python."""
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    return folder / "bin" / "python"


def pip_install(python: Path, *requirements) -> None:
    """``pip install --quiet``; skip the test when pip cannot reach the package index."""
    result = run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements)
    if result.returncode != 0:
        if _OFFLINE.search(result.stderr + result.stdout):
            pytest.skip(
                f"pip cannot reach the package index to install {' '.join(map(str, requirements))}: "
                f"{result.stderr.strip().splitlines()[-1]}"
            )
        pytest.fail(f"pip install {' '.join(map(str, requirements))} failed:\n{result.stderr}")


def installed(python: Path) -> dict[str, str]:
    result = run(python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check")
    assert result.returncode == 0, result.stderr
    return {item["name"].lower(): item["version"] for item in json.loads(result.stdout)}


def opencv_gui(python: Path) -> str:
    """The GUI backend line of this venv's ``cv2.getBuildInformation()``, e.g. "QT5" or "NONE"."""
    result = run(python, "-c", "import cv2; print(cv2.getBuildInformation())")
    assert result.returncode == 0, result.stderr
    match = re.search(GUI_LINE, result.stdout)
    assert match, f"no GUI line in the build information:\n{result.stdout}"
    return match.group(1).strip()


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """shmsave's wheel, built once per session from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    result = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--disable-pip-version-check",
        "--wheel-dir",
        out,
        ROOT,
    )
    if result.returncode != 0 and _OFFLINE.search(result.stderr):
        pytest.skip("pip cannot reach the package index for the build requirements (setuptools)")
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("shmsave-*.whl")
    return wheel


def test_installing_next_to_opencv_python_leaves_it_as_it_was(wheel, tmp_path):
    python = make_venv(tmp_path / "venv")
    pip_install(python, "opencv-python")
    gui = opencv_gui(python)
    assert gui != "NONE", "opencv-python (not headless) should have a GUI backend"
    pip_install(python, wheel)
    assert opencv_gui(python) == gui
    packages = installed(python)
    assert "opencv-python" in packages and "opencv-python-headless" not in packages, packages
    assert "shmsave" in packages
    saved = run(python, "-c", SAVE_WITH_WORKERS, tmp_path / "out")
    assert saved.returncode == 0 and saved.stderr == "", saved.stderr
    assert f"{tmp_path}/venv/" in saved.stdout  # the installed wheel, not this checkout


def test_a_fresh_environment_needs_one_install_with_the_opencv_extra(wheel, tmp_path):
    python = make_venv(tmp_path / "venv")
    pip_install(python, wheel)  # without the extra: no OpenCV, and shmsave says what to install
    bare = run(python, "-c", "import shmsave")
    assert bare.returncode == 1
    assert 'pip install "shmsave[opencv]"' in bare.stderr.strip().splitlines()[-1], bare.stderr
    python = make_venv(tmp_path / "fresh")
    pip_install(python, f"{wheel}[opencv]")
    assert "opencv-python-headless" in installed(python)
    saved = run(python, "-c", SAVE_WITH_WORKERS, tmp_path / "out")
    assert saved.returncode == 0 and saved.stderr == "", saved.stderr
    assert f"{tmp_path}/fresh/" in saved.stdout
