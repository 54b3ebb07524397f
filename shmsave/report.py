"""What a save returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    """One image that was not written: its index, its path and why."""

    index: int
    path: str
    message: str
    errno: int | None = None


@dataclass(frozen=True)
class Report:
    """The outcome of one save: images written, bytes, wall seconds, and failures.

    ``skipped`` counts existing files left alone (``overwrite=False``);
    ``engine`` and ``workers`` say how the images were written.
    """

    count: int
    bytes: int
    seconds: float
    failed: tuple[Failure, ...] = ()
    skipped: int = 0
    engine: str = "inline"
    workers: int = 1

    @property
    def images_per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """True when no image failed."""
        return not self.failed

    def __str__(self) -> str:
        text = (f"{self.count} images, {self.bytes / 1e6:.1f} MB in {self.seconds:.2f} s "
                f"({self.images_per_second:.0f} images/s, {self.engine} x{self.workers})")
        if self.skipped:
            text += f", {self.skipped} skipped (already there)"
        if self.failed:
            text += f", {len(self.failed)} failed"
        return text
