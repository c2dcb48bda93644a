"""Weight matrices packed into the column panels lstmc_small_gemm reads.

Each product's weight matrix is read by the kernels as panels of W columns (W: two
64-byte vectors), each panel K x W contiguous, then the columns past the last whole panel
as one row-major block. Cell libraries export native packing functions
(lstmc/backends/llvm/packing.py): a `Packer` calls them for the whole panels of each
part, which is most of the bytes, and NumPy does the rest; a library built before them,
or a layout they do not cover (a part that does not start on a panel), is packed by
NumPy alone, to the same bytes."""
from __future__ import annotations

import ctypes
from itertools import accumulate

import numpy as np

from .bound import address
from .pool import POOL

SYMBOLS = ("lstmc_pack_panels_t", "lstmc_pack_panels")  # exported by cell libraries
_TRANSPOSED = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                               ctypes.c_int64, ctypes.c_void_p)
_COPIED = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                           ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64)


def pack_panels(matrix: np.ndarray, width: int) -> np.ndarray:
    """A K x N matrix as lstmc_small_gemm reads it: column panels of `width`, each K x
    width contiguous, then the remaining columns as one row-major block."""
    K, N = matrix.shape
    full = N // width
    out = POOL.lease(K * N, matrix.dtype)
    out[:full * width * K].reshape(full, K, width)[:] = matrix[:, :full * width].reshape(
        K, full, width).transpose(1, 0, 2)
    out[full * width * K:].reshape(K, N - full * width)[:] = matrix[:, full * width:]
    return out


class Packer:
    """pack_panels of stacked parts, written straight from the parts in one pass (no
    stacked or transposed copy first), by a cell library's native functions when
    `functions` (symbol -> address) has them, else by NumPy."""

    def __init__(self, width: int, dtype: np.dtype, functions: dict[str, int] | None = None):
        self.width, self.dtype = width, np.dtype(dtype)
        functions = functions or {}
        self._transposed = (_TRANSPOSED(functions[SYMBOLS[0]])
                            if functions.get(SYMBOLS[0]) else None)
        self._copied = _COPIED(functions[SYMBOLS[1]]) if functions.get(SYMBOLS[1]) else None

    @property
    def native(self) -> bool:
        return self._transposed is not None and self._copied is not None

    def stacked(self, parts: list[np.ndarray], transposed: bool,
                addresses: list[int] | None = None) -> np.ndarray:
        """pack_panels of the rows of `parts` (C-contiguous, this dtype; `addresses`:
        theirs, when known) stacked, or (`transposed`) of the stack's transpose."""
        native = self.native and all(p.dtype == self.dtype and p.flags.c_contiguous
                                     for p in parts)
        if transposed:
            return self._transposed_panels(parts, native, addresses)
        return self._column_panels(parts, native, addresses)

    def _column_panels(self, parts: list[np.ndarray], native: bool,
                       addresses: list[int] | None) -> np.ndarray:
        """Panels over the K columns: each part fills its rows of every panel."""
        width = self.width
        N, K = sum(p.shape[0] for p in parts), parts[0].shape[1]
        out = POOL.lease(N * K, parts[0].dtype)
        full = K // width
        if native and full:
            assert self._copied is not None
            base, row_bytes = address(out), width * out.itemsize
            for r0, rows, start in _runs(parts, addresses):
                self._copied(start, rows, K, K, base + r0 * row_bytes, N * width)
            if K == full * width:  # no columns past the last panel: all done
                return out
        head = out[:full * width * N].reshape(full, N, width)
        tail = out[full * width * N:].reshape(N, K - full * width)
        r0 = 0
        for part in parts:
            r1 = r0 + part.shape[0]
            if not (native and full):
                head[:, r0:r1] = part[:, :full * width].reshape(
                    r1 - r0, full, width).transpose(1, 0, 2)
            if K > full * width:
                tail[r0:r1] = part[:, full * width:]
            r0 = r1
        return out

    def _transposed_panels(self, parts: list[np.ndarray], native: bool,
                           addresses: list[int] | None) -> np.ndarray:
        """Panels over the N stacked rows: part by part while each starts on a panel."""
        width = self.width
        starts = list(accumulate((p.shape[0] for p in parts), initial=0))
        N, K = starts.pop(), parts[0].shape[1]
        if any(start % width for start in starts):
            return pack_panels(np.concatenate(parts, axis=0).T, width)
        out = POOL.lease(N * K, parts[0].dtype)
        full = N // width
        if native and K:
            assert self._transposed is not None
            base, row_bytes = address(out), K * out.itemsize
            for r0, rows, start in _runs(parts, addresses):  # each starts on a panel (above)
                whole = (min(r0 + rows, full * width) - r0) // width
                if whole:  # written in order, read transposed: twice as fast as the converse
                    self._transposed(start, whole * width, K, K, base + r0 * row_bytes)
            if N == full * width:  # no rows past the last panel: all done
                return out
        head = out[:full * width * K].reshape(full, K, width)
        tail = out[full * width * K:].reshape(K, N - full * width)
        r0 = 0
        for part in parts:
            r1 = r0 + part.shape[0]
            whole = (min(r1, full * width) - r0) // width
            if whole and not (native and K):
                head[r0 // width:r0 // width + whole] = part[:whole * width].reshape(
                    whole, width, K).transpose(0, 2, 1)
            if r1 > full * width:  # the last part's rows past the last whole panel
                tail[:] = part[whole * width:].T
            r0 = r1
        return out


def _runs(parts: list[np.ndarray], addresses: list[int] | None = None
          ) -> list[tuple[int, int, int]]:
    """The stacked rows of `parts` (C-contiguous, one width; `addresses`: theirs, when
    known) as runs (first row, rows, address) of parts that follow one another in
    memory, each run one native call: the gates of a torch weight (nn.LSTM's weight_ih:
    4 row blocks of one tensor) are one run, where a call per part cost ~2 µs of Python
    each."""
    runs: list[list[int]] = []
    row = 0
    for i, part in enumerate(parts):
        start, rows = address(part) if addresses is None else addresses[i], part.shape[0]
        if not rows:
            continue
        last = runs[-1] if runs else None
        if last is not None and last[2] + last[3] == start:
            last[1] += rows
            last[3] += part.nbytes
        else:
            runs.append([row, rows, start, part.nbytes])
        row += rows
    return [(r0, rows, start) for r0, rows, start, _ in runs]
