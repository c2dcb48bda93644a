"""The OpenCL device layer: pyopencl arrays and launches (PoCL on CPUs, or any OpenCL
device). Arrays given to and returned from cells are NumPy arrays."""
from __future__ import annotations

import contextlib
import os

import numpy as np

from ..errors import BackendError


def _import_pyopencl():
    try:
        import pyopencl
        import pyopencl.array  # noqa: F401
    except ImportError as error:
        raise BackendError("target 'opencl' needs pyopencl and an OpenCL driver: "
                           "pip install 'pyopencl[pocl]' (PoCL runs on the CPU)") from error
    return pyopencl


class OpenCLDevice:
    kind = "opencl"
    user_module = np  # cells take and return NumPy arrays

    def __init__(self, source: str, binaries: dict | None = None):
        """`binaries` (CUDA cubins) are of no use here: the OpenCL compiler builds
        `source` for this device."""
        cl = _import_pyopencl()
        self.cl = cl
        try:
            platforms = cl.get_platforms()
        except cl.Error as error:
            raise BackendError(f"target 'opencl': no OpenCL platform ({error})") from error
        devices = [d for p in platforms for d in p.get_devices()]
        if not devices:
            raise BackendError("target 'opencl': the OpenCL platforms list no device")
        wanted = os.environ.get("LSTMC_OPENCL_DEVICE")
        self.device = devices[int(wanted)] if wanted else devices[0]
        self.cl_context = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.cl_context)
        try:
            self.program = cl.Program(self.cl_context, source).build(options=["-cl-std=CL1.2"])
        except cl.RuntimeError as error:
            if "unknown target CPU" in str(error):  # not the kernels: the compiler's LLVM
                raise BackendError(
                    f"target 'opencl': the OpenCL compiler of '{self.device.name.strip()}' "
                    "cannot build for this CPU (its LLVM is older than the CPU: PoCL 3.0, "
                    "pyopencl's, knows no CPU newer than LLVM 14 does, e.g. not AMD Zen 5); "
                    "use a newer PoCL or another OpenCL device (LSTMC_OPENCL_DEVICE=N)"
                ) from error
            raise BackendError(f"the OpenCL compiler rejected the kernels: {error}") from error
        self.kernels = {k.function_name: k for k in self.program.all_kernels()}
        self.compute_units = self.device.max_compute_units
        self.max_local_bytes = self.device.local_mem_size
        self.name = self.device.name.strip()

    # -- arrays ---------------------------------------------------------------------------

    def empty(self, count: int, dtype=np.float32):
        return self.cl.array.empty(self.queue, max(count, 1), dtype)

    def zeros(self, count: int, dtype=np.float32):
        return self.cl.array.zeros(self.queue, max(count, 1), dtype)

    def upload(self, array: np.ndarray):
        flat = np.ascontiguousarray(array).reshape(-1)
        return self.cl.array.to_device(self.queue, flat)

    def write(self, target, offset: int, array) -> None:
        """Copy a host array into target[offset:offset + size]."""
        flat = np.ascontiguousarray(array).reshape(-1)
        if flat.size:
            self.cl.enqueue_copy(self.queue, target.data, flat,
                                 dst_offset=offset * target.dtype.itemsize)

    def to_user(self, source, offset: int, shape: tuple) -> np.ndarray:
        """source[offset:] as a NumPy array of `shape`."""
        out = np.empty(shape, source.dtype)
        if out.size:
            self.cl.enqueue_copy(self.queue, out, source.data,
                                 src_offset=offset * source.dtype.itemsize)
        return out

    def fill_zero(self, array) -> None:
        array.fill(0)

    # -- launches -------------------------------------------------------------------------

    def launch(self, name: str, groups: int, threads: int, args: list, local_floats: int = 0):
        values = [np.int32(a) if isinstance(a, (int, np.integer)) else a.data for a in args]
        if local_floats:
            values.append(self.cl.LocalMemory(4 * local_floats))
        self.kernels[name](self.queue, (groups * threads,), (threads,), *values)

    def sequence(self, key, run) -> None:
        run()

    def context(self):
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        self.queue.finish()
