"""Floating-point types as objects: what each layer needs to know about one, in one place.

A cell has a storage type (what arrays in and out hold) and a compute type (what the
kernels compute in); today they are the same, the split is where bfloat16/float16 storage
with float32 compute goes. The compiler reads `llvm` (an LLVM IR type name) and `c_name`
/ `literal_suffix` (GPU dialect); the runtime reads `numpy` and `itemsize`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UsageError


@dataclass(frozen=True)
class DType:
    name: str            # as users write it: "float32"
    storage: str         # NumPy name of what arrays hold
    compute: str         # NumPy name of what kernels compute in
    llvm: str            # LLVM IR type of the compute type: "float", "double"
    c_name: str          # C type of the compute type
    literal_suffix: str  # of a compute-type literal in C: "f" for float
    itemsize: int        # bytes per stored element

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(self.storage)

    def __str__(self) -> str:
        return self.name


FLOAT32 = DType("float32", "float32", "float32", "float", "float", "f", 4)
FLOAT64 = DType("float64", "float64", "float64", "double", "double", "", 8)
DTYPES = {d.name: d for d in (FLOAT32, FLOAT64)}


def dtype(value) -> DType:
    """The DType for a name ("float32"), a NumPy dtype or type, or a DType; anything else
    is a UsageError listing the supported ones."""
    if isinstance(value, DType):
        return value
    name = value if isinstance(value, str) else None
    if name is None:
        try:
            name = np.dtype(value).name
        except TypeError:
            name = repr(value)
    if name not in DTYPES:
        raise UsageError(f"unsupported dtype {name!r} (supported: {', '.join(DTYPES)})")
    return DTYPES[name]
