"""The code every cell library of one dtype shares, compiled once and linked into each.

The GEMM routines (`lstmc_small_gemm`, `_acc`, `_bf16`), weight packing and the parked
workers do not depend on the cell: optimizing and emitting them took 1.3 s of a float32
cell's 2-4 s compile (0.9 of a float64 cell's 2.2). They are built here once per dtype,
CPU and compiler, kept in process and on disk (next to the cell cache), and linked into
each cell's library, which stays one self-contained file; a cell's module only declares
what it calls. The kernels call them as before: LLVM never inlined them (too large)."""
from __future__ import annotations

import functools
import hashlib
import sys

from llvmlite import ir
from lstmc_runtime import dtypes
from lstmc_runtime.artifact import write_file
from lstmc_runtime.forksafe import fork_safe_lock
from lstmc_runtime.manifest import BF16_DTYPES

from . import openmp, packing, wavefront, workers
from .irutil import float_type
from .smallgemm import emit_small_gemm, small_gemm_type

GEMMS = ("lstmc_small_gemm", "lstmc_small_gemm_acc", "lstmc_small_gemm_bf16")
DIGEST = hashlib.sha256().digest_size  # a cached object starts with its own digest


def has_bf16(dtype: str) -> bool:
    """Whether cells of `dtype` also run inference on bfloat16 weights."""
    return dtypes.dtype(dtype).name in BF16_DTYPES


@functools.cache
def support_ir(dtype: str) -> str:
    """LLVM IR of the shared code for cells of `dtype`."""
    module = ir.Module(name=f"lstmc_support_{dtypes.dtype(dtype).name}")
    ftype = float_type(dtypes.dtype(dtype))
    emit_small_gemm(module, ftype, accumulate=False)
    emit_small_gemm(module, ftype, accumulate=True)
    if has_bf16(dtype):
        emit_small_gemm(module, ftype, accumulate=False, bf16=True)
    workers.emit(module)  # the parked threads that run the *_mt entries
    wavefront.emit(module)  # a stack's layers side by side (run by those threads)
    openmp.emit(module)  # or both run by PyTorch's OpenMP team, where it is loaded
    packing.emit(module, ftype)  # for the runtime to pack weights with
    return str(module)


def declare_gemms(module: ir.Module, dtype: str
                  ) -> tuple[ir.Function, ir.Function, ir.Function | None]:
    """Declarations of the GEMM routines in a cell's module, with the attributes of their
    definitions: plain, accumulating, and on bfloat16 weights (None where the dtype has
    none)."""
    def declare(name: str) -> ir.Function:
        fn = ir.Function(module, small_gemm_type(), name)
        fn.attributes.add("nounwind")
        for index in (3, 6, 10):  # A, B, C
            fn.args[index].add_attribute("noalias")
        return fn

    plain, accumulating, bf16 = GEMMS
    return (declare(plain), declare(accumulating),
            declare(bf16) if has_bf16(dtype) else None)


_objects: dict[tuple[str, str], bytes] = {}
# held while the shared code builds (seconds, the GIL released)
_lock = fork_safe_lock(sys.modules[__name__], "_lock")


def support_object(dtype: str, cpu: str = "host") -> bytes:
    """The shared code for `dtype`, compiled for `cpu`: an object file to link with a
    cell's. Built once per process, and read from the disk cache when an earlier process
    built the same (checked against its digest: a damaged file is built again)."""
    key = (dtypes.dtype(dtype).name, cpu)
    with _lock:
        if key not in _objects:
            _objects[key] = _cached_or_built(*key)
        return _objects[key]


def _cached_or_built(dtype: str, cpu: str) -> bytes:
    from ...cache import cache_key, shared_code_path
    from .toolchain import emit_object, optimize

    text = support_ir(dtype)
    path = shared_code_path(cache_key({"support": hashlib.sha256(text.encode()).hexdigest(),
                                       "cpu": cpu}))
    try:
        with open(path, "rb") as f:
            data = f.read()
        if hashlib.sha256(data[DIGEST:]).digest() == data[:DIGEST]:
            return data[DIGEST:]
    except OSError:  # absent, or a cache we cannot read: build it
        pass
    obj = emit_object(optimize(text, cpu), cpu)
    _store(path, hashlib.sha256(obj).digest() + obj)
    return obj


def _store(path, data: bytes) -> None:
    """Write the file by rename (no reader sees half of it); a cache that cannot be
    written is no error here (the cell's own cache access warns about it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(str(path.parent), path.name, data)
    except OSError:
        pass
