"""Error types. Every user-facing error says what went wrong and where."""
from __future__ import annotations

from dataclasses import dataclass, field

from lstmc_runtime.errors import BackendError, LstmcError, ShapeError

__all__ = ["Location", "LstmcError", "SpecError", "SpecSyntaxError", "ShapeError",
           "CompileError", "BackendError"]


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
                line = loc.source_line.rstrip("\r\n").expandtabs(1)
                caret = " " * (max(loc.column, 1) - 1) + "^"
                text += f"\n    {line}\n    {caret}"
        if self.hint:
            text += f"\n  {self.hint}"
        return text


class SpecSyntaxError(SpecError):
    """The spec does not follow the grammar (or is empty, or not UTF-8)."""


class CompileError(LstmcError):
    """A spec cannot be compiled with the given options (missing sizes, bad dtype)."""
