"""The device interface: what GpuCell needs of a GPU runtime, and the table of them.

GpuCell (executor.py) follows the launch plan on any object with these members; CUDA
(cuda.py, through CuPy) and OpenCL (opencl.py, through pyopencl) are the two. A new
device (Metal, Level Zero) is one module implementing `Device` plus a line in DEVICES.
Arrays are the device library's own (CuPy arrays, pyopencl arrays), flat, of `count`
elements; `user_module` is the array module callers pass arrays of (cupy, numpy).
A device may also offer `matmul(M, N, K, A, ...)`, a library GEMM (cuBLAS) that GpuCell
then uses for whole-sequence products instead of the generated `lstmc_gemm` kernel.
"""
from __future__ import annotations

import importlib
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..errors import BackendError


class Device(Protocol):
    kind: str                 # the lstmc target it runs: "cuda", "opencl"
    user_module: Any          # the array module of the cell's inputs and outputs
    compute_units: int        # work-groups that run at once (persistent kernels)
    max_local_bytes: int      # local (shared) memory one work-group may use
    name: str

    # arrays
    def empty(self, count: int, dtype=...) -> Any: ...
    def zeros(self, count: int, dtype=...) -> Any: ...
    def upload(self, array) -> Any: ...
    def write(self, target, offset: int, array) -> None: ...
    def to_user(self, source, offset: int, shape: tuple) -> Any: ...
    def fill_zero(self, array) -> None: ...

    # launches: a kernel of the generated source; a recorded sequence of launches
    # (replayed as a CUDA graph where the device can); ordering and waiting
    def launch(self, name: str, groups: int, threads: int, args: list,
               local_floats: int = 0) -> None: ...
    def sequence(self, key, run) -> None: ...
    def context(self) -> AbstractContextManager: ...
    def synchronize(self) -> None: ...


# kind -> (module, class). A device class takes (source, binaries): the kernel text and
# precompiled binaries by architecture, which devices that cannot load them ignore.
DEVICES = {
    "cuda": ("lstmc_runtime.gpu.cuda", "CudaDevice"),
    "opencl": ("lstmc_runtime.gpu.opencl", "OpenCLDevice"),
}


def make_device(kind: str, source: str, binaries: dict | None = None) -> Device:
    if kind not in DEVICES:
        raise BackendError(f"unknown GPU target {kind!r} (known: {', '.join(DEVICES)})")
    module, name = DEVICES[kind]
    cls = getattr(importlib.import_module(module), name)
    return cls(source, binaries or {})
