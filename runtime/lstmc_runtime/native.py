"""Running native CPU kernels.

A manifest lists, for each entry point, the buffers it takes; this module packs the
weights into the kernels' layout, allocates the buffers and calls the kernel. Batch rows
never interact, so a batch is cut into slices run at once on as many threads as the
machine has cores, one native call each (ctypes releases the GIL during a call); each
slice runs a whole sequence, its GEMMs included, in one call. A batch too small to cut,
with enough weights per step, is run by several threads together instead: each takes a
share of every product's columns, meeting at barriers inside the kernel."""
from __future__ import annotations

import copy
import ctypes
import math
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any, TypeAlias

import numpy as np

from . import buffers as names
from . import workspace as ws_layout
from .bfloat16 import WEIGHTS as BF16_WEIGHTS
from .bfloat16 import pack_panels_bf16
from .bound import BoundCell, Plans
from .bound import address as _address
from .cellbase import CellBase
from .choice import FasterOf, faster_for
from .errors import BackendError, UsageError
from .located import Locator, c_strides
from .manifest import BF16, THREADED, CpuManifest, single_threaded
from .openmp import BODY_SYMBOL as OPENMP_BODY
from .openmp import map_slices
from .packcache import PackCache, clear_all
from .packing import SYMBOLS as PACKING_SYMBOLS
from .packing import Packer
from .pool import POOL
from .threads import system_threads, thread_count
from .validate import check_count
from .wavefront import SYMBOL as WAVEFRONT_SYMBOL
from .workers import SYMBOLS as WORKER_SYMBOLS
from .workers import THREADED_ENTRY, barrier_words, run_threaded, workers

# Functions of a cell library besides its entries; one built before them lacks them.
LIBRARY_HELPERS = WORKER_SYMBOLS + PACKING_SYMBOLS + (WAVEFRONT_SYMBOL, OPENMP_BODY)

ENTRY = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_int64,
                         ctypes.POINTER(ctypes.c_void_p))
# An entry point's arguments by buffer name; "addresses", when present, maps packed
# parameters to their addresses instead.
Inputs: TypeAlias = dict[str, np.ndarray | Mapping[str, int]]
MIN_ROWS_PER_THREAD = 8
# Training's slices need more rows: at B=16 sharing each step among the threads (split by
# units) or one thread beat two slices of 8 rows, 1.03-1.20x (T=10 and 100, H=64 to 256);
# at B=32 the two are even (0.85-1.03x).
MIN_TRAINING_ROWS_PER_SLICE = 16
# A batch is cut into slices (one per thread) only when a call has at least this much
# recurrent product work (T x B x the step's recurrent weights, multiply-adds): handing
# slices to threads costs about 0.1-0.2 ms here. LSTM inference, uncut against cut:
# 2-2.9x faster at T=10, B=16, H=64 (2.6M), 1.1-2.4x at T=10, B=16, H=128 and B=64,
# H=64 (10.5M); 1.3x slower at T=100, B=16, H=64 (26M). Training, whose backward doubles
# the work: uncut 1.3-2.1x faster at 2.6M, 0.9x at 10.5M.
MIN_SLICED_WORK = 1 << 24
MIN_SLICED_TRAINING_WORK = 1 << 23
THREADED_STEP_WEIGHTS = 1 << 18  # a thread per half of this (tests set 0: always threaded)
MIN_THREADED_WEIGHTS = 1 << 14  # inference measures threads from here (LSTM: H=64)
# training shares steps from this much product work a step: recurrent weights x rows
# (LSTM: H=128 from B=1, H=64 from B=4, H=32 from B=16)
SHARED_TRAINING_WORK = 1 << 16
_pool: ThreadPoolExecutor | None = None
# Held by the one threaded call whose team runs on Python's threads (_run_threaded).
_PYTHON_TEAM = threading.Lock()


_pool_pid = 0


def _pooled_copy(array) -> np.ndarray:
    """A C-contiguous copy of `array` in pooled memory (large ones: memory already
    mapped, not faulted in anew each call)."""
    copy = POOL.get(array.shape, array.dtype, zero=False)
    np.copyto(copy, array)
    return copy


def _executor() -> ThreadPoolExecutor:
    """The worker threads; a process forked from one that had them gets its own (a fork
    copies the pool object but not its threads)."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(max_workers=system_threads(), thread_name_prefix="lstmc")
        _pool_pid = os.getpid()
    return _pool




def release_memory() -> int:
    """Free the memory lstmc keeps for reuse between calls (the CPU buffer pool, the
    weights packed for plain-dict calls); returns the bytes given back. Later calls
    allocate and pack afresh."""
    return POOL.release() + clear_all()


@dataclass
class Saved:
    slices: list[dict[str, np.ndarray]]  # per batch slice: what the backward pass reads
    bounds: list[int]
    x: np.ndarray
    lengths: np.ndarray
    owner: object = None  # the NativeCell whose kernels wrote it
    seed: int | None = None  # of the dropout and zoneout masks: drawn again by the backward


class PackedParams(dict):
    """Parameters plus their packed forms; `NativeCell.pack_params` makes one, and
    forward accepts it in place of the plain dict to skip validating and packing on every
    call. It is an immutable snapshot: it owns read-only copies of the arrays (the kernels
    read them by address), and changing an entry is a UsageError; to change a parameter,
    pack again."""

    def __init__(self, plain: dict[str, np.ndarray], packs: dict[str, np.ndarray], owner,
                 weights: str, addresses: dict[str, int]):
        super().__init__(plain)
        self._packs, self._owner = packs, owner
        self._packs_view = MappingProxyType(packs)  # what `packs` hands out: read-only
        self._addresses = MappingProxyType(addresses)  # of the arrays, by buffer name
        self.weights = weights  # what the packs hold: the cell's dtype, or "bfloat16"

    @property
    def packs(self) -> Mapping[str, np.ndarray]:
        """The packed weights by buffer name, read-only (the kernels read them by
        address, sized by the cell: a swapped array would be read past its end)."""
        return self._packs_view

    @property
    def validated_for(self):
        return self._owner

    @property
    def addresses(self) -> Mapping[str, int]:
        """Addresses of the owned arrays, by buffer name; stable: nothing can replace them."""
        return self._addresses

    def _immutable(self, *args, **kwargs):
        raise UsageError("PackedParams is an immutable snapshot of packed parameters: "
                         "pack the changed parameters again with cell.pack_params(params)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _immutable
    __ior__ = _immutable

    def __reduce__(self):  # copies and pickles are plain dicts of the caller's parameters
        derived = getattr(self._owner, "derived", {})
        return dict, ({n: v for n, v in self.items() if n not in derived},)


class NativeCell(CellBase):
    """A cell whose time loops are native functions.

    `functions` maps entry symbols to addresses (from a loaded shared library, or code
    compiled in process); `manifest` is the artifact's CpuManifest (or its JSON, which is
    checked the same way)."""

    def __init__(self, manifest, functions: dict[str, int], keepalive=None):
        if not isinstance(manifest, CpuManifest):
            manifest = CpuManifest.from_json(manifest)
        self.contract = manifest
        self._describe(manifest.cell)
        self.manifest = manifest.to_json()  # the same, as JSON, for readers of dicts
        self._keepalive = keepalive  # the library the addresses live in
        self.sizes = dict(manifest.cell.sizes)
        self._entries = {
            name: (THREADED_ENTRY if name.endswith("_mt") else ENTRY)(functions[entry.symbol])
            for name, entry in manifest.entries.items()}
        self._functions = {name: functions[entry.symbol]
                           for name, entry in manifest.entries.items()}
        self._functions.update({s: functions[s] for s in LIBRARY_HELPERS if functions.get(s)})
        self._packer = Packer(manifest.panel_width, self.dtype, self._functions)
        self.plans = Plans(self)  # of the lean inference call, by input shape
        self._pack_cache = PackCache()  # plain-dict calls' packed weights, by their bytes
        self._locator = Locator(self.param_shapes, self.dtype)  # plain dicts' arrays
        self._faster: dict[tuple, FasterOf] = {}  # threaded entry or not, by (entry, B)

    # -- weights ------------------------------------------------------------------------

    def _packs(self, params: dict, entry: str | None = None, cached: bool = True
               ) -> Mapping[str, np.ndarray]:
        """The packed weights, all of them or those `entry` reads; with `cached`, the
        packs of an earlier call when the parameters hold the same bytes (PackCache)."""
        if isinstance(params, PackedParams):
            return params.packs
        return {name: pack for name, (pack, _) in self._located_packs(
            params, entry, cached).items()}

    def _located_packs(self, params: dict, entry: str | None, cached: bool = True,
                       located: Mapping[str, int] | None = None
                       ) -> dict[str, tuple[np.ndarray, int]]:
        """_packs of a plain dict, each with its address; `located`: the parameters'
        addresses, known already (the parameters validated)."""
        cache = self._pack_cache
        packs = {}
        for name, transposed, segments in self._packs_read(entry):
            if located is None:
                parts, addresses = [np.ascontiguousarray(params[n]) for n in segments], None
            else:  # validated
                parts, addresses = [params[n] for n in segments], [located[n] for n in segments]
            if not cached:
                pack = self._packer.stacked(parts, transposed, addresses)
                packs[name] = pack, _address(pack)
            else:
                make = partial(self._pack_from, transposed)
                packs[name] = cache.get(name, parts, make, addresses)
        return packs

    def _pack_from(self, transposed: bool, parts: list[np.ndarray],
                   addresses: list[int] | None) -> np.ndarray:
        return self._packer.stacked(parts, transposed, addresses)

    def _packs_read(self, entry: str | None) -> list[tuple[str, bool, list[str]]]:
        """The packs `entry` reads (None: all of them) as (buffer name, transposed, the
        parameters stacked in it), once per entry."""
        cache = self.__dict__.setdefault("_packs_by_entry", {})
        if entry not in cache:
            wanted = None if entry is None else {name for name, *_ in self._layout(entry)}
            cache[entry] = [
                (name, transposed, [n for n, _ in p.segments])
                for p in self.contract.packed.values()
                for name, transposed in ((names.panels_t(p.name), True),
                                         (names.panels(p.name), False))
                if wanted is None or name in wanted]
        return cache[entry]

    def pack_params(self, params: dict, weights: str | None = None) -> PackedParams:
        """Validate and pack parameters once, for many forward calls with them.
        `weights="bfloat16"` (float32 cells): the packed weight matrices rounded to
        bfloat16, half the bytes for inference to stream (lstmc_runtime.bfloat16);
        training needs the cell's own dtype."""
        weights = self._check_weights(weights)
        if getattr(params, "validated_for", None) is not self:
            self._locator.addresses(params)  # validated
        # Fresh arrays, referenced nowhere else, made read-only once their addresses are
        # known (ctypes gives a writable array's at a third of the cost).
        plain, located = {}, {}
        for name, value in self._expand(params).items():  # derived too
            plain[name] = copy = np.array(value, order="C", copy=True)
            located[name] = _address(copy)
        bf16 = weights == BF16_WEIGHTS  # from the forward's float packs, rounded
        packed = self._located_packs(plain, "forward" if bf16 else None, cached=False,
                                     located=located)
        packs = {name: pack for name, (pack, _) in packed.items()}
        at = ({names.param(n): address for n, address in located.items()}
              | {name: address for name, (_, address) in packed.items()})
        if bf16:
            for p in self.contract.packed.values():
                floats = packs.pop(names.panels_t(p.name))
                packs[names.panels_t_bf16(p.name)] = rounded = pack_panels_bf16(
                    floats, p.columns, p.rows, self.contract.panel_width,
                    POOL.lease(floats.size, np.uint16))
                del at[names.panels_t(p.name)]
                at[names.panels_t_bf16(p.name)] = _address(rounded)
        for array in (*plain.values(), *packs.values()):
            array.flags.writeable = False
        return PackedParams(plain, packs, self, weights, at)

    def _check_weights(self, weights: str | None) -> str:
        """`weights` of pack_params, checked: None means the cell's dtype."""
        if weights is None or weights == self.dtype.name:
            return self.dtype.name
        if weights != BF16_WEIGHTS:
            raise UsageError(f"pack_params: weights must be {self.dtype.name!r} or "
                             f"{BF16_WEIGHTS!r}, got {weights!r}")
        if BF16 not in self._entries:
            raise UsageError(f"pack_params: bfloat16 weights are for float32 cells; this "
                             f"cell is {self.dtype.name}")
        return weights

    def twin(self) -> NativeCell:
        """The same compiled cell as another object, with lean-call plans and packs of
        its own: a stack's two directions of one cell run at once, each on its twin
        (one cell's lean path serves one caller at a time)."""
        twin = copy.copy(self)
        twin.plans, twin._pack_cache, twin._faster = Plans(twin), PackCache(), {}
        twin._locator = Locator(self.param_shapes, self.dtype)
        return twin

    def bind(self, params: dict) -> BoundCell:
        """These parameters validated and packed once, for many inference calls: a
        BoundCell, `bound(x, state)` as `forward(x, params, state)` and `bound.step(x)`
        for streaming with the state carried inside, each with little per-call work."""
        if self.extra_inputs:
            raise UsageError(f"cell.bind: {self.name} takes inputs after the first "
                             f"({', '.join(self.extra_inputs)}), which a bound cell does not:"
                             " call forward(x, params, inputs={...})")
        if not (isinstance(params, PackedParams) and params.validated_for is self):
            params = self.pack_params(params)
        return BoundCell(self, params)

    # -- calls --------------------------------------------------------------------------

    def forward(self, x, params, state=None, train: bool = False, lengths=None,
                seed: int | None = None, masks: bool = True, inputs=None, workspace=None):
        if train and getattr(params, "weights", None) == BF16_WEIGHTS:
            raise UsageError("forward(train=True): these parameters were packed with "
                             "bfloat16 weights, which are for inference; train with the "
                             "parameters as a dict or packed in the cell's dtype")
        # Inference with packed parameters takes the bound path (checks cached by shape).
        if (not train and lengths is None and not self.extra_inputs and inputs is None
                and workspace is None):
            done = None
            if type(params) is PackedParams and params.validated_for is self:
                done = self.plans.forward(x, params, None, state)
            elif type(params) is dict and not self.derived:
                done = self.plans.forward(x, params, lambda: self._addresses(params), state)
            if done is not None:
                return done
        return super().forward(x, params, state, train, lengths, seed, masks, inputs,
                               workspace)

    def _addresses(self, params: dict) -> tuple[dict[str, int], Mapping]:
        """Plain parameters validated, the packed weights the forward entry reads, and
        the addresses of both by buffer name (the packs must outlive the call)."""
        located = self._locator.addresses(params)
        packs = self._located_packs(params, "forward", located=located)
        read = self.plans.forward_slots  # vectors the kernel reads as given
        return ({slot: located[n] for slot, n in read}
                | {n: at for n, (_, at) in packs.items()}), packs

    forward.__doc__ = CellBase.forward.__doc__

    def _bounds(self, T: int, B: int, train: bool) -> list[int]:
        """The batch slices of a (T, B) call: one per thread, of MIN_ROWS_PER_THREAD
        rows or more (training: MIN_TRAINING_ROWS_PER_SLICE), where the call has the
        work to repay them (MIN_SLICED_WORK)."""
        rows = MIN_TRAINING_ROWS_PER_SLICE if train else MIN_ROWS_PER_THREAD
        slices = max(1, min(thread_count(), B // rows))
        least = MIN_SLICED_TRAINING_WORK if train else MIN_SLICED_WORK
        if slices > 1 and T * B * self.contract.step_weight_elements < least:
            slices = 1
        return [B * c // slices for c in range(slices + 1)]

    def _layout(self, entry: str) -> list[tuple]:
        """An entry's buffers as (name, dims, role, dtype, batch axis or None), once."""
        cache = self.__dict__.setdefault("_layouts", {})
        if entry not in cache:
            cache[entry] = [
                (b.name, tuple(b.shape), b.role,
                 self.dtype if b.dtype == "float" else np.dtype(b.dtype),
                 b.shape.index("B") if "B" in b.shape else None)
                for b in self.contract.entries[entry].buffers]
        return cache[entry]

    def _shaped(self, entry: str, T: int, rows: int) -> list[tuple]:
        """An entry's buffers as (name, shape, role, dtype, batch axis or None) for a
        slice of `rows` rows and T steps; kept for the next calls of these sizes."""
        cache = self.__dict__.setdefault("_shaped_cache", {})
        found = cache.get((entry, T, rows))
        if found is None:
            if len(cache) >= 256:  # many lengths: start over
                cache.clear()
            found = cache[entry, T, rows] = [
                (name, tuple(T if d == "T" else rows if d == "B" else d for d in dims),
                 role, dtype, axis)
                for name, dims, role, dtype, axis in self._layout(entry)]
        return found

    def _call(self, entry: str, T: int, bounds: list[int], given: Inputs,
              per_slice: list[dict] | None = None) -> dict:
        """Run an entry point on each batch slice [bounds[c], bounds[c+1]). Arrays with a
        batch axis are cut into slices (outputs: joined again); `per_slice` supplies
        arrays already cut; outputs without a batch axis are summed over slices."""
        if len(bounds) == 2:
            return self._call_one(entry, T, bounds[1], given,
                                  None if per_slice is None else per_slice[0])
        layout = self._layout(entry)
        count = len(bounds) - 1
        slices: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
        known = given.get("addresses", _NOTHING)  # of packed parameters, computed once
        assert isinstance(known, Mapping)  # the one entry of `given` that is not an array
        for c in range(count):
            b0, b1 = bounds[c], bounds[c + 1]
            for name, shape, role, dtype, axis in self._shaped(entry, T, b1 - b0):
                if role == "in" and name in known:  # a snapshot's: validated, by address
                    continue
                if role == "in":
                    if per_slice is not None and name in per_slice[c]:
                        array = per_slice[c][name]
                    else:
                        array = given[name]
                        if axis is not None and count > 1:  # rows b0..b1, copied
                            array = _pooled_copy(
                                array[(slice(None),) * axis + (slice(b0, b1),)])
                    _check_buffer(name, array, shape, dtype)
                elif per_slice is not None and name in per_slice[c]:  # caller's memory
                    array = per_slice[c][name]
                    _check_buffer(name, array, shape, dtype)
                    if role == "out":
                        array.fill(0)
                else:
                    array = POOL.get(shape, dtype, zero=role == "out")
                slices[c][name] = array

        def run(c: int) -> int:
            arrays = slices[c]
            pointers = (ctypes.c_void_p * max(len(layout), 1))(
                *[known[name] if name in known else _address(arrays[name]) for name, *_ in layout])
            return self._entries[entry](T, bounds[c + 1] - bounds[c], pointers)

        statuses = map_slices(run, count, lambda f, items: list(_executor().map(f, items)))
        if any(statuses):
            raise BackendError(f"kernel {entry} failed with status {max(statuses)}")
        for c in range(count):  # inputs cut into copies here: freed before outputs are joined
            for name, _dims, role, _dtype, axis in layout:
                if (role == "in" and axis is not None and count > 1
                        and not (per_slice is not None and name in per_slice[c])):
                    del slices[c][name]
        # Pooled buffers go back to the pool when the last reference to them is gone.
        out: dict = {"slices": slices}
        for name, _dims, role, _dtype, axis in layout:
            if role not in ("out", "result"):
                continue
            parts = [sl[name] for sl in slices]
            if count == 1 or names.is_saved(name):  # saved: kept per slice
                out[name] = parts[0]
            elif axis is not None:
                shape = list(parts[0].shape)
                shape[axis] = sum(part.shape[axis] for part in parts)
                out[name] = np.concatenate(parts, axis=axis, out=POOL.get(
                    tuple(shape), parts[0].dtype, zero=False))
            else:  # the kernel's own arrays: summed in place
                for part in parts[1:]:
                    np.add(parts[0], part, out=parts[0])
                out[name] = parts[0]
        return out

    def _call_one(self, entry: str, T: int, B: int, given: Inputs,
                  own: dict | None) -> dict:
        """_call of a batch in one slice, as _call's own loop would run it, with each
        buffer's handling decided once per (entry, T, B) (`_frame`): a training call
        spent ~25 µs here per kernel call, the slices' bookkeeping of a case without
        slices."""
        frame = self._frame(entry, T, B)
        known: Any = given.get("addresses", _NOTHING)
        arrays: dict[str, np.ndarray] = {}
        table = []
        for name, shape, dtype, kind, strides in frame.buffers:
            array: Any = None if own is None else own.get(name)
            if array is None and kind == _IN and name in known:  # a snapshot's: validated
                table.append(known[name])
                continue
            if array is None and kind != _IN:  # made here: of the kernel's shape
                if kind == _SMALL:
                    array = np.empty(shape, dtype)
                elif kind == _SMALL_ZERO:
                    array = np.zeros(shape, dtype)
                else:
                    array = POOL.get(shape, dtype, zero=kind == _POOLED_ZERO)
            else:  # the caller's: checked, the kernel knows only its address
                if array is None:
                    array = given[name]
                elif kind == _SMALL_ZERO or kind == _POOLED_ZERO:
                    array.fill(0)
                _check_buffer(name, array, shape, dtype, strides)
            arrays[name] = array
            table.append(_address(array))
        pointers = (ctypes.c_void_p * max(len(table), 1))(*table)
        if frame.threaded:  # every thread on the one slice
            statuses = self._run_threaded(entry, T, B, pointers)
        else:
            statuses = [self._entries[entry](T, B, pointers)]
        if any(statuses):
            raise BackendError(f"kernel {entry} failed with status {max(statuses)}")
        out: dict = {name: arrays[name] for name in frame.outputs}
        out["slices"] = [arrays]
        return out

    def _frame(self, entry: str, T: int, B: int) -> _Frame:
        """How _call_one fills each buffer of `entry` at (T, B), kept for the next calls
        of these sizes."""
        cache = self.__dict__.setdefault("_frames", {})
        found = cache.get((entry, T, B))
        if found is None:
            if len(cache) >= 256:  # many lengths: start over
                cache.clear()
            found = cache[entry, T, B] = _Frame(self._shaped(entry, T, B),
                                                entry.endswith(THREADED))
        return found

    def _call_faster(self, entry: str, T: int, bounds: list[int], given: Inputs,
                     per_slice: list[dict] | None) -> dict:
        """_call of `entry`; a threaded entry runs only while it measures faster than
        its one-thread twin on calls of this batch size (choice.FasterOf)."""
        if not entry.endswith(THREADED):
            return self._call(entry, T, bounds, given, per_slice)
        faster = faster_for(self._faster, (entry, bounds[-1]))
        single = single_threaded(entry)
        return faster.choose(lambda: self._call(single, T, bounds, given, per_slice),
                             lambda: self._call(entry, T, bounds, given, per_slice),
                             work=max(T, 1))  # sequences of a batch size vary in length

    def native_workers(self, threads: int):
        """The process's parked worker threads with room for `threads` (made from this
        cell's library if there are none), or None (a library built without them)."""
        return workers(threads, self._functions, self._keepalive)

    def _threads(self) -> int:
        """Threads for a threaded kernel: enough for the work (each meeting costs more
        with more of them): one per THREADED_STEP_WEIGHTS / 2 weights of a step, 2 to 8."""
        share = max(1, THREADED_STEP_WEIGHTS // 2)
        weights = self.contract.step_weight_elements
        return max(2, min(thread_count(), weights // share, 8))

    def _run_threaded(self, entry: str, T: int, B: int, pointers) -> list[int]:
        """Statuses of a threaded entry run on one slice by its threads together: on the
        OpenMP team when PyTorch's is loaded (its threads spin after each torch op: ours
        would find the cores taken), else on the parked native workers, else (both busy)
        on Python's threads, else (those too) as its one-thread twin."""
        threads = self._threads()
        sync = barrier_words()
        elements = self.contract.entries[entry].arena_elements
        arena = POOL.get((B, max(elements, 1)), self.dtype, zero=False)
        status = run_threaded(self._functions.get(OPENMP_BODY), self._functions[entry], T, B,
                              ctypes.addressof(pointers), threads, sync.ctypes.data,
                              arena.ctypes.data, lambda: self.native_workers(threads))
        if status is not None:
            return [status]
        # One team at a time on Python's threads; other calls run the one-thread twin on
        # the same buffers. (Several at once filled the executor's workers with parts
        # of teams, each waiting at a barrier for a helper still in the queue, forever.)
        if not _PYTHON_TEAM.acquire(blocking=False):
            return [self._entries[single_threaded(entry)](T, B, pointers)]
        try:
            kernel = self._entries[entry]
            args = (T, B, pointers)

            def run(tid: int) -> int:
                return kernel(*args, tid, threads, sync.ctypes.data, arena.ctypes.data)

            helpers = [_executor().submit(run, tid) for tid in range(1, threads)]
            return [run(0)] + [h.result() for h in helpers]
        finally:
            _PYTHON_TEAM.release()

    def _inputs(self, x, params, state, lengths, packs) -> Inputs:
        T, B, _ = x.shape
        given = {"x": x, "lengths": np.full(B, T, np.int64) if lengths is None else lengths}
        if isinstance(params, PackedParams):  # stable: the snapshot owns these arrays
            given["addresses"] = params.addresses  # (the kernels need no more of them)
        else:
            given.update({names.param(n): np.ascontiguousarray(v) for n, v in params.items()})
            given.update(packs)
        given.update({names.state_in(n): v for n, v in state.items()})
        return given

    def _forward_entry(self, T: int, B: int, train: bool, bf16: bool = False
                       ) -> tuple[str, list[int]]:
        """The forward entry point for a (T, B) call (`bf16`: inference on bfloat16
        weights), and its batch slices."""
        bounds = self._bounds(T, B, train)
        entry = "forward_train" if train else BF16 if bf16 else "forward"
        if self._shares_steps(T, bounds, train):
            return entry + THREADED, bounds
        return entry, bounds

    def _shares_steps(self, T: int, bounds: list[int], train: bool) -> bool:
        """Whether a batch too small for slices runs on several threads sharing each
        step (the threaded entries; in training also the weight gradients after the
        loop): when a step has enough product work to repay waking threads and meeting
        at barriers. Inference measures the threaded kernel against its one-thread twin
        (choice.FasterOf) from MIN_THREADED_WEIGHTS (below it a barrier costs more than
        a share saves), on the lean path and every other: a layer of a stack, or a call
        with lengths, is the same kernel (before, these ran one thread
        below 256K weights: a 2-layer stack at H=128, B=1 took 1.0 ms where its layers
        alone took 0.29 + 0.30 ms). Training, whose backward's weight-gradient GEMMs
        split too, is measured the same way from SHARED_TRAINING_WORK weights x rows:
        below it threads lose (H=64, B=1: 0.7x), from it they win (H=128, B=1:
        1.06-1.5x; H=64 at B=4, 8, 16: 1.13x, 1.27x, 1.6x, where one thread ran before
        and lost to nn.LSTM at B=16) up to 1.6-1.8x at H=512 for the forward and the
        backward alike, and beat cutting B=4..16 into slices of rows (1.05-1.6x)."""
        if len(bounds) != 2 or thread_count() < 2:
            return False
        weights = self.contract.step_weight_elements
        if not train:
            return weights >= min(MIN_THREADED_WEIGHTS, THREADED_STEP_WEIGHTS)
        return T >= 8 and weights * bounds[1] >= SHARED_TRAINING_WORK

    def _gradient_sources(self) -> list[tuple[str, tuple, list[tuple]]]:
        """Per parameter, (name, shape, its gradient's parts among the backward's
        outputs: (buffer, first row, end row) or (buffer, None, None) for the whole),
        once. A gradient is the sum of its parts; a lone part is handed out as it is
        (the rows of a packed gradient are views of it: no copy)."""
        found = self.__dict__.get("_gradient_sources_cache")
        if found is None:
            outputs = {name for name, _dims, role, *_ in self._layout("backward")
                       if role in ("out", "result")}
            sources: dict[str, list[tuple]] = {n: [] for n in self.kernel_param_shapes}
            for name in self.kernel_param_shapes:
                if names.dparam(name) in outputs:
                    sources[name].append((names.dparam(name), None, None))
            for name, same in self.contract.gradient_aliases.items():
                sources[name].append((names.dparam(same), None, None))
            for p in self.contract.packed.values():
                if names.dpacked(p.name) not in outputs:
                    continue
                offset = 0
                for name, rows in p.segments:
                    sources[name].append((names.dpacked(p.name), offset, offset + rows))
                    offset += rows
            found = self.__dict__["_gradient_sources_cache"] = [
                (name, tuple(shape), sources[name])
                for name, shape in self.kernel_param_shapes.items()]
        return found

    def workspace_size(self, T: int, B: int) -> int:
        """Elements of the `workspace` a (T, B) training forward can save into."""
        return ws_layout.size(self._saved_widths(), check_count("T", T), check_count("B", B))

    def _saved_widths(self) -> list[tuple[str, int]]:
        widths = self.__dict__.get("_saved_widths_cache")
        if widths is None:
            widths = self.__dict__["_saved_widths_cache"] = ws_layout.saved_widths(
                self.contract)
        return widths

    def _run_forward(self, x, params, state, train, lengths, seed=None, workspace=None):
        T, B, _ = x.shape
        bf16 = getattr(params, "weights", None) == BF16_WEIGHTS
        entry, bounds = self._forward_entry(T, B, train, bf16)
        given = self._inputs(x, params, state, lengths, self._packs(params, entry))
        per_slice = _rng_slices(seed, bounds)
        if workspace is not None:  # the kernels save straight into the caller's array
            into = ws_layout.views(self._saved_widths(), workspace, T, bounds)
            workspace[0] = len(bounds) - 1
            per_slice = [dict(r, **v) for r, v in zip(per_slice, into)]
        out = self._call_faster(entry, T, bounds, given, per_slice)
        final = {n: out[names.state_out(n)] for n in self.state_sizes}
        saved = None
        if train:
            kept = [{k: v for k, v in sl.items() if names.is_saved(k)}
                    for sl in out["slices"]]
            saved = Saved(kept, bounds, x, given["lengths"], owner=self, seed=seed)
        return out["y"], final, saved

    def saved_from_workspace(self, flat: np.ndarray, x: np.ndarray, lengths: np.ndarray,
                             seed: int | None = None) -> Saved:
        """What backward needs, as views of a workspace a training forward of this cell
        filled (`forward(..., train=True, workspace=flat)`): no copy."""
        T, B = x.shape[:2]
        bounds, slices = ws_layout.read(self._saved_widths(), flat, T, B)
        return Saved(slices, bounds, x, lengths, owner=self, seed=seed)

    def _run_backward(self, saved: Saved, params, dy, dstate):
        if not isinstance(saved, Saved) or saved.owner is not self:
            raise UsageError(f"this tape's saved values were not recorded by {self!r}: call "
                             "backward on the tape its own forward returned")
        packs = self._packs(params, "backward")
        given = self._inputs(saved.x, params, {}, saved.lengths, packs)
        given["dy"] = dy
        given.update({names.dstate_in(n): v for n, v in dstate.items()})
        T = saved.x.shape[0]
        per_slice = [dict(sl, **rng) for sl, rng in zip(saved.slices,
                                                        _rng_slices(saved.seed, saved.bounds))]
        entry = "backward_mt" if self._shares_steps(T, saved.bounds, True) else "backward"
        out = self._call_faster(entry, T, saved.bounds, given, per_slice)
        dparams = {}
        aliases = self.contract.gradient_aliases
        for name, shape, sources in self._gradient_sources():
            found = [out[key] if r0 is None else out[key][r0:r1] for key, r0, r1 in sources]
            if not found:
                dparams[name] = np.zeros(shape, self.dtype)
            elif len(found) == 1 and found[0].shape == shape:
                # an alias's lone part is the kernel's array of the parameter it joins
                dparams[name] = found[0].copy() if name in aliases else found[0]
            else:
                dparams[name] = np.zeros(shape, self.dtype)
                for part in found:
                    dparams[name] += part
        dstate0 = {n: out[names.dstate_out(n)] for n in self.state_sizes}
        return out["dx"], dparams, dstate0


_NOTHING: Mapping[str, int] = {}
# How _call_one gets a buffer it is not handed: the caller's input; new memory (from the
# heap when small, zeroed or not as the kernel expects); pooled memory.
_IN, _SMALL, _SMALL_ZERO, _POOLED, _POOLED_ZERO = range(5)


class _Frame:
    """An entry's buffers at one (T, B): (name, shape, dtype, how it is got, the strides
    of a C-contiguous array of that shape), and which are outputs."""

    __slots__ = ("buffers", "outputs", "threaded")

    def __init__(self, shaped: list[tuple], threaded: bool):
        self.buffers = []
        for name, shape, role, dtype, _axis in shaped:
            small = math.prod(shape) * dtype.itemsize < POOL.MIN_BYTES  # as POOL.get does
            kind = (_IN if role == "in" else (_SMALL_ZERO if small else _POOLED_ZERO)
                    if role == "out" else _SMALL if small else _POOLED)
            self.buffers.append((name, shape, dtype, kind, c_strides(shape, dtype.itemsize)))
        self.outputs = [name for name, _shape, role, _dtype, _axis in shaped
                        if role in ("out", "result")]
        self.threaded = threaded


def _check_buffer(name: str, array: Any, shape: tuple, dtype, strides: tuple | None = None
                  ) -> None:
    """A caller's array for a kernel buffer must be C-contiguous, of the buffer's shape
    and dtype: the kernel knows only its address. (`strides`: the C-contiguous ones, a
    cheaper test than the flags when they match.)"""
    if (array.shape != shape or array.dtype != dtype
            or array.strides != strides and not array.flags.c_contiguous):
        raise BackendError(f"internal: buffer {name} is {array.shape} {array.dtype}, the "
                           f"kernel needs {shape} {dtype}")


def _rng_slices(seed: int | None, bounds: list[int]) -> list[dict[str, np.ndarray]]:
    """Per batch slice, the `rng` buffer: the seed (as the int64 of its bits), the
    slice's first row (masks are keyed by the row in the whole batch), and whether to
    draw at all (seed None: the masks' expectations, as at inference)."""
    word = 0 if seed is None else seed - (1 << 64) if seed >= 1 << 63 else seed
    return [{names.RNG: np.array([word, bounds[c], seed is not None], np.int64)}
            for c in range(len(bounds) - 1)]

