"""Image formats: which extension takes which pixels, and which OpenCV flags.

Everything here runs in the parent, once per request, before any worker
starts. OpenCV itself accepts almost anything and converts silently (an
``int64`` image becomes saturated ``uint8``, a ``float64`` image in [0, 1]
becomes nearly black); shmsave refuses such requests instead and says how to
fix them.
"""

import os
from _thread import allocate_lock  # what threading.Lock is; importing threading costs a first save ~1 ms
from typing import NamedTuple

import numpy as np

from ._opencv import import_cv2
from .errors import InvalidRequest

cv2 = import_cv2()

ENCODERS = ("opencv", "fast")  # what makes a file's bytes: cv2.imencode, or _fast.py where it covers


class Format(NamedTuple):
    """What one file format can hold and how its options map to OpenCV flags."""

    name: str
    dtypes: frozenset[str]
    channels: frozenset[int]
    quality_flag: int | None = None
    quality_range: tuple[int, int] = (0, 100)
    quality_scale: int = 1  # JPEG 2000 counts quality in thousandths
    compression_flag: int | None = None
    compression_range: tuple[int, int] | None = None
    max_side: int | None = None  # the encoder's limit on width and height, in pixels


def _flag(name: str) -> int | None:
    return getattr(cv2, name, None)


_U8 = frozenset({"uint8"})
_U8_U16 = frozenset({"uint8", "uint16"})
_F32 = frozenset({"float32"})
_ANY_CHANNELS = frozenset({1, 3, 4})

# libjpeg's JPEG_MAX_DIMENSION; libwebp's WEBP_MAX_DIMENSION (encoding fails silently above them)
_JPEG = Format("JPEG", _U8, _ANY_CHANNELS, _flag("IMWRITE_JPEG_QUALITY"), max_side=65500)
_PNG = Format(
    "PNG", _U8_U16, _ANY_CHANNELS, None, compression_flag=_flag("IMWRITE_PNG_COMPRESSION"), compression_range=(0, 9)
)
_WEBP = Format("WebP", _U8, _ANY_CHANNELS, _flag("IMWRITE_WEBP_QUALITY"), (1, 101), max_side=16383)
_TIFF = Format(
    "TIFF",
    frozenset({"uint8", "int8", "uint16", "int16", "int32", "float32", "float64"}),
    _ANY_CHANNELS,
    compression_flag=_flag("IMWRITE_TIFF_COMPRESSION"),
)
_BMP = Format("BMP", _U8, _ANY_CHANNELS)
_JP2 = Format("JPEG 2000", _U8_U16, _ANY_CHANNELS, _flag("IMWRITE_JPEG2000_COMPRESSION_X1000"), quality_scale=10)
_AVIF = Format("AVIF", _U8_U16, _ANY_CHANNELS, _flag("IMWRITE_AVIF_QUALITY"))
_PGM = Format("PGM", _U8_U16, frozenset({1}))
_PPM = Format("PPM", _U8_U16, frozenset({3}))
_PNM = Format("PNM", _U8_U16, frozenset({1, 3}))
_PBM = Format("PBM", _U8, frozenset({1}))
_PAM = Format("PAM", _U8_U16, _ANY_CHANNELS)
_PFM = Format("PFM", _F32, frozenset({1, 3}))
_HDR = Format("Radiance HDR", _F32, frozenset({1, 3}), compression_flag=_flag("IMWRITE_HDR_COMPRESSION"))
_SUNRASTER = Format("Sun raster", _U8, _ANY_CHANNELS)
_GIF = Format("GIF", _U8, frozenset({3, 4}))
_EXR = Format("OpenEXR", frozenset({"float32"}), _ANY_CHANNELS, compression_flag=_flag("IMWRITE_EXR_COMPRESSION"))

_BY_EXTENSION = {
    ".jpg": _JPEG,
    ".jpeg": _JPEG,
    ".jpe": _JPEG,
    ".png": _PNG,
    ".webp": _WEBP,
    ".tif": _TIFF,
    ".tiff": _TIFF,
    ".bmp": _BMP,
    ".dib": _BMP,
    ".jp2": _JP2,
    ".avif": _AVIF,
    ".pgm": _PGM,
    ".ppm": _PPM,
    ".pnm": _PNM,
    ".pbm": _PBM,
    ".pam": _PAM,
    ".pfm": _PFM,
    ".hdr": _HDR,
    ".pic": _HDR,
    ".sr": _SUNRASTER,
    ".ras": _SUNRASTER,
    ".gif": _GIF,
    ".exr": _EXR,
}


def writable_extensions() -> list[str]:
    """The extensions this OpenCV build can write, in a stable order."""
    return [ext for ext in _BY_EXTENSION if can_write(ext)]


_probed: dict[str, bool] = {}
_probe_lock = allocate_lock()


def can_write(extension: str) -> bool:
    """Whether this OpenCV build writes ``extension`` (e.g. ``".png"``, lower case).

    Asks OpenCV at most once per extension and process, and never lets it print:
    on OpenCV 4.x, asking about ``.exr`` logs "OpenEXR codec is disabled" on
    stderr and raises ``cv2.error``, which here means "cannot write".
    """
    known = _probed.get(extension)
    if known is not None:
        return known
    with _probe_lock:  # the log level is process-wide: one probe at a time restores it right
        if extension not in _probed:
            _probed[extension] = _probe(extension)
        return _probed[extension]


def _probe(extension: str) -> bool:
    logging = _opencv_logging()
    if logging is None and extension == ".exr" and not _exr_enabled_by_environment():
        # Without the logging API (e.g. OpenCV 4.6) the probe's warning cannot be silenced; 4.x
        # disables its EXR codec unless this variable is set, so the answer is known.
        return False
    if logging is not None:
        level = logging.getLogLevel()
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        return bool(cv2.haveImageWriter("x" + extension))
    except cv2.error:
        return False
    finally:
        if logging is not None:
            logging.setLogLevel(level)


def _opencv_logging():
    """``cv2.utils.logging`` where this OpenCV has it (recent 4.x and 5.x; 4.6 has not), else None."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if all(hasattr(logging, name) for name in ("getLogLevel", "setLogLevel", "LOG_LEVEL_SILENT")):
        return logging
    return None


def _exr_enabled_by_environment() -> bool:
    return os.environ.get("OPENCV_IO_ENABLE_OPENEXR", "").strip().lower() in ("1", "true", "on", "yes")


class Encoding(NamedTuple):
    """A checked request to encode: what the worker passes to ``cv2.imencode``."""

    extension: str
    params: tuple[int, ...]
    rgb: bool
    encoder: str = "opencv"  # what writes the files: "opencv" or "fast" (``_fast.py``), fallback resolved


def plan_encoding(
    extension: str,
    *,
    quality: int | None = None,
    compression: int | None = None,
    params=None,
    rgb: bool = False,
    encoder: str = "opencv",
) -> Encoding:
    """Check the options for ``extension`` and return the OpenCV parameters.

    ``quality`` and ``compression`` map to the format's own flag; ``params``
    adds raw OpenCV flags, as a ``{flag: value}`` mapping or a flat
    ``[flag, value, ...]`` sequence, where a flag is an int or a name such as
    ``"IMWRITE_PNG_STRATEGY"``. ``encoder="fast"``: a faster lossless encoder
    where the format and options have one (``_fast.py``), else OpenCV.
    """
    if encoder not in ENCODERS:
        raise InvalidRequest(f"encoder must be 'opencv' or 'fast', got {encoder!r}")
    ext = extension.lower()
    fmt = format_for(ext)
    flat: list[int] = []
    if quality is not None:
        if fmt.quality_flag is None:
            takes = ", ".join(sorted({e for e, f in _BY_EXTENSION.items() if f.quality_flag is not None}))
            raise InvalidRequest(
                f"quality does not apply to {fmt.name} ({ext}); it applies to {takes}"
                + ("; for PNG use compression=0..9" if fmt is _PNG else "")
            )
        low, high = fmt.quality_range
        if not _is_int(quality) or not low <= quality <= high:
            raise InvalidRequest(f"quality for {fmt.name} must be an integer from {low} to {high}, got {quality!r}")
        flat += [fmt.quality_flag, int(quality) * fmt.quality_scale]
    if compression is not None:
        if fmt.compression_flag is None:
            takes = ", ".join(sorted({e for e, f in _BY_EXTENSION.items() if f.compression_flag is not None}))
            raise InvalidRequest(f"compression does not apply to {fmt.name} ({ext}); it applies to {takes}")
        bounds = fmt.compression_range
        if not _is_int(compression) or (bounds and not bounds[0] <= compression <= bounds[1]):
            allowed = f"from {bounds[0]} to {bounds[1]}" if bounds else "(an OpenCV compression code)"
            raise InvalidRequest(f"compression for {fmt.name} must be an integer {allowed}, got {compression!r}")
        flat += [fmt.compression_flag, int(compression)]
    raw = _flatten_params(params)
    for code, value in zip(raw[::2], raw[1::2]):
        _check_raw_param(fmt, ext, code, value)
    _refuse_contradictions(fmt, flat, raw, quality=quality, compression=compression)
    flat += raw
    if encoder == "fast":
        from . import _fast  # its imports (zlib, struct) only for calls that ask for it

        encoder = _fast.plan(ext, dict(zip(flat[::2], flat[1::2])), raw, cv2)
    return Encoding(ext, tuple(flat), bool(rgb), encoder)


def plan_encodings(
    extensions, *, quality=None, compression=None, params=None, rgb: bool = False, encoder: str = "opencv"
) -> dict:
    """``{extension: Encoding}`` for the formats of one call (``extensions``, lower case, first first).

    One format: ``plan_encoding``. Several: each option goes to the formats that take it (``quality``
    to the JPEG and the WebP files of a call, not to its PNG files) and is refused only when no format
    of the call takes it; a raw flag that sets the quality or compression of one of the call's formats
    goes to that format alone (OpenCV's other encoders would ignore it).
    """
    extensions = list(extensions)
    if len(extensions) == 1:
        ext = extensions[0]
        return {
            ext: plan_encoding(ext, quality=quality, compression=compression, params=params, rgb=rgb, encoder=encoder)
        }
    formats = {ext: format_for(ext) for ext in extensions}
    if quality is not None and all(f.quality_flag is None for f in formats.values()):
        plan_encoding(extensions[0], quality=quality)  # raises, saying which formats take it
    if compression is not None and all(f.compression_flag is None for f in formats.values()):
        plan_encoding(extensions[0], compression=compression)  # raises
    raw = _flatten_params(params)
    owned = {flag for f in formats.values() for flag in (f.quality_flag, f.compression_flag) if flag is not None}
    encodings = {}
    for ext, fmt in formats.items():
        own = (fmt.quality_flag, fmt.compression_flag)
        kept = [
            item
            for code, value in zip(raw[::2], raw[1::2])
            if code in own or code not in owned
            for item in (code, value)
        ]
        encodings[ext] = plan_encoding(
            ext,
            quality=quality if fmt.quality_flag is not None else None,
            compression=compression if fmt.compression_flag is not None else None,
            params=kept,
            rgb=rgb,
            encoder=encoder,
        )
    return encodings


def _refuse_contradictions(fmt: Format, options: list[int], raw: list[int], **keywords) -> None:
    """Refuse a flag set to two values (by a keyword option and ``params``, or twice in ``params``):
    OpenCV would silently use the last one."""
    given: dict[int, tuple[str, int]] = {}
    named = [f"{key}={value}" for key, value in keywords.items() if value is not None]
    sources = [named.pop(0) for _ in options[::2]]
    sources += [f"params {_flag_name(code, fmt)}={value}" for code, value in zip(raw[::2], raw[1::2])]
    for (code, value), source in zip(zip((options + raw)[::2], (options + raw)[1::2]), sources):
        if code in given and given[code][1] != value:
            raise InvalidRequest(
                f"{given[code][0]} and {source} set the same {fmt.name} option to two values; give it once"
            )
        given[code] = (source, value)


def _flag_name(code: int, fmt: Format) -> str:
    """The ``cv2.IMWRITE_*`` name of flag ``code`` for ``fmt`` (flags of different formats share numbers)."""
    names = sorted(name for name in dir(cv2) if name.startswith("IMWRITE_") and getattr(cv2, name) == code)
    own = [name for name in names if fmt.name.upper().replace(" ", "") in name]
    return (own or names or [str(code)])[0]


def _check_raw_param(fmt: Format, ext: str, code: int, value: int) -> None:
    """A quality or compression flag passed in ``params`` gets the checks of the keyword option."""
    if code == fmt.quality_flag:
        low, high = fmt.quality_range
        if not low * fmt.quality_scale <= value <= high * fmt.quality_scale:
            raise InvalidRequest(
                f"params: the quality of {fmt.name} must be from {low * fmt.quality_scale} to "
                f"{high * fmt.quality_scale}, got {value}"
            )
        return
    if code == fmt.compression_flag:
        bounds = fmt.compression_range
        if bounds and not bounds[0] <= value <= bounds[1]:
            raise InvalidRequest(
                f"params: the compression of {fmt.name} must be from {bounds[0]} to {bounds[1]}, got {value}"
            )
        return
    owners = sorted(
        {f.name for f in _BY_EXTENSION.values() if code in (f.quality_flag, f.compression_flag) and f is not fmt}
    )
    if owners:
        raise InvalidRequest(
            f"params: OpenCV flag {code} sets the quality or compression of "
            f"{' and '.join(owners)}, not of {fmt.name} ({ext})"
        )


def format_for(extension: str) -> Format:
    """The Format of ``extension``; InvalidRequest if unknown or not in this build."""
    ext = extension.lower()
    fmt = _BY_EXTENSION.get(ext)
    if fmt is None or not can_write(ext):
        known = " ".join(writable_extensions())
        shown = repr(ext) if ext else "no extension"
        raise InvalidRequest(f"cannot write images with {shown}; this OpenCV build writes: {known}")
    return fmt


_CAST_ORDER = ("uint8", "int8", "uint16", "int16", "int32")  # narrowest first


def integer_targets(encoding: Encoding, dtype: np.dtype) -> tuple[np.dtype, ...]:
    """The integer types ``encoding``'s format holds that integers of ``dtype``, which it does not
    hold, may be cast to when their values fit (narrowest first); () when no cast applies."""
    fmt = format_for(encoding.extension)
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu" or dtype.name in fmt.dtypes or not dtype.isnative:
        return ()
    return tuple(np.dtype(name) for name in _CAST_ORDER if name in fmt.dtypes)


def check_pixels(encoding: Encoding, dtype: np.dtype, channels: int, what: str, castable: bool = False) -> None:
    """Refuse pixels that ``encoding``'s format cannot hold unchanged.

    ``channels`` is 1 for a 2-D image; ``what`` names the image(s) in the message.
    ``castable``: the values will be checked against ``integer_targets`` (the
    dtype itself is then not refused here).
    """
    fmt = format_for(encoding.extension)
    dtype = np.dtype(dtype)
    name = dtype.name
    if not dtype.isnative:
        raise InvalidRequest(
            f"{what} is {dtype.str}, with a byte order that is not this machine's; "
            "OpenCV would read its bytes swapped. Convert it first: "
            "images.astype(images.dtype.newbyteorder('='))"
        )
    if channels not in (1, 3, 4):
        raise InvalidRequest(
            f"{what} has {channels} channels; images need 1 (gray), 3 (BGR) or 4 (BGRA) channels "
            "as the last axis. If the channels are first, move them: np.moveaxis(images, 1, -1)"
        )
    if name not in fmt.dtypes and not castable:
        raise InvalidRequest(
            f"{what} is {name}, which {fmt.name} ({encoding.extension}) cannot hold; " + dtype_advice(name, fmt)
        )
    if channels not in fmt.channels:
        counts = " or ".join(str(c) for c in sorted(fmt.channels))
        raise InvalidRequest(f"{what} has {channels} channel(s); {fmt.name} ({encoding.extension}) takes {counts}")
    if fmt is _AVIF and name in fmt.dtypes:
        _check_avif_depth(encoding, name)


def check_cast(encoding: Encoding, target: np.dtype) -> None:
    """The checks that depend on the dtype, for the one integers are cast to."""
    if format_for(encoding.extension) is _AVIF:
        _check_avif_depth(encoding, np.dtype(target).name)


def _check_avif_depth(encoding: Encoding, dtype_name: str) -> None:
    flags = dict(zip(encoding.params[::2], encoding.params[1::2]))
    depth = flags.get(cv2.IMWRITE_AVIF_DEPTH)
    if dtype_name == "uint16" and depth not in (10, 12):
        raise InvalidRequest(
            "16-bit AVIF needs a bit depth of 10 or 12: pass params={cv2.IMWRITE_AVIF_DEPTH: 10} "
            f"(or 12){'' if depth is None else f'; got {depth}'}"
        )
    if dtype_name == "uint8" and depth not in (None, 8):
        raise InvalidRequest(
            f"AVIF of uint8 pixels is 8 bits deep; got IMWRITE_AVIF_DEPTH {depth}. "
            "For 10 or 12 bits, pass uint16 pixels"
        )


def check_size(encoding: Encoding, height: int, width: int, what: str) -> None:
    """Refuse an image larger than the format's encoder can write (it fails only when encoding)."""
    limit = format_for(encoding.extension).max_side
    if limit is not None and max(height, width) > limit:
        raise InvalidRequest(
            f"{what} is {height}x{width} pixels; {format_for(encoding.extension).name} "
            f"({encoding.extension}) images can be at most {limit} pixels on a side. "
            "Use .png or .tiff, or split the image"
        )


def dtype_advice(name: str, fmt: Format) -> str:
    """What to do with ``name`` pixels that ``fmt`` cannot hold."""
    holds = ", ".join(sorted(fmt.dtypes))
    if name.startswith("float"):
        if "uint8" in fmt.dtypes and "float32" not in fmt.dtypes:
            return (
                f"it holds {holds}. Cast first, as your values' range says: for values in [0, 1], "
                "(np.clip(images, 0, 1) * 255).round().astype(np.uint8); for values in [0, 255], "
                "np.clip(images, 0, 255).round().astype(np.uint8). Or save floats losslessly as .tiff, .pfm or .hdr"
            )
        return f"it holds {holds}; cast with images.astype(np.float32)"
    if name == "bool":
        return f"it holds {holds}; convert with images.astype(np.uint8) * 255"
    if fmt is _TIFF:  # wider integers than TIFF takes: int64, uint32, uint64
        return (
            f"it holds {holds}. Cast explicitly (OpenCV would saturate silently), e.g. "
            "images.astype(np.int32) if the values fit, or scale them to uint16"
        )
    return (
        f"it holds {holds}. Cast explicitly (OpenCV would saturate silently), e.g. "
        f"np.clip(images, 0, 255).astype(np.uint8), or use .tiff for other integer types"
    )


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _flatten_params(params) -> list[int]:
    if params is None:
        return []
    pairs = list(params.items()) if isinstance(params, dict) else None
    if pairs is None:
        values = list(params)
        if len(values) % 2:
            raise InvalidRequest(
                "params must be a {flag: value} dict or a flat [flag, value, ...] list "
                f"of even length; got {len(values)} items"
            )
        pairs = list(zip(values[::2], values[1::2]))
    flat = []
    for flag, value in pairs:
        code = _flag_code(flag)
        if not _is_int(value):
            raise InvalidRequest(f"the value of OpenCV flag {flag!r} must be an integer, got {value!r}")
        flat += [code, int(value)]
    return flat


def _flag_code(flag) -> int:
    if _is_int(flag):
        return int(flag)
    if isinstance(flag, str):
        name = flag.upper()
        for candidate in (name, "IMWRITE_" + name):
            code = getattr(cv2, candidate, None)
            if candidate.startswith("IMWRITE_") and _is_int(code):
                return int(code)
    raise InvalidRequest(
        f"unknown OpenCV write flag {flag!r}; use a cv2.IMWRITE_* constant or its name, e.g. 'IMWRITE_PNG_STRATEGY'"
    )
