"""Backends: each renders a Program (the reference executor, LLVM, GPU kernels)."""
from __future__ import annotations

from lstmc_runtime.manifest import PackedSpec

from ..errors import CompileError
from ..ir.program import Program
from ..ir.step_plan import PackedWeight


def bind_packed(weight: PackedWeight, sizes: dict[str, int], name: str) -> PackedSpec:
    """A packed matrix of the program with its sizes bound, named as its runtime knows it."""
    return PackedSpec(name, tuple((p, rows.bind(sizes)) for p, rows in weight.segments),
                      weight.columns.bind(sizes))


def check_renderable(program: Program) -> None:
    """A Program every backend can run: a multi-head matrix is one product per head,
    which needs the head count, so such a cell must be lowered with its sizes
    (`lstmc.api.lower_bound`); lowered without them it holds a stand-in dense product."""
    heads = {n for n, p in program.info.params.items() if p.heads is not None}
    segments = [s for h in program.hoisted for s, _ in h.segments]
    segments += [s for p in program.recurrent_products for s, _ in p.attr.segments]
    dense = sorted(heads & set(segments))
    if dense:
        raise CompileError(f"the multi-head matrices {', '.join(dense)} were lowered without "
                           "their sizes: lower the cell with lstmc.api.lower_bound")
