"""The CPU training workspace: everything a NativeCell's training forward saves for its
backward pass, in one flat array the caller owns (as cuDNN's reserve space).

Layout, for a (T, B) forward cut into batch slices c = 0 .. n-1 (rows B*c//n ..
B*(c+1)//n): element 0 holds n; then, slice by slice, each saved buffer of the
contract's forward_train entry, in entry order, as a C-contiguous (T, rows, width) block.
The forward's kernels write the saved values straight into it, and the backward reads
views of it: neither copies.

Its size depends on (T, B) only (`size`), not on the slicing, so a framework can
allocate it before the call (lstmc.nn's ops state it to torch.compile for symbolic
shapes).
"""
from __future__ import annotations

import numpy as np

from .buffers import is_saved
from .errors import BackendError, ShapeError


def saved_widths(contract) -> list[tuple[str, int]]:
    """(name, width) of each buffer the training forward saves, in entry order."""
    widths = []
    for b in contract.entries["forward_train"].buffers:
        if is_saved(b.name) and b.role in ("out", "result"):
            if len(b.shape) != 3 or tuple(b.shape[:2]) != ("T", "B"):
                raise BackendError(f"saved buffer {b.name} has shape {list(b.shape)}; the "
                                   "workspace holds (T, B, width) buffers only")
            widths.append((b.name, int(b.shape[2])))
    return widths


def size(widths: list[tuple[str, int]], T, B):
    """Elements of the workspace of a (T, B) forward (plain ints or symbolic ones)."""
    return 1 + T * B * sum(w for _, w in widths)


def views(widths, flat: np.ndarray, T: int, bounds: list[int]) -> list[dict[str, np.ndarray]]:
    """Per batch slice, {saved name: (T, rows, width) view of `flat`}; checks that `flat`
    is exactly the workspace of this (T, B)."""
    B = bounds[-1]
    want = size(widths, T, B)
    if flat.ndim != 1 or flat.size != want or not flat.flags.c_contiguous:
        raise ShapeError(f"workspace: expected a contiguous 1-D array of {want} elements "
                         f"for (T, B) = ({T}, {B}), got shape {flat.shape}")
    slices, offset = [], 1
    for c in range(len(bounds) - 1):
        rows = bounds[c + 1] - bounds[c]
        part = {}
        for name, width in widths:
            n = T * rows * width
            part[name] = flat[offset:offset + n].reshape(T, rows, width)
            offset += n
        slices.append(part)
    return slices


def read(widths, flat: np.ndarray, T: int, B: int) -> tuple[list[int], list[dict]]:
    """(bounds, per-slice views) of a workspace a forward filled (its slicing is read
    from element 0)."""
    first = flat[0] if flat.size else 0
    count = int(first) if np.isfinite(first) and first == int(first) else 0
    if count < 1 or count > max(B, 1):
        raise BackendError(f"workspace: {first} batch slices for batch {B}; was it made by "
                           "this cell's forward?")
    bounds = [B * c // count for c in range(count + 1)]
    return bounds, views(widths, flat, T, bounds)
