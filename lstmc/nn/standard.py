"""Drop-ins for torch.nn.LSTM, GRU and RNN, computed by lstmc.

Same constructor, forward, parameter names, shapes, registration order and
initialization as PyTorch's modules, so `load_state_dict` works both ways and, from the
same torch.manual_seed, both start from the same values. Each layer's op takes PyTorch's
stacked tensors (weight_ih_l0 = [W_ii; W_if; W_ig; W_io] ...) and reads the spec's
parameters as row blocks of them (no copies); the gradients are assembled the same way.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from ..errors import CompileError, ShapeError
from ..interop.torch import LAYOUTS, PROJECTION
from .recurrent import SequenceModule, describe
from .registry import TARGETS, CellKey
from .specs import SPECS


class _TorchRNN(SequenceModule):
    """What LSTM, GRU and RNN share; `mode` is LSTM, GRU, RNN_TANH or RNN_RELU."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None,
                 *, weight_dropout: float = 0.0, target: str = "auto"):
        super().__init__()
        self._setup(num_layers, bidirectional, batch_first, dropout, weight_dropout)
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CompileError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
            raise CompileError(f"proj_size must be a non-negative integer, got {proj_size!r}")
        if proj_size and mode != "LSTM":
            raise CompileError("proj_size is an LSTM option")
        if proj_size >= hidden_size:
            raise CompileError(f"proj_size ({proj_size}) must be smaller than hidden_size "
                               f"({hidden_size})")
        if target not in TARGETS:
            raise CompileError(f"unknown target '{target}' (lstmc.nn runs: "
                               f"{', '.join(TARGETS)})")
        if dropout and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, "
                          f"so non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.bias, self.proj_size, self.target = bool(bias), proj_size, target
        spec = {"LSTM": "lstmp" if proj_size else "lstm", "GRU": "gru",
                "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}[mode]
        sizes = {"P": proj_size} if proj_size else {}
        kind = "RNN" if mode.startswith("RNN") else mode
        entries = LAYOUTS[kind] + ([PROJECTION] if proj_size else [])
        if not bias:
            entries = [e for e in entries if not e[0].startswith("bias")]
        self._entries = [e for e, _ in entries]
        out = proj_size or hidden_size
        self._keys, self._recurrent = [], []
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            size = input_size if layer == 0 else out * self.num_directions
            meta = describe(SPECS[spec], None, size, hidden_size, sizes)
            self._keys.append(CellKey(SPECS[spec], None, size, hidden_size,
                                      tuple(sorted(sizes.items())), target,
                                      self._layout(meta, entries)).text())
            self._recurrent.append({i for i, (e, _) in enumerate(entries)
                                    if e in ("weight_hh", "weight_hr")})
            for d in range(self.num_directions):
                for entry, names in entries:
                    rows = sum(meta.param_shapes[n][0] for n in names)
                    shape = (rows,) + tuple(meta.param_shapes[names[0]][1:])
                    self.register_parameter(self._name(entry, layer, d),
                                            nn.Parameter(torch.empty(shape, **factory)))
        self.state_sizes = dict(meta.state_sizes)
        self.output_name = meta.output
        self.reset_parameters()

    @staticmethod
    def _layout(meta, entries) -> tuple:
        """The op layout: each spec parameter as a row block of one of the weights."""
        where = {}
        for index, (_, names) in enumerate(entries):
            row = 0
            for name in names:
                rows = meta.param_shapes[name][0]
                where[name] = (index, row, row + rows)
                row += rows
        return tuple(where.get(name) for name in meta.param_shapes)

    @staticmethod
    def _name(entry: str, layer: int, direction: int) -> str:
        return f"{entry}_l{layer}{'_reverse' if direction else ''}"

    def reset_parameters(self) -> None:
        """As PyTorch: every parameter uniform(-1/sqrt(H), 1/sqrt(H)), in registration
        order (so the same seed gives the same values as torch.nn's module)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """Nothing to do (PyTorch's cuDNN weight flattening); kept for drop-in use."""

    def _weights(self, layer: int, direction: int) -> list[Tensor]:
        return self._tensors([self._name(e, layer, direction) for e in self._entries])

    def _recurrent_indices(self, layer: int) -> set[int]:
        return self._recurrent[layer]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        return [self._weights(l, d) for l in range(self.num_layers)
                for d in range(self.num_directions)]

    def _run_torch_style(self, input, hx: dict | None, labels: dict[str, str]):
        x, lengths, packed, unbatched = self._prepare(input, None)
        if hx is not None:
            hx = self._check_state(hx, x.shape[1], unbatched, labels)
        y, finals = self._run(x, hx, lengths)
        return self._finish(y, finals, packed, lengths, unbatched)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            text += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if not self.bias:
            text += ", bias=False"
        if self.batch_first:
            text += ", batch_first=True"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if self.bidirectional:
            text += ", bidirectional=True"
        if self.weight_dropout:
            text += f", weight_dropout={self.weight_dropout}"
        return text


def _no_projection(options: dict) -> int:
    """GRU and RNN have no proj_size: refuse one by name (as torch does), not with a
    TypeError about a duplicate argument of a private class."""
    if "proj_size" in options:
        raise CompileError(f"proj_size={options['proj_size']!r}: proj_size is an LSTM "
                           "option (nn.GRU and nn.RNN have none)")
    return 0


class LSTM(_TorchRNN):
    """torch.nn.LSTM computed by lstmc: `forward(input, hx=None)` returns
    `(output, (h_n, c_n))`. Extra keyword options: `weight_dropout` (DropConnect on
    weight_hh, as AWD-LSTM), `target`."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None,
                 **options):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype, **options)

    def forward(self, input, hx: tuple[Tensor, Tensor] | None = None):
        state = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ShapeError("hx: nn.LSTM takes a tuple (h_0, c_0)")
            state = {"h": hx[0], "c": hx[1]}
        y, finals = self._run_torch_style(input, state, {"h": "hx[0]", "c": "hx[1]"})
        return y, (finals["h"], finals["c"])


class GRU(_TorchRNN):
    """torch.nn.GRU computed by lstmc: `forward(input, hx=None)` returns
    `(output, h_n)`."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, **options):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, _no_projection(options), device, dtype,
                         **options)

    def forward(self, input, hx: Tensor | None = None):
        y, finals = self._run_torch_style(input, None if hx is None else {"h": hx},
                                          {"h": "hx"})
        return y, finals["h"]


class RNN(_TorchRNN):
    """torch.nn.RNN computed by lstmc (nonlinearity "tanh" or "relu"):
    `forward(input, hx=None)` returns `(output, h_n)`."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None,
                 **options):
        if nonlinearity not in ("tanh", "relu"):
            raise CompileError(f"unknown nonlinearity '{nonlinearity}' (tanh or relu)")
        super().__init__(f"RNN_{nonlinearity.upper()}", input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, _no_projection(options),
                         device, dtype, **options)
        self.nonlinearity = nonlinearity

    def forward(self, input, hx: Tensor | None = None):
        y, finals = self._run_torch_style(input, None if hx is None else {"h": hx},
                                          {"h": "hx"})
        return y, finals["h"]
