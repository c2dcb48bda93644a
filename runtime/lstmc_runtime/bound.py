"""The lean inference call of a native cell: as little Python as possible between the
caller and the kernel (a streaming model calls one step at a time, where a call's
overhead is most of its cost), and `BoundCell`, a cell bound to packed parameters.

Plans are cached per cell by the input's (shape, strides, dtype): the first call of each
combination validates x in full with the cell's own checks (the same errors as
`forward`) and builds a plan: the kernel's pointer table, its work buffers and a
full-length `lengths`. A later call with the same combination checks only the states
it is given (shape, strides, dtype against the plan's), writes the addresses of x, y,
the states (and of the parameters, unless the table already holds the same packed
snapshot's) into the table, and calls the kernel. What this path does not cover
(lengths, batch_first, training, a batch cut into slices or the threaded kernel, a call
while another thread is inside the same cell's fast path) runs the ordinary way."""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from . import buffers as names
from .bfloat16 import WEIGHTS as BF16_WEIGHTS
from .cellbase import CellBase
from .choice import FasterOf
from .errors import BackendError, ShapeError
from .forksafe import fork_safe_lock
from .manifest import THREADED, single_threaded
from .openmp import BODY_SYMBOL as OPENMP_BODY
from .pool import POOL
from .threads import thread_limit
from .validate import check_array
from .workers import barrier_words, run_threaded

if TYPE_CHECKING:
    from .native import NativeCell, PackedParams

MAX_PLANS = 8  # input shapes kept at once per cell; beyond, the oldest is dropped
MAX_PLAN_BYTES = 1 << 20  # work buffers up to this are owned by a plan; larger: pooled


_addressof, _char_at = ctypes.addressof, ctypes.c_char.from_buffer


def address(array: np.ndarray) -> int:
    """The address of an array's first element (C-contiguous arrays)."""
    if array.flags.writeable:
        try:
            return _addressof(_char_at(array))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
    # read-only (packs, snapshots): ctypes refuses them, and a refusal raised and caught
    # cost 2.7 µs a call against 1.4 for this
    return array.__array_interface__["data"][0]


def addresses_of(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    return {name: address(array) for name, array in arrays.items()}


class Plan:
    """What a call with one input shape needs that does not depend on the arrays."""

    __slots__ = ("kernel", "T", "B", "dtype", "pointers", "x_slot", "y_slot", "y_shape",
                 "state_in", "state_out", "param_slots", "params", "zero_state",
                 "state_keys", "keep", "pooled", "threaded")

    def __init__(self, cell: NativeCell, entry: str, T: int, B: int):
        self.kernel = cell._entries[single_threaded(entry)]
        # forward_mt: the same buffers, run by the process's parked workers with the caller
        self.threaded: Threaded | None = (Threaded(cell, entry, B) if entry.endswith(THREADED)
                                          else None)
        self.T, self.B, self.dtype = T, B, cell.dtype
        layout = cell._layout(entry)
        self.pointers = (ctypes.c_void_p * max(len(layout), 1))()
        self.state_in: list[tuple[str, int]] = []
        self.state_out: list[tuple[str, int, tuple]] = []
        self.param_slots: list[tuple[str, int]] = []  # parameters and their packed forms
        self.params: object = None  # the packed snapshot whose addresses the table holds
        self.zero_state = {n: np.zeros((B, s), cell.dtype) for n, s in cell.state_sizes.items()}
        size = cell.dtype.itemsize
        self.state_keys = {n: ((B, s), (s * size, size)) for n, s in cell.state_sizes.items()}
        self.keep: list[np.ndarray] = []  # arrays the table points at, alive with the plan
        self.pooled: list[tuple[int, tuple, np.dtype]] = []  # large work buffers: per call
        work_bytes = 0
        for slot, (name, dims, role, dtype, _axis) in enumerate(layout):
            shape = tuple(T if d == "T" else B if d == "B" else d for d in dims)
            kind, key = names.parse(name)
            if name == names.X:
                self.x_slot = slot
            elif name == names.Y:
                self.y_slot, self.y_shape = slot, shape
            elif kind == "state_in":
                self.state_in.append((key, slot))
            elif kind == "state_out":
                self.state_out.append((key, slot, shape))
            elif kind in ("param", "panels", "panelsT", "panelsT16"):
                self.param_slots.append((name, slot))
            elif name == names.LENGTHS:
                self._keep(slot, np.full(B, T, np.int64))
            elif name == names.RNG:  # inference draws no masks (their expectations)
                from .native import _rng_slices

                self._keep(slot, _rng_slices(None, [0, B])[0][names.RNG])
            elif role == "work":
                work_bytes += int(np.prod(shape)) * np.dtype(dtype).itemsize
                self.pooled.append((slot, shape, dtype))
            else:
                raise BackendError(f"internal: entry {entry} takes {name} ({role}), which "
                                   "the lean call does not fill")
        if work_bytes <= MAX_PLAN_BYTES:  # small: owned by the plan, reused every call
            for slot, shape, dtype in self.pooled:
                self._keep(slot, np.empty(shape, dtype))
            self.pooled = []

    def _keep(self, slot: int, array: np.ndarray) -> None:
        self.keep.append(array)
        self.pointers[slot] = address(array)

    def set_params(self, params, table: dict[str, int] | None = None) -> None:
        """Point the table at the packed snapshot `params` (nothing to do when it already
        does), or, given `table`, at those addresses (plain parameters: every call)."""
        if table is None:
            if params is self.params:
                return
            table = params.addresses
        pointers = self.pointers
        for name, slot in self.param_slots:
            pointers[slot] = table[name]
        self.params = params

    def matching_state(self, state) -> dict | None:
        """`state` when it is a dict of exactly the states, each a C-contiguous array of
        this plan's batch and the cell's dtype; else None (checked the usual way)."""
        if type(state) is not dict or len(state) != len(self.state_keys):
            return None
        for name, (shape, strides) in self.state_keys.items():
            array = state.get(name)
            if (type(array) is not np.ndarray or array.shape != shape
                    or array.strides != strides or array.dtype != self.zero_state[name].dtype):
                return None
        return state

    def run(self, x: np.ndarray, state_in: dict[str, int], state_out: dict[str, int]
            ) -> np.ndarray:
        """y for x, reading and writing the states at these addresses, by name."""
        return self.run_ordered(x, self.ordered(state_in, state_out))

    def ordered(self, state_in: dict[str, int], state_out: dict[str, int]
                ) -> tuple[list[int], list[int]]:
        """The states' addresses, by name, in the order `call` takes them."""
        return ([state_in[name] for name, _ in self.state_in],
                [state_out[name] for name, *_ in self.state_out])

    def run_ordered(self, x: np.ndarray, states: tuple[list[int], list[int]]) -> np.ndarray:
        """y for x, with the states' addresses in `ordered`'s order."""
        y = np.empty(self.y_shape, self.dtype)
        self.call(address(x), _addressof(_char_at(y)), *states)  # type: ignore[arg-type]
        return y

    def call(self, x: int, y: int, state_in: list[int], state_out: list[int]) -> None:
        """The kernel on arrays at these addresses, each of this plan's shape: x, y, and
        the states in the order of `state_in` and `state_out` (by the caller's checks:
        the addresses are all the kernel knows)."""
        pointers = self.pointers
        for (_, slot), at in zip(self.state_in, state_in):
            pointers[slot] = at
        for (_, slot, _), at in zip(self.state_out, state_out):
            pointers[slot] = at
        pointers[self.x_slot] = x
        pointers[self.y_slot] = y
        if self.pooled:
            work = [POOL.get(shape, dtype, zero=False) for _, shape, dtype in self.pooled]
            for (slot, *_), array in zip(self.pooled, work):
                pointers[slot] = address(array)
        status = self._kernel(pointers)
        if status:
            raise BackendError(f"kernel forward failed with status {status}")

    def _kernel(self, pointers) -> int:
        threaded = self.threaded
        if threaded is None:
            return self.kernel(self.T, self.B, pointers)
        return threaded.choose(lambda: self.kernel(self.T, self.B, pointers),
                               lambda: threaded.run(self.T, self.B, pointers))


class Threaded:
    """What a plan of the threaded kernel adds: its threads, their barrier words and
    shared scratch (arena), the kernel's address for the workers, and the choice between
    it and the one-thread kernel, by measurement (choice.FasterOf)."""

    def __init__(self, cell: NativeCell, entry: str, B: int):
        if cell._layout(entry) != cell._layout(single_threaded(entry)):
            raise BackendError(f"internal: {entry} and forward take different buffers")
        self.threads = cell._threads()
        self.address = cell._functions[entry]
        self.body = cell._functions.get(OPENMP_BODY)  # to run it on the OpenMP team
        self.sync = barrier_words()
        self.arena = np.empty((B, max(cell.contract.entries[entry].arena_elements, 1)),
                              cell.dtype)
        self.args = (self.sync.ctypes.data, self.arena.ctypes.data)
        self.pool = lambda: cell.native_workers(self.threads)
        self.faster = FasterOf()

    def choose(self, alone: Callable[[], int], together: Callable[[], int | None]) -> int:
        """The status of the kernel this call runs: the measured faster one (the one
        thread whenever the workers are busy with another call)."""
        return self.faster.choose(alone, together)

    def run(self, T: int, B: int, pointers) -> int | None:
        """The kernel's status, or None when the workers are busy with another call. On
        PyTorch's OpenMP team where it is loaded (its threads spin after each torch op:
        the parked workers would find the cores taken), else on the parked workers."""
        self.sync.fill(0)
        return run_threaded(self.body, self.address, T, B, _addressof(pointers),
                            self.threads, *self.args, self.pool)


class Plans:
    """A cell's plans by input (shape, strides, dtype), and the lock that makes one
    caller at a time use them (a second runs the ordinary way)."""

    def __init__(self, cell: NativeCell):
        self.cell = cell
        self._plans: dict[tuple, Plan | None] = {}
        self.lock = fork_safe_lock(self, "lock")
        # the parameters the forward entry reads as given (not packed): (buffer, name)
        self.forward_slots = [(name, names.parse(name)[1]) for name, *_ in cell._layout("forward")
                              if names.parse(name)[0] == "param"]

    def get(self, x: np.ndarray, bf16: bool = False) -> Plan | None:
        """x's plan (the lock held), validating x in full the first time; None where the
        lean call does not apply. `bf16`: of the forward on bfloat16 weights."""
        # the plan depends on the threads this call may use (threads_limited)
        key = (x.shape, x.strides, x.dtype, bf16, thread_limit())
        if key in self._plans:
            return self._plans[key]
        cell = self.cell
        if cell.extra_inputs:  # its kernels read them as columns of x: not this x
            return None
        check_array("x", x, (None, None, cell.input_size), cell.dtype)
        T, B = x.shape[:2]
        if T < 1 or B < 1:
            raise ShapeError(f"x: expected at least one step and one batch row, got shape "
                             f"{tuple(x.shape)}")
        entry, bounds = cell._forward_entry(T, B, train=False, bf16=bf16)
        if len(bounds) == 2 and entry.endswith(THREADED):
            # either kernel, by measurement (see Threaded), where workers can run one
            single = single_threaded(entry)
            entry = single + THREADED if cell.native_workers(cell._threads()) else single
        plan = Plan(cell, entry, T, B) if len(bounds) == 2 else None
        if len(self._plans) >= MAX_PLANS:
            del self._plans[next(iter(self._plans))]
        self._plans[key] = plan
        return plan

    def forward(self, x, params, addresses: Callable[[], tuple[dict[str, int], Any]] | None,
                state) -> Any:
        """cell.forward(x, params, state) for inference, the lean way where it applies
        (else None). `addresses` validates and packs plain parameters and gives the
        addresses of them and their packed forms by buffer name, and the packs (alive
        until the kernel returns); None: `params` is a packed snapshot that knows them."""
        cell = self.cell
        if type(x) is not np.ndarray or cell.batch_first or not self.lock.acquire(False):
            return None
        try:
            plan = self.get(x, getattr(params, "weights", None) == BF16_WEIGHTS)
            if plan is None:
                return None
            if state is None:
                state = plan.zero_state
            elif plan.matching_state(state) is None:
                return None
            packs = None
            if addresses is None:
                plan.set_params(params)
            else:
                table, packs = addresses()
                plan.set_params(None, table)
            final = {name: np.empty(shape, cell.dtype) for name, _, shape in plan.state_out}
            y = plan.run(x, addresses_of(state), addresses_of(final))
            del packs  # alive until here: the kernel read the plain parameters' packs
            return y, final
        finally:
            self.lock.release()


class BoundCell:
    """`cell.bind(params)`: the cell with its parameters validated and packed once.

    `bound(x, state=None)` is `cell.forward(x, params, state)` for inference: (y, final
    states), fresh arrays. `bound.step(x)` runs x (T, B, I) from the state the previous
    `step` left (zeros at first, or what `reset(state)` set) and returns y; the carried
    state lives in two buffers of the binding, used in turn (`bound.state` gives a
    copy). Per call it checks x's shape, strides and dtype against the last validated
    ones and calls the kernel: a few microseconds. Meant for one caller at a time: a call
    while another thread is inside the same cell's lean path runs the ordinary way."""

    def __init__(self, cell: NativeCell, params: PackedParams):
        self.cell, self.params = cell, params
        # step: two sets of state buffers, read and written in turn, and their addresses
        self._states: list[dict[str, np.ndarray]] = []
        self._carried: list[dict[str, int]] | None = None
        self._parity, self._batch = 0, 0
        # the carried states' addresses in a plan's order, per parity, and that plan
        self._ordered: list[tuple[list[int], list[int]]] = []
        self._ordered_for: Plan | None = None
        # one step at a time: the carried state is shared
        self._lock = fork_safe_lock(self, "_lock")

    def __repr__(self) -> str:
        return f"<BoundCell of {self.cell!r}>"

    def __call__(self, x, state=None):
        done = self.cell.plans.forward(x, self.params, None, state)
        if done is None:
            return CellBase.forward(self.cell, x, self.params, state)
        return done

    def step(self, x) -> np.ndarray:
        """y for x (T, B, I), run from the carried state, which it then replaces."""
        with self._lock:
            plans, carried = self.cell.plans, self._carried
            if (type(x) is not np.ndarray or carried is None or self.cell.batch_first
                    or not plans.lock.acquire(False)):
                return self._step_slow(x)
            try:
                plan = plans.get(x, self.params.weights == BF16_WEIGHTS)
                if plan is not None and plan.B == self._batch:
                    plan.set_params(self.params)
                    parity = self._parity
                    if self._ordered_for is not plan:  # the states' addresses, its order
                        self._ordered = [plan.ordered(carried[p], carried[1 - p])
                                         for p in (0, 1)]
                        self._ordered_for = plan
                    y = plan.run_ordered(x, self._ordered[parity])
                    self._parity = 1 - parity
                    return y
            finally:
                plans.lock.release()
            return self._step_slow(x)

    def _step_slow(self, x) -> np.ndarray:
        """step through `forward`: the first call, a changed batch, uncovered cases."""
        cell = self.cell
        state = self._states[self._parity] if self._states else None
        shape = getattr(x, "shape", ())
        if state is not None and len(shape) == 3:
            rows = shape[0 if cell.batch_first else 1]
            if rows != self._batch:
                raise ShapeError(f"step: x has a batch of {rows} rows, the carried state "
                                 f"{self._batch}: call reset() to start from zeros")
        y, final = CellBase.forward(cell, x, self.params, state)
        self._set(final)
        return y

    def reset(self, state: dict | None = None) -> None:
        """Forget the carried state; the next `step` starts from `state` (or zeros)."""
        with self._lock:
            if state is None:
                self._states, self._carried, self._parity = [], None, 0
                self._ordered_for = None
                return
            cell = self.cell
            if isinstance(state, dict):
                for name, value in state.items():  # each (B, n): B is read from them
                    size = cell.state_sizes.get(name)
                    if size is not None and len(getattr(value, "shape", (0, 0))) != 2:
                        raise ShapeError(f"state['{name}']: expected shape (B, {size}), got "
                                         f"{tuple(value.shape)}")
            batch = next((v.shape[0] for v in state.values() if getattr(v, "shape", ())),
                         1) if isinstance(state, dict) else 1
            x = np.zeros((1, batch, cell.input_size), cell.dtype)
            self._set(cell._check_inputs(x, self.params, state)[2])

    def _set(self, state: dict) -> None:
        self._states = [{n: np.array(v, order="C", copy=True) for n, v in state.items()},
                        {n: np.empty_like(v, order="C") for n, v in state.items()}]
        self._carried = [addresses_of(s) for s in self._states]
        self._ordered_for = None
        self._parity, self._batch = 0, self._states[0][self.cell.output].shape[0]

    @property
    def state(self) -> dict[str, np.ndarray] | None:
        """A copy of the carried state (None before the first step)."""
        if not self._states:
            return None
        return {n: v.copy() for n, v in self._states[self._parity].items()}

