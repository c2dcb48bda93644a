"""`RecurrentCell`: one step of any spec, the nn.LSTMCell convention, for streaming
inference and reinforcement learning loops that feed one step at a time."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ShapeError
from .recurrent import Recurrent, call_forward


class RecurrentCell(Recurrent):
    """`RecurrentCell(spec, input_size, hidden_size, cell=None, **sizes)`; parameters as
    `Recurrent`'s (named after the spec). `forward(input, state=None)` takes input (B, I)
    (or (I,) unbatched) and states {name: (B, n)} (zeros when None), and returns
    (output (B, out), new states {name: (B, n)}); a spec's inputs after the first come
    by keyword, (B, n) each (`cell(x_t, state, ts=ts_t)`). Each call is one lstmc op call
    on a one-step sequence; in eager inference the packed weights are reused between
    calls while the parameters do not change."""

    def __init__(self, spec, input_size: int, hidden_size: int | None, cell: str | None = None,
                 **options):
        super().__init__(spec, input_size, hidden_size, cell=cell, **options)

    def forward(self, input: Tensor, state: dict | None = None, **inputs):
        if not inputs and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            done = self._stream_step(input, state)
            if done is not None:
                return done
        return self._step(input, state, **inputs)

    def _stream_step(self, input, state: dict | None):
        """Eager inference of a CPU cell with inputs already in the cell's layout: the
        lean call (lean.py) with the input as one step. None: anything else (the
        ordinary path checks and converts)."""
        if (type(input) is not Tensor or input.dim() not in (1, 2)
                or input.shape[-1] != self.input_size):
            return None
        unbatched = input.dim() == 1
        lead = () if unbatched else (input.shape[0],)
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

    def _step(self, input: Tensor, state: dict | None = None, **inputs):
        if not isinstance(input, Tensor) or input.dim() not in (1, 2) or (
                input.shape[-1] != self.input_size):
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ShapeError(f"input: expected shape (B, {self.input_size}) or "
                             f"({self.input_size},), got {got}")
        unbatched = input.dim() == 1
        weights = self._weights(0, 0)
        x = input.reshape(1, 1 if unbatched else input.shape[0], self.input_size)
        x = x.to(weights[0].dtype).contiguous()
        steps = {}
        for name, value in inputs.items():  # one step of each: (B, n) or (n,)
            if isinstance(value, Tensor) and value.dim() == (1 if unbatched else 2):
                value = value.reshape(1, x.shape[1], -1)
            steps[name] = value
        extras = self._extra_inputs(steps, x, None, False)
        if extras:
            x = torch.cat([x, *extras], dim=-1)
        init = []
        if state is not None:
            init = self._step_state(state, x.shape[1], unbatched, weights[0].dtype)
        grad = torch.is_grad_enabled() and (
            x.requires_grad or any(w.requires_grad for w in weights)
            or any(e.requires_grad for e in extras)
            or any(s.requires_grad for s in init))
        y, final = call_forward(self._keys[0], x, weights, init, None, grad)
        out = y[0, 0] if unbatched else y[0]
        finals = {n: (f[0] if unbatched else f) for n, f in zip(self.state_sizes, final)}
        return out, finals

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
