"""Reading spec text: from a path or a string, strictly UTF-8, with locations."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import Location, SpecSyntaxError


@dataclass(frozen=True)
class Source:
    path: str
    text: str

    @property
    def lines(self) -> list[str]:
        cached = self.__dict__.get("_lines")
        if cached is None:
            cached = self.text.splitlines()
            object.__setattr__(self, "_lines", cached)
        return cached

    def location(self, line: int, column: int) -> Location:
        lines = self.lines
        source_line = lines[line - 1] if 0 < line <= len(lines) else ""
        return Location(self.path, line, column, source_line)


def looks_like_path(spec: str) -> bool:
    return "\n" not in spec and "{" not in spec


def read_source(spec: "str | os.PathLike[str]") -> Source:
    """A spec given as a path (str or PathLike) or as the spec's text itself."""
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, os.PathLike) or looks_like_path(spec):
        path = os.fspath(spec)
        try:
            data = open(path, "rb").read()
        except OSError as exc:
            raise SpecSyntaxError(f"cannot read spec '{path}': {exc.strerror}") from None
        return decode(data, path)
    return decode(spec.encode("utf-8"), "<string>")


def decode(data: bytes, path: str) -> Source:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        bad_line = data.split(b"\n")[line - 1].decode("utf-8", errors="replace")
        raise SpecSyntaxError(
            f"spec is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
            Location(path, line, column, bad_line),
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise SpecSyntaxError("spec is empty: expected at least one 'cell'", Location(path, 1, 1))
    return Source(path, text)
