"""The engine choice and task sizes, as a table: pure functions, no process starts."""

from __future__ import annotations

import pytest

from shmsave._plan import Choice, Chunks, choose_engine, single_core_seconds

from .conftest import children

KB, MB = 1024, 1024 * 1024
TINY = 2500  # bytes of a 50x50 gray image

# (id, engine, workers, count, nbytes, source, pool_ready) -> Choice
TABLE = [
    ("forced-process", "process", 4, 10, 10 * TINY, "array", False, Choice("process", 4)),
    ("forced-thread", "thread", 4, 10, 10 * TINY, "array", False, Choice("thread", 4)),
    ("forced-inline", "inline", 4, 10_000, 10_000 * TINY, "array", True, Choice("inline", 1)),
    ("one-worker", "auto", 1, 10_000, 10_000 * TINY, "array", False, Choice("inline", 1)),
    ("one-image", "auto", 4, 1, 100 * MB, "array", True, Choice("inline", 1)),
    ("under-4ms", "auto", 4, 50, 50 * TINY, "array", True, Choice("inline", 1)),
    ("big-images-threads", "auto", 4, 48, 48 * 6 * MB, "array", False, Choice("thread", 4)),
    ("big-images-shared-threads", "auto", 4, 48, 48 * 6 * MB, "shared", True, Choice("thread", 4)),
    ("64KB-images-threads", "auto", 2, 100, 100 * 64 * KB, "array", False, Choice("thread", 2)),
    ("tiny-pool-ready", "auto", 2, 1000, 1000 * TINY, "array", True, Choice("process", 2)),
    ("tiny-few-cold-inline", "auto", 2, 120, 120 * TINY, "array", False, Choice("inline", 1, small=True)),
    ("tiny-600-cold-inline", "auto", 2, 600, 600 * TINY, "array", False, Choice("inline", 1, small=True)),
    ("tiny-1000-cold-threads", "auto", 2, 1000, 1000 * TINY, "array", False, Choice("thread", 2, small=True)),
    ("tiny-3000-cold-threads", "auto", 2, 3000, 3000 * TINY, "array", False, Choice("thread", 2, small=True)),
    ("tiny-20000-cold-2-cores-threads", "auto", 2, 20_000, 20_000 * TINY, "array", False, Choice("thread", 2, True)),
    ("tiny-50000-cold-2-cores-threads", "auto", 2, 50_000, 50_000 * TINY, "array", False, Choice("thread", 2, True)),
    ("tiny-big-cold-2-cores-hybrid", "auto", 2, 100_000, 100_000 * TINY, "array", False, Choice("hybrid", 2)),
    ("tiny-big-cold-16-cores-hybrid", "auto", 16, 50_000, 50_000 * TINY, "array", False, Choice("hybrid", 16)),
    ("tiny-big-cold-list-processes", "auto", 16, 50_000, 50_000 * TINY, "list", False, Choice("process", 16)),
    ("forced-hybrid-list-processes", "hybrid", 4, 10, 10 * TINY, "list", False, Choice("process", 4)),
    ("forced-hybrid", "hybrid", 4, 10, 10 * TINY, "shared", True, Choice("hybrid", 4)),
    (
        "tiny-small-cold-16-cores-threads",
        "auto",
        16,
        10_000,
        10_000 * TINY,
        "array",
        False,
        Choice("thread", 16, small=True),
    ),
    ("tiny-list-ready", "auto", 4, 1000, 1000 * TINY, "list", True, Choice("process", 4)),
    # a memory-mapped file is read in this process too: its pages are let go after each task (_pages.py)
    ("big-file-threads", "auto", 4, 300, 300 * MB, "file", False, Choice("thread", 4)),
    ("big-file-one-worker-inline", "auto", 1, 300, 300 * MB, "file", False, Choice("inline", 1)),
    ("tiny-big-file-hybrid", "auto", 2, 100_000, 100_000 * TINY, "file", False, Choice("hybrid", 2)),
    ("small-file-threads", "auto", 4, 10, 10 * MB, "file", False, Choice("thread", 4)),
]


@pytest.mark.parametrize(
    "engine, workers, count, nbytes, source, ready, expected", [pytest.param(*row[1:], id=row[0]) for row in TABLE]
)
def test_engine_choice(engine, workers, count, nbytes, source, ready, expected):
    before = children()
    assert choose_engine(engine, workers, count, nbytes, source, pool_ready=ready) == expected
    assert children() == before


def test_cold_workers_pay_only_where_they_beat_threads():
    # tiny images, workers not started: hybrid once start + W / n < W / (0.85 x min(n, 4));
    # with 16 workers and a 0.4 s start that is W > 0.4 / (1/3.4 - 1/16) = 1.727 s
    per_image = single_core_seconds(1, TINY)
    for seconds, engine in ((1.72, "thread"), (1.74, "hybrid")):
        count = int(seconds / per_image)
        assert choose_engine("auto", 16, count, count * TINY, "array", pool_ready=False).engine == engine


def test_tasks_cover_every_image_once_and_shrink_toward_the_end():
    chunks = Chunks(10_000, 10_000 * TINY, 4)
    tasks = list(chunks.split(0, 10_000))
    assert tasks[0][0] == 0 and tasks[-1][1] == 10_000
    assert all(a[1] == b[0] for a, b in zip(tasks, tasks[1:]))
    sizes = [hi - lo for lo, hi in tasks]
    assert sizes[0] > sizes[-1] and sizes == sorted(sizes, reverse=True)
    assert max(sizes) <= 512


def test_task_limit_caps_every_task():
    chunks = Chunks(1000, 1000 * MB, 2)
    chunks.limit(3)
    assert all(hi - lo <= 3 for lo, hi in chunks.split(0, 1000))
