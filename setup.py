"""The optional compiled part of shmsave; everything else is in pyproject.toml.

``shmsave._fastfiles`` writes a group of encoded files with one release of the GIL, copies
small images into a stream's ring or a call's staging slot, and checks the paths ``imwrite``
gives them (shmsave/_fastfiles.c). It is optional: where it cannot be built (no compiler, not Linux)
the install goes on without it and shmsave does all three in Python.
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform.startswith("linux"):  # O_TMPFILE, /proc/self/fd: the Linux rules of _files.py
    extensions.append(Extension("shmsave._fastfiles", ["shmsave/_fastfiles.c"], optional=True))

setup(ext_modules=extensions)
