"""The workspace: what a training forward pass saves for its backward pass, as one flat
tensor (as cuDNN's reserve space), so that the forward op can return it and the backward
op take it, and torch.compile can see both.

Its size is a function of the cell and (T, B) only, so `register_fake` can state it for
symbolic shapes too.

- CPU target (NativeCell): element 0 holds the number of batch slices the forward ran
  (slice c covers rows B*c//n .. B*(c+1)//n); then, slice by slice, each saved buffer
  of the manifest's forward_train entry (shape (T, rows, width)). Backward reads them as
  NumPy views of the workspace: no copy.
- GPU targets (GpuCell): every buffer of the plan's "train" mode, in plan order. They are
  copied out after the forward and back into a pooled buffer set before the backward.
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendError

GPU_SLOTS = {"seq": lambda T: T, "history": lambda T: T + 1, "ring": lambda T: 2,
             "step": lambda T: 1}


def _saved_widths(cell) -> list[tuple[str, int]]:
    """(name, width) of each buffer a native training forward saves, in manifest order."""
    from lstmc_runtime.buffers import is_saved

    widths = cell.__dict__.get("_lstmc_nn_saved")
    if widths is None:
        widths = []
        for spec in cell.manifest["entries"]["forward_train"]["buffers"]:
            if is_saved(spec["name"]) and spec["role"] in ("out", "result"):
                if list(spec["shape"][:2]) != ["T", "B"] or len(spec["shape"]) != 3:
                    raise BackendError(f"saved buffer {spec['name']} has shape {spec['shape']}"
                                       "; lstmc.nn expects (T, B, width)")
                widths.append((spec["name"], int(spec["shape"][2])))
        cell.__dict__["_lstmc_nn_saved"] = widths
    return widths


def _gpu_buffers(cell) -> list[tuple[str, str, int]]:
    return [(s["name"], s["slots"], int(s["width"]))
            for s in cell.plan["modes"]["train"]["buffers"]]


def is_native(cell) -> bool:
    return hasattr(cell, "manifest") and "entries" in cell.manifest


def size(cell, T, B):
    """Elements of the workspace of a (T, B) training forward (ints or SymInts)."""
    if is_native(cell):
        return 1 + T * B * sum(w for _, w in _saved_widths(cell))
    total = 0
    for _, slots, width in _gpu_buffers(cell):
        total = total + (width if slots == "param" else GPU_SLOTS[slots](T) * B * width)
    return total


# -- CPU -----------------------------------------------------------------------------------

def pack_native(cell, saved, out: np.ndarray) -> None:
    """Copy a NativeCell's Saved into the flat array `out` (see the module docstring)."""
    out[0] = len(saved.slices)
    offset = 1
    for part in saved.slices:
        for name, _ in _saved_widths(cell):
            array = part[name]
            out[offset:offset + array.size] = array.reshape(-1)
            offset += array.size
    if offset != out.size:
        raise BackendError(f"internal: workspace of {out.size} elements, filled {offset}")


def unpack_native(cell, workspace: np.ndarray, x: np.ndarray, lengths: np.ndarray,
                  seed: int | None = None):
    """A Saved for NativeCell's backward whose buffers are views of `workspace`."""
    from lstmc_runtime.native import Saved

    T, B = x.shape[:2]
    count = int(workspace[0])
    if count < 1 or count > B:
        raise BackendError(f"workspace: {count} batch slices for batch {B}; was it made by "
                           "this cell's forward?")
    bounds = [B * c // count for c in range(count + 1)]
    slices, offset = [], 1
    for c in range(count):
        rows = bounds[c + 1] - bounds[c]
        part = {}
        for name, width in _saved_widths(cell):
            n = T * rows * width
            part[name] = workspace[offset:offset + n].reshape(T, rows, width)
            offset += n
        slices.append(part)
    if offset != workspace.size:
        raise BackendError(f"workspace: {workspace.size} elements, the cell's forward saves "
                           f"{offset} for (T, B) = ({T}, {B})")
    return Saved(slices, bounds, x, lengths, owner=cell, seed=seed)


# -- GPU -----------------------------------------------------------------------------------

def pack_gpu(cell, saved, write) -> None:
    """Hand each train-mode buffer of a GpuSaved, in plan order, to write(offset, array)
    (a flat device or host array)."""
    dev, offset = cell.device, 0
    for name, slots, width in _gpu_buffers(cell):
        count = width if slots == "param" else GPU_SLOTS[slots](saved.T) * saved.B * width
        write(offset, dev.to_user(saved.buffers.arrays[name], 0, (count,)))
        offset += count


def unpack_gpu(cell, flat, T: int, B: int, lengths: np.ndarray | None,
               seed: int | None = None):
    """A GpuSaved whose pooled buffers hold the workspace `flat` (CuPy or NumPy, 1-D);
    `seed`: of the masks the forward drew (the backward draws them again)."""
    import weakref

    from lstmc_runtime.gpu.executor import GpuSaved

    dev = cell.device
    key, buffers = cell._take("train", T, B)
    with dev.context():
        offset = 0
        for name, slots, width in _gpu_buffers(cell):
            count = width if slots == "param" else GPU_SLOTS[slots](T) * B * width
            dev.write(buffers.arrays[name], 0, flat[offset:offset + count])
            offset += count
        dev.write(buffers.lens, 0, np.full(B, T, np.int32) if lengths is None
                  else np.asarray(lengths, np.int32))
    saved = GpuSaved(buffers, T, B, seed)
    weakref.finalize(saved, cell._pool.give, key, buffers)
    return saved
