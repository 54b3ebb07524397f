"""Big images' encoder buffers come from memory the process keeps (``shmsave/_heap.py``), not from
fresh pages of the kernel for every image: counted as page faults in a fresh interpreter."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the threshold raised is glibc malloc's; other C libraries differ"
)

# Saves 1080p frames (JPEG q95 of ~0.45 MB) three times inline and prints the page faults of the
# last save per image. ``hold`` stops _heap from acting, and the control's environment pins glibc's
# threshold where it starts (128 KB), so nothing the interpreter allocates first can raise it. The
# frames are made row by row: freeing any temporary between 128 KB and 32 MB would raise the
# threshold in ``act`` without _heap, and the test could no longer fail. Faults count 4 KB pages only
# with transparent huge pages off, which the child asks for itself (prctl PR_SET_THP_DISABLE = 41):
# with the kernel's anonymous pages of 16 KB to 1 MB on ("always"), the old control counted ~10 faults
# per image instead of ~225, and a CI run counted 0 (its kernel's settings are not known here).
_CHILD = r"""
import ctypes, json, resource, sys, tempfile
thp_off = ctypes.CDLL(None).prctl(41, 1, 0, 0, 0) == 0  # refused (an old kernel, a sandbox): counts may be low
import numpy as np
import shmsave
from shmsave import _heap
if sys.argv[1] == "hold":
    _heap.kept = True
rng = np.random.default_rng(0)
images = np.empty((6, 1080, 1920, 3), np.uint8)  # 37 MB: mapped, and bigger than any threshold glibc takes
x = np.arange(1920)[:, None] // 7
for i in range(len(images)):
    for y in range(1080):
        images[i, y] = (x + y // 5 + rng.integers(0, 8, (1920, 3))) % 256
writer = shmsave.Writer(1, engine="inline")
with tempfile.TemporaryDirectory() as folder:
    for k in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        writer.save(images, folder + f"/{k}/{{index}}.jpg", quality=95)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults_per_image": faults / len(images), "kept": _heap.kept, "thp_off": thp_off}))
"""


def _faults_per_image(mode: str) -> tuple[float, bool]:
    env_free = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults
    if mode == "hold":
        # The control keeps glibc's threshold where it starts, whatever the interpreter allocates first.
        env_free["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=120, env=env_free, check=True
    )
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["kept"] is True
    return result["faults_per_image"], result["thp_off"]


def test_big_images_are_encoded_without_fresh_pages_for_each():
    kept, _ = _faults_per_image("act")
    control, thp_off = _faults_per_image("hold")
    # The control shows the test can fail: without the raised threshold each ~1.5 MB file's buffers
    # are new pages (~335 faults per image); with it, the freed ones are used again.
    assert control > 100, (
        f"the control faulted only {control:.0f} times per image: the test measures nothing "
        f"(transparent huge pages {'off' if thp_off else 'on: prctl(PR_SET_THP_DISABLE) was refused'})"
    )
    assert kept < control / 5, f"{kept:.0f} page faults per image with _heap, {control:.0f} without"


def test_only_images_big_enough_to_matter_raise_the_threshold(monkeypatch):
    from shmsave import _heap

    monkeypatch.setattr(_heap, "kept", False)
    _heap.keep_freed_buffers(50 * 50)  # its buffers stay below glibc's first threshold: nothing to do
    assert _heap.kept is False
    _heap.keep_freed_buffers(1080 * 1920 * 3)
    assert _heap.kept is True
