"""The Python API: compile a spec into a Cell, run it forward, and backward through a Tape.

The Cell validates every array before computing; the executor behind it depends on the
target. Arrays follow PyTorch's sequence layout (T, B, F) and NumPy's conventions.
"""
from __future__ import annotations

import os

import numpy as np

from .backends.reference import ReferenceExecutor
from .driver import lower_spec
from lstmc_runtime.cellbase import CellBase, Tape
from .errors import CompileError
from .passes.pipeline import Program

__all__ = ["compile", "Cell", "Tape", "bind_sizes"]

TARGETS = ("reference",)
DTYPES = ("float32", "float64")


def bind_sizes(program: Program, input_size, hidden_size, sizes: dict) -> dict[str, int]:
    """Values for every named size the cell uses, from the compile arguments."""
    info = program.info
    names = _size_names(program)
    given: dict[str, int] = {}
    input_atom = info.input[1]
    if input_size is not None:
        if input_atom.names:
            given[next(iter(input_atom.names))] = input_size
        elif input_atom.const != input_size:
            raise CompileError(f"input_size={input_size}, but the spec fixes the input size "
                               f"to {input_atom.const}")
    if hidden_size is not None:
        if "H" not in names:
            raise CompileError("hidden_size sets the size H, which this spec does not use")
        given["H"] = hidden_size
    for name, value in sizes.items():
        if name not in names:
            raise CompileError(f"unknown size '{name}': the spec's sizes are "
                               + (", ".join(sorted(names)) or "all fixed"))
        given[name] = value
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise CompileError(f"size {name} must be a positive integer, got {value!r}")
    missing = sorted(names - set(given))
    if missing:
        hint = {"H": "hidden_size=", next(iter(input_atom.names), None): "input_size="}
        asks = ", ".join(hint.get(n, f"{n}=") + "..." for n in missing)
        raise CompileError(f"no value for size{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(missing)}: pass {asks}")
    return {name: int(value) for name, value in given.items()}


def _size_names(program: Program) -> set[str]:
    info = program.info
    names = set(info.input[1].names)
    for size in info.states.values():
        names |= size.names
    for name in info.params:
        for dim in info.param_shape(name):
            names |= dim.names
    return names


def compile(spec: "str | os.PathLike[str]", input_size: int | None = None,
            hidden_size: int | None = None, *, target: str = "reference",
            dtype: str = "float32", cell: str | None = None, **sizes: int) -> "Cell":
    """Compile the cell of `spec` (a path or the spec's text).

    `input_size` and `hidden_size` bind the input's size and H; other named sizes (a
    projection size P, say) are keyword arguments. `cell` picks one cell of a spec that
    defines several.
    """
    if target not in TARGETS:
        raise CompileError(f"unknown target '{target}' (known: {', '.join(TARGETS)})")
    dtype_name = np.dtype(dtype).name if _is_dtype(dtype) else str(dtype)
    if dtype_name not in DTYPES:
        raise CompileError(f"unsupported dtype '{dtype}' (supported: {', '.join(DTYPES)})")
    program = lower_spec(spec, cell)
    bound = bind_sizes(program, input_size, hidden_size, sizes)
    return Cell(program, bound, np.dtype(dtype_name), target)


def _is_dtype(value) -> bool:
    try:
        np.dtype(value)
        return True
    except TypeError:
        return False


class Cell(CellBase):
    """A cell compiled for the reference target: the NumPy executor runs it."""

    def __init__(self, program: Program, sizes: dict[str, int], dtype: np.dtype, target: str):
        self.program, self.sizes, self.dtype, self.target = program, sizes, dtype, target
        info = program.info
        self.name = info.name
        self.output = info.output
        self.input_size = info.input[1].bind(sizes)
        self.state_sizes = {n: s.bind(sizes) for n, s in info.states.items()}
        self.param_shapes = {n: tuple(d.bind(sizes) for d in info.param_shape(n))
                             for n in info.params}
        self.param_inits = {n: p.init for n, p in info.params.items()}
        self.hidden_size = sizes.get("H", self.state_sizes[self.output])
        self._executor = ReferenceExecutor(program, sizes, dtype)

    def _run_forward(self, x, params, state, train):
        return self._executor.forward(x, params, state, train)

    def _run_backward(self, saved, params, dy, dstate):
        return self._executor.backward(saved, params, dy, dstate)
