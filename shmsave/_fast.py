"""``encoder="fast"``: lossless encoders several times faster than OpenCV's, same pixels on decode.

For a lossless format the pixels a reader gets back do not depend on which encoder wrote the file,
so for these formats shmsave may write with a faster one (measured one core each on the
development machine: ``python -m benchmarks.encoders --workers 1``):

- PNG (uint8, uint16; 1, 3, 4 channels): the "up" filter (one numpy subtraction) and ISA-L's
  deflate at level 1 (``isal``), in a PNG written here; files about the size of OpenCV's. OpenCV
  writes PNG through libpng + zlib (its default: level 1, the "sub" filter, RLE strategy).
- TIFF (every dtype shmsave writes as TIFF; 1, 3, 4 channels): one strip, deflated by ISA-L at
  level 1 with the horizontal predictor for integers (OpenCV: LZW with it), uncompressed for
  floats (as OpenCV), in a TIFF written here.
- lossless WebP (OpenCV's default for ``.webp``, or ``quality=101``): libwebp through
  ``imagecodecs`` at method 0, where OpenCV's simple libwebp call has no speed setting. It keeps
  the colour of fully transparent pixels (libwebp's ``exact``), which OpenCV's file loses.

Every other format and lossy WebP fall back to OpenCV: the Request's Encoding says so, and the
Report (``Report.encoder``). Rejected after measuring: fpng (several times faster still on RGB
uint8, but it holds the GIL for the whole encode and takes no gray or 16-bit images), imagecodecs' libpng
and libspng (no faster than OpenCV's libpng at the same settings), TIFF with zstd (OpenCV's
libtiff cannot read it).

Nothing here imports ``isal`` or ``imagecodecs`` until a task builds a fast encoder
(``encoder_for``), so neither the parent's checks nor a worker's start-up load them.
"""

from __future__ import annotations

import errno
import importlib.util
import struct
import zlib
from collections.abc import Callable

import numpy as np

from .errors import InvalidRequest

_PACKAGES = ("isal", "imagecodecs")
INSTALL = 'pip install "shmsave[fast]"'

# OpenCV's IMWRITE_PNG_COMPRESSION (0-9) -> ISA-L level (0-3). None: level 1, whose PNG files
# came out the size of OpenCV's default ones (dataset 1.00x, microscopy 0.99x the bytes, 3.2-3.9x
# its speed per core: benchmarks/results/encoders-1-worker.md); level 0 made 1.6x the bytes.
_PNG_LEVELS = (0, 1, 1, 1, 2, 2, 2, 3, 3, 3)
_PNG_DEFAULT_LEVEL = 1
_WEBP_LOSSLESS = 101  # OpenCV's WebP quality above 100 means lossless
# libwebp's fastest lossless effort: 32x OpenCV's default per core, files 1.11x its bytes
# (benchmarks/results/encoders-1-worker.md); at method 0 the quality setting changed neither.
_WEBP_METHOD = 0


def missing_packages() -> list[str]:
    """The packages of the ``fast`` extra this environment lacks (found without importing them)."""
    return [name for name in _PACKAGES if not _installed(name)]


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails, a module without a spec
        return False


def plan(extension: str, flags: dict[int, int], raw: list[int], cv2) -> str:
    """The encoder that writes ``extension`` with these OpenCV ``flags`` when ``fast`` is asked:
    ``"fast"`` or ``"opencv"`` (no faster lossless encoder for it). ``raw``: the caller's own
    ``params``, which no fast encoder takes. InvalidRequest if the extra is missing."""
    missing = missing_packages()
    if missing:
        raise InvalidRequest(
            f"encoder='fast' needs the fast extra ({', '.join(missing)} not installed): {INSTALL}, "
            "or use encoder='opencv'"
        )
    if not _covers(extension, flags, cv2):
        return "opencv"
    if raw:
        raise InvalidRequest(
            f"params are OpenCV's flags, and encoder='fast' writes {extension} without OpenCV: "
            "drop params (quality= and compression= map to the fast encoder's settings), or use encoder='opencv'"
        )
    return "fast"


def covers(extension: str, params: tuple[int, ...]) -> bool:
    """Whether a fast encoder writes ``extension`` with these planned OpenCV ``params`` (a call
    of several formats asks this per format: the others are OpenCV's)."""
    import cv2

    return _covers(extension, dict(zip(params[::2], params[1::2])), cv2)


def _covers(extension: str, flags: dict[int, int], cv2) -> bool:
    if extension == ".png":
        return True
    if extension == ".webp":
        return flags.get(cv2.IMWRITE_WEBP_QUALITY, _WEBP_LOSSLESS) > 100
    if extension in (".tif", ".tiff"):
        return flags.get(cv2.IMWRITE_TIFF_COMPRESSION) in _TIFF_CODES
    return False


def encoder_for(extension: str, params: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """The fast encoder of a planned request: an OpenCV-ordered (BGR(A)) image in, the file's bytes
    as a uint8 array out. Imports the extra's packages (a task that uses them pays it once)."""
    import cv2

    flags = dict(zip(params[::2], params[1::2]))
    if extension == ".png":
        compression = flags.get(cv2.IMWRITE_PNG_COMPRESSION)
        level = _PNG_DEFAULT_LEVEL if compression is None else _PNG_LEVELS[compression]
        return _png_encoder(level)
    if extension == ".webp":
        return _webp_encoder()
    if extension in (".tif", ".tiff"):
        return _tiff_encoder(_TIFF_CODES[flags.get(cv2.IMWRITE_TIFF_COMPRESSION)])
    raise ValueError(f"no fast encoder for {extension}")  # plan() never chooses one


# -- PNG ---------------------------------------------------------------------

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # gray, RGB, RGBA
_IDAT_MAX = 1 << 30  # a chunk's length must stay below 2**31


def _png_encoder(level: int) -> Callable[[np.ndarray], np.ndarray]:
    import cv2
    from isal import isal_zlib

    to_rgb = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGBA}

    def encode(image: np.ndarray) -> np.ndarray:
        """PNG of ``image``: each row "up"-filtered (type 2; the first row's "up" is the row
        itself), deflated by ISA-L. Every step but the header releases the GIL."""
        height, width = image.shape[:2]
        channels = image.shape[2] if image.ndim == 3 else 1
        if channels in to_rgb:
            image = cv2.cvtColor(image, to_rgb[channels])
        if image.dtype == np.uint16:
            image = image.astype(">u2")  # PNG samples are big-endian
        rows = np.ascontiguousarray(image).view(np.uint8).reshape(height, -1)
        filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
        filtered[:, 0] = 2
        filtered[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
        data = isal_zlib.compress(filtered, level)
        header = struct.pack(">IIBBBBB", width, height, image.dtype.itemsize * 8, _COLOR_TYPES[channels], 0, 0, 0)
        parts = [_SIGNATURE, *_chunk(b"IHDR", header)]
        for start in range(0, len(data), _IDAT_MAX):
            parts += _chunk(b"IDAT", memoryview(data)[start : start + _IDAT_MAX])
        parts += _chunk(b"IEND", b"")
        return np.frombuffer(b"".join(parts), np.uint8)

    return encode


def _chunk(kind: bytes, data) -> list:
    return [struct.pack(">I", len(data)), kind, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))]


# -- TIFF ---------------------------------------------------------------------

# OpenCV's IMWRITE_TIFF_COMPRESSION -> what the fast TIFF does: None (OpenCV's default, LZW for
# integers) -> deflate; 1 (none) -> none; 8 and 32946 (deflate) -> deflate. Other codes (LZW,
# PackBits, ...) name an encoding the fast TIFF does not write: OpenCV writes them.
_TIFF_NONE, _TIFF_DEFLATE = 1, 8
_TIFF_CODES = {None: _TIFF_DEFLATE, 1: _TIFF_NONE, 8: _TIFF_DEFLATE, 32946: _TIFF_DEFLATE}
_TIFF_LEVEL = 1  # as PNG's default: 16-bit TIFF 2.5x OpenCV's speed per core, 0.85x its bytes
_SAMPLE_FORMATS = {"u": 1, "i": 2, "f": 3}
_SHORT, _LONG = 3, 4


def _tiff_encoder(compression: int) -> Callable[[np.ndarray], np.ndarray]:
    from isal import isal_zlib

    def encode(image: np.ndarray) -> np.ndarray:
        """A little-endian TIFF of ``image`` in one strip; integers get the horizontal predictor
        (each sample minus the one to its left, wrapping) before deflate, as OpenCV's LZW does."""
        height, width = image.shape[:2]
        channels = image.shape[2] if image.ndim == 3 else 1
        if channels >= 3:  # TIFF holds RGB(A); readers (OpenCV too) give BGR(A) back
            image = image[..., [2, 1, 0, 3][:channels]]
        image = np.ascontiguousarray(image, image.dtype.newbyteorder("<")).reshape(height, width, channels)
        sample_format, bits = _SAMPLE_FORMATS[image.dtype.kind], image.dtype.itemsize * 8
        predictor = compression == _TIFF_DEFLATE and image.dtype.kind in "iu"
        if predictor:
            samples = image.view(f"<u{image.dtype.itemsize}")  # differences wrap as unsigned ones
            image = np.empty_like(samples)
            image[:, 0] = samples[:, 0]
            np.subtract(samples[:, 1:], samples[:, :-1], out=image[:, 1:])
        data = (
            isal_zlib.compress(image, _TIFF_LEVEL) if compression == _TIFF_DEFLATE else image.reshape(-1).view(np.uint8)
        )
        header, tail = _tiff_header(len(data), width, height, channels, bits, sample_format, compression, predictor)
        return np.frombuffer(b"".join([header, data, tail]), np.uint8)

    return encode


def _tiff_header(
    size: int, width: int, height: int, channels: int, bits: int, sample_format: int, compression: int, predictor: bool
) -> tuple[bytes, bytes]:
    """The 8-byte TIFF header, and what follows ``size`` bytes of strip data at offset 8: the
    arrays that do not fit an entry, then the one IFD (classic TIFF: a file below 4 GiB)."""
    if size + 1024 >= 2**32:
        # an OSError: one image fails (written as all others are), not the task
        raise OSError(errno.EFBIG, "the fast TIFF encoder writes classic TIFF, below 4 GiB: use encoder='opencv'")
    after = 8 + size + (size & 1)  # the IFD and its arrays start on a word boundary
    arrays = b""
    entries = []

    def shorts(tag: int, values: list[int]) -> None:
        nonlocal arrays
        packed = struct.pack(f"<{len(values)}H", *values)
        if len(packed) <= 4:
            entries.append(struct.pack("<HHI", tag, _SHORT, len(values)) + packed.ljust(4, b"\0"))
        else:
            entries.append(struct.pack("<HHII", tag, _SHORT, len(values), after + len(arrays)))
            arrays += packed

    def long(tag: int, value: int) -> None:
        entries.append(struct.pack("<HHII", tag, _LONG, 1, value))

    long(256, width)
    long(257, height)
    shorts(258, [bits] * channels)
    shorts(259, [compression])
    shorts(262, [2 if channels >= 3 else 1])  # RGB, or min-is-black
    long(273, 8)  # the strip's offset
    shorts(277, [channels])
    long(278, height)  # one strip
    long(279, size)
    shorts(284, [1])  # samples interleaved
    if predictor:
        shorts(317, [2])  # horizontal differencing
    # No ExtraSamples for a fourth sample, as OpenCV writes it: marked as alpha, OpenCV's reader of
    # 8-bit images would premultiply the colours by it.
    shorts(339, [sample_format] * channels)
    tail = [b"\0" * (size & 1), arrays, struct.pack("<H", len(entries)), *entries, struct.pack("<I", 0)]
    return struct.pack("<2sHI", b"II", 42, after + len(arrays)), b"".join(tail)


# -- WebP --------------------------------------------------------------------


def _webp_encoder() -> Callable[[np.ndarray], np.ndarray]:
    import cv2
    import imagecodecs

    # WebP holds no gray: OpenCV writes gray as BGR, and a reader gets 3 equal channels back.
    to_rgb = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGBA}

    def encode(image: np.ndarray) -> np.ndarray:
        channels = image.shape[2] if image.ndim == 3 else 1
        rgb = cv2.cvtColor(image, to_rgb[channels])
        return np.frombuffer(imagecodecs.webp_encode(rgb, 0, lossless=True, method=_WEBP_METHOD), np.uint8)

    return encode
