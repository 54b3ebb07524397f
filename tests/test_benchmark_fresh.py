"""The benchmark's fresh-interpreter child (benchmarks/fresh_child.py): every method writes what cv2.imwrite writes."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:03d}.jpg" for i in range(7)]
    for i, image in enumerate(images):
        expected = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
        assert (tmp_path / "out" / f"{i:03d}.jpg").read_bytes() == expected
