"""Running native CPU kernels: a manifest says which buffers each entry point takes;
this module allocates them, checks them, and calls the kernel through ctypes."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from .blas import find_gemm
from .cellbase import CellBase
from .errors import BackendError

ENTRY = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_int64,
                         ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)


@dataclass
class Saved:
    buffers: dict[str, np.ndarray]
    x: np.ndarray
    lengths: np.ndarray


class NativeCell(CellBase):
    """A cell whose forward and backward passes are native functions.

    `functions` maps entry symbols to addresses (from a loaded shared library or from
    the JIT); `manifest` is the dict an artifact's manifest.json holds."""

    def __init__(self, manifest: dict, functions: dict[str, int], keepalive=None):
        self.manifest = manifest
        self._keepalive = keepalive  # the library or JIT engine the addresses live in
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
        gemm = find_gemm(manifest["dtype"]) or functions.get("lstmc_gemm")
        if not gemm:
            raise BackendError("no GEMM for the kernels: neither NumPy's OpenBLAS nor the "
                               "artifact's lstmc_gemm was found")
        self._gemm = ctypes.c_void_p(gemm)

    def _pack(self, params: dict) -> dict[str, np.ndarray]:
        """The packed weights, in the order the kernels read them."""
        return {f"packed:{p['name']}": np.ascontiguousarray(np.concatenate(
                    [params[name] for name, _ in p["segments"]], axis=0))
                for p in self.manifest["packed"]}

    def _call(self, entry: str, T: int, B: int, given: dict[str, np.ndarray]) -> dict:
        layout = self.manifest["entries"][entry]["buffers"]
        arrays, pointers = {}, (ctypes.c_void_p * max(len(layout), 1))()
        for index, spec in enumerate(layout):
            shape = tuple(T if d == "T" else B if d == "B" else d for d in spec["shape"])
            dtype = self.dtype if spec.get("dtype", "float") == "float" else np.dtype(spec["dtype"])
            if spec["role"] == "in":
                array = given[spec["name"]]
                if array.shape != shape or array.dtype != dtype or not array.flags.c_contiguous:
                    raise BackendError(f"internal: buffer {spec['name']} is {array.shape} "
                                       f"{array.dtype}, the kernel needs {shape} {dtype}")
            elif spec["role"] == "out":
                array = np.zeros(shape, dtype)
            else:
                array = np.empty(shape, dtype)
            arrays[spec["name"]] = array
            pointers[index] = array.ctypes.data
        status = self._entries[entry](T, B, pointers, self._gemm)
        if status != 0:
            raise BackendError(f"kernel {entry} failed with status {status}")
        return arrays

    def _inputs(self, x, params, state) -> dict[str, np.ndarray]:
        given = {"x": np.ascontiguousarray(x)}
        given.update({f"param:{n}": np.ascontiguousarray(v) for n, v in params.items()})
        given.update(self._pack(params))
        given.update({f"state_in:{n}": np.ascontiguousarray(v) for n, v in state.items()})
        return given

    def _run_forward(self, x, params, state, train, lengths):
        T, B, _ = x.shape
        given = self._inputs(x, params, state)
        given["lengths"] = np.full(B, T, np.int64) if lengths is None else lengths
        out = self._call("forward_train" if train else "forward", T, B, given)
        final = {n: out[f"state_out:{n}"] for n in self.state_sizes}
        saved = None
        if train:
            saved = Saved({k: v for k, v in out.items() if k.startswith("saved:")}, given["x"],
                          given["lengths"])
        return out["y"], final, saved

    def _run_backward(self, saved: Saved, params, dy, dstate):
        T, B, _ = saved.x.shape
        given = self._inputs(saved.x, params, {})
        given.update(saved.buffers)
        given["lengths"] = saved.lengths
        given["dy"] = np.ascontiguousarray(dy)
        given.update({f"dstate_in:{n}": np.ascontiguousarray(v) for n, v in dstate.items()})
        out = self._call("backward", T, B, given)
        dparams = {n: np.zeros(s, self.dtype) for n, s in self.param_shapes.items()}
        for name in self.param_shapes:
            if f"dparam:{name}" in out:
                dparams[name] += out[f"dparam:{name}"]
        for p in self.manifest["packed"]:
            grad, offset = out.get(f"dpacked:{p['name']}"), 0
            if grad is None:
                continue
            for name, rows in p["segments"]:
                dparams[name] += grad[offset:offset + rows]
                offset += rows
        dstate0 = {n: out[f"dstate_out:{n}"] for n in self.state_sizes}
        return out["dx"], dparams, dstate0
