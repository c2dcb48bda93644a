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


def _units(cell):
    """(the single-layer cell, state_dict suffix, our parameter prefix) for each layer and
    direction of a cell or Stack."""
    layers = getattr(cell, "layers", None)
    if layers is None:
        return [(cell, "_l0", "")]
    return [(c, f"_l{l}{'_reverse' if d else ''}", f"l{l}{'_reverse' if d else ''}.")
            for l, cells in enumerate(layers) for d, c in enumerate(cells)]


def _check_module(module, kind: str, cell) -> None:
    import torch

    expected = getattr(torch.nn, kind)
    if not isinstance(module, expected):
        raise CompileError(f"cell '{cell.name}' corresponds to nn.{kind}, "
                           f"got {type(module).__name__}")
    layers = getattr(cell, "num_layers", 1)
    bidirectional = getattr(cell, "num_directions", 1) == 2
    if module.num_layers != layers or module.bidirectional != bidirectional:
        raise CompileError(f"the cell has num_layers={layers}, bidirectional={bidirectional}; "
                           f"the module num_layers={module.num_layers}, "
                           f"bidirectional={module.bidirectional}")
    if kind == "RNN":
        wanted = "relu" if "relu" in cell.name else "tanh"
        if module.nonlinearity != wanted:
            raise CompileError(f"cell '{cell.name}' uses {wanted}, the module "
                               f"{module.nonlinearity}")


def params_from_torch(cell, module) -> dict[str, np.ndarray]:
    """The parameters of a cell (or Stack) from an nn.LSTM / nn.GRU / nn.RNN module or
    its state_dict. Stack parameters are named l{k}.NAME and l{k}_reverse.NAME."""
    units = _units(cell)
    kind, layout = layout_of(units[0][0])
    if hasattr(module, "state_dict"):
        _check_module(module, kind, cell)
        state_dict = module.state_dict()
    else:
        state_dict = module
    params = {}
    for unit, suffix, prefix in units:
        for entry, names in layout:
            key = f"{entry}{suffix}"
            if key not in state_dict:
                raise ShapeError(f"state_dict has no '{key}' (a module built with bias=False?); "
                                 f"cell '{cell.name}' needs {', '.join(names)}")
            value = state_dict[key].detach().cpu().numpy()
            rows = sum(unit.param_shapes[n][0] for n in names)
            if value.shape[0] != rows:
                raise ShapeError(f"state_dict['{key}']: expected {rows} rows, got shape "
                                 f"{tuple(value.shape)}")
            offset = 0
            for name in names:
                shape = unit.param_shapes[name]
                part = value[offset:offset + shape[0]]
                if part.shape != shape:
                    raise ShapeError(f"state_dict['{key}'] rows for {name}: expected shape "
                                     f"{shape}, got {tuple(part.shape)}")
                params[prefix + name] = np.ascontiguousarray(part, dtype=cell.dtype)
                offset += shape[0]
    return params


def params_to_torch(cell, params: dict) -> dict:
    """A state_dict (name -> torch.Tensor) that the matching PyTorch module loads."""
    import torch

    units = _units(cell)
    _, layout = layout_of(units[0][0])
    return {
        f"{entry}{suffix}": torch.from_numpy(
            np.concatenate([np.asarray(params[prefix + n]) for n in names]))
        for _, suffix, prefix in units for entry, names in layout
    }
