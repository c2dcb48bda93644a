"""`RecurrentCell`: one step of any spec, the nn.LSTMCell convention, for streaming
inference and reinforcement learning loops that feed one step at a time."""
from __future__ import annotations

import torch
from lstmc_runtime.errors import UsageError
from torch import Tensor

from ..errors import ShapeError
from .recurrent import Recurrent, call_forward

# Options of whole sequences, which one step cannot honour: DropConnect shares one mask
# of the recurrent weights across a sequence's steps.
SEQUENCE_OPTIONS = ("num_layers", "bidirectional", "batch_first", "dropout",
                    "weight_dropout")


class RecurrentCell(Recurrent):
    """`RecurrentCell(spec, input_size, hidden_size, cell=None, *, target="auto",
    device=None, dtype=None, **sizes)`; parameters as `Recurrent`'s (named after the
    spec). `forward(input, state=None)` takes input (B, I) (or (I,) unbatched) and states
    {name: (B, n)} (zeros when None), and returns (output (B, out), new states
    {name: (B, n)}); a spec's inputs after the first come by keyword, (B, n) each
    (`cell(x_t, state, ts=ts_t)`). Each call is one lstmc op call on a one-step sequence;
    in eager inference the packed weights are reused between calls while the parameters
    do not change. In training mode a cell's dropout and zoneout masks are drawn afresh
    every call (every step); a per-sequence (variational) mask, one for all the steps of
    a sequence, cannot be kept by a step-by-step cell: training such a cell step by step
    raises (train it with `Recurrent` on whole sequences)."""

    def __init__(self, spec, input_size: int, hidden_size: int | None, cell: str | None = None,
                 *, target: str = "auto", device=None, dtype=None, **sizes: int):
        taken = [name for name in SEQUENCE_OPTIONS if name in sizes]
        if taken:
            raise TypeError(f"RecurrentCell runs one step of one cell: {', '.join(taken)} "
                            f"{'is an option' if len(taken) == 1 else 'are options'} of "
                            "lstmc.nn.Recurrent, which runs whole sequences")
        # mypy lets **sizes stand for Recurrent's other keywords too; they are refused above
        super().__init__(spec, input_size, hidden_size, cell=cell, target=target,
                         device=device, dtype=dtype, **sizes)  # type: ignore[arg-type]
        masks = [n.attr for n in self._cells[0].program.graph.nodes if n.op.value == "mask"]
        self._per_sequence_masks = any(m.per_sequence for m in masks)

    # One step has no lengths: a cell's forward drops Recurrent's on purpose.
    def forward(self, input: Tensor, state: dict | None = None,  # type: ignore[override]
                **inputs):
        draws = self.training and self._draws_masks(0)
        if (not draws and not inputs and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling()):
            done = self._stream_step(input, state)
            if done is not None:
                return done
        return self._step(input, state, draws, **inputs)

    def _stream_step(self, input, state: dict | None):
        """Eager inference of a CPU cell with inputs already in the cell's layout: the
        lean call (lean.py) with the input as one step. None: anything else (the
        ordinary path checks and converts)."""
        if (type(input) is not Tensor or input.dim() not in (1, 2)
                or input.shape[-1] != self.input_size or input.numel() == 0):
            return None
        unbatched = input.dim() == 1
        lead: tuple[int, ...] = () if unbatched else (input.shape[0],)
        init = None
        if state is not None:
            if type(state) is not dict or len(state) != len(self.state_sizes):
                return None
            init = []
            for name, size in self.state_sizes.items():
                s = state.get(name)
                if type(s) is not Tensor or s.shape != (*lead, size):
                    return None
                init.append(s)
        done = self._lean_calls().forward(self._keys[0], (0, 0), input, self._weights(0, 0),
                                          init, 1, 1 if unbatched else lead[0], lead, lead)
        if done is None:
            return None
        return done[0], dict(zip(self.state_sizes, done[1]))

    def _step(self, input: Tensor, state: dict | None, draws: bool, **inputs):
        if not isinstance(input, Tensor) or input.dim() not in (1, 2) or (
                input.shape[-1] != self.input_size):
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ShapeError(f"input: expected shape (B, {self.input_size}) or "
                             f"({self.input_size},), got {got}")
        if draws and self._per_sequence_masks:
            raise UsageError(f"cell '{self.cell_name}' draws a per-sequence (variational) "
                             "mask, one for all the steps of a sequence, which a "
                             "step-by-step RecurrentCell cannot keep: train it with "
                             "lstmc.nn.Recurrent on whole sequences, or call .eval()")
        unbatched = input.dim() == 1
        weights = self._weights(0, 0)
        x = input.reshape(1, 1 if unbatched else input.shape[0], self.input_size)
        x = x.to(weights[0].dtype).contiguous()
        extras = self._extra_inputs(self._one_step(inputs, x.shape[1], unbatched), x, None,
                                    False)
        if extras:
            x = torch.cat([x, *extras], dim=-1)
        init = []
        if state is not None:
            init = self._step_state(state, x.shape[1], unbatched, weights[0].dtype)
        grad = torch.is_grad_enabled() and (
            x.requires_grad or any(w.requires_grad for w in weights)
            or any(e.requires_grad for e in extras)
            or any(s.requires_grad for s in init))
        # dropout and zoneout in training mode: masks of this step, from torch's generator
        seed = torch.randint(0, 2**63 - 1, (), dtype=torch.int64) if draws else None
        y, final = call_forward(self._keys[0], x, weights, init, None, grad, seed)
        out = y[0, 0] if unbatched else y[0]
        finals = {n: (f[0] if unbatched else f) for n, f in zip(self.state_sizes, final)}
        return out, finals

    def _one_step(self, inputs: dict, batch: int, unbatched: bool) -> dict:
        """The inputs after the first, each one step ((B, n), or (n,) unbatched), as the
        one-step sequences (1, B, n) Recurrent takes; checked here so that an error names
        the shape this call takes (names and types: `_extra_inputs` reports)."""
        steps = {}
        for name, value in inputs.items():
            n = self.extra_inputs.get(name)
            if n is not None and isinstance(value, Tensor):
                want = (n,) if unbatched else (batch, n)
                if tuple(value.shape) != want:
                    raise ShapeError(f"{name}: expected shape {want} (one step, as the "
                                     f"input), got {tuple(value.shape)}")
                value = value.reshape(1, batch, n)
            steps[name] = value
        return steps

    def _step_state(self, state: dict, batch: int, unbatched: bool, dtype) -> list[Tensor]:
        if not isinstance(state, dict) or set(state) != set(self.state_sizes):
            raise ShapeError(f"state: expected a dict with the states "
                             f"{', '.join(self.state_sizes)}, got "
                             f"{sorted(state) if isinstance(state, dict) else type(state)}")
        out = []
        for name, n in self.state_sizes.items():
            s = state[name]
            want = (n,) if unbatched else (batch, n)
            if not isinstance(s, Tensor) or tuple(s.shape) != want:
                got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ShapeError(f"state['{name}']: expected shape {want}, got {got}")
            out.append(s.reshape(batch, n).to(dtype).contiguous())
        return out
