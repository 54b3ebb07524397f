"""Path templates such as ``"out/{index:06d}.png"``: parsing and validation."""

from __future__ import annotations

import os
import re
import reprlib
from _string import formatter_parser  # what string.Formatter().parse calls; string's import costs 0.4 ms
from collections.abc import Callable
from typing import NamedTuple

from .errors import InvalidRequest

# Format specs under which distinct integers always give distinct strings:
# optional fill/align, sign, zero padding, width, and the decimal/hex/octal/binary types.
# A letter or digit as fill could pass for a digit ("{index:0<3}" names 1 and 100 "100"),
# so only "0" padding on the left counts.
_INJECTIVE_SPEC = re.compile(r"^([^0-9A-Za-z]?[<>=^]|0[>=])?[+\- ]?#?0?\d*[,_]?[dxXob]?$")


class Template(NamedTuple):
    """A checked path template: ``text.format(index=i, **fields)`` names image i."""

    text: str
    fields: tuple[tuple[str, str], ...]
    extension: str
    folder: str | None  # the folder every path shares, or None when it depends on the index

    def path(self, index: int) -> str:
        """The path of image ``index``."""
        return self.text.format(index=index, **dict(self.fields))


def parse_template(template, count: int, start: int = 0, fields: dict | None = None) -> Template:
    """Check ``template`` for ``count`` images numbered from ``start``.

    Raises InvalidRequest when the template is empty, malformed, names an
    unknown field, lacks ``{index}`` for more than one image, or would give two
    images the same path.
    """
    if isinstance(template, os.PathLike):
        template = os.fspath(template)
    if not isinstance(template, str) or not template.strip():
        raise InvalidRequest(
            f"the path template must be a non-empty string like 'out/{{index:06d}}.png', got {reprlib.repr(template)}"
        )
    template = _expand_home(template)
    fields = dict(fields or {})
    for key, value in fields.items():
        if isinstance(value, (list, tuple, set, frozenset, dict, range)) or getattr(value, "ndim", 0) > 0:
            raise InvalidRequest(
                f"fields[{key!r}] is {reprlib.repr(value)}; a field is one value for every image of "
                "the call (a str or a number), not one per image: save each group of images that "
                "shares a value with its own call"
            )
    try:
        parts = list(formatter_parser(template))
    except ValueError as error:
        raise InvalidRequest(
            f"the path template {template!r} is malformed ({error}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    names = {name for _, name, _, _ in parts if name is not None}
    allowed = {"index", *fields}
    unknown = sorted(n for n in names if n not in allowed)
    if unknown:
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
    if count > 1 and "index" not in names:
        printf = printf_to_format(template)
        if printf:
            first = next(m.group() for m in _PRINTF_FIELD.finditer(template) if m.group() != "%%")
            fix = f"{first} is a printf field, which shmsave does not expand; write {printf!r}"
        else:
            fix = "add one, e.g. 'out/{index:06d}.png'"
        raise InvalidRequest(
            f"the path template {template!r} has no {{index}} field, so all {count} images would go to one file; {fix}"
        )
    specs = [spec for _, name, spec, _ in parts if name == "index"]
    try:
        first = template.format(index=start, **fields)
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
        paths = {template.format(index=i, **fields) for i in range(start, start + count)}
        if len(paths) < count:
            raise InvalidRequest(
                f"the path template {template!r} gives several images the same path "
                f"(its {{index}} format hides digits); use e.g. {{index:06d}}"
            )
    folder = None if _index_in_folder(parts) else os.path.dirname(first)
    return Template(template, tuple(sorted(fields.items())), extension, folder)


def _separator_in(spec: str, index: int) -> bool:
    try:
        return os.sep in format(index, spec or "")
    except (ValueError, TypeError):  # a nested spec such as {index:{width}}: its fill is a field's value
        return False


def _expand_home(template: str) -> str:
    """``~`` or ``~user`` at the start means a home folder, as in a shell and ``cv2.imwrite``'s callers expect."""
    if not template.startswith("~"):
        return template
    head, sep, rest = template.partition(os.sep)
    home = os.path.expanduser(head)
    if home == head:  # an unknown user: leave it as it is
        return template
    return home.replace("{", "{{").replace("}", "}}") + sep + rest


def _index_in_folder(parts: list) -> bool:
    """Whether an ``{index}`` field comes before the last path separator (the folder varies)."""
    seen_index = False
    for literal, name, _, _ in parts:
        if seen_index and os.sep in literal:
            return True
        seen_index = seen_index or name == "index"
    return False


_PRINTF_FIELD = re.compile(r"%%|%(?P<flags>[-+ #0]*)(?P<width>\d*)(?P<type>[diuxXo])")


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

    converted = _PRINTF_FIELD.sub(field, template)
    return converted if found else None


def name_maker(text: str, fields: dict) -> Callable[[int], str]:
    """A function ``index -> text.format(index=index, **fields)`` that is cheap to call.

    ``str.format`` parses its template on every call (~1 us per name, a third
    of shmsave's own work per tiny image); a template whose ``{index}`` appears
    once is parsed here, once.
    """

    def slow(index: int) -> str:
        return text.format(index=index, **fields)

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
