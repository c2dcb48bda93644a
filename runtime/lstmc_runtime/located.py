"""The addresses of a plain dict's parameter arrays, validated, remembered by identity.

An inference call with a plain dict of parameters checks every array (type, shape,
dtype, C order) and hands the kernel its address: about 1 µs an array through ctypes,
16 arrays for an LSTM, a tenth of a 100-step forward at B=1. Callers pass the same
arrays call after call (their values may change, their objects do not), so a weak
reference per parameter remembers the object last seen and its address: while the
reference still gives back the very object, only what can be assigned in place (shape,
strides, dtype) is compared again. An ndarray's data address never changes while its
shape does not (resizing needs no other reference to the array, and the caller's dict
holds one). Nothing here keeps a caller's array alive."""
from __future__ import annotations

import weakref
from collections.abc import Mapping

import numpy as np

from .bound import address
from .validate import check_array, check_names


def c_strides(shape: tuple, itemsize: int) -> tuple:
    """The strides of a C-contiguous array of `shape`."""
    strides, step = [], itemsize
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


class Locator:
    """A cell's parameters (name -> shape, one dtype) located in a caller's dicts."""

    def __init__(self, shapes: Mapping[str, tuple], dtype: np.dtype):
        self._dtype = np.dtype(dtype)
        self._expected = {name: (tuple(shape), c_strides(tuple(shape), self._dtype.itemsize))
                          for name, shape in shapes.items()}
        self._known: dict[str, tuple[weakref.ref, int]] = {}  # name -> (object, address)

    def addresses(self, params: dict) -> dict[str, int]:
        """Each parameter's address, by name, after checking `params` holds exactly the
        cell's parameters, each a C-contiguous array of its shape and the dtype (the
        usual ShapeError otherwise)."""
        expected, known, dtype = self._expected, self._known, self._dtype
        if len(params) != len(expected) or not all(name in params for name in expected):
            check_names("params", params, list(expected))
        found = {}
        for name, (shape, strides) in expected.items():
            value = params[name]
            seen = known.get(name)
            exact = type(value) is np.ndarray
            if (seen is not None and exact and value.shape == shape
                    and value.strides == strides and value.dtype == dtype
                    and seen[0]() is value):
                found[name] = seen[1]
                continue
            if (not exact or value.shape != shape or value.dtype != dtype
                    or not value.flags.c_contiguous):  # the full check says what is wrong
                check_array(f"params['{name}']", value, shape, dtype)
            found[name] = at = address(value)
            if exact and value.strides == strides:  # (other strides: a size-1 axis)
                known[name] = (weakref.ref(value), at)
        return found
