"""Save a Dask array where its blocks live: each Dask worker encodes the blocks it holds.

    import dask.array as da, shmsave.dask
    frames = da.from_zarr("scan.zarr")                                  # (N, H, W[, C])
    report = shmsave.dask.save(frames, "out/{index:07d}.png", compression=3)

    client ──▶ check dtype, channels, options, template (no pixels read)
       │       rechunk to whole images; one task per block along axis 0
       ▼
    Dask worker: np.asarray(block) ──▶ its own shmsave.Writer ──▶ files
       │                               (made on first use, reused for every block)
       ▼
    client ◀── a small Report per block (counts, bytes, seconds, failures)
           ──▶ one merged Report; errors="raise": the first failure by index

Pixels never travel to the client, nor are they pickled to shmsave's workers.
Files must go to a folder every Dask worker can write (on several machines: a
shared filesystem); each file appears under its name only once complete, so a
block that Dask reruns after a worker died writes nothing half-done, and with
``overwrite=False`` it skips what the first attempt finished.

Workers per Dask worker process (unless ``workers=`` says): its ``nthreads``,
at most the CPUs of its host divided by the Dask workers on that host, at
least 1. On dask's threaded (default) or synchronous scheduler, every block
runs in this process and shares one Writer with all usable CPUs; on the
multiprocessing scheduler, which already starts a process per CPU, 1.
"""

from __future__ import annotations

try:
    import dask
    import dask.array as da
    import dask.system
except ImportError as _error:  # pragma: no cover - exercised in a subprocess without dask
    raise ImportError(
        f'shmsave.dask needs Dask: pip install "shmsave[dask]" (dask[array], distributed, zarr); {_error}'
    ) from _error

import contextlib
import math
import os
import string
import time
import uuid
from typing import NamedTuple

import numpy as np

from ._dask_worker import Block, save_block, writer_size
from .errors import InvalidRequest, WriteFailed
from .naming import parse_template
from .report import Failure, Report
from .request import make_request

__all__ = ["save", "save_zarr", "open_zarr", "scheduler", "writer_size"]


def save(
    array,
    template,
    *,
    compute: bool = True,
    workers: int | None = None,
    quality=None,
    compression=None,
    params=None,
    rgb: bool = False,
    start: int = 0,
    overwrite: bool = True,
    errors: str = "raise",
    progress=False,
    durable: bool = False,
    timeout: float | None = None,
    encoder: str = "opencv",
):
    """Write ``array[i]`` to ``template.format(index=start + i)`` on the Dask workers; return a Report.

    ``array``: a ``dask.array.Array`` of shape (N, H, W) or (N, H, W, C), any
    chunking along axis 0 (blocks split along other axes are rechunked to
    whole images first). The options are those of ``shmsave.save``;
    ``workers`` is shmsave's worker count in each Dask worker process
    (default: see the module docstring). Runs on the active scheduler: a
    ``distributed.Client`` if one is active, else dask's default.

    Bad input (shape, dtype for the format, options, template) raises
    InvalidRequest before anything is computed. The Report merges every
    block's: counts, bytes, failures with their global index, skipped; its
    ``seconds`` is the wall time of the whole compute. Every block is saved
    even when one fails; then ``errors="raise"`` raises the first failure by
    index as WriteFailed, with the merged Report as ``.report``, and
    ``"collect"`` returns the Report. On a distributed cluster, a block whose
    workers kept dying (KilledWorker) is reported as a failure of each of its
    images. ``progress``: True for a tqdm bar, or a callable told how many
    more images finished, block by block.

    ``compute=False`` returns a ``dask.delayed`` object instead: its
    ``compute()`` returns the merged Report (raising as above); its
    ``seconds`` then spans the first block's start to the last block's end.
    """
    graph = _block_tasks(
        array,
        template,
        workers=workers,
        quality=quality,
        compression=compression,
        params=params,
        rgb=rgb,
        start=start,
        overwrite=overwrite,
        errors=errors,
        durable=durable,
        timeout=timeout,
        encoder=encoder,
    )
    if not compute:
        if progress:
            raise InvalidRequest(
                "progress is shown only while shmsave.dask.save computes; with compute=False "
                "use dask's own (dask.diagnostics.ProgressBar, distributed.progress)"
            )
        return dask.delayed(_merge_parts, pure=False)(graph.parts, errors, None)
    began = time.perf_counter()
    tick, bar = _ticker(progress, sum(count for _, count in graph.spans))
    try:
        results = _compute(graph, tick)
    finally:
        if bar is not None:
            bar.close()
    return _merge_parts(results, errors, time.perf_counter() - began)


# -- the graph ---------------------------------------------------------------


class _Graph(NamedTuple):
    """The block tasks of one save, and the (first index, image count) of each."""

    parts: list
    spans: list
    template: str


class _Lost(NamedTuple):
    """A block whose Dask workers kept dying while computing it (KilledWorker)."""

    first: int
    count: int
    template: str
    error: BaseException


def _block_tasks(array, template, *, workers, start, errors, **options) -> _Graph:
    """Check the request on the client; return one delayed ``_save_block`` per block."""
    if isinstance(array, np.ndarray):
        raise InvalidRequest(
            "this array is already in this process: save it with shmsave.save(array, ...), "
            "which is faster; shmsave.dask.save is for Dask arrays whose blocks live on workers"
        )
    if not isinstance(array, da.Array):
        raise InvalidRequest(
            f"shmsave.dask.save takes a dask.array.Array, got {type(array).__name__}; "
            "wrap other data with dask.array.from_array / from_zarr first"
        )
    if any(math.isnan(n) for n in array.shape):
        raise InvalidRequest(
            f"the Dask array has unknown chunk sizes (shape {array.shape}); call "
            "array.compute_chunk_sizes() first, so each block knows its first index"
        )
    if workers is not None and (not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1):
        raise InvalidRequest(f"workers must be a positive integer or None (sized to each Dask worker), got {workers!r}")
    if not isinstance(template, (str, os.PathLike)):
        raise InvalidRequest(
            "shmsave.dask.save takes a path template such as 'out/{index:06d}.png'; "
            "a list of paths is for shmsave.save and Writer.save"
        )
    shape, dtype = tuple(int(n) for n in array.shape), array.dtype
    if len(shape) not in (3, 4):
        raise InvalidRequest(f"the Dask array must be (N, H, W) or (N, H, W, C) images, got shape {shape}")
    # A zero-filled stand-in of the same shape and dtype, with zero strides (no memory), goes through
    # shmsave's own checks. For float data they would scan every pixel for NaN: one image stands in
    # there, and each block checks its own pixels on its worker.
    stand_in = np.broadcast_to(np.zeros((), dtype), (min(shape[0], 1) if dtype.kind == "f" else shape[0], *shape[1:]))
    make_request(stand_in, template, start=start, errors=errors, **options)
    parse_template(template, max(shape[0], 1), int(start))
    template = os.fspath(template)
    if any(n > 1 for n in array.numblocks[1:]):
        array = array.rechunk({axis: -1 for axis in range(1, array.ndim)})
    sizing = workers if workers is not None else _sizing()
    blocks = array.to_delayed().ravel()
    name = f"shmsave-block-{uuid.uuid4().hex}"  # saving is a side effect: never share a key with another call
    parts, spans, first = [], [], int(start)
    for i, (block, size) in enumerate(zip(blocks, array.chunks[0])):
        if size:
            parts.append(
                dask.delayed(save_block, pure=False)(
                    block, template, first, size, options, sizing, dask_key_name=(name, i)
                )
            )
            spans.append((first, size))
        first += size
    return _Graph(parts, spans, template)


def _fill_fields(template: str, fields: dict) -> str:
    """``template`` with every field but ``{index}`` filled in (literal braces kept escaped)."""
    out = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        if name == "index":
            out.append("{index" + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
        else:
            text = "{0" + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            out.append(text.format(fields[name]).replace("{", "{{").replace("}", "}}"))
    return "".join(out)


def _sizing():
    """What the block tasks need to size each Writer: see ``_writer_size``."""
    client = _active_client()
    if client is not None:
        hosts: dict[str, int] = {}
        for info in client.scheduler_info(n_workers=-1)["workers"].values():
            hosts[info["host"]] = hosts.get(info["host"], 0) + 1
        return hosts
    if dask.base.get_scheduler() is _multiprocessing_get():
        return 1  # dask's multiprocessing pool has a process per CPU already
    return None  # threads in this process: one Writer with every usable CPU


def _active_client():
    """The distributed Client that dask.compute would use now, or None."""
    get = dask.base.get_scheduler()
    owner = getattr(get, "__self__", None)
    try:
        from distributed import Client
    except ImportError:
        return None
    return owner if isinstance(owner, Client) else None


def _multiprocessing_get():
    with contextlib.suppress(ImportError):
        import dask.multiprocessing

        return dask.multiprocessing.get
    return None


# -- back on the client --------------------------------------------------------


def _compute(graph: _Graph, tick) -> list:
    """Compute the block tasks on the active scheduler: a Block or a _Lost per block."""
    if not graph.parts:
        return []
    client = _active_client()
    if client is None:
        from dask.callbacks import Callback

        def posttask(key, result, dsk, state, worker_id):
            if isinstance(result, Block):
                tick(result.count)

        with Callback(posttask=posttask) if tick is not None else contextlib.nullcontext():
            return list(dask.compute(*graph.parts))
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    futures = client.compute(graph.parts)
    where = {future.key: i for i, future in enumerate(futures)}
    results: list = [None] * len(futures)
    try:
        for future in as_completed(futures):
            i = where[future.key]
            if future.status == "error":
                error = future.exception()
                if not isinstance(error, KilledWorker):
                    raise error
                results[i] = _Lost(*graph.spans[i], graph.template, error)
                continue
            results[i] = future.result()
            if tick is not None:
                tick(results[i].count)
    except BaseException:
        client.cancel(futures)
        raise
    return results


def _merge_parts(results: list, errors: str, seconds: float | None) -> Report:
    """One Report for the whole array; raise its first failure under errors="raise"."""
    count = nbytes = skipped = 0
    failed: list[Failure] = []
    sizes: dict[tuple, int] = {}
    began, ended = math.inf, -math.inf
    encoders = set()
    for result in results:
        if isinstance(result, Block):
            report = result.report
            encoders.add(report.encoder)
            count, nbytes, skipped = count + report.count, nbytes + report.bytes, skipped + report.skipped
            failed += report.failed
            sizes[result.process] = max(sizes.get(result.process, 0), report.workers)
            began, ended = min(began, result.began), max(ended, result.ended)
        else:  # a _Lost block: its Dask workers kept dying
            last = result.first + result.count - 1
            message = (
                f"every Dask worker that tried images {result.first} to {last} died "
                f"({type(result.error).__name__}); each of those files is complete or absent: "
                "rerun with overwrite=False to write what is missing"
            )
            failed += [
                Failure(index, result.template.format(index=index), message) for index in range(result.first, last + 1)
            ]
    if seconds is None:
        seconds = max(0.0, ended - began) if results else 0.0
    encoder = encoders.pop() if len(encoders) == 1 else "opencv"  # every block plans the same request
    report = Report(
        count,
        nbytes,
        seconds,
        tuple(sorted(failed, key=lambda f: f.index)),
        skipped,
        "dask",
        sum(sizes.values()),
        encoder,
    )
    if errors == "raise" and report.failed:
        first = report.failed[0]
        error = WriteFailed(first.index, first.path, first.message, first.errno)
        error.report = report  # travels with it from a Dask worker to the client (compute=False)
        raise error
    return report


def _ticker(progress, total: int):
    """(tick(n) or None, the tqdm bar to close or None)."""
    if callable(progress):
        return progress, None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", dynamic_ncols=True)
        return bar.update, bar
    return None, None


# -- zarr stores and the command --------------------------------------------------


def open_zarr(path) -> da.Array:
    """The array of the zarr store at ``path`` as a Dask array (read lazily), or InvalidRequest."""
    try:
        return da.from_zarr(os.fspath(path))
    except ImportError as error:
        raise ImportError(f'reading .zarr stores needs zarr: pip install "shmsave[dask]"; {error}') from error
    except Exception as error:  # zarr raises several types for "not an array here"
        raise InvalidRequest(
            f"{path} is not a readable zarr array ({type(error).__name__}: {error}); "
            "point at the array itself, e.g. scan.zarr/frames for an array in a group"
        ) from None


def save_zarr(path, template, *, fields: dict | None = None, **options) -> Report:
    """Save every image of the zarr array at ``path`` with ``save`` (the same options), on the
    active scheduler. ``fields`` fill the template's other fields (the command's ``{stem}``)."""
    array = open_zarr(path)
    if fields:
        parse_template(template, 1, 0, fields)  # unknown fields, malformed: InvalidRequest
        template = _fill_fields(os.fspath(template), fields)
    return save(array, template, **options)


@contextlib.contextmanager
def scheduler(address: str | None):
    """Run what is inside on the Dask scheduler at ``address``, or, when None, on dask's threaded
    scheduler in this process (faster than a LocalCluster for the command: see the note below)."""
    # Measured as whole processes, 2 cores, 2,000 x 256x256x3 uint8 zarr store (chunks of 100) -> PNG,
    # medians of 3 (benchmarks/results/dask.md): threads 8.45 s, LocalCluster 2 workers x 1 thread
    # 9.02 s, 1 x 2 9.41 s; a cluster's start (~2.5 s here) is not paid back on one machine.
    if address is None:
        with dask.config.set(scheduler="threads"):
            yield None
        return
    try:
        from distributed import Client
    except ImportError as error:
        raise ImportError(f'--scheduler needs distributed: pip install "shmsave[dask]"; {error}') from error
    try:
        client = Client(address, set_as_default=True)  # waits distributed.comm.timeouts.connect (30 s)
    except (OSError, TimeoutError) as error:
        raise InvalidRequest(f"cannot reach the Dask scheduler at {address}: {error}") from None
    with client:
        yield client
