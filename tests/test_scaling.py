"""The scaling model of benchmarks/scaling.py: its projection follows the formula of its docstring."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib", reason="the bench extra is not installed")

from benchmarks.scaling import project  # noqa: E402

# 10,000 images: 100 us each on one thread, 10 us of it holding the GIL; a worker 80 us, the parent 5 us.
MODEL = {"t": 100e-6, "g": 10e-6, "w": 80e-6, "p": 5e-6, "s": 0.5, "count": 10_000}


def test_threads_scale_with_cores_until_the_gil_held_part_fills_one_core():
    assert project(MODEL, 1)["threads"] == pytest.approx(10_000)
    assert project(MODEL, 4)["threads"] == pytest.approx(40_000)
    assert project(MODEL, 64)["threads"] == pytest.approx(100_000)  # 1 / g


def test_processes_scale_until_the_parents_part_fills_one_core_and_pay_their_start():
    assert project(MODEL, 2)["processes (warm)"] == pytest.approx(25_000)
    assert project(MODEL, 64)["processes (warm)"] == pytest.approx(200_000)  # 1 / p
    assert project(MODEL, 2)["processes (start)"] == pytest.approx(10_000 / (0.5 + 10_000 / 25_000))


def test_hybrid_writes_with_threads_while_the_workers_start():
    # 2 cores: threads write 0.5 s x 20,000/s = all 10,000 before the workers are ready
    assert project(MODEL, 2)["hybrid"] == pytest.approx(20_000)
    # 1 core: 5,000 by threads during the start, the rest at 12,500/s
    assert project(MODEL, 1)["hybrid"] == pytest.approx(10_000 / (0.5 + 5_000 / 12_500))
