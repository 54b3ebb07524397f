"""A zarr store of 2,000 x 256x256x3 photos -> PNG files: shmsave.dask against the other ways.

    python -m benchmarks.dask_bench            # 2,000 images, 3 repetitions
    python -m benchmarks.dask_bench --quick    # 200 images, 3 repetitions

Every method starts from the same zarr store (chunks of 100 images, zarr's default
compressor) and writes image i to ``{index:06d}.png`` in a fresh folder on a private
tmpfs (the disk when tmpfs cannot be mounted). The LocalCluster
(n_workers=2, threads_per_worker=1, processes=True) is started once, outside the timing,
and warmed by one untimed run of each method that uses it. Methods run interleaved, in a
fresh random order per repetition; medians, and speed-up = loop median / method median.

    loop                     z[:] into numpy, then cv2.imwrite image by image (one process)
    load + shmsave.save      z[:] into numpy, then shmsave.save
    map_blocks (threads)     da.from_zarr(...).map_blocks(cv2.imwrite loop per block), threaded scheduler
    map_blocks (cluster)     the same on the LocalCluster
    shmsave.dask (threads)   shmsave.dask.save(da.from_zarr(...)), threaded scheduler (the command's default)
    shmsave.dask (cluster)   shmsave.dask.save on the LocalCluster

The command's scheduler (``--scheduler`` absent): each way runs as a whole fresh process,
as the command does, starting its scheduler inside the timing.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks import machine
from benchmarks.targets import disk_target, tmpfs_target
from benchmarks.workloads import dataset

CHUNK = 100
RESULTS = Path(__file__).resolve().parent / "results"


def _imwrite_block(block, template, block_info=None):
    first = block_info[0]["array-location"][0][0]
    for i, image in enumerate(block):
        cv2.imwrite(template.format(index=first + i), image)
    return np.array([len(block)])


def _methods(store: str, client):
    import dask
    import dask.array as da
    import zarr

    import shmsave
    import shmsave.dask

    def loop(template):
        images = zarr.open_array(store, mode="r")[:]
        for i, image in enumerate(images):
            cv2.imwrite(template.format(index=i), image)

    def load_and_save(template):
        shmsave.save(zarr.open_array(store, mode="r")[:], template)

    def map_blocks(scheduler):
        def run(template):
            array = da.from_zarr(store)
            written = array.map_blocks(
                _imwrite_block, template, dtype=np.int64, chunks=(array.chunks[0],), drop_axis=[1, 2, 3]
            ).sum()
            assert written.compute(scheduler=scheduler) == array.shape[0]

        return run

    def with_dask(scheduler):
        def run(template):
            with dask.config.set(scheduler=scheduler):
                assert shmsave.dask.save(da.from_zarr(store), template).ok

        return run

    return {
        "loop": loop,
        "load + shmsave.save": load_and_save,
        "map_blocks (threads)": map_blocks("threads"),
        "map_blocks (cluster)": map_blocks(client),
        "shmsave.dask (threads)": with_dask("threads"),
        "shmsave.dask (cluster)": with_dask(client),
    }


def _command_ways(store: str, template: str) -> dict[str, list[str]]:
    """Whole processes that do what the command would do, with each scheduler."""
    body = f"import shmsave.dask as d; r = d.save_zarr({store!r}, {template!r}); assert r.ok"
    cluster = (
        "from distributed import LocalCluster, Client\n"
        "if __name__ == '__main__':\n"
        "    with LocalCluster(n_workers=@N@, threads_per_worker=@T@, processes=True,"
        " dashboard_address=':0', silence_logs=40) as c, Client(c):\n        " + body
    )
    return {
        "threads (chosen)": [sys.executable, "-c", "import shmsave.dask as d\nwith d.scheduler(None):\n    " + body],
        "LocalCluster 2x1": [sys.executable, "-c", cluster.replace("@N@", "2").replace("@T@", "1")],
        "LocalCluster 1x2": [sys.executable, "-c", cluster.replace("@N@", "1").replace("@T@", "2")],
    }


def _fresh(root: Path, name: str) -> str:
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return str(folder / "{index:06d}.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 images instead of 2,000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None, help="file name without .md (default dask / dask-quick)")
    args = parser.parse_args(argv)
    import distributed
    import zarr

    count = 200 if args.quick else 2000
    scratch = Path(tempfile.mkdtemp(prefix="shmsave-dask-bench-"))
    rows, command_rows = {}, {}
    try:
        print(f"generating {count} images ...", file=sys.stderr)
        images = dataset(np.random.default_rng([0, *b"dataset"]), count)
        store = str(scratch / "dataset.zarr")
        z = zarr.open_array(store, mode="w", shape=images.shape, chunks=(CHUNK, 256, 256, 3), dtype=images.dtype)
        z[:] = images
        del images
        with tmpfs_target() as tmpfs, disk_target() as disk:
            target = tmpfs if not isinstance(tmpfs, str) else disk
            with (
                distributed.LocalCluster(
                    n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
                ) as cluster,
                distributed.Client(cluster) as client,
            ):
                methods = _methods(store, client)
                for run in methods.values():  # warm-up: imports, the cluster's and shmsave's workers
                    run(_fresh(target.root, "warm"))
                timings = {name: [] for name in methods}
                for rep in range(args.repeat):
                    order = list(methods)
                    random.shuffle(order)
                    for name in order:
                        template = _fresh(target.root, "run")
                        began = time.perf_counter()
                        methods[name](template)
                        timings[name].append(time.perf_counter() - began)
                        assert len(os.listdir(os.path.dirname(template))) == count, name
                        print(f"rep {rep + 1} {name}: {timings[name][-1]:.2f} s", file=sys.stderr)
            rows = {name: statistics.median(values) for name, values in timings.items()}
            spreads = {name: (min(values), max(values)) for name, values in timings.items()}
            ways = _command_ways(store, str(target.root / "cmd" / "{index:06d}.png"))
            command_timings = {name: [] for name in ways}
            for rep in range(args.repeat):
                order = list(ways)
                random.shuffle(order)
                for name in order:
                    _fresh(target.root, "cmd")
                    began = time.perf_counter()
                    subprocess.run(ways[name], check=True, capture_output=True, cwd=Path(__file__).parents[1])
                    command_timings[name].append(time.perf_counter() - began)
                    print(f"rep {rep + 1} command {name}: {command_timings[name][-1]:.2f} s", file=sys.stderr)
            command_rows = {name: statistics.median(values) for name, values in command_timings.items()}
            where = f"{target.name} ({target.filesystem})"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = _markdown(args, count, where, rows, spreads, command_rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name or ('dask-quick' if args.quick else 'dask')}.md").write_text(text)
    return 0


def _markdown(args, count, where, rows, spreads, command_rows) -> str:
    import dask
    import distributed
    import zarr

    loop = rows["loop"]
    lines = [
        f"# shmsave.dask: {count} x 256x256x3 uint8 from a zarr store -> .png",
        "",
        f"`{machine.command_line()}`; {machine.cpu_model()}, {machine.usable_cores()} usable cores; "
        f"Python {sys.version.split()[0]}, numpy {np.__version__}, OpenCV {cv2.__version__}, dask {dask.__version__}, "
        f"distributed {distributed.__version__}, zarr {zarr.__version__}; target {where}. Store: chunks of "
        f"{CHUNK} images. Cluster: LocalCluster(n_workers=2, threads_per_worker=1, processes=True), started and "
        f"warmed outside the timing. Medians of {args.repeat} interleaved repetitions.",
        "",
        "| method | median s | spread s | speed-up vs loop |",
        "|---|---|---|---|",
    ]
    for name, median in rows.items():
        low, high = spreads[name]
        lines.append(f"| {name} | {median:.2f} | {low:.2f}-{high:.2f} | {loop / median:.2f}x |")
    lines += [
        "",
        "The command without `--scheduler` (a whole process, scheduler started inside the timing):",
        "",
        "| scheduler | median s |",
        "|---|---|",
    ]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in command_rows.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
