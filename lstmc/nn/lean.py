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
from lstmc_runtime import wavefront as wavefronts
from lstmc_runtime.choice import FasterOf, faster_for
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
        self._wavefronts: dict[tuple, wavefronts.Wavefront] = {}  # (cells, T, B) -> tables
        self._choices: dict[int, FasterOf] = {}  # wavefront or not, by batch rows

    def __deepcopy__(self, memo) -> LeanCalls:
        return LeanCalls()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # type: ignore[misc]

    def _held(self, key: str, slot: tuple, x: Tensor, weights: list[Tensor]) -> tuple | None:
        """(native cell, packed weights) of (layer, direction) `slot`, packed again only
        when the weights changed (ops.signature; after an optimizer step, ops.host_params
        compares their bytes); None for a cell that is not native."""
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
        return held[1], held[2]

    def wavefront(self, keys: list[str], x: Tensor, weights: list[list[Tensor]],
                  state: dict | None, names: list[str]):
        """A function running a one-direction stack's inference (layer l: keys[l],
        weights[l]) as a wavefront (lstmc_runtime.wavefront) on x (T, B, I) from `state`
        ({name: (L, B, n)} or None: zeros), returning (y, {name: (L, B, n)}), or None when
        the workers are busy; None where it does not apply (as for `forward`, and
        wavefront.prepared's conditions)."""
        T, B, _ = x.shape
        dtype = weights[0][0].dtype
        if not x.is_cpu or x.dtype != dtype or not x.is_contiguous():
            return None
        helds = [h for l, (key, w) in enumerate(zip(keys, weights))
                 if (h := self._held(key, (l, 0), x, w)) is not None]
        if len(helds) < len(keys):  # not all native cells
            return None
        cells = [cell for cell, _ in helds]
        packs = [pack for _, pack in helds]
        sizes = cells[0].state_sizes
        if state is not None and (set(state) != set(names) or not all(
                s.is_cpu and s.dtype == dtype and s.is_contiguous()  # read by address
                and tuple(s.shape) == (len(cells), B, sizes.get(n)) for n, s in state.items())):
            return None
        found = wavefronts.prepared(self._wavefronts, cells, ["forward"] * len(cells), T, B)
        if found is None:
            return None
        wave, pool, threads = found

        def run():
            out = cells[-1].state_sizes[cells[-1].output]
            y = torch.empty(T, B, out, dtype=dtype)
            finals = {n: torch.empty(len(cells), B, sizes[n], dtype=dtype) for n in names}
            row = B * dtype.itemsize
            if state is None:
                zeros = torch.zeros(B, max(sizes.values()), dtype=dtype)
                init = [{n: zeros.data_ptr() for n in names} for _ in cells]
            else:
                init = [{n: state[n].data_ptr() + l * row * sizes[n] for n in names}
                        for l in range(len(cells))]
            ends = [{n: finals[n].data_ptr() + l * row * sizes[n] for n in names}
                    for l in range(len(cells))]
            if not wave.run(pool, threads, x.data_ptr(), y.data_ptr(),
                            [p.addresses for p in packs], init, ends):
                return None  # another call holds the workers or the tables
            return y, finals
        return run

    def faster(self, rows: int) -> FasterOf:
        """The choice between a wavefront and layer by layer for batches of `rows`."""
        return faster_for(self._choices, rows)

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
        held = self._held(key, slot, x, weights)
        if held is None:
            return None
        cell, packed = held
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
