"""The public API as a user's tools see it: type checkers (py.typed) and help()."""

from __future__ import annotations

import pydoc
import subprocess
import sys
from pathlib import Path

import pytest

import shmsave

USER_SCRIPT = Path(__file__).parent / "typing" / "public_api_user.py"


def test_the_package_is_marked_typed():
    assert (Path(shmsave.__file__).parent / "py.typed").exists()


@pytest.mark.slow
def test_a_user_script_of_every_public_name_passes_mypy_strict():
    """As for an installed package: shmsave's own modules are followed silently, the script strictly."""
    pytest.importorskip("mypy", reason="mypy comes with the dev extra, which this environment lacks")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental", str(USER_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_user_script_names_every_public_name():
    text = USER_SCRIPT.read_text()
    missing = [name for name in shmsave.__all__ if f"shmsave.{name}" not in text]
    assert not missing, f"tests/typing/public_api_user.py does not use {missing}"


def test_help_shows_the_public_api():
    text = pydoc.render_doc(shmsave, renderer=pydoc.plaintext)
    for shown in ("save(images", "class Writer", "class Report", "class InvalidRequest", "submit(", "empty("):
        assert shown in text, f"help(shmsave) does not show {shown!r}"
    functions = text.split("FUNCTIONS", 1)[1] if "FUNCTIONS" in text else ""
    assert "make_request" not in text and "write_images" not in functions
