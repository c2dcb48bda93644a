"""`Recurrent`: any lstmc spec as a torch.nn.Module, layered and bidirectional as nn.LSTM.

The layers are composed here in PyTorch (one lstmc op per layer and direction, inter-layer
dropout, reversal of the backward direction by each row's length); each op runs one whole
sequence of one cell natively. `SequenceModule` holds that composition; `Recurrent` names
its parameters after the spec, the drop-ins of standard.py after PyTorch's modules.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..errors import CompileError, ShapeError
from ..frontend.source import read_source
from . import ops
from .lean import LeanCalls
from .registry import TARGETS, CellKey, compiled, key_of
from .sequence import check_lengths, repack, reverse, unpack


def describe(source: str, cell: str | None, input_size: int, hidden_size: int | None,
             sizes: dict):
    """The cell's metadata (parameter shapes and initial values, states, output) from the
    reference target: parsing and lowering only, no native code generated."""
    draft = CellKey(source, cell, input_size, hidden_size, tuple(sorted(sizes.items())),
                    "auto", ())
    return compiled(draft.text(), "float32", "reference")


def describe_key(key: str):
    """`describe` of the cell an op key names."""
    k = key_of(key)
    return describe(k.source, k.cell, k.input_size, k.hidden_size, dict(k.sizes))


def recurrent_param_names(meta) -> set[str]:
    """Parameters of the products inside the time loop (the recurrent weights): those
    a derived matrix of such a product is made of ((W - W.T) @ h: W)."""
    names = set()
    for product in meta.program.recurrent_products:
        for name, _ in product.attr.segments:
            spec = meta.derived.get(name)
            names |= ({t.param for t in spec.derived if t.param is not None} if spec
                      else {name})
    return names


class SequenceModule(nn.Module):
    """Layers x directions of lstmc cells over a sequence. Subclasses fill `_keys` (the
    op key of each layer, same for both directions), `state_sizes`, `input_size`, and
    define `_weights(layer, direction)` (the op's weight tensors) and
    `_recurrent_indices(layer)` (which of them weight_dropout masks)."""

    def _setup(self, num_layers: int, bidirectional: bool, batch_first: bool,
               dropout: float, weight_dropout: float) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise CompileError(f"num_layers must be a positive integer, got {num_layers!r}")
        for name, p in (("dropout", dropout), ("weight_dropout", weight_dropout)):
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise CompileError(f"{name} must be a number in [0, 1], got {p!r}")
        self.num_layers = num_layers
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.weight_dropout = float(weight_dropout)

    # -- filled by subclasses --------------------------------------------------------------
    def _draws_masks(self, layer: int) -> bool:
        """Whether layer's cell has dropout or zoneout (masks drawn in training mode)."""
        return False

    _keys: list[str]
    state_sizes: dict[str, int]
    output_name: str
    input_size: int
    _weights: Callable[[int, int], list[Tensor]]  # (layer, direction) -> the op's weights
    _recurrent_indices: Callable[[int], set[int]]  # layer -> indices into _weights

    # -- the computation -------------------------------------------------------------------

    def _lean_calls(self) -> LeanCalls:
        """This module's lean inference calls (made on first use)."""
        calls = self.__dict__.get("_lean")
        if calls is None:
            calls = self.__dict__["_lean"] = LeanCalls()
        return calls

    def _dtype(self) -> torch.dtype:
        """The parameters' dtype (registered on this module itself, unless parametrized)."""
        for p in self._parameters.values():
            if p is not None:  # a slot set to None (`module.W = None`) holds no tensor
                return p.dtype
        return next(self.parameters()).dtype

    def _tensors(self, names: list[str]) -> list[Tensor]:
        """The weights by attribute name: registered parameters straight from
        `_parameters` (no nn.Module.__getattr__ per weight), else as attributes (a
        weight under torch.nn.utils.parametrize, weight_norm or prune is computed on
        access)."""
        params = self._parameters
        try:
            # the weights' names are registered as nn.Parameters, never None
            return cast(list[Tensor], [params[n] for n in names])
        except KeyError:
            return [getattr(self, n) for n in names]

    def _run(self, x: Tensor, state: dict | None, lengths: Tensor | None,
             extras: list[Tensor] | None = None):
        """x (T, B, I); state {name: (L*D, B, n)} or None; `extras`: the cell's inputs
        after the first, (T, B, n) each in declared order, given to every layer and
        direction (each op takes them concatenated to its x). Returns y (T, B, D*out)
        and the final states {name: (L*D, B, n)}."""
        D = self.num_directions
        extras = extras or []
        grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
            or any(e.requires_grad for e in extras)
            or (state is not None and any(s.requires_grad for s in state.values())))
        names = list(self.state_sizes)
        # eager inference: the lean call on the tensors' memory where it applies
        lean = (not grad and lengths is None and not extras and x.shape[1] > 0
                and not (self.training and (self.weight_dropout or any(
                    self._draws_masks(l) for l in range(self.num_layers))))
                and not torch.compiler.is_compiling())

        def layer_by_layer() -> tuple[Tensor, dict[str, Tensor]]:
            finals: dict[str, list[Tensor]] = {n: [] for n in names}
            layer_input = x
            for layer in range(self.num_layers):
                key = self._keys[layer]
                outputs = []
                for d in range(D):
                    weights = self._weights(layer, d)
                    if self.weight_dropout and self.training:
                        # DropConnect (AWD-LSTM, haste): a fresh mask per forward on
                        # the recurrent weights, shared by every step; the parameters
                        # stay put.
                        weights = [F.dropout(w, self.weight_dropout, True) if i in
                                   self._recurrent_indices(layer) else w
                                   for i, w in enumerate(weights)]
                    k = layer * D + d
                    init = [] if state is None else [state[n][k] for n in names]
                    seq = layer_input if d == 0 else reverse(layer_input, lengths)
                    if extras:
                        seq = torch.cat([seq, *(e if d == 0 else reverse(e, lengths)
                                                for e in extras)], dim=-1)
                    # dropout and zoneout in the cell: masks in training mode, from
                    # torch's generator (torch.manual_seed reproduces them);
                    # expectations in eval
                    seed = (torch.randint(0, 2**63 - 1, (), dtype=torch.int64)
                            if self.training and self._draws_masks(layer) else None)
                    done = (self._lean_calls().forward(
                        key, (layer, d), seq, weights, init or None, seq.shape[0],
                        seq.shape[1], seq.shape[:2], seq.shape[1:2]) if lean else None)
                    y, final = done or call_forward(key, seq, weights, init, lengths, grad,
                                                    seed)
                    outputs.append(y if d == 0 else reverse(y, lengths))
                    for n, f in zip(names, final):
                        finals[n].append(f)
                layer_input = torch.cat(outputs, dim=-1) if D > 1 else outputs[0]
                if self.dropout and self.training and layer < self.num_layers - 1:
                    layer_input = F.dropout(layer_input, self.dropout, True)
            return layer_input, {n: torch.stack(v, 0) for n, v in finals.items()}

        if (lean and D == 1 and self.num_layers > 1
                and not (self.training and self.dropout)):  # (dropout between layers)
            calls = self._lean_calls()
            wavefront = calls.wavefront(self._keys, x, [self._weights(l, 0) for l in
                                                        range(self.num_layers)], state, names)
            if wavefront is not None:  # whichever measures faster (choice.FasterOf)
                return calls.faster(x.shape[1]).choose(layer_by_layer, wavefront,
                                                       work=x.shape[0])
        return layer_by_layer()

    def _prepare(self, input, lengths):
        """(x (T, B, I), lengths or None, the PackedSequence or None, unbatched)."""
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ShapeError("lengths: a PackedSequence carries its own lengths; pass "
                                 "one or the other")
            x, lengths = unpack(packed)
            unbatched = False
        else:
            if not isinstance(input, Tensor):
                raise ShapeError(f"input: expected a Tensor or PackedSequence, got "
                                 f"{type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ShapeError(f"input: expected 3 dimensions ((T, B, {self.input_size}) "
                                 f"or batch first), or 2 for one unbatched sequence; got "
                                 f"shape {tuple(input.shape)}")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (
                input.transpose(0, 1) if self.batch_first else input)
        if x.shape[-1] != self.input_size:
            raise ShapeError(f"input: expected {self.input_size} features, got shape "
                             f"{tuple(input.shape if packed is None else x.shape)}")
        if x.shape[0] < 1:  # (a batch of no rows gives empty results, as in torch)
            raise ShapeError(f"input: expected at least one step, got shape "
                             f"{tuple(input.shape if packed is None else x.shape)}")
        # autocast and mixed inputs: the cell computes in its parameters' dtype
        x = x.to(self._dtype()).contiguous()
        lengths = check_lengths(lengths, x.shape[0], x.shape[1])
        if unbatched and lengths is not None:
            lengths = lengths.reshape(1)
        return x, lengths, packed, unbatched

    def _extra_inputs(self, inputs: dict, x: Tensor, packed, unbatched: bool,
                      lengths: Tensor | None = None) -> list[Tensor]:
        """The cell's inputs after the first, passed by keyword, as (T, B, n) tensors in
        declared order; each given as the sequence input is (same layout, batch first,
        unbatched, or a PackedSequence of the same lengths)."""
        sizes: dict[str, int] = getattr(self, "extra_inputs", {})
        missing = [n for n in sizes if n not in inputs]
        unexpected = [n for n in inputs if n not in sizes]
        if missing or unexpected:
            takes = (f"the inputs {', '.join(sizes)} by keyword" if sizes
                     else "only its sequence input")
            parts = ([f"missing input(s) {', '.join(missing)}"] if missing else []) \
                + ([f"unexpected input(s) {', '.join(unexpected)}"] if unexpected else [])
            raise ShapeError(f"{'; '.join(parts)}: cell '{getattr(self, 'cell_name', '')}' "
                             f"takes {takes}")
        out = []
        for name, n in sizes.items():
            value = inputs[name]
            if packed is not None:
                if not isinstance(value, PackedSequence):
                    raise ShapeError(f"{name}: the input is a PackedSequence, so {name} "
                                     f"must be one too, got {type(value).__name__}")
                value, given_lengths = unpack(value)
                if lengths is not None and not torch.equal(given_lengths, lengths):
                    raise ShapeError(f"{name}: a PackedSequence of the input's lengths "
                                     f"{lengths.tolist()} expected, got lengths "
                                     f"{given_lengths.tolist()}")
            elif not isinstance(value, Tensor):
                raise ShapeError(f"{name}: expected a Tensor, got {type(value).__name__}")
            elif unbatched:
                value = value.unsqueeze(1) if value.dim() == 2 else value
            elif self.batch_first and value.dim() == 3:
                value = value.transpose(0, 1)
            want = (x.shape[0], x.shape[1], n)
            if tuple(value.shape) != want:
                expected = _layout_shape(want, unbatched, self.batch_first and packed is None)
                given = value if packed is not None else inputs[name]
                raise ShapeError(f"{name}: expected shape {expected} (laid out as the input "
                                 f"is), got {tuple(given.shape)}")
            out.append(value.to(x.dtype).contiguous())
        return out

    def _check_state(self, state: dict, batch: int, unbatched: bool,
                     labels: dict[str, str] | None = None) -> dict:
        """The states {name: (L*D, B, n)}, checked; `labels` names each as the caller
        passed it (nn.LSTM's hx[0], hx[1]), else state['name']."""
        if not isinstance(state, dict):
            raise ShapeError(f"state: expected a dict {{name: tensor}} with the states "
                             f"{', '.join(self.state_sizes)}, got {type(state).__name__}")
        missing = [n for n in self.state_sizes if n not in state]
        extra = [n for n in state if n not in self.state_sizes]
        if missing or extra:
            raise ShapeError(f"state: expected the states {', '.join(self.state_sizes)}; "
                             + (f"missing {', '.join(missing)}" if missing else "")
                             + ("; " if missing and extra else "")
                             + (f"unexpected {', '.join(extra)}" if extra else ""))
        count = self.num_layers * self.num_directions
        out = {}
        for name, n in self.state_sizes.items():
            s = state[name]
            want = (count, n) if unbatched else (count, batch, n)
            if not isinstance(s, Tensor) or tuple(s.shape) != want:
                got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                label = (labels or {}).get(name, f"state['{name}']")
                hint = ""
                if isinstance(s, Tensor) and s.dim() != len(want):
                    hint = (f" (a {len(want)}-D tensor for "
                            f"{'unbatched' if unbatched else 'batched'} input)")
                raise ShapeError(f"{label}: expected shape {want}{hint}, got {got}")
            s = s.to(self._dtype())
            out[name] = (s.unsqueeze(1) if unbatched else s).contiguous()
        return out

    def _finish(self, y, finals, packed, lengths, unbatched):
        if packed is not None:
            y = repack(y, lengths, packed)
        elif unbatched:
            y = y.squeeze(1)
            finals = {n: f.squeeze(1) for n, f in finals.items()}
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, finals


def _layout_shape(shape: tuple, unbatched: bool, batch_first: bool) -> tuple:
    T, B, n = shape
    return (T, n) if unbatched else (B, T, n) if batch_first else (T, B, n)


def call_forward(key: str, x: Tensor, weights: list[Tensor], state: list[Tensor],
                 lengths: Tensor | None, grad: bool, seed: Tensor | None = None):
    """One lstmc op call: (y, final states). Eager inference calls the implementation
    directly (no dispatcher, no autograd record); anything else goes through the op.
    `seed` (training mode of a cell with dropout or zoneout) draws its masks."""
    if x.shape[1] == 0:
        return _empty_batch(key, x, weights, state, grad)
    if seed is not None:  # the masks are drawn by the training forward
        y, final, _ = torch.ops.lstmc.forward(key, x, weights, state, lengths, True, seed)
    elif not grad and not torch.compiler.is_compiling():
        y, final, _ = ops.forward_impl(key, x, weights, state, lengths, False, None)
    else:
        y, final, _ = torch.ops.lstmc.forward(key, x, weights, state, lengths, grad, None)
    return y, final


def _empty_batch(key: str, x: Tensor, weights: list[Tensor], state: list[Tensor],
                 grad: bool) -> tuple[Tensor, list[Tensor]]:
    """call_forward's results for a batch of no rows, as torch.nn's modules give them:
    empty tensors, in the autograd graph of the inputs when a gradient is asked for (each
    gets a zero gradient)."""
    cell = ops.cell_for(key, x)
    T = x.shape[0]
    tie = x.new_zeros(())
    if grad:
        tie = sum((t.sum() for t in (x, *weights, *state) if t.requires_grad), tie) * 0
    y = x.new_zeros((T, 0, cell.state_sizes[cell.output])) + tie
    return y, [x.new_zeros((0, n)) + tie for n in cell.state_sizes.values()]


class Recurrent(SequenceModule):
    """Any spec as a module: `Recurrent("specs/peephole_lstm.lstm", 8, 16)`.

    Parameters are nn.Parameters named after the spec (`W_i`, `p_f`, ...); with several
    layers or directions they are prefixed `l0_`, `l0_reverse_`, `l1_`, ... They are
    initialized by the spec's rules: uniform(-1/sqrt(H), 1/sqrt(H)) from torch's random
    generator, or the spec's constant. `forward(input, state=None, lengths=None)` takes
    input (T, B, I) ((B, T, I) with batch_first; (T, I) unbatched; or a PackedSequence)
    and returns (output (T, B, D*out), {state: (L*D, B, n)}) as nn.LSTM arranges them.

    Options beyond nn.LSTM's: `weight_dropout` (DropConnect on the recurrent weights in
    training), `target` ("auto": CPU tensors on the cpu target, CUDA tensors on cuda;
    "opencl": CPU tensors through the OpenCL kernels), `device`, `dtype` (float32 or
    float64; None: torch's default dtype). Other keyword arguments bind the spec's named sizes (`P=64`).
    """

    _out: int  # the output state's size of the last layer built

    def __init__(self, spec, input_size: int, hidden_size: int | None, num_layers: int = 1,
                 bidirectional: bool = False, batch_first: bool = False, dropout: float = 0.0,
                 cell: str | None = None, *, weight_dropout: float = 0.0, target: str = "auto",
                 device=None, dtype=None, **sizes: int):
        super().__init__()
        self._setup(num_layers, bidirectional, batch_first, dropout, weight_dropout)
        if target not in TARGETS:
            raise CompileError(f"unknown target '{target}' (lstmc.nn runs: "
                               f"{', '.join(TARGETS)})")
        if dtype is None and torch.get_default_dtype() not in ops.DTYPES:
            raise ShapeError(f"dtype: lstmc cells compute in float32 or float64, and torch's "
                             f"default dtype is {torch.get_default_dtype()}: pass dtype=")
        dtype = dtype or torch.get_default_dtype()  # as torch.nn's modules take it
        if dtype not in ops.DTYPES:
            raise ShapeError(f"dtype: lstmc cells compute in float32 or float64, got {dtype}")
        source = read_source(spec).text
        self.input_size, self.hidden_size, self.target = input_size, hidden_size, target
        self._keys, self._cells, self._recurrent = [], [], []
        self._names: dict[tuple[int, int], list[str]] = {}  # weights' attribute names
        self._masked: list[bool] = []
        for layer in range(num_layers):
            size = input_size if layer == 0 else self.num_directions * self._out
            meta = describe(source, cell, size, hidden_size, sizes)
            layout = tuple((i, None, None) for i in range(len(meta.param_shapes)))
            key = CellKey(source, cell, size, hidden_size, tuple(sorted(sizes.items())),
                          target, layout).text()
            self._keys.append(key)
            self._cells.append(meta)
            names = list(meta.param_shapes)
            self._recurrent.append({names.index(n) for n in recurrent_param_names(meta)})
            self._masked.append(any(n.op.value == "mask" for n in meta.program.graph.nodes))
            self._out = meta.state_sizes[meta.output]
            for d in range(self.num_directions):
                prefix = self._prefix(layer, d)
                self._names[layer, d] = [prefix + name for name in meta.param_shapes]
                for name, shape in meta.param_shapes.items():
                    self.register_parameter(prefix + name, nn.Parameter(
                        torch.empty(shape, device=device, dtype=dtype)))
        first = self._cells[0]
        self.cell_name = first.name
        self.extra_inputs = dict(first.extra_inputs)  # by keyword to forward
        self.state_sizes = dict(first.state_sizes)
        self.output_name = first.output
        self.output_size = self._out * self.num_directions
        self.reset_parameters()

    def __getstate__(self) -> dict:
        # The cells' metadata holds functions pickle cannot name (torch.save(model),
        # spawned workers); each layer's op key describes its cell again.
        state = super().__getstate__()
        state.pop("_cells", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._cells = [describe_key(key) for key in self._keys]

    def _prefix(self, layer: int, direction: int) -> str:
        if self.num_layers == 1 and self.num_directions == 1:
            return ""
        return f"l{layer}{'_reverse' if direction else ''}_"

    def reset_parameters(self) -> None:
        """The spec's initialization: its constants, else uniform(-1/sqrt(H), 1/sqrt(H))."""
        for layer, meta in enumerate(self._cells):
            bound = 1.0 / math.sqrt(meta.hidden_size)
            for d in range(self.num_directions):
                for name in meta.param_shapes:
                    p = getattr(self, self._prefix(layer, d) + name)
                    init = meta.param_inits.get(name)
                    with torch.no_grad():
                        if init is None:
                            p.uniform_(-bound, bound)
                        elif init == "eye":
                            nn.init.eye_(p)
                        else:
                            p.fill_(init)

    def _weights(self, layer: int, direction: int) -> list[Tensor]:
        return self._tensors(self._names[layer, direction])

    def _recurrent_indices(self, layer: int) -> set[int]:
        return self._recurrent[layer]

    def _draws_masks(self, layer: int) -> bool:
        return self._masked[layer]

    def forward(self, input, state: dict | None = None, lengths=None, **inputs):
        """`inputs`: the spec's inputs after the first, by name (`ts=` for
        specs/phased_lstm.lstm), each laid out as `input` is."""
        x, lengths, packed, unbatched = self._prepare(input, lengths)
        extras = self._extra_inputs(inputs, x, packed, unbatched, lengths)
        if state is not None:
            state = self._check_state(state, x.shape[1], unbatched)
        y, finals = self._run(x, state, lengths, extras)
        return self._finish(y, finals, packed, lengths, unbatched)

    def extra_repr(self) -> str:
        text = (f"{self.cell_name}, {self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}")
        for name in ("bidirectional", "batch_first"):
            if getattr(self, name):
                text += f", {name}=True"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if self.weight_dropout:
            text += f", weight_dropout={self.weight_dropout}"
        return text
