"""The Python API: compile a spec into a Cell, run it forward, and backward through a Tape.

The Cell validates every array before computing; the executor behind it depends on the
target. Arrays follow PyTorch's sequence layout (T, B, F) and NumPy's conventions.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import numpy as np
from lstmc_runtime import dtypes
from lstmc_runtime.cellbase import CellBase, Tape
from lstmc_runtime.errors import UsageError
from lstmc_runtime.manifest import MAX_LAYERS, CellDescription
from lstmc_runtime.manifest import MAX_SIZE as MAX_BUFFER_ELEMENTS
from lstmc_runtime.stack import Stack

from .backends.reference import ReferenceExecutor
from .driver import lower_spec
from .errors import CompileError, output_error
from .frontend.source import read_source
from .ir.size import Size
from .passes.pipeline import Program
from .targets import TARGETS as TARGET_TABLE
from .targets import Target, artifact_targets, get_target

__all__ = ["Cell", "Tape", "bind_sizes", "compile"]

TARGETS = tuple(TARGET_TABLE)
DTYPES = tuple(dtypes.DTYPES)


MAX_SIZE = 1 << 24  # any one size; a 4H x H float32 weight of it would be 2^50 bytes


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
        if given.get("H", hidden_size) != hidden_size:  # `cell sru(x: H)`
            tied = (f"but the spec gives its input the size H (`{info.input[0]}: H`), so they "
                    f"must be equal: pass one of them, or declare the input with its own "
                    f"size (`{info.input[0]}: I`)")
            raise CompileError(
                f"input_size={input_size} and hidden_size={hidden_size}, {tied}",
                cli=f"--input-size {input_size} and --hidden-size {hidden_size}, {tied}")
        given["H"] = hidden_size
    for name, value in sizes.items():
        if name not in names:
            raise CompileError(f"unknown size '{name}': the spec's sizes are "
                               + (", ".join(sorted(names)) or "all fixed"))
        if name in given and given[name] != value:  # e.g. hidden_size=4 and H=5
            raise CompileError(f"size {name} is given twice: {given[name]} and {value}")
        given[name] = value
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise CompileError(f"size {name} must be a positive integer, got {value!r}")
        if value > MAX_SIZE:  # beyond it, buffer sizes overflow the kernels' indices
            raise CompileError(f"size {name}={value} is too large (at most {MAX_SIZE})")
    missing = sorted(names - set(given))
    if missing:
        input_name = next(iter(input_atom.names), None)
        hint = {"H": "hidden_size=", input_name: "input_size="}
        flag = {"H": "--hidden-size ", input_name: "--input-size "}
        what = f"no value for size{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        raise CompileError(
            f"{what}: pass " + ", ".join(hint.get(n, f"{n}=") + "..." for n in missing),
            cli=f"{what}: give " + ", ".join(flag.get(n, f"--size {n}=") + "N"
                                              for n in missing))
    bound = {name: int(value) for name, value in given.items()}
    check_buffer_sizes(program, bound)
    return bound


def check_buffer_sizes(program: Program, sizes: dict[str, int]) -> None:
    """Refuse, before any code is generated, a cell the runtime would refuse to load: a
    per-step buffer or a weight (a parameter, a stack of them packed for a product) of
    MAX_BUFFER_ELEMENTS elements or more (lstmc_runtime.manifest's limit on any one
    dimension; a packed weight is one dimension). Named sizes are each at most MAX_SIZE,
    but their products and multiples (4*H x H) are not."""
    info = program.info
    counts: list[tuple[str, int]] = [(f"the input {info.input[0]} (size {info.input[1]})",
                                      info.input[1].bind(sizes))]
    counts += [(f"the input {n} (size {s})", s.bind(sizes))
               for n, s in info.extra_inputs.items()]
    counts += [(f"the state {n} (size {s})", s.bind(sizes)) for n, s in info.states.items()]
    for name, spec in info.param_specs(sizes).items():
        shape = " x ".join(str(d) for d in info.param_shape(name))
        counts.append((f"the parameter {name} ({shape} = {' x '.join(map(str, spec.shape))})",
                       _product(spec.shape)))
    for part in (program, *program.prologues):
        for weight in part.packed_weights:
            names = ", ".join(p for p, _ in weight.segments)
            rows, columns = weight.rows.bind(sizes), weight.columns.bind(sizes)
            counts.append((f"the packed weight [{names}] ({weight.rows} x {weight.columns} = "
                           f"{rows} x {columns})", rows * columns))
        counts += [(f"a value of the step (size {node.size})", node.size.bind(sizes))
                   for node in part.graph.nodes]
    for what, count in counts:
        if count >= MAX_BUFFER_ELEMENTS:
            bound = ", ".join(f"{k}={v}" for k, v in sizes.items())
            raise CompileError(
                f"cell {info.name} ({bound}) is too large: {what} would have {count} "
                f"elements, and the runtime's buffers hold fewer than {MAX_BUFFER_ELEMENTS}")


def _product(shape) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def _size_names(program: Program) -> set[str]:
    info = program.info
    names = set(info.input[1].names)
    for size in [*info.extra_inputs.values(), *info.states.values()]:
        names |= size.names
    for name, p in info.params.items():
        for dim in info.param_shape(name):
            names |= dim.names
        if p.heads is not None:
            names |= Size.of(p.heads).names
    return names


def lower_bound(source, cell, input_size, hidden_size, sizes, hoist_chains: bool = True
                ) -> tuple[Program, dict[str, int]]:
    """The cell's Program and the values of its sizes. A cell with multi-head matrices
    is lowered again with the sizes as numbers: its head counts shape the step."""
    program = lower_spec(source, cell, hoist_chains=hoist_chains)
    bound = bind_sizes(program, input_size, hidden_size, sizes)
    if program.info.has_heads:
        program = lower_spec(source, cell, bound, hoist_chains=hoist_chains)
        check_buffer_sizes(program, bound)
    return program, bound


def compile(spec: str | os.PathLike[str], input_size: int | None = None,
            hidden_size: int | None = None, *, target: str = "reference",
            dtype: str = "float32", cell: str | None = None, num_layers: int = 1,
            bidirectional: bool = False, batch_first: bool = False,
            direction: str = "forward", reverse_spec=None, reverse_cell: str | None = None,
            **sizes: int):
    """Compile the cell of `spec` (a path or the spec's text).

    `input_size` and `hidden_size` bind the input's size and H; other named sizes (a
    projection size P, say) are keyword arguments. `cell` picks one cell of a spec that
    defines several. `num_layers`, `bidirectional` and `batch_first` mean what they mean
    for torch.nn.LSTM; with more than one layer or direction the result is a Stack.
    direction="reverse" (without `bidirectional`) runs a single direction that reads
    each row's sequence backwards (a Stack). With `bidirectional`, the reverse direction
    may be another cell: `reverse_spec` (default: `spec`) and `reverse_cell` (default:
    `cell`), with the same states.
    target="cpu" compiles native code (cached on disk); "cuda" runs generated CUDA
    kernels through CuPy (CuPy arrays in and out), "opencl" the same kernels through
    pyopencl on any OpenCL device (NumPy arrays in and out); both compute in float32.
    "reference" runs the NumPy reference executor.
    """
    backend = get_target(target)
    dtype_name = _dtype_name(dtype)
    backend.check(dtype_name)
    _check_num_layers(num_layers)
    kinds = _directions(direction, bidirectional, reverse_spec, reverse_cell)
    # Sizes key the disk cache as JSON: a NumPy integer (np.int64(16)) as the int it is.
    input_size, hidden_size = _plain_size(input_size), _plain_size(hidden_size)
    sizes = {name: _plain_size(value) for name, value in sizes.items()}
    source = read_source(spec)
    # (source, cell name) per direction; one compiled cell serves both when they are alike
    choices = {"forward": (source, cell)}
    choices["reverse"] = choices["forward"] if reverse_spec is None and reverse_cell is None \
        else (source if reverse_spec is None else read_source(reverse_spec),
              cell if reverse_cell is None else reverse_cell)

    def layer(in_size):
        built = {}
        for kind in kinds:
            key = id(choices[kind])
            if key not in built:
                src, name = choices[kind]
                built[key] = _compile_one(src, name, in_size, hidden_size, sizes, dtype_name,
                                          backend)
        return [built[id(choices[kind])] for kind in kinds]

    first = layer(input_size)
    if num_layers == 1 and kinds == ("forward",):
        first[0].batch_first = bool(batch_first)
        return first[0]
    layers = [first]
    if num_layers > 1:
        layers += [layer(sum(c.state_sizes[c.output] for c in first))] * (num_layers - 1)
        upper = layers[1][0].extra_inputs
        if upper != first[0].extra_inputs:  # `m: I` grew with the upper layers' input
            raise CompileError(
                f"num_layers={num_layers}: every layer is given the inputs after the first as "
                f"they are, but their sizes follow the first input's ({first[0].extra_inputs} "
                f"in layer 0, {upper} above it): give them sizes of their own")
    return Stack(layers, batch_first=bool(batch_first), directions=kinds)


def _plain_size(value):
    """A NumPy integer as a Python int; anything else as given (bind_sizes judges it)."""
    return int(value) if isinstance(value, np.integer) else value


def _check_num_layers(num_layers) -> None:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise CompileError(f"num_layers must be a positive integer, got {num_layers!r}")
    if num_layers > MAX_LAYERS:  # the runtime would refuse to load such a stack
        raise CompileError(f"num_layers={num_layers} is more than a stack may have "
                           f"({MAX_LAYERS})")


def _directions(direction, bidirectional, reverse_spec, reverse_cell) -> tuple[str, ...]:
    if direction not in ("forward", "reverse"):
        raise CompileError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    if bidirectional and direction == "reverse":
        raise CompileError("direction='reverse' is one reversed direction; "
                           "bidirectional=True already adds the reverse one")
    if not bidirectional and (reverse_spec is not None or reverse_cell is not None):
        raise CompileError("reverse_spec and reverse_cell choose the reverse direction's "
                           "cell of a bidirectional stack: pass bidirectional=True")
    return ("forward", "reverse") if bidirectional else (direction,)


def _compile_one(source, cell, input_size, hidden_size, sizes, dtype, backend: Target):
    key_parts = {"spec": source.text, "cell": cell, "input_size": input_size,
                 "hidden_size": hidden_size, "sizes": sizes}
    return backend.compile(lambda: lower_bound(source, cell, input_size, hidden_size, sizes),
                           dtype, key_parts)


def _dtype_name(value) -> str:
    """The name of a supported dtype given as a name, a NumPy dtype or a DType."""
    try:
        return dtypes.dtype(value).name
    except UsageError as exc:
        raise CompileError(str(exc)) from None


class Cell(CellBase):
    """A cell compiled for the reference target: the NumPy executor runs it."""

    def __init__(self, program: Program, sizes: dict[str, int], dtype: np.dtype, target: str):
        self.program, self.sizes, self.dtype, self.target = program, sizes, dtype, target
        info = program.info
        self.name = info.name
        self.output = info.output
        self.input_size = info.input[1].bind(sizes)
        self.extra_inputs = {n: size.bind(sizes) for n, size in info.extra_inputs.items()}
        self.state_sizes = {n: s.bind(sizes) for n, s in info.states.items()}
        self._set_params(info.param_specs(sizes))
        self.hidden_size = sizes.get("H", self.state_sizes[self.output])
        self._executor = ReferenceExecutor(program, sizes, dtype)

    @property
    def description(self) -> CellDescription:
        """What this cell is, in the terms every target's cell uses."""
        return CellDescription(
            name=self.name, target=self.target, dtype=np.dtype(self.dtype).name,
            sizes=dict(self.sizes), input_size=self.input_size, output=self.output,
            states=dict(self.state_sizes),
            params=self.program.info.param_specs(self.sizes),
            batch_first=bool(self.batch_first), extra_inputs=dict(self.extra_inputs))

    def _run_forward(self, x, params, state, train, lengths, seed=None):
        return self._executor.forward(x, params, state, train, lengths, seed)

    def _run_backward(self, saved, params, dy, dstate):
        return self._executor.backward(saved, params, dy, dstate)


def write_artifact_dir(spec, directory: str, input_size: int | None = None,
                       hidden_size: int | None = None, *, target: str = "cpu",
                       dtype: str = "float32", cell: str | None = None, num_layers: int = 1,
                       bidirectional: bool = False, batch_first: bool = False,
                       emit: frozenset[str] = frozenset(), cpu: str = "host",
                       **sizes: int) -> None:
    """Write a compiled artifact that lstmc_runtime.load runs (`lstmc compile -o DIR`)."""
    from lstmc_runtime.artifact import write_manifest

    dtype = _dtype_name(dtype)
    backend = get_target(target)
    if not backend.artifacts:
        raise CompileError(f"artifacts are written for targets {', '.join(artifact_targets())}, "
                           f"not '{target}'")
    backend.check(dtype, cpu)

    def write_artifact(directory, program, sizes, dtype, emit, batch_first=False, cpu="host"):
        try:
            backend.write_artifact(directory, program, sizes, dtype, emit, batch_first, cpu)
        except OSError as exc:  # e.g. a directory where cell.so or manifest.json goes
            raise output_error(exc) from None

    _check_num_layers(num_layers)
    source = read_source(spec)
    program, bound = lower_bound(source, cell, input_size, hidden_size, sizes)
    if num_layers == 1 and not bidirectional:
        with _output_directory(directory):
            write_artifact(directory, program, bound, dtype, emit, batch_first=batch_first,
                           cpu=cpu)
        return
    directions = 2 if bidirectional else 1
    parts = {"layer0": bound}
    if num_layers > 1:
        out = program.info.states[program.info.output].bind(bound)
        input_name = next(iter(program.info.input[1].names), None)
        if input_name is None:
            raise CompileError("a stack needs a named input size: the spec fixes it")
        parts["upper"] = dict(bound, **{input_name: out * directions})
    programs = {name: lower_spec(source, cell, part_sizes) if program.info.has_heads
                else program for name, part_sizes in parts.items()}
    for name, part in programs.items():  # every part, before anything is written
        check_buffer_sizes(part, parts[name])  # the upper layers' input is D*H wide
    with _output_directory(directory):
        for name, part in programs.items():
            sub = os.path.join(directory, name)
            _make_output_directory(sub)
            write_artifact(sub, part, parts[name], dtype, emit, cpu=cpu)
        manifest = {"target": target, "cell": program.info.name, "dtype": dtype,
                    "layers": {"num_layers": num_layers, "bidirectional": bool(bidirectional),
                               "batch_first": bool(batch_first)},
                    "cells": {name: name for name in parts}}
        try:
            write_manifest(directory, manifest, [f"{name}/manifest.json" for name in parts])
        except OSError as exc:
            raise output_error(exc) from None


@contextmanager
def _output_directory(directory: str):
    """The artifact's directory (_make_output_directory) while it is written: one made
    here is removed again if the writing fails or is interrupted (Ctrl-C), instead of
    staying behind empty or half written."""
    made = not os.path.isdir(directory)
    _make_output_directory(directory)
    try:
        yield
    except BaseException:
        if made:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _make_output_directory(directory: str) -> None:
    """The artifact's directory, made if missing; a file in its place is an error."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CompileError(f"cannot write the artifact to {directory}: it exists and is not "
                           "a directory")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise CompileError(f"cannot create the artifact directory {directory}: "
                           f"{exc.strerror or exc}") from None
