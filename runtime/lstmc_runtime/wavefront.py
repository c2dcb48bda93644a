"""A stack's layers as a wavefront: inference of one direction at small batches, layer
l on chunk c of the sequence while layer l + 1 is on chunk c - 1, each layer on a core
of its own (lstmc_wavefront, lstmc/backends/llvm/wavefront.py, run on PyTorch's OpenMP
team where torch loaded one, else by the parked workers).

At B=1 a layer's step is too little work for two cores: sharing it costs a barrier per
step and streams each core's half of the recurrent weights anyway. Two layers side by
side each keep their own weights in their own core's cache and meet once per chunk.
Each layer runs its one-thread forward entry on a chunk of CHUNK steps (its input
projections one GEMM per chunk), its state carried from chunk to chunk in two buffers
used in turn. A `Wavefront` is made once per stack and (T, B): its buffer tables and
the states between chunks (and, while they are small, the layers' outputs but the last
and their work buffers), reused by every call of those sizes; a call writes only the
addresses that change (x, y, the states, the parameters when they are other arrays)."""
from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from . import buffers as names
from .bound import MAX_PLAN_BYTES
from .errors import BackendError
from .openmp import BODY_SYMBOL as OPENMP_BODY
from .pool import POOL
from .threads import thread_count
from .workers import run_threaded

SYMBOL = "lstmc_wavefront"  # exported by cell libraries (their shared code)
FLAG_WORDS = 16  # a layer's flag (chunks done) alone on its 128 bytes
JOB_CHUNKS, JOB_LAYERS, JOB_KERNELS = 0, 1, 2  # the job table's words, then per layer and
# chunk (layer-major): steps, address of the buffer table
CHUNK = 4  # steps (2 layers, T=100, H=128: at B=1 as fast as 8, at B=4 and 8 1.05x faster)
MAX_ROWS = 15  # batches of 16 rows and more are cut into slices across the cores instead


MAX_WAVEFRONTS = 16  # (T, B) tables kept per stack or module; beyond, start over


def chunk_starts(T: int) -> list[int]:
    return list(range(0, T, CHUNK)) + [T]


def prepared(cache: dict, cells: list, entries: list[str], T: int, B: int
             ) -> tuple[Wavefront, Any, int] | None:
    """(the Wavefront of native `cells` for (T, B), made once and kept in `cache`; the
    pool of parked workers; the threads to run it on), or None where no wavefront
    applies: LSTMC_WAVEFRONT=0, more than MAX_ROWS rows, fewer than two cores, a
    library without the driver, no parked workers."""
    if (os.environ.get("LSTMC_WAVEFRONT") == "0" or B > MAX_ROWS or thread_count() < 2
            or not all(SYMBOL in cell._functions for cell in cells)):
        return None
    threads = min(len(cells), thread_count())  # layers beyond take turns on them
    pool = cells[0].native_workers(threads)
    if pool is None:
        return None
    key = (tuple(cells), T, B, tuple(entries))
    wave = cache.get(key)
    if wave is None:
        if len(cache) >= MAX_WAVEFRONTS:
            cache.clear()
        wave = cache[key] = Wavefront(cells, entries, T, B)
    return wave, pool, threads


class Wavefront:
    """The tables of one (T, B) wavefront over `cells` (one per layer, native, one
    direction); `entries[l]`: the forward entry layer l runs (its weights' dtype)."""

    def __init__(self, cells: list, entries: list[str], T: int, B: int):
        self.cells, self.entries, self.T, self.B = cells, entries, T, B
        self.lock = threading.Lock()  # one call at a time fills the tables (run)
        self._address = cells[0]._functions[SYMBOL]  # lstmc_wavefront (any cell's library)
        self._openmp_body = cells[0]._functions.get(OPENMP_BODY)
        starts = chunk_starts(T)
        self.starts = np.asarray(starts[:-1], np.int64)  # each chunk's first step
        self.chunks = C = len(starts) - 1
        L = len(cells)
        width = max(len(cell._layout(entry)) for cell, entry in zip(cells, entries))
        self.tables = np.zeros((L, C, width), np.int64)  # each chunk's buffer table
        self.job = np.zeros(JOB_KERNELS + L + 2 * L * C, np.int64)
        self.job[JOB_CHUNKS], self.job[JOB_LAYERS] = C, L
        self.keep: list[np.ndarray] = []  # buffers the tables point at
        # (layer, slot, shape, dtype) of the outputs of layers but the last, and of the
        # layers' work buffers (a chunk's input projections): owned while small, leased
        # from the buffer pool per call when large (a long sequence's outputs)
        self.between: list[tuple] = []
        self.scratch: list[tuple] = []
        self.slots: list[dict] = []  # per layer: the slots a call fills
        steps = np.diff(starts)
        for l, (cell, entry) in enumerate(zip(cells, entries)):
            self.job[JOB_KERNELS + l] = cell._functions[entry]
            rows = JOB_KERNELS + L + 2 * l * C
            self.job[rows:rows + 2 * C:2] = steps
            self.job[rows + 1:rows + 2 * C:2] = [self.tables[l, c].ctypes.data
                                                 for c in range(C)]
            self.slots.append(self._lay_out(l, cell, entry, starts))
        self.used = [len(cell._layout(entry)) for cell, entry in zip(cells, entries)]
        size = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
                   for *_, shape, dtype in self.between + self.scratch)
        self.owned = size <= MAX_PLAN_BYTES
        if self.owned:
            self._place([np.empty(shape, dtype) for *_, shape, dtype in
                         self.between + self.scratch])

    def _place(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Point the tables at `arrays`: the outputs between layers, then the work
        buffers (self.between + self.scratch's order); returns them."""
        for (l, slot, shape, _), array in zip(self.between, arrays):
            self._rows(l, slot, array.ctypes.data, shape[-1])  # layer l's y
            self._rows(l + 1, self.slots[l + 1]["x"][0], array.ctypes.data, shape[-1])
        for (l, slot, _, _), array in zip(self.scratch, arrays[len(self.between):]):
            self.tables[l, :, slot] = array.ctypes.data
        if self.owned:
            self.keep.extend(arrays)
        return arrays

    def _lay_out(self, l: int, cell, entry: str, starts: list[int]) -> dict:
        """Fill layer l's tables with what stays (work buffers, the states between
        chunks, lengths, the outputs of layers but the last); the slots every call fills."""
        T, B, C, tables = self.T, self.B, self.chunks, self.tables[l]
        slots: dict = {"params": [], "state_in": [], "state_out": []}
        dtype = cell.dtype
        pairs: dict[str, list[int]] = {}  # a state's two buffers between chunks
        for slot, (name, dims, role, buffer_dtype, _axis) in enumerate(cell._layout(entry)):
            kind, key = names.parse(name)
            if name == names.X:
                slots["x"] = (slot, dims[-1])
            elif name == names.Y:
                slots["y"] = (slot, dims[-1])
            elif kind == "state_in" or kind == "state_out":
                if key not in pairs:
                    n = cell.state_sizes[key]
                    pairs[key] = [self._owned(np.zeros((B, n), dtype)) for _ in range(2)]
                between = pairs[key]
                for c in range(C):  # chunk c reads between[c % 2], writes the other
                    tables[c, slot] = between[(c + (kind == "state_out")) % 2]
                slots[kind].append((key, slot))
            elif kind in ("param", "panels", "panelsT", "panelsT16"):
                slots["params"].append((name, slot))
            elif name == names.LENGTHS:
                tables[:, slot] = self._owned(np.full(B, T, np.int64))
            elif name == names.RNG:  # inference draws no masks (their expectations)
                from .native import _rng_slices

                tables[:, slot] = self._owned(_rng_slices(None, [0, B])[0][names.RNG])
            elif role == "work":
                longest = int(max(np.diff(starts)))  # steps of a chunk
                shape = tuple(min(T, longest) if d == "T" else B if d == "B" else int(d)
                              for d in dims)
                self.scratch.append((l, slot, shape, buffer_dtype))
            else:
                raise BackendError(f"internal: entry {entry} takes {name} ({role}), which "
                                   "the wavefront does not fill")
        if l < len(self.cells) - 1:  # its output: the next layer's input
            self.between.append((l, slots["y"][0], (T, B, slots["y"][1]), dtype))
        return slots

    def _owned(self, array: np.ndarray) -> int:
        self.keep.append(array)
        return array.ctypes.data

    def _rows(self, l: int, slot: int, base: int, n: int) -> None:
        """Point layer l's slot, chunk by chunk, at a (T, B, n) sequence at `base`."""
        step = self.B * n * self.cells[l].dtype.itemsize
        self.tables[l, :, slot] = base + step * self.starts

    def run(self, pool, threads: int, x: int, y: int, known: list, init: list[dict],
            final: list[dict]) -> bool:
        """Run the stack on `threads` threads (the caller and parked workers of `pool`):
        False, having run nothing, when `pool` or these tables are busy with another
        call. Addresses: `x` of the input (T, B, I), `y` of the last layer's output
        (T, B, out); `known[l]`: layer l's parameters by buffer name; `init[l]`,
        `final[l]`: its first and final states, (B, n) each, by name."""
        if not self.lock.acquire(False):
            return False
        try:
            return self._run(pool, threads, x, y, known, init, final)
        finally:
            self.lock.release()

    def _run(self, pool, threads: int, x: int, y: int, known: list, init: list[dict],
             final: list[dict]) -> bool:
        last = len(self.cells) - 1
        self._rows(0, self.slots[0]["x"][0], x, self.slots[0]["x"][1])
        self._rows(last, self.slots[last]["y"][0], y, self.slots[last]["y"][1])
        for l, slots in enumerate(self.slots):
            for name, slot in slots["params"]:
                self.tables[l, :, slot] = known[l][name]
            for key, slot in slots["state_in"]:
                self.tables[l, 0, slot] = init[l][key]
            for key, slot in slots["state_out"]:
                self.tables[l, -1, slot] = final[l][key]
        leased = [] if self.owned else self._place(
            [POOL.get(shape, dtype, zero=False) for *_, shape, dtype in
             self.between + self.scratch])  # (alive until the kernels return)
        for l, used in enumerate(self.used):  # every buffer named (a null one would crash)
            if not self.tables[l, :, :used].all():
                raise BackendError(f"internal: the wavefront's layer {l} misses a buffer")
        sync = np.zeros(len(self.cells) * FLAG_WORDS, np.int64)
        args = (self.T, self.B, self.job.ctypes.data)
        # On PyTorch's OpenMP team where it is loaded (its threads spin after each torch
        # op: ours would find the cores taken), as the threaded kernels run.
        status = run_threaded(self._openmp_body, self._address, *args, threads,
                              sync.ctypes.data, 0, lambda: pool)
        if status is None:
            return False
        del leased  # back to the pool
        if status:
            raise BackendError(f"kernel {SYMBOL} failed with status {status}")
        return True
