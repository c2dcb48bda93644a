"""Packed weights of calls with plain dicts of parameters, reused while the caller's
arrays hold the same bytes.

A kernel reads each weight matrix in the panel layout of lstmc_small_gemm, so a call with
a plain dict packs its weights first: about 50 µs for an LSTM at H=128 (natively;
NumPy took 100), a fifth of a 100-step forward at B=1, and the packs are new memory that
the kernel's threads then fetch from another core. The cache keeps, per packed weight,
the packs of the last few parameter sets with a private copy of the arrays they were
packed from; a call whose arrays are byte for byte those copies (memcmp: a few µs per
64 KiB, exact, NaNs and signed zeros included) reuses the pack, which is still warm in
the caches of the cores that read it last. Any change to any byte, in place or not,
packs again. Packs handed out are read-only and never written again (a new pack replaces
an old one), so a call still running on an old pack is unaffected."""
from __future__ import annotations

import ctypes
import weakref
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from .bound import address
from .forksafe import fork_safe_lock

SLOTS = 4  # parameter sets kept per packed weight (a stack's directions share one cell)
MAX_ELEMENTS = 1 << 24  # weights larger than this are packed every call (copies: memory)

def _libc_memcmp():
    try:
        memcmp = ctypes.CDLL(None).memcmp
    except (OSError, AttributeError):  # no C library to call: NumPy compares the bits
        return None
    memcmp.restype, memcmp.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p,
                                                     ctypes.c_size_t]
    return memcmp


_memcmp = _libc_memcmp()


def equal_at(a: int, b: int, size: int) -> bool:
    """Whether the `size` bytes at addresses `a` and `b` are equal."""
    if _memcmp is not None:
        return _memcmp(a, b, size) == 0
    return ctypes.string_at(a, size) == ctypes.string_at(b, size)


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two C-contiguous arrays have the same shape, dtype and bytes."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return equal_at(address(a), address(b), a.nbytes)


class _Copy:
    """A private copy of a part, and its address (compared on every call)."""

    __slots__ = ("array", "address")

    def __init__(self, part: np.ndarray):
        self.array = part.copy()
        self.address = address(self.array)


def _same(parts: list[np.ndarray], copies: list[_Copy],
          addresses: list[int] | None = None) -> bool:
    """Whether each part has its copy's shape, dtype and bytes (`addresses`: the parts',
    known already)."""
    for i, (part, copy) in enumerate(zip(parts, copies)):
        kept = copy.array
        if part.shape != kept.shape or part.dtype != kept.dtype:
            return False
        if _memcmp is None:
            if not same_bytes(part, kept):
                return False
        elif _memcmp(address(part) if addresses is None else addresses[i], copy.address,
                     kept.nbytes):
            return False
    return True


class PackCache:
    """One cell's packs, by packed weight, with the bytes each was packed from."""

    def __init__(self) -> None:
        self._lock = fork_safe_lock(self, "_lock")
        self._slots: dict[str, OrderedDict] = {}
        _caches.add(self)

    def get(self, name: str, parts: list[np.ndarray],
            make: Callable[[list[np.ndarray], list[int] | None], np.ndarray],
            addresses: list[int] | None = None) -> tuple[np.ndarray, int]:
        """The pack `name` of `parts` (C-contiguous arrays; `addresses`: theirs, when
        known) and its address: one made for the same bytes before, else
        `make(arrays, their addresses)` of the parts' bytes (kept for the next calls).
        The slot packed from these very arrays is compared first (read without the
        lock: a slot is replaced, never changed); another parameter set differs in its
        first bytes, so comparing with it costs little."""
        key = tuple(map(id, parts))
        slots = self._slots.get(name)
        own = None if slots is None else slots.get(key)
        if own is not None and _same(parts, own[0], addresses):
            return own[1], own[2]
        with self._lock:
            slots = self._slots.setdefault(name, OrderedDict())
            others = [item for item in slots.items() if item[0] != key]
        for slot, kept in others:
            if _same(parts, kept[0], addresses):
                with self._lock:  # known by these arrays from now on
                    slots.pop(slot, None)
                    slots[key] = kept
                return kept[1], kept[2]
        if sum(p.size for p in parts) > MAX_ELEMENTS:  # not kept: no copies to make
            pack = make(parts, addresses)
            return pack, address(pack)
        # The copies first, then the pack from them: a kept pack always holds the bytes
        # it is kept under. Packed from the caller's arrays, then copied, a pack met
        # another thread's write in between (a learner updating the weights an actor
        # reads), and every later call with the copied bytes got the stale pack.
        copies = [_Copy(p) for p in parts]
        pack = make([c.array for c in copies], [c.address for c in copies])
        at = address(pack)  # (while writable: the quick way)
        pack.flags.writeable = False
        with self._lock:
            slots[key] = (copies, pack, at)
            slots.move_to_end(key)
            while len(slots) > SLOTS:
                slots.popitem(last=False)
        return pack, at

    def clear(self) -> int:
        """Forget every pack; returns the bytes they and their copies held."""
        with self._lock:
            held = sum(pack.nbytes + sum(c.array.nbytes for c in copies)
                       for slots in self._slots.values() for copies, pack, _ in slots.values())
            self._slots.clear()
        return held


_caches: weakref.WeakSet[PackCache] = weakref.WeakSet()


def clear_all() -> int:
    """Forget the packs of every cell of the process; the bytes given back."""
    return sum(cache.clear() for cache in list(_caches))
