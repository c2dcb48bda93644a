"""The cell API every target shares: parameters, validation of every array before any
computation, forward over a sequence, and a Tape for the backward pass. A target
implements `_run_forward` and `_run_backward` on validated arrays."""
from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import ShapeError, UsageError
from .validate import check_array, check_count, check_init_seed, check_names


class CellBase(abc.ABC):
    name: str
    target: str
    dtype: np.dtype
    output: str  # the state that is also the output
    input_size: int
    hidden_size: int
    state_sizes: dict[str, int]
    param_shapes: dict[str, tuple[int, ...]]
    param_inits: dict[str, float | str | None]
    extra_inputs: dict[str, int] = {}  # inputs after the first, by name: their sizes

    def __repr__(self) -> str:
        return (f"<{type(self).__module__.split('.')[0]}.Cell {self.name} "
                f"(input {self.input_size}, hidden {self.hidden_size}) target={self.target} "
                f"dtype={self.dtype}>")

    def _describe(self, description) -> None:
        """Name, dtype, sizes, states and parameters from a CellDescription (or the JSON
        of an artifact's manifest, which holds one)."""
        from .manifest import CellDescription

        if not isinstance(description, CellDescription):
            self.manifest = description
            description = CellDescription.from_json(description)
        self.description = description
        self.name = description.name
        self.target = description.target
        self.dtype = np.dtype(description.dtype)
        self.output = description.output
        self.input_size = description.input_size
        self.extra_inputs = dict(description.extra_inputs)
        self.state_sizes = dict(description.states)
        self._set_params(description.params)
        self.hidden_size = description.sizes.get("H", self.state_sizes[self.output])
        self.batch_first = description.batch_first

    def _set_params(self, specs: dict) -> None:
        """The parameters the caller passes, and the matrices derived from them (see
        ParamSpec.derived): those the kernels take as parameters too, computed here."""
        self.param_shapes = {n: p.shape for n, p in specs.items() if p.derived is None}
        self.param_inits = {n: p.init for n, p in specs.items() if p.derived is None}
        self.derived = {n: p for n, p in specs.items() if p.derived is not None}
        self.kernel_param_shapes = {n: p.shape for n, p in specs.items()}

    def _expand(self, params):
        """The caller's parameters plus each derived matrix, computed from them."""
        missing = [n for n in self.derived if n not in params]
        if not missing:
            return params
        xp = getattr(self, "xp", np)
        full = dict(params)
        for name in missing:
            spec = self.derived[name]
            value = xp.zeros(spec.shape, self.dtype)
            for term in spec.derived:
                if term.param is None:
                    value += self.dtype.type(term.coef) * xp.eye(spec.shape[0], dtype=self.dtype)
                else:
                    source = params[term.param]
                    if term.block is not None:  # one head's block of a multi-head matrix
                        source = source[term.block]
                    value += self.dtype.type(term.coef) * (source.T if term.transposed
                                                           else source)
            full[name] = value
        return full

    def _fold(self, dparams: dict) -> dict:
        """Gradients of the caller's parameters: each derived matrix's gradient flows back
        to the parameters it was made of."""
        if not self.derived:
            return dparams
        out = {n: g for n, g in dparams.items() if n not in self.derived}
        for name, spec in self.derived.items():
            grad = dparams[name]
            for term in spec.derived:
                if term.param is None:
                    continue
                part = self.dtype.type(term.coef) * (grad.T if term.transposed else grad)
                if term.block is not None:
                    whole = out[term.param].copy()
                    whole[term.block] += part
                    out[term.param] = whole
                else:
                    out[term.param] = out[term.param] + part
        return out

    def init_params(self, seed: int | None = 0) -> dict[str, np.ndarray]:
        """Parameters as PyTorch initializes them: uniform(-1/sqrt(H), 1/sqrt(H)), except
        those the spec gives a constant initial value."""
        rng = np.random.default_rng(check_init_seed(seed))
        bound = 1.0 / math.sqrt(self.hidden_size)
        params = {}
        for name, shape in self.param_shapes.items():
            init = self.param_inits.get(name)
            if init is None:
                params[name] = rng.uniform(-bound, bound, shape).astype(self.dtype)
            elif init == "eye":
                params[name] = np.eye(*shape, dtype=self.dtype)
            else:
                params[name] = np.full(shape, init, dtype=self.dtype)
        return params

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        return zero_states(self.state_sizes, (), check_count("batch", batch), self.dtype)

    def _check_inputs(self, x, params, state):
        x = check_array("x", x, (None, None, self.input_size), self.dtype)
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ShapeError(f"x: expected at least one step and one batch row, got shape "
                             f"{tuple(x.shape)}")
        batch = x.shape[1]
        if getattr(params, "validated_for", None) is not self:  # see NativeCell.pack_params
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

    batch_first = False

    def _check_extra_inputs(self, inputs, steps: int, batch: int) -> list:
        return list(check_extra_inputs(self.extra_inputs, inputs, steps, batch, self.dtype,
                                       self.batch_first).values())

    def _pack_inputs(self, x, inputs):
        """x (T, B, I) and the other inputs as the one sequence the kernels read."""
        arrays = self._check_extra_inputs(inputs, *x.shape[:2])
        if not arrays:
            return x
        xp = getattr(self, "xp", np)
        return xp.ascontiguousarray(xp.concatenate([xp.asarray(a) for a in (x, *arrays)],
                                                   axis=-1))

    def _split_inputs(self, packed) -> tuple:
        """The packed input sequence (or its gradient) as (x, {name: array})."""
        if not self.extra_inputs:
            return packed, {}
        xp = getattr(self, "xp", np)
        offset, parts = self.input_size, {}
        for name, size in self.extra_inputs.items():
            parts[name] = xp.ascontiguousarray(packed[..., offset:offset + size])
            offset += size
        return xp.ascontiguousarray(packed[..., :self.input_size]), parts

    def forward(self, x, params, state=None, train: bool = False, lengths=None,
                seed: int | None = None, masks: bool = True, inputs=None, workspace=None):
        """Run the whole sequence x (T, B, I), or (B, T, I) with batch_first. Returns
        (y, state): y (T, B, out) the output state at every step, state {name: (B, n)}
        the final states; with train=True also a Tape for the backward pass.

        `lengths` (B integers in 0..T) runs a padded batch of shorter sequences as
        PyTorch's packed sequences do: outputs past a row's length are zero and its final
        state is its state at its length (a row of length 0 keeps its initial state).
        Whatever the padding holds (NaN, inf) it reaches no output and no gradient.

        Dropout and zoneout masks (train=True only) are drawn from `seed`, a 64-bit
        integer: the same seed gives the same masks on every target; None draws a fresh
        seed, recorded on the tape (`tape.seed`). Inference uses their expectations, and
        so does a training pass with masks=False (gradients of the inference function).

        `inputs` gives the inputs after the first by name (`cell c(x: I, dt: 1)`:
        inputs={"dt": (T, B, 1)}, batch_first: (B, T, 1)); the tape's gradients of them
        are `backward(...)["inputs"]`.

        `workspace` (cpu target, train=True): a 1-D array of `workspace_size(T, B)`
        elements of the cell's dtype that receives everything the backward needs (as
        cuDNN's reserve space); the tape reads it in place, so it must outlive the tape.
        `saved_from_workspace` rebuilds the tape's saved values from it."""
        if workspace is not None and not (train and hasattr(self, "workspace_size")):
            raise UsageError("workspace= is for a training forward (train=True) of a cpu "
                             "target cell")
        if self.batch_first:
            x = check_array("x", x, (None, None, self.input_size), self.dtype)
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        x, params, state = self._check_inputs(x, params, state)
        x = self._pack_inputs(x, inputs)
        lengths = check_lengths(lengths, *x.shape[:2])
        x = zero_padding(x, lengths, getattr(self, "xp", np))
        seed = check_seed(seed) if train and masks else None
        more = {}
        if workspace is not None:
            size = self.workspace_size(*x.shape[:2])  # type: ignore[attr-defined]
            more["workspace"] = check_array("workspace", workspace, (size,), self.dtype)
            if not workspace.flags.writeable:
                raise ShapeError("workspace: expected a writable array, got a read-only one")
        y, final, saved = self._run_forward(x, self._expand(params), state, train, lengths, seed,
                                            **more)
        if self.batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        if not train:
            return y, final
        return y, final, Tape(self, params, saved, x.shape, lengths, origin=self, seed=seed)

    @abc.abstractmethod
    def _run_forward(self, x, params, state, train, lengths, seed=None):
        """(y, final states, what backward needs or None) for validated arrays; `seed`
        (training only) keys the dropout and zoneout masks, and what backward needs
        keeps it, so that the backward draws the same masks."""

    @abc.abstractmethod
    def _run_backward(self, saved, params, dy, dstate):
        """(dx, dparams, dstate0) for validated arrays."""


@dataclass
class Tape:
    """What a training forward pass recorded; `backward` may be called more than once."""

    cell: CellBase
    params: dict
    saved: object
    x_shape: tuple
    lengths: np.ndarray | None = None
    origin: object = field(default=None, repr=False, compare=False)  # the recording cell
    seed: int | None = None  # the masks' seed of the forward that recorded this tape

    def _check_belongs(self, cell) -> None:
        """A tape runs backward only through the cell that recorded it, with parameters
        of that cell's shapes: anything else is a UsageError, not a KeyError inside."""
        if not isinstance(cell, CellBase):
            raise UsageError(f"Tape.cell: expected a compiled cell, got {type(cell).__name__}")
        if self.origin is not None and self.origin is not cell:
            raise UsageError(f"this tape was recorded by {self.origin!r}, not by {cell!r}: "
                             "call backward on the tape that cell's forward returned")
        recorded = getattr(getattr(self.saved, "x", None), "shape", None)
        if recorded is not None and tuple(recorded[:2]) != tuple(self.x_shape[:2]):
            raise UsageError(f"Tape.x_shape: the forward that recorded this tape ran (T, B) = "
                             f"{tuple(recorded[:2])}, x_shape says {tuple(self.x_shape[:2])}")
        if getattr(self.params, "validated_for", None) is not cell:
            check_names("tape params", self.params, list(cell.param_shapes))
            for name, shape in cell.param_shapes.items():
                check_array(f"tape params['{name}']", self.params[name], shape, cell.dtype)

    def backward(self, dy, dstate=None) -> dict:
        """Gradients of a loss, given dy (T, B, out) = dL/dy and optionally the gradients
        of the final states {name: (B, n)}. Returns {"x": (T, B, I), "params": {name:
        array}, "state": {name: (B, n)}, "inputs": {name: (T, B, n)}} ("state": gradients
        of the initial states; "inputs": of the inputs after the first, if any)."""
        cell = self.cell
        self._check_belongs(cell)
        T, B, _ = self.x_shape
        out = cell.state_sizes[cell.output]
        if cell.batch_first:
            dy = check_array("dy", dy, (B, T, out), cell.dtype)
            dy = np.ascontiguousarray(dy.transpose(1, 0, 2))
        dy = check_array("dy", dy, (T, B, out), cell.dtype)
        dy = zero_padding(dy, self.lengths, getattr(cell, "xp", np))
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
        dx, dparams, dstate0 = cell._run_backward(self.saved, cell._expand(self.params), dy,
                                                  full)
        dparams = cell._fold(dparams)
        dx, dinputs = cell._split_inputs(dx)
        if cell.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
            dinputs = {n: np.ascontiguousarray(g.transpose(1, 0, 2)) for n, g in dinputs.items()}
        return {"x": dx, "params": dparams, "state": dstate0, "inputs": dinputs}


def check_extra_inputs(sizes: dict[str, int], inputs, steps: int, batch: int, dtype,
                       batch_first: bool = False) -> dict:
    """The inputs after the first of a cell (`sizes`: theirs, by name), validated, each
    (T, B, n) (given (B, T, n) with batch_first: returned transposed, as a view)."""
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, dict):
        raise ShapeError(f"inputs: expected a dict of arrays, got {type(inputs).__name__}")
    missing = [repr(n) for n in sizes if n not in inputs]
    unexpected = [repr(n) for n in inputs if n not in sizes]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) \
            + ([f"unexpected {', '.join(unexpected)}"] if unexpected else [])
        raise ShapeError(f"inputs: {'; '.join(parts)} (the cell's inputs after the first: "
                         f"{', '.join(sizes) or 'none'})")
    arrays = {}
    for name, size in sizes.items():
        where = f"inputs['{name}']"
        if batch_first:
            value = check_array(where, inputs[name], (batch, steps, size), dtype)
            arrays[name] = value.transpose(1, 0, 2)
        else:
            arrays[name] = check_array(where, inputs[name], (steps, batch, size), dtype)
    return arrays


def zero_states(sizes: dict[str, int], lead: tuple, batch: int, dtype) -> dict[str, np.ndarray]:
    """Zero states {name: lead + (batch, n)}; a batch too large for memory is a
    ShapeError saying so, not NumPy's error."""
    try:
        return {n: np.zeros((*lead, batch, s), dtype) for n, s in sizes.items()}
    except (ValueError, MemoryError):
        raise ShapeError(f"zero_state: states for a batch of {batch} rows do not fit in "
                         "memory") from None


def check_seed(seed) -> int:
    """A 64-bit mask seed: the caller's (an integer in [0, 2**64)), or a fresh one."""
    if seed is None:
        # fresh entropy, as SeedSequence() draws it, at a tenth of its cost (~12 µs a
        # training call on a small machine)
        return int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UsageError(f"seed: expected an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) < 1 << 64:
        raise UsageError(f"seed: expected an integer in [0, 2**64), got {seed}")
    return int(seed)


def check_lengths(lengths, steps: int, batch: int) -> np.ndarray | None:
    """Per-row sequence lengths as int64, each in 0..steps; None stays None."""
    if lengths is None:
        return None
    if hasattr(lengths, "__cuda_array_interface__"):  # a CuPy array: the host needs it
        lengths = lengths.get()
    array = np.asarray(lengths)
    if array.dtype.kind not in "iu":
        raise ShapeError(f"lengths: expected integers, got {array.dtype}")
    if array.shape != (batch,):
        raise ShapeError(f"lengths: expected shape ({batch},), one per batch row, got "
                         f"{tuple(array.shape)}")
    bad = np.flatnonzero((array < 0) | (array > steps))
    if bad.size:
        row = int(bad[0])
        raise ShapeError(f"lengths: each must be between 0 and T={steps}, got {array[row]} "
                         f"for row {row}")
    return np.ascontiguousarray(array, dtype=np.int64)


def zero_padding(seq, lengths: np.ndarray | None, xp=np):
    """`seq` (T, B, F) with the steps past each row's length set to zero (a copy; `seq`
    itself when nothing is padding). The kernels mask padded steps out of the recurrence,
    but the whole-sequence products (input projection, weight gradients) read every row:
    0 x NaN would be NaN there, so the padding must hold zeros before any native call."""
    if lengths is None:
        return seq
    T = seq.shape[0]
    if bool((lengths >= T).all()):
        return seq
    valid = np.arange(T)[:, None] < lengths[None, :]  # (T, B)
    return xp.ascontiguousarray(xp.where(xp.asarray(valid)[..., None], seq,
                                         seq.dtype.type(0)))
