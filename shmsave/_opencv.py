"""OpenCV, which ``pip install shmsave`` does not install: what to do when it is missing.

shmsave works with any OpenCV distribution (opencv-python, opencv-contrib-python
or their headless builds) and requires none of them, because pip cannot pick
one at install time, and requiring one installs it next to the one already
there, where both own the same ``cv2/`` files. ``pip install "shmsave[opencv]"``
adds opencv-python-headless for an environment that has no OpenCV yet.
"""

from __future__ import annotations

import importlib.util
import re

# The oldest OpenCV the suite passes with (4.6 and 4.7 cannot write 4-channel float64 TIFF);
# the "opencv" extra's floor says the same for pip, this says it for an OpenCV installed otherwise.
MINIMUM_VERSION = (4, 8)

INSTALL_HINT = (
    'pip install "shmsave[opencv]" (adds opencv-python-headless), or install the OpenCV '
    "you prefer (opencv-python, opencv-contrib-python, opencv-python-headless, ...)"
)


def check_installed() -> None:
    """Raise ImportError, saying what to install, if no ``cv2`` module can be found.

    Cheap (no import), so the package itself can call it on import.
    """
    if importlib.util.find_spec("cv2") is None:
        raise ImportError(f"shmsave needs OpenCV (the cv2 module), and none is installed; {INSTALL_HINT}", name="cv2")


def import_cv2():
    """The ``cv2`` module; ImportError saying what to do when it is missing or broken."""
    check_installed()
    try:
        import cv2
    except ImportError as error:  # present but broken, e.g. the GUI build without libGL on a server
        raise ImportError(
            f"OpenCV (cv2) is installed but cannot be imported: {error}. If this machine has "
            "no display libraries, use the headless build: pip uninstall opencv-python, then "
            "pip install opencv-python-headless",
            name="cv2",
        ) from error
    check_version(cv2.__version__)
    return cv2


def check_version(version: str) -> None:
    """Raise ImportError, saying how to upgrade, if OpenCV ``version`` is older than MINIMUM_VERSION."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if numbers < MINIMUM_VERSION:
        wanted = ".".join(map(str, MINIMUM_VERSION))
        raise ImportError(
            f"shmsave needs OpenCV {wanted} or newer, and this is OpenCV {version}; upgrade the "
            "OpenCV distribution you use, e.g. pip install -U opencv-python-headless "
            "(or opencv-python, opencv-contrib-python, ...)",
            name="cv2",
        )
