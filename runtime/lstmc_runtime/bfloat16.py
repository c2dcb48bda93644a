"""bfloat16 weights for float32 inference: the packed panels at half the bytes.

A recurrent step at batch 1 streams every recurrent weight once and does one
multiply-add with it, so its speed is the cache bandwidth; bfloat16 halves the bytes.
The kernels widen each weight back to float32 (a bfloat16 is the high half of a float32)
and compute and accumulate in float32: only the weights are rounded, each to 8
significant bits (relative error at most 2^-9)."""
from __future__ import annotations

import numpy as np

WEIGHTS = "bfloat16"  # pack_params(params, weights=WEIGHTS)
HALF = 16  # a panel row of 32 columns is two float32 vectors of 16


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as uint16 bits;
    NaNs stay NaNs, infinities infinities, and finite values too large overflow to
    infinity as float32 rounding would."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    rounded = np.where(np.isnan(values), (bits >> 16) | 0x0040, rounded)  # quiet NaN
    return rounded.astype(np.uint16)


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits as float32 values (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def pack_panels_bf16(panels: np.ndarray, K: int, N: int, width: int, out: np.ndarray
                     ) -> np.ndarray:
    """A float32 pack of lstmc_small_gemm (K x N in column panels of `width` = 32, then
    the rest row-major) as lstmc_small_gemm_bf16 reads it, written into `out` (uint16,
    K * N): in each panel row, column i and column 16 + i share a 32-bit lane (low and
    high half); the columns past the last panel stay row-major."""
    if width != 2 * HALF:
        raise ValueError(f"bfloat16 panels are 32 columns wide, not {width}")
    full = N // width
    head = panels[:full * width * K].reshape(full, K, 2, HALF).transpose(0, 1, 3, 2)
    out[:full * width * K].reshape(full, K, HALF, 2)[:] = to_bfloat16(head)
    out[full * width * K:] = to_bfloat16(panels[full * width * K:])
    return out
