#!/usr/bin/env bash
# tests/check_dist.sh [PYTHON]: what a release would upload is sound.
#   python -m build (sdist + wheel) into dist/; twine check --strict; the wheel holds
#   shmsave/py.typed and LICENSE; the unpacked sdist's tests collect without errors.
# PYTHON needs build, twine, pytest and shmsave's dependencies (make dist-check uses .venv).
set -euo pipefail
python=${1:-python3}
if [[ $python == */* ]]; then  # a path: make it absolute (not resolved: a venv's python is a symlink)
    python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
fi
cd "$(dirname "$0")/.."
rm -rf dist
mkdir -p build
"$python" -m build --outdir dist . >build/dist-check.log 2>&1 || { cat build/dist-check.log; exit 1; }
"$python" -m twine check --strict dist/*
wheel=$(ls dist/*.whl)
sdist=$(ls dist/*.tar.gz)
"$python" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
wanted = {"shmsave/py.typed", "shmsave/__init__.py", "shmsave/_opencv.py"}
missing = sorted(wanted - names)
if missing or not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
    sys.exit(f"check_dist: {sys.argv[1]} lacks {missing or 'the LICENSE file'}")
print(f"check_dist: {sys.argv[1]} holds shmsave/py.typed and LICENSE")
PY
# The compiled helper is optional (setup.py: optional=True): the sdist carries its source; a wheel
# built where a C compiler is holds it, and is then specific to this Python and platform
# (cpXY-cpXY-linux_*: PyPI takes such wheels only as manylinux, built by cibuildwheel/auditwheel).
"$python" - "$wheel" "$sdist" <<'PY'
import shutil, sys, tarfile, zipfile
wheel, sdist = sys.argv[1], sys.argv[2]
if not any(n.endswith("/shmsave/_fastfiles.c") for n in tarfile.open(sdist).getnames()):
    sys.exit(f"check_dist: {sdist} lacks shmsave/_fastfiles.c")
compiled = [n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("shmsave/_fastfiles.")]
if shutil.which("cc") and not any(n.endswith(".so") for n in compiled):
    sys.exit(f"check_dist: a C compiler is here but {wheel} lacks the compiled shmsave/_fastfiles")
print(f"check_dist: the sdist holds _fastfiles.c; the wheel holds {compiled or 'no compiled helper (no compiler)'}")
PY
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
tar -xzf "$sdist" -C "$unpacked"
(cd "$unpacked"/shmsave-* && "$python" -m pytest --collect-only -q -p no:cacheprovider >collect.log 2>&1) || {
    cat "$unpacked"/shmsave-*/collect.log; echo "check_dist: the sdist's tests do not collect"; exit 1; }
echo "check_dist: the sdist's tests collect: $(tail -n1 "$unpacked"/shmsave-*/collect.log)"
