"""A user's script that touches every public name of shmsave; ``mypy --strict`` must pass on it
(tests/test_typing.py). It is type-checked, never run."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import numpy as np

import shmsave


def every_public_name(frames: np.ndarray, folder: Path) -> list[shmsave.Report]:
    reports: list[shmsave.Report] = []
    reports.append(shmsave.save(frames, folder / "{index:06d}.jpg", quality=90, workers=2, start=10, encoder="opencv"))
    encoder: str = reports[-1].encoder
    assert encoder == "opencv"
    reports.append(
        shmsave.save(
            [frames[0], frames[1]],
            str(folder / "{index}.png"),
            compression=3,
            params={"IMWRITE_PNG_STRATEGY": 1},
            rgb=True,
            overwrite=False,
            errors="collect",
            progress=True,
        )
    )
    told: list[int] = []
    with shmsave.Writer(workers=2, engine="auto") as writer:
        writer.start()
        buffer: np.ndarray = writer.empty((4, 32, 32, 3), "uint8")
        buffer[...] = frames[:4]
        reports.append(writer.save(buffer, os.path.join(folder, "{index}.bmp"), progress=told.append))
        future: concurrent.futures.Future[shmsave.Report] = writer.submit(
            frames, folder / "s{index}.png", compression=1, durable=True, timeout=30.0
        )
        reports.append(future.result())
        pids: list[int] = writer.pids
        assert len(pids) <= writer.workers
    with shmsave.stream(folder / "s{index:06d}.jpg", quality=90, total=len(frames)) as stream:
        for frame in frames:
            stream.write(frame)
    streamed: shmsave.Report | None = stream.report
    with shmsave.Writer() as writer, writer.stream(str(folder / "d{index}.png"), compression=1) as depth:
        opened: shmsave.Stream = depth
        opened.write(frames[0])
        opened.write(frames[1], path=folder / "own.png", params=[1, 2])
        finished: shmsave.Report = opened.close()
        reports.append(finished)
        accepted: bool = writer.imwrite(folder / "w.jpg", frames[0], [1, 90])
        assert accepted
        reports.append(writer.flush())
    reports.append(shmsave.save(frames, [folder / f"l{i}.png" for i in range(len(frames))]))
    reports.append(shmsave.save(frames, str(folder / "{shard}/{name}.png"), fields={"name": ["a"] * len(frames)}))
    assert shmsave.imwrite(str(folder / "i.png"), frames[0])
    reports.append(shmsave.flush())
    assert streamed is not None
    try:
        reports.append(shmsave.save_frames(folder / "clip.mp4", folder / "f{index:06d}.jpg", step=10, workers=2))
        with shmsave.Writer() as writer:
            reports.append(writer.save_frames("scan.tif", folder / "p{index}.png", start=1, stop=9, progress=True))
    except shmsave.ReadFailed as error:
        last: int | None = error.last_index
        written: shmsave.Report | None = error.report
        assert last is None or written is not None
    try:
        shmsave.save(frames, "bad/{index}.xyz")
    except shmsave.InvalidRequest as error:
        message: str = str(error)
        assert message
    except (shmsave.WriteFailed, shmsave.WorkerDied, shmsave.WorkerFailed) as error:
        partial: shmsave.Report | None = error.report
        assert partial is None or partial.count >= 0
    except shmsave.WriteTimedOut as error:
        seconds: float = error.seconds
        assert seconds > 0 and error.report is not None
    except (shmsave.WriterClosed, shmsave.StreamClosed):
        pass
    except shmsave.ShmsaveError:
        pass
    for report in reports:
        failures: tuple[shmsave.Failure, ...] = report.failed
        rate: float = report.images_per_second
        assert report.ok or failures and rate >= 0
    assert shmsave.__version__
    return reports
