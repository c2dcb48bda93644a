"""Recycled memory for the CPU runtime's large arrays: work buffers, training workspaces,
packed weights.

A fresh allocation above malloc's mmap threshold (128 KiB) is mapped anew and costs a
page fault per 4 KiB on first touch, every call, which can cost more than writing the
bytes: pack_params of an LSTM at H=256 (6 MiB) took 2.6 ms in fresh memory and 0.47 ms
in pooled memory on a 2-core VM. Pooled arrays are already mapped."""
from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time
import warnings
import weakref
from collections import defaultdict

import numpy as np

CACHE_LINE = 64
_BYTE = np.dtype(np.uint8)
_addressof, _char_at = ctypes.addressof, ctypes.c_char.from_buffer

DEFAULT_POOL_BYTES = 1 << 28
DEFAULT_POOL_IDLE_S = 5.0


def _env_number(name: str, default: float, kind=int) -> float:
    """A non-negative number from the environment; a bad value warns and is ignored."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = kind(text.strip())
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        warnings.warn(f"{name}={text!r} is not a non-negative {kind.__name__}; using "
                      f"{default}", RuntimeWarning, stacklevel=3)
        return default


class BufferPool:
    """Recycles large arrays between calls. A fresh allocation of tens of megabytes costs
    a page fault per 4 KiB on first touch, every call; recycled ones are already mapped.

    It keeps at most LSTMC_POOL_BYTES (default 256 MiB; 0 disables it), and gives
    everything back once no call has used it for LSTMC_POOL_IDLE_S seconds (default 5),
    or on `release()` (`lstmc.release_memory()`)."""

    MIN_BYTES = 1 << 17  # smaller ones come from malloc's heap: already mapped

    def __init__(self):
        self._reset()
        # After a fork, a lock another thread held is held forever: start afresh.
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._free: dict[tuple, list[np.ndarray]] = defaultdict(list)
        self._leased: dict[int, tuple[weakref.ref, np.ndarray]] = {}  # out, by reference
        self._lock = threading.RLock()  # (see _returned)
        self._bytes = 0
        self._last_use = 0.0
        self._reaper: threading.Thread | None = None
        self.limit = int(_env_number("LSTMC_POOL_BYTES", DEFAULT_POOL_BYTES))
        self.idle_seconds = float(_env_number("LSTMC_POOL_IDLE_S", DEFAULT_POOL_IDLE_S,
                                              float))

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def get(self, shape: tuple, dtype, zero: bool) -> np.ndarray:
        """An uninitialized (`zero`: zeroed) C-contiguous array; from MIN_BYTES up, a
        lease (below), which needs no giving back."""
        dtype = np.dtype(dtype)
        count = math.prod(shape)  # Python ints: np.prod costs ~5 µs a call
        if count * dtype.itemsize < self.MIN_BYTES:
            array = np.empty(shape, dtype)
        else:
            array = self.lease(count, dtype).reshape(shape)
        if zero:  # and fresh memory touched here, not by the kernel's threads
            array.fill(0)
        return array

    def lease(self, count: int, dtype) -> np.ndarray:
        """An uninitialized 1-D array of `count` elements that starts on a cache line
        (the kernels load a panel row as one 64-byte vector: two loads when it straddles
        two lines), in recycled memory that comes back to the pool once the array and
        every view of it are gone (they all hold the ctypes object over it), wherever
        it went: a caller's result, a tensor made from it, a tape's saved values."""
        dtype = np.dtype(dtype)
        nbytes = count * dtype.itemsize
        if nbytes == 0:
            return np.empty(0, dtype)
        key = ((nbytes + CACHE_LINE,), _BYTE)
        with self._lock:
            free = self._free.get(key)
            raw = free.pop() if free else None
            if raw is not None:
                self._bytes -= raw.nbytes
        if raw is None:
            raw = np.empty(*key)
        skip = -_addressof(_char_at(raw)) % CACHE_LINE  # type: ignore[arg-type]
        holder = (ctypes.c_char * nbytes).from_buffer(raw, skip)
        # When the holder dies, its memory comes back: a weak reference's callback, kept
        # alive by the pool (weakref.finalize did the same in twice the time).
        ref = weakref.ref(holder, self._returned)
        self._leased[id(ref)] = (ref, raw)
        return np.frombuffer(holder, dtype)

    def _returned(self, ref: weakref.ref) -> None:
        """A holder died: its memory back into the pool. This runs wherever the last
        reference went, even inside the garbage collector while this thread holds the
        lock (which is why it is reentrant); never while the interpreter shuts down,
        when `put` could not start its reaper thread (the start would wait forever)."""
        leased = self._leased.pop(id(ref), None)
        if leased is not None and not sys.is_finalizing():
            self.put([leased[1]])

    def put(self, arrays) -> None:
        """Keep these arrays (memory that owns itself, nothing else refers to it) for
        reuse, within the limit."""
        kept = False
        with self._lock:
            for array in arrays:
                if (array.nbytes >= self.MIN_BYTES and array.base is None
                        and self._bytes + array.nbytes <= self.limit):
                    self._free[(array.shape, array.dtype)].append(array)
                    self._bytes += array.nbytes
                    kept = True
            self._last_use = time.monotonic()
            if kept and self._reaper is None and self.idle_seconds > 0:
                self._reaper = threading.Thread(target=self._reap, name="lstmc-pool-reaper",
                                                daemon=True)
                self._reaper.start()

    def release(self) -> int:
        """Give every pooled array back to the system; returns how many bytes."""
        with self._lock:
            freed, self._bytes = self._bytes, 0
            self._free = defaultdict(list)
        return freed

    def _reap(self) -> None:
        """Wakes now and then; empties the pool once it has been idle long enough, then
        ends (the next `put` starts another)."""
        while True:
            with self._lock:
                idle = time.monotonic() - self._last_use
                if idle >= self.idle_seconds or not self._bytes:
                    self._free = defaultdict(list)
                    self._bytes = 0
                    self._reaper = None
                    return
            time.sleep(max(self.idle_seconds - idle, 0.05))


POOL = BufferPool()
