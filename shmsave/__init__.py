"""shmsave: save batches of in-memory images to files on every core.

    report = shmsave.save(images, "out/{index:06d}.jpg", quality=90)

    with shmsave.Writer(workers=4) as writer:
        writer.save(batch, "run/{index}.png")
"""

from .api import save
from .errors import InvalidRequest, ShmsaveError, WorkerDied, WriteFailed, WriterClosed
from .report import Failure, Report
from .writer import Writer

__version__ = "0.1.0"

__all__ = [
    "save",
    "Writer",
    "Report",
    "Failure",
    "ShmsaveError",
    "InvalidRequest",
    "WriteFailed",
    "WorkerDied",
    "WriterClosed",
    "__version__",
]
