"""The Python API: compile a spec into a Cell, run it forward, and backward through a Tape.

The Cell validates every array before computing; the executor behind it depends on the
target. Arrays follow PyTorch's sequence layout (T, B, F) and NumPy's conventions.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .backends.reference import ReferenceExecutor
from .driver import lower_spec
from .errors import CompileError, ShapeError
from .passes.pipeline import Program
from .validate import check_array, check_names

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


class Cell:
    """A compiled cell: sizes bound, a target chosen."""

    def __init__(self, program: Program, sizes: dict[str, int], dtype: np.dtype, target: str):
        self.program, self.sizes, self.dtype, self.target = program, sizes, dtype, target
        info = program.info
        self.name = info.name
        self.output = info.output
        self.input_size = info.input[1].bind(sizes)
        self.state_sizes = {n: s.bind(sizes) for n, s in info.states.items()}
        self.param_shapes = {n: tuple(d.bind(sizes) for d in info.param_shape(n))
                             for n in info.params}
        self.hidden_size = sizes.get("H", self.state_sizes[self.output])
        self._executor = ReferenceExecutor(program, sizes, dtype)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"<lstmc.Cell {self.name} ({sizes}) target={self.target} dtype={self.dtype}>"

    def init_params(self, seed: int | None = 0) -> dict[str, np.ndarray]:
        """Parameters as PyTorch initializes them: uniform(-1/sqrt(H), 1/sqrt(H)), except
        those the spec gives a constant initial value."""
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        params = {}
        for name, shape in self.param_shapes.items():
            init = self.program.info.params[name].init
            if init is None:
                params[name] = rng.uniform(-bound, bound, shape).astype(self.dtype)
            else:
                params[name] = np.full(shape, init, dtype=self.dtype)
        return params

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, s), self.dtype) for n, s in self.state_sizes.items()}

    # -- validation ---------------------------------------------------------------------

    def _check_inputs(self, x, params, state):
        x = check_array("x", x, (None, None, self.input_size), self.dtype)
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ShapeError(f"x: expected at least one step and one batch row, got shape "
                             f"{tuple(x.shape)}")
        batch = x.shape[1]
        check_names("params", params, list(self.param_shapes))
        for name, shape in self.param_shapes.items():
            check_array(f"params['{name}']", params[name], shape, self.dtype)
        if state is None:
            state = self.zero_state(batch)
        else:
            check_names("state", state, list(self.state_sizes))
            for name, size in self.state_sizes.items():
                check_array(f"state['{name}']", state[name], (batch, size), self.dtype)
        return x, params, state

    # -- running ------------------------------------------------------------------------

    def forward(self, x, params, state=None, train: bool = False):
        """Run the whole sequence x (T, B, I). Returns (y, state) with y (T, B, out) the
        output state at every step and state {name: (B, n)} the final states; with
        train=True also a Tape for the backward pass."""
        x, params, state = self._check_inputs(x, params, state)
        y, final, saved = self._executor.forward(x, params, state, train)
        if not train:
            return y, final
        return y, final, Tape(self, params, saved, x.shape)


@dataclass
class Tape:
    """What a training forward pass recorded; `backward` may be called more than once."""

    cell: Cell
    params: dict
    saved: object
    x_shape: tuple

    def backward(self, dy, dstate=None) -> dict:
        """Gradients of a loss, given dy (T, B, out) = dL/dy and optionally the gradients
        of the final states {name: (B, n)}. Returns {"x": (T, B, I), "params": {name:
        array}, "state": {name: (B, n)}} (the last: gradients of the initial states)."""
        cell = self.cell
        T, B, _ = self.x_shape
        dy = check_array("dy", dy, (T, B, cell.state_sizes[cell.output]), cell.dtype)
        full = cell.zero_state(B)
        if dstate is not None:
            if not isinstance(dstate, dict):
                raise ShapeError(f"dstate: expected a dict of arrays, got {type(dstate).__name__}")
            for name, value in dstate.items():
                if name not in cell.state_sizes:
                    raise ShapeError(f"dstate: unexpected {name!r} (states: "
                                     f"{', '.join(cell.state_sizes)})")
                full[name] = check_array(f"dstate['{name}']", value,
                                         (B, cell.state_sizes[name]), cell.dtype)
        dx, dparams, dstate0 = cell._executor.backward(self.saved, self.params, dy, full)
        return {"x": dx, "params": dparams, "state": dstate0}
