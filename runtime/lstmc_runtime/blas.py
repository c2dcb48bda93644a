"""Finding a GEMM for compiled kernels: the kernels call a row-major cblas_?gemm with
64-bit integers through a function pointer. NumPy's wheels bundle OpenBLAS built that
way (scipy-openblas64); when it cannot be found, the kernel's own portable GEMM is used."""
from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np

SYMBOLS = {
    "float32": ["scipy_cblas_sgemm64_", "cblas_sgemm64_"],
    "float64": ["scipy_cblas_dgemm64_", "cblas_dgemm64_"],
}


@functools.lru_cache(maxsize=1)
def _numpy_blas_library() -> ctypes.CDLL | None:
    root = os.path.dirname(np.__file__)
    patterns = ["*openblas64*", "*openblas*"]
    places = [os.path.join(root, os.pardir, "numpy.libs"), os.path.join(root, ".dylibs"),
              os.path.join(root, os.pardir, "numpy.libs"), os.path.join(root, ".libs")]
    for place in places:
        for pattern in patterns:
            for path in sorted(glob.glob(os.path.join(place, pattern))):
                try:
                    return ctypes.CDLL(path)
                except OSError:
                    continue
    return None


def find_gemm(dtype: str) -> int | None:
    """Address of an ILP64 row-major cblas gemm for `dtype`, or None.
    LSTMC_BLAS=builtin forces the kernels' own GEMM (tests use it)."""
    if os.environ.get("LSTMC_BLAS") == "builtin":
        return None
    library = _numpy_blas_library()
    if library is None:
        return None
    for symbol in SYMBOLS[dtype]:
        try:
            return ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value
        except AttributeError:
            continue
    return None


def blas_description(dtype: str) -> str:
    return "numpy's OpenBLAS (ILP64)" if find_gemm(dtype) else "lstmc's portable GEMM"
