"""Running native CPU kernels.

A manifest lists, for each entry point, the buffers it takes. This module allocates
them, packs the weights into the kernels' layout, does the whole-sequence GEMMs with
NumPy (input projections before the loop, weight gradients after it: large products
that NumPy's BLAS runs on every core), and runs the time loop itself as native calls:
one per slice of the batch, on as many threads as the machine has cores (ctypes
releases the GIL during each call, and batch rows never interact)."""
from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .cellbase import CellBase
from .errors import BackendError

ENTRY = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                         ctypes.POINTER(ctypes.c_void_p))
MIN_ROWS_PER_THREAD = 8
_pool: ThreadPoolExecutor | None = None


def thread_count() -> int:
    env = os.environ.get("LSTMC_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=thread_count(), thread_name_prefix="lstmc")
    return _pool


def pack_panels(matrix: np.ndarray, width: int) -> np.ndarray:
    """A K x N matrix as lstmc_small_gemm reads it: column panels of `width`, each K x
    width contiguous, then the remaining columns as one row-major block."""
    K, N = matrix.shape
    full = N // width
    head = matrix[:, :full * width].reshape(K, full, width).transpose(1, 0, 2)
    return np.ascontiguousarray(np.concatenate([head.ravel(), matrix[:, full * width:].ravel()]))


@dataclass
class Saved:
    buffers: dict[str, np.ndarray]
    x: np.ndarray
    lengths: np.ndarray


class PackedParams(dict):
    """Parameters plus their packed forms; `NativeCell.pack_params` makes one, and
    forward accepts it in place of the plain dict to skip packing on every call."""

    packs: dict


class NativeCell(CellBase):
    """A cell whose time loops are native functions.

    `functions` maps entry symbols to addresses (from a loaded shared library);
    `manifest` is the dict an artifact's manifest.json holds."""

    def __init__(self, manifest: dict, functions: dict[str, int], keepalive=None):
        self.manifest = manifest
        self._keepalive = keepalive  # the library the addresses live in
        self.name = manifest["cell"]
        self.target = manifest["target"]
        self.dtype = np.dtype(manifest["dtype"])
        self.output = manifest["output"]
        self.input_size = manifest["input_size"]
        self.state_sizes = dict(manifest["states"])
        self.param_shapes = {n: tuple(p["shape"]) for n, p in manifest["params"].items()}
        self.param_inits = {n: p["init"] for n, p in manifest["params"].items()}
        self.hidden_size = manifest["sizes"].get("H", self.state_sizes[self.output])
        self.sizes = manifest["sizes"]
        self.batch_first = bool(manifest.get("batch_first", False))
        self._entries = {name: ENTRY(functions[entry["symbol"]])
                         for name, entry in manifest["entries"].items()}

    # -- weights ------------------------------------------------------------------------

    def _packs(self, params: dict) -> dict[str, np.ndarray]:
        if isinstance(params, PackedParams):
            return params.packs
        width = self.manifest["panel_width"]
        packs = {}
        for p in self.manifest["packed"]:
            stacked = np.concatenate([params[name] for name, _ in p["segments"]], axis=0)
            packs[f"packed:{p['name']}"] = np.ascontiguousarray(stacked)
            packs[f"panelsT:{p['name']}"] = pack_panels(stacked.T, width)
            packs[f"panels:{p['name']}"] = pack_panels(stacked, width)
        return packs

    def pack_params(self, params: dict) -> PackedParams:
        """Validate and pack parameters once, for many forward calls with them."""
        self._check_inputs(np.zeros((1, 1, self.input_size), self.dtype), params, None)
        packed = PackedParams(params)
        packed.packs = self._packs(params)
        return packed

    # -- calls --------------------------------------------------------------------------

    def _call(self, entry: str, T: int, B: int, given: dict[str, np.ndarray]) -> dict:
        """Run an entry point over the batch, in slices on several threads."""
        layout = self.manifest["entries"][entry]["buffers"]
        chunks = max(1, min(thread_count(), B // MIN_ROWS_PER_THREAD))
        bounds = np.linspace(0, B, chunks + 1).astype(int)
        shared: dict[str, np.ndarray] = {}
        private: list[dict[str, np.ndarray]] = [{} for _ in range(chunks)]
        for spec in layout:
            name, role = spec["name"], spec["role"]
            dtype = self.dtype if spec.get("dtype", "float") == "float" else np.dtype(spec["dtype"])
            per_row = "B" in spec["shape"]
            if role == "in":
                array = given[name]
                shape = self._shape(spec["shape"], T, B)
                if array.shape != shape or array.dtype != dtype or not array.flags.c_contiguous:
                    raise BackendError(f"internal: buffer {name} is {array.shape} {array.dtype},"
                                       f" the kernel needs {shape} {dtype}")
                shared[name] = array
            elif per_row and (role == "out" or "T" in spec["shape"]):
                shared[name] = np.zeros(self._shape(spec["shape"], T, B), dtype)
            else:  # per-slice scratch, and accumulators summed over slices afterwards
                for c in range(chunks):
                    rows = int(bounds[c + 1] - bounds[c])
                    make = np.zeros if role == "out" else np.empty
                    private[c][name] = make(self._shape(spec["shape"], T, rows), dtype)

        def run(c: int) -> int:
            b0, rows = int(bounds[c]), int(bounds[c + 1] - bounds[c])
            pointers = (ctypes.c_void_p * max(len(layout), 1))()
            for index, spec in enumerate(layout):
                name = spec["name"]
                if name in shared:
                    array = shared[name]
                    offset = 0
                    if "B" in spec["shape"]:
                        after = spec["shape"][spec["shape"].index("B") + 1:]
                        offset = b0 * int(np.prod([d for d in after], dtype=np.int64))
                    pointers[index] = array.ctypes.data + offset * array.itemsize
                else:
                    pointers[index] = private[c][name].ctypes.data
            return self._entries[entry](T, rows, B, pointers)

        statuses = [run(0)] if chunks == 1 else list(_executor().map(run, range(chunks)))
        if any(statuses):
            raise BackendError(f"kernel {entry} failed with status {max(statuses)}")
        out = dict(shared)
        for name in private[0]:
            if any(s["name"] == name and s["role"] == "out" for s in layout):
                out[name] = sum(p[name] for p in private)
        return out

    @staticmethod
    def _shape(dims, T, B) -> tuple:
        return tuple(T if d == "T" else B if d == "B" else d for d in dims)

    def _inputs(self, x, params, state, lengths, packs) -> dict[str, np.ndarray]:
        T, B, _ = x.shape
        given = {"x": x, "lengths": np.full(B, T, np.int64) if lengths is None else lengths}
        given.update({f"param:{n}": np.ascontiguousarray(v) for n, v in params.items()})
        given.update(packs)
        given.update({f"state_in:{n}": v for n, v in state.items()})
        return given

    def _run_forward(self, x, params, state, train, lengths):
        T, B, I = x.shape
        packs = self._packs(params)
        given = self._inputs(x, params, state, lengths, packs)
        rows = x.reshape(T * B, I)
        for h in self.manifest["hoisted"]:  # input projections: one GEMM each
            weight = packs[f"packed:{h['packed']}"]
            given[f"hoisted:{h['index']}"] = (rows @ weight.T).reshape(T, B, -1)
        out = self._call("forward_train" if train else "forward", T, B, given)
        final = {n: out[f"state_out:{n}"] for n in self.state_sizes}
        saved = None
        if train:
            buffers = {k: v for k, v in out.items() if k.startswith("saved:")}
            buffers.update({k: v for k, v in given.items() if k.startswith("hoisted:")})
            saved = Saved(buffers, x, given["lengths"])
        return out["y"], final, saved

    def _run_backward(self, saved: Saved, params, dy, dstate):
        x = saved.x
        T, B, I = x.shape
        packs = self._packs(params)
        given = self._inputs(x, params, {}, saved.lengths, packs)
        given.update(saved.buffers)
        given["dy"] = dy
        given.update({f"dstate_in:{n}": v for n, v in dstate.items()})
        out = self._call("backward", T, B, given)
        dparams = {n: np.zeros(s, self.dtype) for n, s in self.param_shapes.items()}
        for name in self.param_shapes:
            if f"dparam:{name}" in out:
                dparams[name] += out[f"dparam:{name}"]
        dx = out["dx"]
        rows = x.reshape(T * B, I)
        by_name = {p["name"]: p for p in self.manifest["packed"]}
        for h in self.manifest["hoisted"]:  # weight gradients: one GEMM each, all steps
            d_out = out[f"dhoisted:{h['index']}"].reshape(T * B, -1)
            self._scatter(by_name[h["packed"]], d_out.T @ rows, dparams)
            dx += (d_out @ packs[f"packed:{h['packed']}"]).reshape(T, B, I)
        for p in self.manifest["products"]:
            d_out = out[f"dproduct:{p['id']}"].reshape(T * B, -1)
            operand = saved.buffers[p["operand"]].reshape(T * B, -1)
            self._scatter(by_name[p["packed"]], d_out.T @ operand, dparams)
        dstate0 = {n: out[f"dstate_out:{n}"] for n in self.state_sizes}
        return dx, dparams, dstate0

    @staticmethod
    def _scatter(packed: dict, gradient: np.ndarray, into: dict) -> None:
        offset = 0
        for name, rows in packed["segments"]:
            into[name] += gradient[offset:offset + rows]
            offset += rows
