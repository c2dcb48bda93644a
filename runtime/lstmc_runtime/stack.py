"""Stacks and directions, as nn.LSTM(num_layers=L, bidirectional=True) arranges them.

Layer l > 0 reads the concatenated outputs of layer l - 1's directions; the reverse
direction reads each row's valid prefix backwards (PyTorch's packed-sequence semantics
with `lengths`). Parameters are named `l{k}.{name}` and `l{k}_reverse.{name}`; states
are {name: (L * D, B, n)}, index l * D + d, as in PyTorch."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .cellbase import CellBase, check_lengths
from .errors import ShapeError
from .validate import check_array, check_names


def reverse_in_place_of_length(seq, lengths: np.ndarray | None, xp=np):
    """Each row's first lengths[b] steps reversed; steps past a row's length stay.
    `xp`: the array module of `seq` (NumPy, or CuPy for the cuda target)."""
    T, B = seq.shape[:2]
    if lengths is None:
        return xp.ascontiguousarray(seq[::-1])
    t = np.arange(T)[:, None]
    index = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
    return xp.ascontiguousarray(seq[xp.asarray(index), xp.asarray(np.arange(B)[None, :])])


def layer_prefix(layer: int, direction: int) -> str:
    return f"l{layer}{'_reverse' if direction else ''}."


class Stack:
    def __init__(self, layers: list[list[CellBase]], batch_first: bool = False):
        self.layers, self.batch_first = layers, batch_first
        first = layers[0][0]
        self.name, self.dtype, self.target = first.name, first.dtype, first.target
        self.xp = getattr(first, "xp", np)  # the array module cells take and return
        self.output, self.input_size = first.output, first.input_size
        self.hidden_size = first.hidden_size
        self.num_layers, self.num_directions = len(layers), len(layers[0])
        self.state_sizes = dict(first.state_sizes)
        self.output_size = self.state_sizes[self.output] * self.num_directions
        self.param_shapes = {layer_prefix(l, d) + n: s
                             for l, cells in enumerate(layers) for d, cell in enumerate(cells)
                             for n, s in cell.param_shapes.items()}

    def __repr__(self) -> str:
        return (f"<Stack {self.name} layers={self.num_layers} directions={self.num_directions}"
                f" target={self.target} dtype={self.dtype}>")

    def _cells(self):
        for l, cells in enumerate(self.layers):
            for d, cell in enumerate(cells):
                yield l, d, cell

    def init_params(self, seed: int | None = 0) -> dict[str, np.ndarray]:
        params = {}
        for l, d, cell in self._cells():
            sub_seed = None if seed is None else seed + 1000 * l + d
            for n, v in cell.init_params(sub_seed).items():
                params[layer_prefix(l, d) + n] = v
        return params

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        count = self.num_layers * self.num_directions
        return {n: np.zeros((count, batch, s), self.dtype) for n, s in self.state_sizes.items()}

    def forward(self, x, params, state=None, train: bool = False, lengths=None):
        """x (T, B, I) (or (B, T, I) with batch_first); returns y (T, B, D * out), the
        final states {name: (L * D, B, n)}, and with train=True a tape."""
        xp = self.xp
        shape = (None, None, self.input_size)
        x = check_array("x", x, shape, self.dtype)
        if self.batch_first:
            x = xp.ascontiguousarray(x.transpose(1, 0, 2))
        T, B = x.shape[:2]
        lengths = check_lengths(lengths, T, B)
        check_names("params", params, list(self.param_shapes))
        for name, pshape in self.param_shapes.items():
            check_array(f"params['{name}']", params[name], pshape, self.dtype)
        count = self.num_layers * self.num_directions
        if state is None:
            state = self.zero_state(B)
        check_names("state", state, list(self.state_sizes))
        for name, size in self.state_sizes.items():
            check_array(f"state['{name}']", state[name], (count, B, size), self.dtype)

        final = {n: xp.empty((count, B, s), self.dtype) for n, s in self.state_sizes.items()}
        tapes = []
        layer_input = x
        for l, cells in enumerate(self.layers):
            outputs, layer_tapes = [], []
            for d, cell in enumerate(cells):
                prefix, k = layer_prefix(l, d), l * self.num_directions + d
                sub = {n: params[prefix + n] for n in cell.param_shapes}
                init = {n: state[n][k] for n in self.state_sizes}
                seq = layer_input if d == 0 else reverse_in_place_of_length(layer_input, lengths, xp)
                result = cell.forward(seq, sub, init, train=train, lengths=lengths)
                y = result[0] if d == 0 else reverse_in_place_of_length(result[0], lengths, xp)
                outputs.append(y)
                for n in self.state_sizes:
                    final[n][k] = result[1][n]
                if train:
                    layer_tapes.append(result[2])
            layer_input = xp.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
            tapes.append(layer_tapes)
        y = layer_input
        if self.batch_first:
            y = xp.ascontiguousarray(y.transpose(1, 0, 2))
        if not train:
            return y, final
        return y, final, StackTape(self, tapes, lengths, (T, B))


@dataclass
class StackTape:
    stack: Stack
    tapes: list
    lengths: np.ndarray | None
    steps_batch: tuple

    def backward(self, dy, dstate=None) -> dict:
        stack = self.stack
        xp = stack.xp
        T, B = self.steps_batch
        count = stack.num_layers * stack.num_directions
        shape = (B, T, stack.output_size) if stack.batch_first else (T, B, stack.output_size)
        dy = check_array("dy", dy, shape, stack.dtype)
        if stack.batch_first:
            dy = xp.ascontiguousarray(dy.transpose(1, 0, 2))
        dstate = dstate or {}
        for name, value in dstate.items():
            if name not in stack.state_sizes:
                raise ShapeError(f"dstate: unexpected {name!r}")
            check_array(f"dstate['{name}']", value, (count, B, stack.state_sizes[name]),
                        stack.dtype)
        grads_params, grads_state = {}, {n: xp.zeros((count, B, s), stack.dtype)
                                          for n, s in stack.state_sizes.items()}
        d_output = dy
        out = stack.state_sizes[stack.output]
        for l in reversed(range(stack.num_layers)):
            d_input = None
            for d, tape in enumerate(self.tapes[l]):
                k = l * stack.num_directions + d
                part = xp.ascontiguousarray(d_output[..., d * out:(d + 1) * out])
                if d:
                    part = reverse_in_place_of_length(part, self.lengths, xp)
                ds = {n: xp.ascontiguousarray(v[k]) for n, v in dstate.items()}
                g = tape.backward(part, ds)
                dx = g["x"] if d == 0 else reverse_in_place_of_length(g["x"], self.lengths, xp)
                d_input = dx if d_input is None else d_input + dx
                for n, v in g["params"].items():
                    grads_params[layer_prefix(l, d) + n] = v
                for n, v in g["state"].items():
                    grads_state[n][k] = v
            d_output = d_input
        dx = d_output
        if stack.batch_first:
            dx = xp.ascontiguousarray(dx.transpose(1, 0, 2))
        return {"x": dx, "params": grads_params, "state": grads_state}


def load_stack(directory: str, manifest: dict) -> Stack:
    from .artifact import load_cell

    cells = {name: load_cell(os.path.join(directory, sub)) for name, sub in manifest["cells"].items()}
    layers = manifest["layers"]
    D = 2 if layers["bidirectional"] else 1
    grid = [[cells["layer0" if l == 0 else "upper"] for _ in range(D)]
            for l in range(layers["num_layers"])]
    return Stack(grid, layers["batch_first"])
