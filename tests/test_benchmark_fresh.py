"""The benchmark's fresh-interpreter child (benchmarks/fresh_child.py): every method writes what cv2.imwrite writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from benchmarks.methods import FRESH_CHILD

pytest.importorskip("joblib", reason="the benchmark extra (pip install -e '.[bench]') is not installed")


@pytest.mark.parametrize("method", ["loop", "threads-chunked", "processes-chunked", "joblib", "shmsave"])
@pytest.mark.parametrize("as_list", [False, True])
def test_each_method_writes_every_image_as_imwrite_would_and_reports_its_time(tmp_path, method, as_list):
    images = np.random.default_rng(1).integers(0, 255, size=(7, 50, 50, 1), dtype=np.uint8)
    if as_list:
        source = tmp_path / "images.pkl"
        source.write_bytes(__import__("pickle").dumps(list(images)))
    else:
        source = tmp_path / "images.npy"
        np.save(source, images)
    (tmp_path / "out").mkdir()
    (tmp_path / "spare").mkdir()
    job = {
        "method": method,
        "input": str(source),
        "pattern": str(tmp_path / "out" / "{index:03d}.jpg"),
        "workers": 2,
        "params": [cv2.IMWRITE_JPEG_QUALITY, 80],
        "quality": 80,
        "spare": str(tmp_path / "spare"),
    }
    done = subprocess.run(
        [sys.executable, str(FRESH_CHILD), json.dumps(job)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 <= figures["import_seconds"] <= figures["seconds"] < 60
    assert (figures["import_seconds"] > 0) == (method != "loop")
    assert figures["other_cpu_seconds"] >= 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:03d}.jpg" for i in range(7)]
    for i, image in enumerate(images):
        expected = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
        assert (tmp_path / "out" / f"{i:03d}.jpg").read_bytes() == expected


def test_the_child_counts_the_cpu_of_the_threads_already_running():
    """``other_cpu_seconds``: what threads started before the timed part (OpenBLAS's) use during it."""
    from benchmarks.fresh_child import thread_cpu_ns

    stop, ids = threading.Event(), []

    def spin():
        ids.append(threading.get_native_id())
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        while not ids:
            time.sleep(0.001)
        before = thread_cpu_ns()
        time.sleep(0.2)
        after = thread_cpu_ns()
    finally:
        stop.set()
        spinner.join()
    assert str(os.getpid()) not in before, "the main thread (the method's own) is not counted"
    spun = str(ids[0])
    assert after[spun] - before[spun] > 0.02e9, "a thread spinning for 0.2 s used next to no CPU"


def test_the_spin_watcher_imports_what_its_row_names():
    """``benchmarks.blas_spin`` watches after ``import numpy`` alone (numpy's spinning threads) and
    after ``import numpy, cv2`` (OpenCV's too): each row's script loads exactly its modules."""
    from benchmarks import blas_spin

    rows = {imports: setting for setting, imports in blas_spin.WATCHES.values() if setting is None}
    assert sorted(rows) == ["numpy", "numpy, cv2"]
    figures = blas_spin._watch("1", "numpy")
    assert figures["loaded"] == ["numpy"], "the numpy-only row loaded OpenCV"
    assert len(figures["used_ns"]) == blas_spin.WINDOWS
    assert blas_spin._watch("1", "numpy, cv2")["loaded"] == ["numpy", "cv2"]
