"""Reading spec text: from a path or a string, strictly UTF-8, with locations.

One definition of a line serves the parser and the diagnostics: a line ends at "\n".
`decode` turns the other end-of-line conventions ("\r\n", and "\r" alone, as old Macs
wrote) into "\n", so lark's line numbers and the line a diagnostic quotes always agree;
other characters some tools treat as line breaks (form feed, U+2028, U+0085, ...) are
not line ends: inside a line they are just characters."""
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
            cached = self.text.split("\n")
            object.__setattr__(self, "_lines", cached)
        return cached

    def location(self, line: int, column: int) -> Location:
        lines = self.lines
        source_line = lines[line - 1] if 0 < line <= len(lines) else ""
        return Location(self.path, line, column, source_line)


MAX_SPEC_BYTES = 16 << 20


def looks_like_path(spec: str) -> bool:
    """Whether a string names a file rather than holding a spec: an existing file always
    counts as a path (so 'spec{v2}.lstm' is read, not parsed)."""
    if os.path.isfile(spec):
        return True
    return "\n" not in spec and "\r" not in spec and "{" not in spec


def read_source(spec: str | os.PathLike[str] | Source) -> Source:
    """A spec given as a path (str or PathLike) or as the spec's text itself."""
    if isinstance(spec, Source):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise SpecSyntaxError(f"expected a spec's path or text, got {type(spec).__name__}")
    if isinstance(spec, os.PathLike) or looks_like_path(spec):
        path = os.fspath(spec)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SPEC_BYTES + 1)  # /dev/zero would fill the memory
        except OSError as exc:
            raise SpecSyntaxError(f"cannot read spec '{path}': {exc.strerror}") from None
        return decode(data, path)
    return decode(spec.encode("utf-8"), "<string>")


def decode(data: bytes, path: str) -> Source:
    if len(data) > MAX_SPEC_BYTES:
        raise SpecSyntaxError(f"spec '{path}' is larger than {MAX_SPEC_BYTES >> 20} MiB: "
                              "not a spec")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = _unix_endings(data[: exc.start])
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        bad_line = _unix_endings(data).split(b"\n")[line - 1].decode("utf-8",
                                                                    errors="replace")
        raise SpecSyntaxError(
            f"spec is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
            Location(path, line, column, bad_line),
        ) from None
    text = text.removeprefix("\ufeff")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise SpecSyntaxError("spec is empty: expected at least one 'cell'", Location(path, 1, 1))
    return Source(path, text)


def _unix_endings(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
