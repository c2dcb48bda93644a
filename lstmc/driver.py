"""Front to middle: spec text or path -> checked cells -> Programs."""
from __future__ import annotations

import os

from .errors import CompileError
from .frontend.checker import CheckedCell, check
from .frontend.parser import parse
from .frontend.source import Source, read_source
from .passes.pipeline import Program, lower


def check_spec(spec: str | os.PathLike[str] | Source) -> list[CheckedCell]:
    """Parse and check every cell of a spec; raises SpecSyntaxError / SpecError."""
    source = read_source(spec)
    cells = [check(decl) for decl in parse(source)]
    seen: dict[str, CheckedCell] = {}
    for cell in cells:
        if cell.name in seen:
            from .errors import SpecError
            first = seen[cell.name].decl.loc
            assert first is not None  # the parser gives every cell its location
            raise SpecError(f"cell '{cell.name}' is defined twice (first at line {first.line})",
                            cell.decl.loc)
        seen[cell.name] = cell
    return cells


def select_cell(cells: list[CheckedCell], name: str | None) -> CheckedCell:
    if name is None:
        if len(cells) > 1:
            names = ", ".join(c.name for c in cells)
            raise CompileError(f"the spec defines several cells ({names}): choose one with "
                               "cell=NAME", cli=f"the spec defines several cells ({names}): "
                               "choose one with --cell NAME")
        return cells[0]
    for cell in cells:
        if cell.name == name:
            return cell
    raise CompileError(f"the spec has no cell '{name}' (it has: "
                       + ", ".join(c.name for c in cells) + ")")


def lower_spec(spec: str | os.PathLike[str] | Source, cell: str | None = None,
               sizes: dict[str, int] | None = None, hoist_chains: bool = True) -> Program:
    return lower(select_cell(check_spec(spec), cell), sizes, hoist_chains)
