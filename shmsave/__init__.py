"""shmsave: save batches of in-memory images to files on every core.

report = shmsave.save(images, "out/{index:06d}.jpg", quality=90)

with shmsave.Writer(workers=4) as writer:
    writer.save(batch, "run/{index}.png")

with shmsave.stream("out/{index:06d}.jpg") as stream:   # inside a loop that makes images
    for frame in video:
        stream.write(frame)

shmsave.save_frames("clip.mp4", "frames/{index:06d}.jpg")   # every frame of a video (or TIFF page)
for path, image in items:                                # a cv2.imwrite loop, on every core
    shmsave.imwrite(path, image)
shmsave.flush()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _opencv
from .errors import (
    InvalidRequest,
    ReadFailed,
    ShmsaveError,
    StreamClosed,
    WorkerDied,
    WorkerFailed,
    WriteFailed,
    WriterClosed,
    WriteTimedOut,
)

_opencv.check_installed()  # a clear ImportError now, not "No module named 'cv2'" on first use

if TYPE_CHECKING:
    from .api import flush, imwrite, save, save_frames, stream
    from .report import Failure, Report
    from .streaming import Stream
    from .writer import Writer

__version__ = "0.1.0"

__all__ = [
    "save",
    "save_frames",
    "stream",
    "imwrite",
    "flush",
    "Writer",
    "Stream",
    "Report",
    "Failure",
    "ShmsaveError",
    "InvalidRequest",
    "WriteFailed",
    "WorkerDied",
    "WorkerFailed",
    "WriteTimedOut",
    "ReadFailed",
    "WriterClosed",
    "StreamClosed",
    "__version__",
]

# Imported on first use: every worker process imports this file too (it runs
# shmsave._worker), and the parent's modules cost it ~30 ms of a ~120 ms start.
_LAZY = {
    "save": "api",
    "save_frames": "api",
    "stream": "api",
    "imwrite": "api",
    "flush": "api",
    "Stream": "streaming",
    "Writer": "writer",
    "Report": "report",
    "Failure": "report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(f".{module}", __name__), name)
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
