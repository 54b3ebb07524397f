"""Print pip pins (name==floor) for every ">=" floor in pyproject.toml's dependencies and the
opencv extra, so `make test-oldest` installs exactly the oldest versions shmsave declares."""

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    sys.exit("floors.py needs Python 3.11 or newer (tomllib)")

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["opencv"]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", requirement)
    if not match:
        sys.exit(f"floors.py: cannot read a floor from {requirement!r}; write it as name>=version")
    print(f"{match[1]}=={match[2]}")
