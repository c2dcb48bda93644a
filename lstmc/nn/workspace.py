"""The workspace: what a training forward pass saves for its backward pass, as one flat
tensor (as cuDNN's reserve space), so that the forward op can return it and the backward
op take it, and torch.compile can see both.

Its size is a function of the cell and (T, B) only, so `register_fake` can state it for
symbolic shapes too.

- CPU target (NativeCell): the runtime's workspace (lstmc_runtime/workspace.py): the
  forward's kernels save straight into it, the backward reads views of it; no copy.
- GPU targets (GpuCell): every buffer of the plan's "train" mode, in plan order. They are
  copied out after the forward and back into a pooled buffer set before the backward.
"""
from __future__ import annotations

import numpy as np


def _saved_widths(cell) -> list[tuple[str, int]]:
    """(name, width) of each buffer a native training forward saves, in manifest order."""
    return cell._saved_widths()


def _gpu_buffers(cell):
    """The DeviceBuffers of a GpuCell's training forward, in plan order."""
    return cell.plan.modes["train"].buffers


def is_native(cell) -> bool:
    return hasattr(cell, "manifest") and "entries" in cell.manifest


def size(cell, T, B):
    """Elements of the workspace of a (T, B) training forward (ints or SymInts)."""
    if is_native(cell):
        from lstmc_runtime.workspace import size as native_size

        return native_size(_saved_widths(cell), T, B)
    total = 0
    for buffer in _gpu_buffers(cell):
        total = total + buffer.elements(T, B)
    return total


# -- CPU -----------------------------------------------------------------------------------

def allocate_native(cell, T: int, B: int) -> np.ndarray:
    """A workspace array for a (T, B) forward of a NativeCell, from the runtime's buffer
    pool (recycled memory, given back when the tensor made from it is gone)."""
    from lstmc_runtime.pool import POOL

    return POOL.lease(int(cell.workspace_size(T, B)), cell.dtype)


def unpack_native(cell, workspace: np.ndarray, x: np.ndarray, lengths: np.ndarray,
                  seed: int | None = None):
    """A Saved for NativeCell's backward whose buffers are views of `workspace`."""
    return cell.saved_from_workspace(workspace, x, lengths, seed)


# -- GPU -----------------------------------------------------------------------------------

def pack_gpu(cell, saved, write) -> None:
    """Hand each train-mode buffer of a GpuSaved, in plan order, to write(offset, array)
    (a flat device or host array)."""
    dev, offset = cell.device, 0
    for buffer in _gpu_buffers(cell):
        count = buffer.elements(saved.T, saved.B)
        write(offset, dev.to_user(saved.buffers.arrays[buffer.name], 0, (count,)))
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
        for buffer in _gpu_buffers(cell):
            count = buffer.elements(T, B)
            dev.write(buffers.arrays[buffer.name], 0, flat[offset:offset + count])
            offset += count
        dev.write(buffers.lens, 0, np.full(B, T, np.int32) if lengths is None
                  else np.asarray(lengths, np.int32))
    saved = GpuSaved(buffers, T, B, seed)
    weakref.finalize(saved, cell._pool.give, key, buffers)
    return saved
