"""Error types. Every user-facing error says what went wrong and where."""
from __future__ import annotations

from dataclasses import dataclass, field

from lstmc_runtime.errors import BackendError, LstmcError, ShapeError

__all__ = [
    "BackendError",
    "CompileError",
    "Location",
    "LstmcError",
    "ShapeError",
    "SpecError",
    "SpecSyntaxError",
    "output_error",
]


EXCERPT = 160  # characters of a source line an error shows at most
_BLANKS = {ord(c): " " for c in "\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


@dataclass(frozen=True)
class Location:
    """A point in a spec: 1-based line and column, plus the text of that line."""

    path: str
    line: int
    column: int
    source_line: str = field(default="", repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class SpecError(LstmcError):
    """A spec that parses but is wrong: names, sizes, states, cycles."""

    kind = "error"

    def __init__(self, message: str, location: Location | None = None, hint: str = ""):
        self.message = message
        self.location = location
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        if self.location is None:
            text = f"error: {self.message}"
        else:
            loc = self.location
            text = f"{loc}: error: {self.message}"
            if loc.source_line:
                # One column per character, and no character a terminal breaks the
                # line at: the caret stays under the column the location names.
                line = loc.source_line.rstrip("\r\n").translate(_BLANKS)
                column = max(loc.column, 1) - 1
                # A long line (a generated spec) is cut to a window around the column.
                start = max(0, min(column - EXCERPT // 2, len(line) - EXCERPT))
                shown = line[start:start + EXCERPT]
                before, after = ("..." if start else ""), ("..." if start + EXCERPT < len(line)
                                                           else "")
                caret = " " * (len(before) + column - start) + "^"
                text += f"\n    {before}{shown}{after}\n    {caret}"
        if self.hint:
            text += f"\n  {self.hint}"
        return text


class SpecSyntaxError(SpecError):
    """The spec does not follow the grammar (or is empty, or not UTF-8)."""


class CompileError(LstmcError):
    """A spec cannot be compiled with the given options (missing sizes, bad dtype).
    `cli`: the same message in the command line's words, where they differ (`--cell`
    where the Python API says `cell=`)."""

    def __init__(self, message: str, cli: str | None = None):
        super().__init__(message)
        self.cli_message = cli or message


def output_error(exc: OSError, path: str | None = None) -> CompileError:
    """A CompileError for an output that could not be written (`lstmc compile -o`): the
    path (`path`, else the one the OS names: a rename's destination) and the OS's reason."""
    where = path or exc.filename2 or exc.filename
    reason = exc.strerror or str(exc) or type(exc).__name__
    return CompileError(f"cannot write {where}: {reason}" if where is not None
                        else f"cannot write the output: {reason}")
