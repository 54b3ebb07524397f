"""Path templates such as ``"out/{index:06d}.png"``, and per-image paths: parsing and validation.

A call names its images in one of three ways, all checked here before anything is written:

- a template with constant ``fields`` (``"out/{split}/{index:06d}.png"``): formatted per image where
  it is written, from a name maker parsed once (``name_maker``); ``{shard}`` is ``index // shard_size``;
- a template with per-image ``fields`` (``fields={"label": labels}``): formatted here, one path each;
- a sequence of paths, one per image, taken literally (braces are part of the name).

The last two travel as ``_job.Names``: each task carries the paths of its own images.
"""

import os
import re
import reprlib
from _string import formatter_parser  # what string.Formatter().parse calls; string's import costs 0.4 ms
from collections.abc import Callable
from typing import NamedTuple

from ._job import Names
from .errors import InvalidRequest

# Format specs under which distinct integers always give distinct strings:
# optional fill/align, sign, zero padding, width, and the decimal/hex/octal/binary types.
# A letter or digit as fill could pass for a digit ("{index:0<3}" names 1 and 100 "100"),
# so only "0" padding on the left counts.
_INJECTIVE_SPEC = re.compile(r"^([^0-9A-Za-z]?[<>=^]|0[>=])?[+\- ]?#?0?\d*[,_]?[dxXob]?$")
# {shard} is index // shard_size; 1,000 files per folder keeps every listing short (ls, a file browser)
DEFAULT_SHARD_SIZE = 1000
_ARITHMETIC = r"^\s*index\s*(//|/|%|\*|\+|-)"  # compiled by re on first use: only a refused template needs it


class Template(NamedTuple):
    """A checked way to name images: ``path(i)`` names image i.

    ``text.format(index=i, shard=i // shard_size, **fields)``, or ``names.paths`` when each image
    has its own path (``text`` is then the first path, for messages).
    """

    text: str
    fields: tuple[tuple[str, str], ...]
    extension: str  # of the first image
    folder: str | None  # the folder every path shares, or None when it varies
    names: Names | None = None

    def path(self, index: int) -> str:
        """The path of image ``index``, as the caller wrote it."""
        return path_of(self.text, self.folder, self.fields, self.names, index)


def path_of(text: str, folder: str | None, fields, names: Names | None, index: int) -> str:
    """The path of image ``index`` of a Template or a Job (their fields of the same names)."""
    if names is not None and names.paths:
        return names.paths[index - names.first]
    shard = {"shard": index // names.shard_size} if names is not None and names.shard_size else {}
    return text.format(index=index, **shard, **dict(fields))


def parse_template(
    template, count: int, start: int = 0, fields: dict | None = None, shard_size: int | None = None
) -> Template:
    """Check ``template`` for ``count`` images numbered from ``start``.

    ``template`` is a path template (str or os.PathLike) or a sequence of ``count`` paths.
    Raises InvalidRequest when the template is empty, malformed, names an
    unknown field, lacks ``{index}`` for more than one image, or would give two
    images the same path; when a path is empty or lacks a file name; when
    ``fields`` or the paths are not one per image.
    """
    if not isinstance(template, (str, os.PathLike, bytes)) and _is_sequence(template):
        if fields:
            raise InvalidRequest(
                "fields fill the {names} of a path template; a sequence of paths is taken as it is. "
                "Pass a template such as 'out/{label}/{name}.png' with fields, or the finished paths alone"
            )
        if shard_size is not None:
            raise InvalidRequest("shard_size fills the {shard} of a path template; a sequence of paths has none")
        return listed_paths(template, count, start)
    if isinstance(template, os.PathLike):
        template = os.fspath(template)
    if not isinstance(template, str) or not template.strip():
        raise InvalidRequest(
            f"the path template must be a non-empty string like 'out/{{index:06d}}.png' or a list of paths, "
            f"one per image; got {reprlib.repr(template)}"
        )
    template = _expand_home(template)
    fields = dict(fields or {})
    per_image = _per_image_fields(fields, count)
    try:
        parts = list(formatter_parser(template))
    except ValueError as error:
        raise InvalidRequest(
            f"the path template {template!r} is malformed ({error}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    names = {name for _, name, _, _ in parts if name is not None}
    if "shard" in fields:
        raise InvalidRequest(
            "fields={'shard': ...}: {shard} is shmsave's own field (index // shard_size, for a folder per "
            f"{DEFAULT_SHARD_SIZE} images); give your field another name"
        )
    sharded = "shard" in names
    if shard_size is not None:
        if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
            raise InvalidRequest(f"shard_size must be a positive integer (images per {{shard}}), got {shard_size!r}")
        if not sharded:
            raise InvalidRequest(
                f"shard_size={shard_size} is given but the path template {template!r} has no {{shard}} field; "
                "add one, e.g. 'out/{shard:04d}/{index:09d}.png'"
            )
    size = (shard_size or DEFAULT_SHARD_SIZE) if sharded else 0
    allowed = {"index", "shard", *fields}
    unknown = sorted(n for n in names if n not in allowed)
    if unknown:
        if any(re.match(_ARITHMETIC, n) for n in unknown):
            raise InvalidRequest(
                f"the path template {template!r} computes with {{index}}, which format strings cannot do; "
                f"for a folder per {DEFAULT_SHARD_SIZE} images write {{shard}} (index // shard_size, "
                f"shard_size={DEFAULT_SHARD_SIZE} unless given), e.g. 'out/{{shard:04d}}/{{index:09d}}.png'"
            )
        raise InvalidRequest(
            f"the path template {template!r} uses unknown field(s) "
            f"{', '.join('{' + n + '}' for n in unknown)}; it may use "
            f"{', '.join('{' + n + '}' for n in sorted(allowed))}, or pass fields={{...}}. "
            f"For literal braces in a name, double them: {'{{' + unknown[0] + '}}'!r}"
        )
    if "" in names or any(name and not name.isidentifier() for name in names):
        raise InvalidRequest(
            f"the path template {template!r} has a positional or indexed field; name the field, e.g. {{index}}"
        )
    if per_image:
        return _formatted(template, count, start, fields, per_image, size)
    if count > 1 and "index" not in names:
        printf = printf_to_format(template)
        if printf:
            first = next(m.group() for m in re.finditer(_PRINTF_FIELD, template) if m.group() != "%%")
            fix = f"{first} is a printf field, which shmsave does not expand; write {printf!r}"
        elif sharded:
            fix = "{shard} numbers folders, not files: add {index} too, e.g. 'out/{shard:04d}/{index:09d}.png'"
        else:
            fix = "add one, e.g. 'out/{index:06d}.png', or pass a list of paths"
        raise InvalidRequest(
            f"the path template {template!r} has no {{index}} field, so all {count} images would go to one file; {fix}"
        )
    specs = [spec for _, name, spec, _ in parts if name == "index"]
    shards = {"shard": start // size} if size else {}
    try:
        first = template.format(index=start, **shards, **fields)
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise InvalidRequest(f"the path template {template!r} cannot format index {start}: {error}") from None
    if any(_separator_in(spec, i) for spec in specs for i in (start, start + max(count, 1) - 1)):
        raise InvalidRequest(
            f"the {{index}} format of the path template {template!r} puts {os.sep!r} in "
            "file names; use a fill character that is not a path separator, e.g. {index:06d}"
        )
    if "\0" in first:
        raise InvalidRequest(
            f"the path template {template!r} gives a path with a NUL character ('\\0'), "
            "which no file name can hold; remove it"
        )
    extension = os.path.splitext(first)[1]
    if count > 1 and not any(_INJECTIVE_SPEC.match(spec or "") for spec in specs):
        maker = name_maker(template, fields, size)
        paths = {maker(i) for i in range(start, start + count)}
        if len(paths) < count:
            raise InvalidRequest(
                f"the path template {template!r} gives several images the same path "
                f"(its {{index}} format hides digits); use e.g. {{index:06d}}"
            )
    folder = None if _index_in_folder(parts) else os.path.dirname(first)
    return Template(
        template, tuple(sorted(fields.items())), extension, folder, Names(0, shard_size=size) if size else None
    )


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple, range)) or (getattr(value, "ndim", None) == 1 and hasattr(value, "tolist"))


def _per_image_fields(fields: dict, count: int) -> dict:
    """The fields that hold one value per image (sequences of ``count``); refuse other containers."""
    per_image = {}
    for key, value in fields.items():
        if isinstance(value, (set, frozenset, dict)) or getattr(value, "ndim", 0) > 1:
            raise InvalidRequest(
                f"fields[{key!r}] is {reprlib.repr(value)}; a field is one value for every image (a str or a "
                "number) or a list of one value per image, in the images' order"
            )
        if _is_sequence(value):
            values = value.tolist() if hasattr(value, "tolist") else list(value)
            if len(values) != count:
                raise InvalidRequest(
                    f"fields[{key!r}] has {len(values)} values for {count} images; give one value per image "
                    "(in the images' order), or one value (a str or a number) for all of them"
                )
            per_image[key] = values
    return per_image


def _formatted(template: str, count: int, start: int, fields: dict, per_image: dict, shard_size: int) -> Template:
    """Every image's path from a template with per-image fields (checked as a list of paths)."""
    constant = {key: value for key, value in fields.items() if key not in per_image}
    keys, columns = list(per_image), list(per_image.values())
    paths = []
    for i in range(count):
        index = start + i
        values = dict(zip(keys, (column[i] for column in columns)))
        shard = {"shard": index // shard_size} if shard_size else {}
        try:
            paths.append(template.format(index=index, **shard, **constant, **values))
        except (ValueError, TypeError, KeyError, IndexError) as error:
            raise InvalidRequest(f"the path template {template!r} cannot format image {index}: {error}") from None
    return listed_paths(paths, count, start, template)


def listed_paths(paths, count: int, start: int, template: str | None = None) -> Template:
    """A Template of one literal path per image, after every check a template's paths get:
    a non-empty file name, a known extension (checked later, per format), no NUL, no two
    images on one path (compared as absolute, normalised paths), ``~`` expanded."""
    paths = list(paths)
    if len(paths) != count:
        raise InvalidRequest(f"{len(paths)} paths for {count} images; give exactly one path per image")
    if not count:
        return Template("", (), "", None, Names(start))
    # The checks below scan this one string, in C: 10,000 paths take ~1 ms, not ~10 as a loop would
    try:
        joined = "\0".join(paths)
    except TypeError:  # os.PathLike, or not a path at all
        paths = [path_text(path, start + i) for i, path in enumerate(paths)]
        joined = "\0".join(paths)
    if "~" in joined:
        paths = [_expand_home(path, literal=True) for path in paths]
        joined = "\0".join(paths)
    if joined.count("\0") != count - 1 or "\0\0" in joined or not paths[0] or not paths[-1]:
        for i, path in enumerate(paths):
            if not path:
                raise InvalidRequest(f"the path of image {start + i} is empty; give each image a file name")
            if "\0" in path:
                raise InvalidRequest(
                    f"the path of image {start + i}, {path!r}, has a NUL character ('\\0'), which no file name can hold"
                )
    if joined.endswith(os.sep) or (os.sep + "\0") in joined:
        i = next(i for i, path in enumerate(paths) if path.endswith(os.sep))
        raise InvalidRequest(f"the path of image {start + i}, {paths[i]!r}, is a folder; give it a file name too")
    _refuse_duplicates(paths, joined, start)
    folder = os.path.dirname(paths[0])
    prefix = folder + os.sep if folder else ""
    # one folder for all (a worker then opens it once per task, and names files in it; see job_name_maker)
    bounded = "\0" + joined + "\0"  # each path between two NULs: "\0" + prefix counts the paths it starts
    shared = joined.count(os.sep) == count * prefix.count(os.sep) and bounded.count("\0" + prefix) == count
    first_extension = os.path.splitext(paths[0])[1]
    if first_extension and bounded.count(first_extension + "\0") == count:
        extensions = [first_extension.lower()]  # one format: no per-path work (10,000 splitext: ~5 ms)
    else:
        extensions = [os.path.splitext(path)[1].lower() for path in paths]
    kinds = sorted(set(extensions), key=extensions.index)
    formats, format_of = (), ()
    if len(kinds) > 1:
        number = {ext: i for i, ext in enumerate(kinds)}
        formats = tuple((ext, ()) for ext in kinds)
        format_of = tuple(number[ext] for ext in extensions)
    names = Names(start, tuple(paths), 0, formats, format_of)
    return Template(template or paths[0], (), extensions[0], folder if shared else None, names)


def path_text(path, index: int) -> str:
    """Image ``index``'s path (a str or os.PathLike) as a str; InvalidRequest for anything else."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise InvalidRequest(
            f"the path of image {index} is {reprlib.repr(path)}; each path must be a str or os.PathLike"
        )
    return path


# What normpath may change: "//", and "." or ".." as a part (a name that starts with "." too, rarely: resolved then)
_UNNORMAL = ("//", "/.", "\0.")


def _refuse_duplicates(paths: list[str], joined: str, start: int) -> None:
    """Refuse two images on one path, naming both. Paths are compared as written when that is
    the same as comparing them resolved (all relative, or all absolute, none with ``.``, ``..``
    or ``//``): a set of 10,000 strings takes ~0.5 ms, resolving them ~10 ms."""
    if len(set(paths)) == len(paths):
        absolute = joined.count("\0/") + joined.startswith("/")
        plain = not joined.startswith(".") and not any(part in joined for part in _UNNORMAL)
        if absolute in (0, len(paths)) and plain:
            return
    cwd = os.getcwd() if not all(map(os.path.isabs, paths)) else "/"
    seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        key = os.path.normpath(os.path.join(cwd, path))
        if key in seen:
            raise InvalidRequest(
                f"images {start + seen[key]} and {start + i} have the same path {path!r}; give each image its own"
            )
        seen[key] = i


def _separator_in(spec: str, index: int) -> bool:
    try:
        return os.sep in format(index, spec or "")
    except (ValueError, TypeError):  # a nested spec such as {index:{width}}: its fill is a field's value
        return False


def _expand_home(template: str, literal: bool = False) -> str:
    """``~`` or ``~user`` at the start means a home folder, as in a shell and ``cv2.imwrite``'s callers expect;
    ``literal``: ``template`` is a path, not a format string (its braces stay as they are)."""
    if not template.startswith("~"):
        return template
    head, sep, rest = template.partition(os.sep)
    home = os.path.expanduser(head)
    if home == head:  # an unknown user: leave it as it is
        return template
    return (home if literal else home.replace("{", "{{").replace("}", "}}")) + sep + rest


def _index_in_folder(parts: list) -> bool:
    """Whether an ``{index}`` field comes before the last path separator (the folder varies)."""
    seen_index = False
    for literal, name, _, _ in parts:
        if seen_index and os.sep in literal:
            return True
        seen_index = seen_index or name in ("index", "shard")
    return False


_PRINTF_FIELD = r"%%|%(?P<flags>[-+ #0]*)(?P<width>\d*)(?P<type>[diuxXo])"  # compiled by re on first use


def printf_to_format(template: str) -> str | None:
    """``template`` with its printf integer fields as ``{index}`` fields, or None if it has none.

    ``"out/%06d.png"`` -> ``"out/{index:06d}.png"``, ``"%d.jpg"`` -> ``"{index}.jpg"``,
    ``"%-4x"`` -> ``"{index:<4x}"``; ``%%`` becomes ``%``.
    """
    found = False

    def field(match: re.Match) -> str:
        nonlocal found
        if match.group() == "%%":
            return "%"
        found = True
        flags, width, kind = match["flags"], match["width"], match["type"]
        spec = ("<" if "-" in flags else "") + ("+" if "+" in flags else " " if " " in flags else "")
        spec += ("#" if "#" in flags else "") + ("0" if "0" in flags and "-" not in flags else "") + width
        if kind not in "diu":
            spec += kind
        elif spec:
            spec += "d"
        return "{index:" + spec + "}" if spec else "{index}"

    converted = re.sub(_PRINTF_FIELD, field, template)
    return converted if found else None


def name_maker(text: str, fields: dict, shard_size: int = 0) -> Callable[[int], str]:
    """A function ``index -> text.format(index=index, shard=index // shard_size, **fields)`` that is cheap to call.

    ``str.format`` parses its template on every call (~1 us per name, a third
    of shmsave's own work per tiny image); a template whose ``{index}`` appears
    once (and has no ``{shard}``) is parsed here, once.
    """

    def slow(index: int) -> str:
        return text.format(index=index, **fields)

    def sharded(index: int) -> str:
        return text.format(index=index, shard=index // shard_size, **fields)

    if shard_size:
        return sharded
    before, after, spec = [], [], None
    for literal, name, field_spec, conversion in formatter_parser(text):
        side = before if spec is None else after
        side.append(literal)
        if name is None:
            continue
        if "{" in field_spec:  # a nested field such as {index:{width}}
            return slow
        if name == "index":
            if spec is not None or conversion is not None:
                return slow
            spec = field_spec
            continue
        value = fields[name]
        if conversion is not None:
            value = {"r": repr, "s": str, "a": ascii}[conversion](value)
        side.append(format(value, field_spec))
    prefix, suffix = "".join(before), "".join(after)
    if spec is None:
        return lambda index: prefix
    return lambda index: prefix + format(index, spec) + suffix


def job_name_maker(job) -> Callable[[int], str]:
    """``index -> name`` for the images of a ``Job``: the name to open in ``job.folder`` when it is
    set (a bare file name), else the path."""
    names = job.names
    if names is not None and names.paths:
        paths, first = names.paths, names.first
        if job.folder is None:
            return lambda index: paths[index - first]
        cut = len(job.folder) + 1 if job.folder else 0  # every path starts with job.folder and a separator
        return lambda index: paths[index - first][cut:]
    text = os.path.basename(job.template) if job.folder is not None else job.template
    return name_maker(text, dict(job.fields), names.shard_size if names is not None else 0)


def job_path(job, index: int) -> str:
    """The path of image ``index`` of a ``Job``, as its caller wrote it."""
    return path_of(job.template, job.folder, job.fields, job.names, index)
