"""Deterministic image stacks with realistic content, generated in memory.

Every image is a crop of a scikit-image sample photograph, resized, with a soft
gradient and a little Gaussian noise on top, so encoders see natural content
rather than pure noise.  The same seed always gives the same pixels.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

_PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "retina", "camera")


@functools.cache
def _photos(channels: int) -> tuple[np.ndarray, ...]:
    """The sample photographs as uint8 arrays: BGR when channels == 3, gray when 1.

    Photographs that cannot be loaded (e.g. retina needs a one-time download)
    are left out; if none load, a smooth synthetic scene stands in.
    """
    import skimage.data

    out = []
    for name in _PHOTO_NAMES:
        try:
            photo = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - any loader failure just drops that photo
            continue
        if photo.ndim == 2:
            photo = cv2.cvtColor(photo, cv2.COLOR_GRAY2BGR)
        else:
            photo = cv2.cvtColor(photo[..., :3], cv2.COLOR_RGB2BGR)
        out.append(photo if channels == 3 else cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    if not out:
        y, x = np.mgrid[0:512, 0:512].astype(np.float32)
        scene = (127 + 60 * np.sin(x / 37) * np.cos(y / 23)).astype(np.uint8)
        out.append(cv2.merge([scene] * 3) if channels == 3 else scene)
    return tuple(out)


def _gradient(rng: np.random.Generator, h: int, w: int, amplitude: float) -> np.ndarray:
    """A linear ramp of the given peak amplitude in a random direction, float32 (h, w)."""
    angle = rng.uniform(0, 2 * np.pi)
    ys = np.linspace(-amplitude, amplitude, h, dtype=np.float32)[:, None] * np.sin(angle)
    xs = np.linspace(-amplitude, amplitude, w, dtype=np.float32)[None, :] * np.cos(angle)
    return ys + xs


def _scene(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    """A random crop of a random photograph resized to (h, w[, 3]), as float32.

    The crop is 0.5x to 3x the output size (capped by the photograph), so
    content is neither a flat blur nor aliased mush.
    """
    photos = _photos(channels)
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    zoom = rng.uniform(0.5, 3.0)
    ch, cw = min(ph, max(2, int(h * zoom))), min(pw, max(2, int(w * zoom)))
    y0, x0 = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    crop = photo[y0 : y0 + ch, x0 : x0 + cw]
    shrinking = h * w < ch * cw
    resized = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return resized.astype(np.float32)


def _finish(
    rng: np.random.Generator, img: np.ndarray, noise: float, gradient: float, scale: float, dtype: type, maxval: int
) -> np.ndarray:
    """Scale, add gradient and Gaussian noise, clip to [0, maxval] and cast."""
    h, w = img.shape[:2]
    ramp = _gradient(rng, h, w, gradient)
    if img.ndim == 3:
        ramp = ramp[..., None]
    out = img * scale + ramp + rng.standard_normal(img.shape, dtype=np.float32) * noise
    return np.clip(out, 0, maxval).astype(dtype)


def tiny(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 50, 50, 1) uint8: small gray patches, as in the original question."""
    out = np.empty((count, 50, 50, 1), np.uint8)
    for i in range(count):
        scene = _scene(rng, 50, 50, 1)
        out[i, ..., 0] = _finish(rng, scene, 3.0, 20.0, 1.0, np.uint8, 255)
    return out


def noise(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 50, 50, 1) uint8 noise, as the question makes it: ``np.random.randint(0, 255, (N, 50, 50, 1))``
    (values 0-254), here seeded and uint8 (the question's own arrays are int64)."""
    return rng.integers(0, 255, size=(count, 50, 50, 1), dtype=np.uint8)


def video(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 1080, 1920, 3) uint8: a camera panning across one scene, with sensor noise."""
    h, w, pan = 1080, 1920, 8
    photos = _photos(3)
    base = photos[rng.integers(len(photos))]
    scene = cv2.resize(base, (w + pan * count, h + pan * count), interpolation=cv2.INTER_CUBIC)
    scene = scene.astype(np.int16)
    # One noise field, sampled at a different offset per frame: cheap, and no two frames alike.
    noise = np.rint(rng.standard_normal((h + 64, w + 64, 3), dtype=np.float32) * 2).astype(np.int16)
    out = np.empty((count, h, w, 3), np.uint8)
    for i in range(count):
        dy, dx = rng.integers(0, 64, size=2)
        frame = scene[i * pan : i * pan + h, i * pan : i * pan + w] + noise[dy : dy + h, dx : dx + w]
        np.clip(frame, 0, 255, out=frame)
        out[i] = frame
    return out


def dataset(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 256, 256, 3) uint8: random photo crops, like a training set."""
    out = np.empty((count, 256, 256, 3), np.uint8)
    for i in range(count):
        out[i] = _finish(rng, _scene(rng, 256, 256, 3), 3.0, 20.0, 1.0, np.uint8, 255)
    return out


def microscopy(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 512, 512) uint16: 12-bit gray frames with uneven illumination and read noise."""
    out = np.empty((count, 512, 512), np.uint16)
    for i in range(count):
        scene = _scene(rng, 512, 512, 1)
        out[i] = _finish(rng, scene, 20.0, 300.0, 16.0, np.uint16, 4095)
    return out


def mixed(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """A list of count uint8 BGR arrays, each side drawn uniformly from 32..1024 px."""
    sizes = rng.integers(32, 1025, size=(count, 2))
    return [_finish(rng, _scene(rng, int(h), int(w), 3), 3.0, 20.0, 1.0, np.uint8, 255) for h, w in sizes]


def _params(ext: str, quality: int | None) -> list[int]:
    """The OpenCV imwrite parameters every method uses for this format."""
    if quality is None:
        return []
    flag = {".jpg": cv2.IMWRITE_JPEG_QUALITY, ".webp": cv2.IMWRITE_WEBP_QUALITY}[ext]
    return [flag, quality]


@dataclass(frozen=True)
class Spec:
    """How to build one workload: its size in full and --quick runs, its output format, and the
    fewest repetitions of a full run (a call of a few milliseconds needs many to give a stable median)."""

    name: str
    summary: str
    count: int
    quick_count: int
    ext: str
    quality: int | None
    make: Callable[[np.random.Generator, int], np.ndarray | list[np.ndarray]]
    min_repeat: int = 1
    targets: tuple[str, ...] | None = None  # the only targets it runs on (None: every target)


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("tiny100", "50x50x1 uint8 -> .jpg q95", 100, 100, ".jpg", 95, tiny, 25),
        Spec("tiny1000", "50x50x1 uint8 -> .jpg q95", 1000, 1000, ".jpg", 95, tiny, 11),
        Spec("tiny10000", "50x50x1 uint8 -> .jpg q95", 10000, 10000, ".jpg", 95, tiny),
        Spec("video", "1080x1920x3 uint8 frames -> .jpg q95", 48, 12, ".jpg", 95, video),
        Spec("dataset", "256x256x3 uint8 -> .png (OpenCV default compression)", 2000, 100, ".png", None, dataset),
        Spec(
            "microscopy",
            "512x512 uint16 (12-bit) -> .png (OpenCV default compression)",
            200,
            40,
            ".png",
            None,
            microscopy,
        ),
        Spec("mixed", "list of uint8 BGR arrays, sides 32-1024 px -> .webp q90", 1000, 24, ".webp", 90, mixed),
        # Issue 12: the question's three sizes (noise, OpenCV's default JPEG quality) and 50,000 tiny images,
        # on tmpfs only (on the disk, thousands of tiny files measure the disk, and a full run stays < 1 h).
        Spec(
            "question100",
            "50x50x1 uint8 noise (the question's arrays) -> .jpg (OpenCV default quality)",
            100,
            100,
            ".jpg",
            None,
            noise,
            25,
            ("tmpfs",),
        ),
        Spec(
            "question1000",
            "50x50x1 uint8 noise (the question's arrays) -> .jpg (OpenCV default quality)",
            1000,
            1000,
            ".jpg",
            None,
            noise,
            11,
            ("tmpfs",),
        ),
        Spec(
            "question10000",
            "50x50x1 uint8 noise (the question's arrays) -> .jpg (OpenCV default quality)",
            10000,
            10000,
            ".jpg",
            None,
            noise,
            1,
            ("tmpfs",),
        ),
        Spec("tiny50000", "50x50x1 uint8 -> .jpg q95", 50000, 20000, ".jpg", 95, tiny, 1, ("tmpfs",)),
    )
}


@dataclass
class Workload:
    """One generated workload plus a private scratch folder for untimed preparations.

    ``encoded`` and ``npy_path`` are computed on first use and then reused by
    every repetition, target and worker count.
    """

    spec: Spec
    images: np.ndarray | list[np.ndarray]
    scratch: Path
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def ext(self) -> str:
        return self.spec.ext

    @property
    def params(self) -> list[int]:
        return _params(self.spec.ext, self.spec.quality)

    @property
    def is_list(self) -> bool:
        return isinstance(self.images, list)

    @property
    def nbytes(self) -> int:
        return sum(img.nbytes for img in self.images) if self.is_list else self.images.nbytes

    def encoded(self) -> list[bytes]:
        """Each image encoded once with the workload's format and params (cached)."""
        if "encoded" not in self._cache:
            blobs = []
            for img in self.images:
                ok, buf = cv2.imencode(self.ext, img, self.params)
                if not ok:
                    raise RuntimeError(f"cv2.imencode failed for {self.name}")
                blobs.append(buf.tobytes())
            self._cache["encoded"] = blobs
        return self._cache["encoded"]

    def input_path(self) -> Path:
        """The images in a file a fresh interpreter can load: the .npy of a stack, a pickle of a list."""
        if not self.is_list:
            return self.npy_path()
        if "pickle" not in self._cache:
            path = self.scratch / f"{self.name}.pkl"
            with open(path, "wb") as f:
                pickle.dump(self.images, f, protocol=pickle.HIGHEST_PROTOCOL)
            self._cache["pickle"] = path
        return self._cache["pickle"]

    def npy_path(self) -> Path:
        """The image stack saved as a .npy file in the scratch folder (written once)."""
        if self.is_list:
            raise TypeError("a list of differently sized arrays has no .npy form")
        if "npy" not in self._cache:
            path = self.scratch / f"{self.name}.npy"
            np.save(path, self.images)
            self._cache["npy"] = path
        return self._cache["npy"]


def build(spec: Spec, quick: bool, seed: int, scratch: Path) -> Workload:
    """Generate one workload deterministically from (seed, workload name)."""
    count = spec.quick_count if quick else spec.count
    rng = np.random.default_rng([seed, *spec.name.encode()])
    scratch.mkdir(parents=True, exist_ok=True)
    return Workload(spec, spec.make(rng, count), scratch)
