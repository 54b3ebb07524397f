"""Subprocesses run as after ``pip install``: with compiled bytecode.

pip compiles a package's modules when it installs it; an editable checkout, or an
environment with ``PYTHONDONTWRITEBYTECODE`` set (as on the development machines),
compiles them from source at every start instead: ~2 ms per module, which would make
a fresh interpreter's ``import shmsave`` look 2-3 times dearer than a user pays.
"""

from __future__ import annotations

import compileall
import functools
import os
from pathlib import Path


@functools.cache
def environment() -> dict[str, str]:
    """This process's environment, for a subprocess that reads (and writes) bytecode like an install."""
    import shmsave

    folder = Path(shmsave.__file__).parent
    compileall.compile_dir(str(folder), quiet=1)
    compileall.compile_dir(str(Path(__file__).parent), quiet=1)
    return {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
