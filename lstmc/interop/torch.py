"""Convert between a cell's parameters and the state_dict of PyTorch's nn.LSTM, nn.GRU
and nn.RNN.

PyTorch stacks each layer's gate matrices by rows in its own gate order (LSTM i, f, g, o;
GRU r, z, n). The shipped specs name their parameters as PyTorch's documentation does
(W_ii, b_hf, ...), so a cell matches a layout when it has exactly that layout's names.
Torch is imported only when these functions are called.
"""
from __future__ import annotations

import numpy as np

from ..errors import CompileError, ShapeError

# layout name -> [(state_dict entry without the _l0 suffix, the cell parameters it stacks)]
LAYOUTS: dict[str, list[tuple[str, list[str]]]] = {
    "LSTM": [
        ("weight_ih", ["W_ii", "W_if", "W_ig", "W_io"]),
        ("weight_hh", ["W_hi", "W_hf", "W_hg", "W_ho"]),
        ("bias_ih", ["b_ii", "b_if", "b_ig", "b_io"]),
        ("bias_hh", ["b_hi", "b_hf", "b_hg", "b_ho"]),
    ],
    "GRU": [
        ("weight_ih", ["W_ir", "W_iz", "W_in"]),
        ("weight_hh", ["W_hr", "W_hz", "W_hn"]),
        ("bias_ih", ["b_ir", "b_iz", "b_in"]),
        ("bias_hh", ["b_hr", "b_hz", "b_hn"]),
    ],
    "RNN": [
        ("weight_ih", ["W_ih"]),
        ("weight_hh", ["W_hh"]),
        ("bias_ih", ["b_ih"]),
        ("bias_hh", ["b_hh"]),
    ],
}
PROJECTION = ("weight_hr", ["W_hr"])  # LSTM with proj_size


def layout_of(cell) -> tuple[str, list[tuple[str, list[str]]]]:
    """The PyTorch layout whose parameter names are exactly the cell's."""
    names = set(cell.param_shapes)
    for kind, entries in LAYOUTS.items():
        for extra in ([], [PROJECTION]) if kind == "LSTM" else ([],):
            layout = entries + extra
            if names == {p for _, params in layout for p in params}:
                return kind, layout
    raise CompileError(
        f"cell '{cell.name}' has no PyTorch counterpart: its parameters are not named as in "
        "nn.LSTM, nn.GRU or nn.RNN (see specs/lstm.lstm, specs/gru.lstm, specs/rnn_tanh.lstm)")


def _check_module(module, kind: str, cell) -> None:
    import torch

    expected = getattr(torch.nn, kind)
    if not isinstance(module, expected):
        raise CompileError(f"cell '{cell.name}' corresponds to nn.{kind}, "
                           f"got {type(module).__name__}")
    if module.num_layers != 1 or module.bidirectional:
        raise CompileError(f"a single cell converts a one-layer, one-direction nn.{kind}; "
                           f"got num_layers={module.num_layers}, "
                           f"bidirectional={module.bidirectional}")
    if kind == "RNN":
        wanted = "relu" if "relu" in cell.name else "tanh"
        if module.nonlinearity != wanted:
            raise CompileError(f"cell '{cell.name}' uses {wanted}, the module "
                               f"{module.nonlinearity}")


def params_from_torch(cell, module) -> dict[str, np.ndarray]:
    """The cell's parameters from an nn.LSTM / nn.GRU / nn.RNN module or its state_dict."""
    kind, layout = layout_of(cell)
    if hasattr(module, "state_dict"):
        _check_module(module, kind, cell)
        state_dict = module.state_dict()
    else:
        state_dict = module
    params = {}
    for entry, names in layout:
        key = f"{entry}_l0"
        if key not in state_dict:
            raise ShapeError(f"state_dict has no '{key}' (a module built with bias=False?); "
                             f"cell '{cell.name}' needs {', '.join(names)}")
        value = state_dict[key].detach().cpu().numpy()
        rows = sum(cell.param_shapes[n][0] for n in names)
        if value.shape[0] != rows:
            raise ShapeError(f"state_dict['{key}']: expected {rows} rows, got shape "
                             f"{tuple(value.shape)}")
        offset = 0
        for name in names:
            shape = cell.param_shapes[name]
            part = value[offset:offset + shape[0]]
            if part.shape != shape:
                raise ShapeError(f"state_dict['{key}'] rows for {name}: expected shape "
                                 f"{shape}, got {tuple(part.shape)}")
            params[name] = np.ascontiguousarray(part, dtype=cell.dtype)
            offset += shape[0]
    return params


def params_to_torch(cell, params: dict) -> dict:
    """A state_dict (name -> torch.Tensor) that the matching PyTorch module loads."""
    import torch

    _, layout = layout_of(cell)
    return {
        f"{entry}_l0": torch.from_numpy(np.concatenate([np.asarray(params[n]) for n in names]))
        for entry, names in layout
    }
