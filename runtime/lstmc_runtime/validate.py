"""Checks of the arrays given to a cell, before any computation: each failure names the
argument, what was expected and what came."""
from __future__ import annotations

import numpy as np

from .errors import ShapeError, UsageError


def _describe(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_array(name: str, value, shape: tuple, dtype: np.dtype, xp=np) -> np.ndarray:
    """`value` as an array of exactly `shape` (None: any size) and `dtype`."""
    if not hasattr(value, "shape") or not hasattr(value, "dtype") or (
            xp is np and not isinstance(value, np.ndarray)):  # array-likes: no memory of theirs
        hint = " (a NumPy array: np.asarray makes one)" if hasattr(value, "shape") else ""
        raise ShapeError(f"{name}: expected an array of shape {_describe_pattern(shape)} "
                         f"and dtype {dtype}, got {type(value).__name__}{hint}")
    if value.dtype != dtype:
        raise ShapeError(f"{name}: expected dtype {dtype}, got {value.dtype}")
    got = value.shape
    if got != shape and (len(got) != len(shape) or any(  # equal tuples: the common case
            want is not None and size != want for size, want in zip(got, shape))):
        raise ShapeError(f"{name}: expected shape {_describe_pattern(shape)}, "
                         f"got {_describe(got)}")
    flags = getattr(value, "flags", None)
    if flags is not None and not flags.c_contiguous:
        raise ShapeError(f"{name}: expected a C-contiguous array, got strides "
                         f"{tuple(value.strides)} (np.ascontiguousarray makes one)")
    return value


def _describe_pattern(shape) -> str:
    return "(" + ", ".join("*" if d is None else str(d) for d in shape) + ")"


def check_names(what: str, given: dict, expected: list[str]) -> None:
    if not isinstance(given, dict):
        raise ShapeError(f"{what}: expected a dict of arrays, got {type(given).__name__}")
    missing = [n for n in expected if n not in given]
    extra = [n for n in given if n not in expected]
    if missing:
        raise ShapeError(f"{what}: missing {', '.join(repr(n) for n in missing)}")
    if extra:
        raise ShapeError(f"{what}: unexpected {', '.join(repr(n) for n in extra)} "
                         f"(expected {', '.join(expected)})")


def check_count(name: str, value, minimum: int = 0) -> int:
    """A whole number of rows, steps or such, at least `minimum` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UsageError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise UsageError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_init_seed(seed) -> int | None:
    """init_params' seed: None (fresh entropy) or a non-negative integer."""
    return None if seed is None else check_count("seed", seed)
