"""The Dask worker's side of ``shmsave.dask``: one Writer per process, sized to its share of the host.

Each block task runs ``save_block`` on the Dask worker that holds the block:
``np.asarray(block)`` is the only copy of its pixels, made there; the
process's Writer (made on first use, reused for every block) writes them, and
a small ``Block`` result (a Report and a few numbers) goes back to the client.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import NamedTuple

import numpy as np

from .errors import WriteFailed
from .report import Failure, Report
from .writer import Writer


class Block(NamedTuple):
    """What one block's task sends back: a few numbers, never pixels."""

    report: Report
    first: int  # global index of the block's first image
    count: int
    process: tuple  # (host name, pid): which Writer saved it
    began: float  # time.time() on the Dask worker
    ended: float


_lock = threading.Lock()
_state: dict = {}  # "pid", "size", "writer": this process's Writer


def writer_size(nthreads: int, cpus: int, workers_on_host: int) -> int:
    """shmsave workers for a Dask worker with ``nthreads`` threads, on a host with ``cpus``
    usable CPUs shared by ``workers_on_host`` Dask worker processes: no more than its
    threads, no more than its share of the host, at least 1."""
    return max(1, min(nthreads, cpus // max(1, workers_on_host)))


def writer_size_for(sizing) -> int | None:
    if sizing is None or isinstance(sizing, int):
        return sizing
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a distributed worker after all
        return None
    import dask.system  # respects CPU affinity and container limits

    nthreads = getattr(worker, "state", worker).nthreads
    return writer_size(nthreads, dask.system.CPU_COUNT, sizing.get(_host_of(worker), 1))


def _host_of(worker) -> str:
    address = worker.address.split("://")[-1]
    return address.rsplit(":", 1)[0].strip("[]")


def _writer(size: int | None) -> Writer:
    """This process's Writer, made on first use (and again when ``size`` changes)."""
    with _lock:
        if _state.get("pid") != os.getpid():  # forked from a process that had one: make our own
            _state.clear()
        writer = _state.get("writer")
        if writer is None or _state["size"] != size:
            replacement = Writer(size)
            if writer is not None:
                writer.close()
            _state.update(pid=os.getpid(), size=size, writer=replacement)
            writer = replacement
        return writer


def save_block(block, template: str, first: int, count: int, options: dict, sizing) -> Block:
    """Save one block with this process's Writer; return its Report (failures collected)."""
    began = time.time()
    images = np.asarray(block)
    if len(images) != count:
        raise RuntimeError(f"block of images {first}..{first + count - 1} has {len(images)} images")
    writer = _writer(writer_size_for(sizing))
    options = {**options, "errors": "collect"}
    try:
        report = writer.save(images, template, start=first, **options)
    except WriteFailed as error:  # the folder cannot be written: no image of the block was tried
        if error.report is not None:
            report = error.report
        else:
            failed = tuple(
                Failure(index, template.format(index=index), error.message, error.errno)
                for index in range(first, first + count)
            )
            report = Report(0, 0, time.time() - began, failed, engine="none", workers=writer.workers)
    return Block(report, first, count, (socket.gethostname(), os.getpid()), began, time.time())
