"""GpuCell: runs a cell's GPU kernels by following the plan lstmc wrote for them.

The same code drives CUDA (CuPy) and OpenCL (pyopencl); only the device layer differs.
A call uploads its inputs into a pooled set of device buffers, then runs the sequence:
the input projections (one GEMM per packed input product), then per step the recurrent
GEMMs and the elementwise region kernels in plan order, or, for small batches whose
recurrent weights fit in the work-groups' local memory, one persistent kernel. Buffer
sets are reused for the same (mode, T, B), so on CUDA the launches of a sequence are
captured once as a CUDA graph and replayed.
"""
from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass

import numpy as np

from ..cellbase import CellBase
from ..errors import BackendError, ShapeError
from . import buffers as names
from .device import Device, make_device
from .plan import DeviceBuffer, GemmLaunch, GpuManifest, HoistedGemm, PersistentKernel

INT32_LIMIT = 2**31 - 1


def _write_seed(device, buffers, seed: int | None) -> None:
    """The masks' seed into the set's `rng` buffer (low word, high word, draw): a buffer,
    not a kernel argument, so that a captured CUDA graph replays with each call's seed.
    None: draw nothing (the masks' expectations)."""
    words = [0, 0, 0] if seed is None else [seed & 0xFFFFFFFF, seed >> 32, 1]
    device.write(buffers.rng, 0, np.array(words, np.uint32))


class BufferSet:
    """Device buffers of one mode for one (T, B); `lens` holds the row lengths."""

    def __init__(self, device, specs: tuple[DeviceBuffer, ...], T: int, B: int, skip=()):
        self.arrays = {}
        for spec in specs:
            if spec.name in skip:
                continue
            count = spec.elements(T, B)
            if count > INT32_LIMIT:
                raise ShapeError(f"buffer {spec.name} would hold {count} values; the GPU "
                                 f"kernels index with 32-bit integers (at most {INT32_LIMIT})")
            self.arrays[spec.name] = device.empty(count)
        self.zero = [s.name for s in specs if s.zero and s.name in self.arrays]
        self.lens = device.empty(B, np.int32)
        self.rng = device.empty(3, np.uint32)  # the masks' seed as two words, and draw


class Pool:
    """Free buffer sets by key; a set in use belongs to one call (or one tape)."""

    def __init__(self, limit: int = 4):
        self.free: dict[tuple, list[BufferSet]] = {}
        self.limit = limit

    def take(self, key: tuple, make) -> BufferSet:
        free = self.free.get(key)
        return free.pop() if free else make()

    def give(self, key: tuple, buffers: BufferSet) -> None:
        free = self.free.setdefault(key, [])
        if len(free) < self.limit:
            free.append(buffers)


@dataclass
class GpuSaved:
    buffers: BufferSet
    T: int
    B: int
    seed: int | None = None  # of the dropout and zoneout masks: drawn again by the backward


class GpuCell(CellBase):
    """A cell compiled for target "cuda" or "opencl"."""

    def __init__(self, manifest: GpuManifest | dict, source: str,
                 binaries: dict[str, str] | None = None):
        if not isinstance(manifest, GpuManifest):
            manifest = GpuManifest.from_json(manifest)
        self._describe(manifest.cell)
        self.manifest = manifest.to_json()  # the same, as JSON, for readers of dicts
        self.gpu_manifest = manifest
        self.plan = manifest.plan
        self.device: Device = make_device(self.target, source, binaries)
        self.xp = self.device.user_module
        # "auto": the persistent kernel for batches up to persistent_batch whose weights
        # fit; True / False force it on or off. persistent_groups overrides the group count.
        self.persistent = os.environ.get("LSTMC_PERSISTENT", "auto")
        self.persistent_batch = 8
        self.persistent_groups: int | None = None
        self._pool = Pool()
        self._packed = self.plan.packed_by_name()
        self._weights = {name: self.device.empty(w.rows * w.columns)
                         for name, w in self._packed.items()}
        # Packed weights whose gradient some product computes (all, in practice).
        self._trained = ({h.packed for h in self.plan.hoisted}
                         | {p.packed for p in self.plan.products})
        self._counter = self.device.zeros(1, np.uint32)
        self._one = self.device.upload(np.ones(1, np.float32))

    # -- inputs ---------------------------------------------------------------------------

    def _upload_params(self, params: dict, buffers: BufferSet) -> None:
        for name, shape in self.param_shapes.items():
            if len(shape) == 1:
                self.device.write(buffers.arrays[names.param(name)], 0, params[name])
        self._upload_weights(params)

    def _upload_weights(self, params: dict) -> None:
        """The packed matrices, shared by every buffer set of this cell: the backward
        uploads them again, in case a later forward ran with other parameters."""
        dev = self.device
        for name, w in self._packed.items():
            offset = 0
            for param, rows in w.segments:
                dev.write(self._weights[name], offset, params[param])
                offset += rows * w.columns

    def _take(self, mode: str, T: int, B: int, skip=()) -> tuple[tuple, BufferSet]:
        key = (mode, T, B)
        specs = self.plan.modes[mode].buffers
        return key, self._pool.take(key, lambda: BufferSet(self.device, specs, T, B, skip))

    # -- launches -------------------------------------------------------------------------

    def _gemm(self, M, N, K, A, a_off, sam, sak, Bm, b_off, sbk, sbn, C, c_off, ldc, acc,
              whole=False):
        """C[m, n] (+)= sum_k A[a_off + m*sam + k*sak] * B[b_off + k*sbk + n*sbn]. The
        products over a whole sequence (`whole`) go to the device's library GEMM where it
        has one (cuBLAS through CuPy); the rest, and everything on OpenCL, to lstmc_gemm."""
        if M <= 0 or N <= 0:
            return
        if whole and hasattr(self.device, "matmul"):
            self.device.matmul(M, N, K, A, a_off, sam, sak, Bm, b_off, sbk, sbn, C, c_off, ldc,
                               acc)
            return
        tile = self.plan.threads.gemm_tile
        groups = math.ceil(M / tile) * math.ceil(N / tile)
        self.device.launch("lstmc_gemm", groups, self.plan.threads.gemm,
                           [M, N, K, A, a_off, sam, sak, Bm, b_off, sbk, sbn, C, c_off, ldc,
                            int(acc)])

    def _slot(self, kind: str, t: int, mode: str) -> int:
        if kind == "state":
            return t & 1 if mode == "infer" else t
        return {"t": t, "0": 0, "param": 0}[kind]

    def _step(self, mode: str, t: int, B: int, arrays: dict, lens, rng, order: list) -> None:
        for step in self.plan.modes[mode].steps:
            if isinstance(step, GemmLaunch):
                a, c = step.operand, step.result
                self._gemm(B, step.n, step.k,
                           arrays[a.buffer], self._slot(a.slot, t, mode) * B * a.stride,
                           a.stride, 1, self._weights[step.packed], 0, step.stride_k,
                           step.stride_n, arrays[c.buffer], self._slot(c.slot, t, mode) * B * c.stride,
                           c.stride, 0)
            else:
                self.device.launch(step.kernel, B, self.plan.threads.region,
                                   [t, B, lens, rng] + [arrays[name] for name in order])

    def _operand(self, h: HoistedGemm, arrays: dict) -> tuple[object, int, int]:
        """(array, offset, row stride) of what a hoisted product multiplies: its input's
        units of the packed input rows, or (level > 0) its derived value."""
        if h.level:
            return arrays[names.derived(h.operand)], 0, self._packed[h.packed].columns
        return arrays[names.X], h.offset, self.description.packed_input_size

    def _hoisted(self, T: int, B: int, arrays: dict, mode: str, buffers: BufferSet) -> None:
        """The hoisted products, level by level, each level's operands made first by its
        prologue over all T*B rows."""
        for level in range(len(self.plan.prologues) + 1):
            if level:
                self._prologue(level, mode, T * B, arrays, buffers.lens, buffers.rng)
            for h in self.plan.hoisted_at(level):
                w = self._packed[h.packed]
                rows, cols = w.rows, w.columns
                operand, offset, stride = self._operand(h, arrays)
                self._gemm(T * B, rows, cols, operand, offset, stride, 1,
                           self._weights[w.name], 0, 1, cols, arrays[h.buffer], 0, rows, 0,
                           whole=True)

    def _prologue(self, level: int, mode: str, rows: int, arrays: dict, lens, rng) -> None:
        """Prologue `level`'s kernels of `mode`: one launch each over all T*B rows."""
        order = self.plan.modes[mode].buffer_names
        for kernel in self.plan.prologues[level - 1].kernels[mode]:
            self.device.launch(kernel, rows, self.plan.threads.region,
                               [0, rows, lens, rng] + [arrays[name] for name in order])

    @staticmethod
    def _persistent_floats(entry: PersistentKernel, groups: int) -> int:
        """Local memory (floats) each group keeps its share of the weights in."""
        if entry.units is not None:  # partition "units"
            share = math.ceil(entry.units / groups)
            return sum(rows // entry.units * share * (cols + 1)
                       for rows, cols in entry.products)
        return sum(math.ceil(rows / groups) * (cols + 1) for rows, cols in entry.products)

    def _persistent_groups(self, mode: str, B: int) -> int | None:
        """Work-groups for the persistent kernel, or None when it should not run."""
        entry = self.plan.modes[mode].persistent
        if entry is None or self.persistent in (False, "0", "off"):
            return None
        forced = self.persistent in (True, "1", "on")
        if not forced and B > self.persistent_batch:
            return None
        groups = self.persistent_groups or self.device.compute_units
        floats = self._persistent_floats(entry, groups)
        reserve = 4 * entry.static_floats  # the kernel's static local arrays
        if 4 * floats + reserve > self.device.max_local_bytes:
            if forced:
                raise BackendError(f"the persistent kernel needs {4 * floats} bytes of local "
                                   f"memory per group; the device has "
                                   f"{self.device.max_local_bytes}")
            return None
        return groups

    # -- the sequence ---------------------------------------------------------------------

    def _run_forward(self, x, params, state, train, lengths, seed=None):
        dev = self.device
        T, B = x.shape[:2]
        mode = "train" if train else "infer"
        key, buffers = self._take(mode, T, B)
        arrays = buffers.arrays
        order = self.plan.modes[mode].buffer_names
        with dev.context():
            dev.write(arrays[names.X], 0, x)
            for name in self.state_sizes:
                dev.write(arrays[names.state(name)], 0, state[name])
            self._upload_params(params, buffers)
            dev.write(buffers.lens, 0, np.full(B, T, np.int32) if lengths is None
                      else np.asarray(lengths, np.int32))
            _write_seed(dev, buffers, seed)
            groups = self._persistent_groups(mode, B)
            if groups is not None:
                self._hoisted(T, B, arrays, mode, buffers)
                self._launch_persistent(mode, T, B, arrays, buffers, order, groups)
            else:
                self._hoisted(T, B, arrays, mode, buffers)

                def run():
                    for t in range(T):
                        self._step(mode, t, B, arrays, buffers.lens, buffers.rng, order)
                dev.sequence((key, id(buffers)), run)
            out = self.state_sizes[self.output]
            y = dev.to_user(arrays[names.Y], 0, (T, B, out))
            last = T if train else T & 1
            final = {name: dev.to_user(arrays[names.state(name)], last * B * n, (B, n))
                     for name, n in self.state_sizes.items()}
        if not train:
            self._pool.give(key, buffers)
            return y, final, None
        saved = GpuSaved(buffers, T, B, seed)
        weakref.finalize(saved, self._pool.give, key, buffers)
        return y, final, saved

    def _launch_persistent(self, mode, T, B, arrays, buffers, order, groups) -> None:
        entry = self.plan.modes[mode].persistent
        assert entry is not None  # _persistent_groups chose it
        floats = self._persistent_floats(entry, groups)
        self.device.fill_zero(self._counter)
        args = ([T, B, buffers.lens, buffers.rng] + [arrays[name] for name in order]
                + [self._weights[name] for name in entry.weights] + [self._counter])
        self.device.launch(entry.kernel, groups, self.plan.threads.persistent, args,
                           local_floats=max(floats, 1))

    def _run_backward(self, saved: GpuSaved, params, dy, dstate):
        dev, plan = self.device, self.plan
        T, B = saved.T, saved.B
        train = saved.buffers.arrays
        key, extra = self._take("backward", T, B, skip=set(train))
        arrays = dict(train, **extra.arrays)
        order = plan.modes["backward"].buffer_names
        gradients = {w: dev.empty(p.rows * p.columns) for w, p in self._packed.items()}
        vector_grads = {g.param: dev.empty(g.width) for g in plan.param_grads}
        with dev.context():
            self._upload_weights(params)
            for name in extra.zero:
                dev.fill_zero(arrays[name])
            dev.write(arrays[names.DY], 0, dy)
            _write_seed(dev, saved.buffers, saved.seed)
            for name, n in self.state_sizes.items():
                dev.write(arrays[names.carry(name)], (T & 1) * B * n, dstate[name])

            def run():
                for t in reversed(range(T)):
                    self._step("backward", t, B, arrays, saved.buffers.lens,
                               saved.buffers.rng, order)
            dev.sequence((key, id(saved.buffers), id(extra)), run)
            self._weight_gradients(T, B, arrays, gradients, vector_grads, saved.buffers)
            dx = dev.to_user(arrays[names.DX], 0, (T, B, self.description.packed_input_size))
            dparams = self._split_gradients(gradients, vector_grads)
            dstate0 = {name: dev.to_user(arrays[names.carry(name)], 0, (B, n))
                       for name, n in self.state_sizes.items()}
        self._pool.give(key, extra)
        return dx, dparams, dstate0

    def _weight_gradients(self, T, B, arrays, gradients, vector_grads, train) -> None:
        """After the loop, over all T*B rows: the hoisted products' weight and operand
        gradients level by level from the last, each level's prologue backward after its
        products' (it adds to the gradients of the levels below and of x); then the
        recurrent products' weight gradients and the vector parameters' sums."""
        TB = T * B
        written = set()
        for level in reversed(range(len(self.plan.prologues) + 1)):
            for h in self.plan.hoisted_at(level):
                w = self._packed[h.packed]
                rows, cols = w.rows, w.columns
                dh = arrays[h.grad]
                operand, offset, stride = self._operand(h, arrays)
                # the derived value's gradient is this product's alone; dx is shared
                d_operand, acc = ((arrays[names.dderived(h.operand)], 0) if level
                                  else (arrays[names.DX], 1))
                self._gemm(rows, cols, TB, dh, 0, 1, rows, operand, offset, stride, 1,
                           gradients[w.name], 0, cols, w.name in written, whole=True)
                written.add(w.name)
                self._gemm(TB, cols, rows, dh, 0, rows, 1, self._weights[w.name], 0, cols, 1,
                           d_operand, offset, stride, acc, whole=True)
            if level:
                self._prologue(level, "backward", TB, arrays, train.lens, train.rng)
        for p in self.plan.products:
            w = self._packed[p.packed]
            rows, cols = w.rows, w.columns
            self._gemm(rows, cols, TB, arrays[p.grad], 0, 1, rows, arrays[p.operand], 0,
                       p.stride, 1, gradients[w.name], 0, cols, w.name in written,
                       whole=True)
            written.add(w.name)
        for g in self.plan.param_grads:
            width = g.width
            self._gemm(1, width, B, self._one, 0, 0, 0, arrays[g.acc], 0, width, 1,
                       vector_grads[g.param], 0, width, 0, whole=True)
        for prologue in self.plan.prologues:
            for g in prologue.param_grads:
                summed = g.param in vector_grads
                if not summed:
                    vector_grads[g.param] = self.device.empty(g.width)
                self._gemm(1, g.width, TB, self._one, 0, 0, 0, arrays[prologue.acc(g)], 0,
                           g.width, 1, vector_grads[g.param], 0, g.width, summed, whole=True)

    def _split_gradients(self, gradients, vector_grads) -> dict:
        dev, xp = self.device, self.xp
        out: dict = {}
        for name, w in self._packed.items():
            if name not in self._trained:
                continue
            offset = 0
            for param, rows in w.segments:
                part = dev.to_user(gradients[name], offset, (rows, w.columns))
                out[param] = part if param not in out else out[param] + part
                offset += rows * w.columns
        for param, array in vector_grads.items():
            out[param] = dev.to_user(array, 0, self.param_shapes[param])
        return {name: out[name] if name in out else xp.zeros(shape, self.dtype)
                for name, shape in self.kernel_param_shapes.items()}
