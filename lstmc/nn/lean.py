"""Eager inference on CPU tensors without the op: a native cell's lean plan
(lstmc_runtime.bound) run on the tensors' own memory.

A module's inference call through the op converts every tensor to a NumPy view, looks
its packed weights up and builds dicts of states: about 50 µs per call, more than the
kernel itself takes for a short sequence at B=1 (an H=128 LSTM step: 5 µs). Here each
(layer, direction) keeps its native cell and packed weights while the same weight tensors
keep their storage and version, and each input shape its plan; a call checks the
tensors it is given, allocates the outputs as fresh tensors and hands the kernel their
addresses. Anything this does not cover (another device or dtype, a strided tensor, a
non-native cell, another caller inside the same cell) answers None: the op runs."""
from __future__ import annotations

import weakref

import torch
from lstmc_runtime.threads import thread_limit
from torch import Tensor

from . import ops

MAX_PLANS = 32  # input shapes kept per module; beyond, start over


class LeanCalls:
    """One module's lean inference calls. Copies and pickles of the module get an empty
    one (it holds native cells, which are found again on the first call)."""

    def __init__(self) -> None:
        # (layer, direction) -> (signature, cell, pack, weak references to the weights)
        self._weights: dict[tuple, tuple] = {}
        self._plans: dict[tuple, tuple] = {}  # (cell, x shape, thread limit) -> plan, ...

    def __deepcopy__(self, memo) -> LeanCalls:
        return LeanCalls()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # type: ignore[misc]

    def forward(self, key: str, slot: tuple, x: Tensor, weights: list[Tensor],
                state: list[Tensor] | None, steps: int, rows: int, y_lead: tuple,
                state_lead: tuple) -> tuple[Tensor, list[Tensor]] | None:
        """(y, final states in the cell's order) of x, a contiguous tensor of `steps` x
        `rows` inputs (its last axis; (T, B, I), or (B, I) for one step), from `state`
        (tensors of `rows` x n elements each, in the cell's order; None: zeros); y is
        shaped y_lead + (out,), the states state_lead + (n,). None where the lean call
        does not apply."""
        if (not weights or not x.is_cpu or x.dtype != weights[0].dtype
                or not x.is_contiguous()):
            return None
        signature = ops.signature(weights)
        held = self._weights.get(slot)
        # The very tensors too: a parameter replaced by a new tensor may get the freed
        # memory of the old one at the same version (and a parametrized weight is a new
        # tensor every call).
        if (held is None or held[0] != signature
                or not all(r() is w for r, w in zip(held[3], weights))):
            cell = ops.cell_for(key, x)
            if not hasattr(cell, "plans"):  # not a native CPU cell (OpenCL)
                return None
            held = self._weights[slot] = (signature, cell,
                                          ops.host_params(cell, key, weights, reuse=True),
                                          [weakref.ref(w) for w in weights])
        cell, packed = held[1], held[2]
        width = x.shape[-1]
        if x.numel() != steps * rows * width:
            return None
        sizes = cell.state_sizes
        given = None
        if state is not None:
            given = []
            for s, n in zip(state, sizes.values()):
                if (not s.is_cpu or s.dtype != x.dtype or s.numel() != rows * n
                        or not s.is_contiguous()):
                    return None
                given.append(s.data_ptr())
        lean = cell.plans
        if not lean.lock.acquire(False):  # another caller is in this cell's lean path
            return None
        try:
            plan_key = (cell, steps, rows, width, thread_limit())
            found = self._plans.get(plan_key)
            if found is None:  # this shape's plan, x checked in full once
                plan = lean.get(x.detach().numpy().reshape(steps, rows, width))
                if plan is None:
                    return None
                if len(self._plans) >= MAX_PLANS:
                    self._plans.clear()
                order = list(sizes)  # the kernel's states, as indices in the cell's order
                found = self._plans[plan_key] = (
                    plan, plan.y_shape[-1], [order.index(n) for n, _ in plan.state_in],
                    [order.index(n) for n, *_ in plan.state_out],
                    [plan.zero_state[n].ctypes.data for n in sizes])
            plan, out, ins, outs, zeros = found
            start = zeros if given is None else given
            # (sizes as arguments: a shape tuple costs torch half a microsecond more)
            y = torch.empty(*y_lead, out, dtype=x.dtype)
            finals = [torch.empty(*state_lead, n, dtype=x.dtype) for n in sizes.values()]
            plan.set_params(packed)
            plan.call(x.data_ptr(), y.data_ptr(), [start[i] for i in ins],
                      [finals[i].data_ptr() for i in outs])
        finally:
            lean.lock.release()
        return y, finals
