"""Run batch slices on the OpenMP team of the process, when one is loaded (PyTorch's).

After each parallel operator, GNU OpenMP's threads spin for milliseconds waiting for the
next one (GOMP_SPINCOUNT: about 15 ms on a 2-core VM). Threads of lstmc's own started
then find every core busy and lose a slice's worth of time: a torch op just before a
training backward made it 13% slower. Run on that same team instead, lstmc's slices go
to the very threads that are spinning, as the team's next parallel region.

Used only where a libgomp is already in the process (this module never loads one, so
the core stays free of it), never in a process forked from the one that looked it up
(libgomp's team does not survive a fork) and never from inside a parallel region.
`LSTMC_OPENMP=0` turns it off.

A threaded kernel (and the wavefront driver) runs on the team through
`lstmc_openmp_body` (lstmc/backends/llvm/openmp.py): native code calls the kernel on
each thread, so no thread of the team takes the GIL. Batch slices, whose calls are long,
still run a Python body per slice."""
from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
# GOMP_parallel with a native body: (body, data, threads, flags)
_NATIVE_PARALLEL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint,
                                    ctypes.c_uint)
BODY_SYMBOL = "lstmc_openmp_body"  # exported by cell libraries
# The job lstmc_openmp_body reads, an int64 each: the threaded kernel's address and
# arguments, the team's omp_get_thread_num and omp_get_num_threads, and what it reports:
# the largest status of the threads, and whether the team was too small to run any.
JOB_SLOTS = ("kernel", "T", "B", "table", "threads", "sync", "arena", "thread_num",
             "num_threads", "status", "short")
_JOB = ctypes.c_int64 * len(JOB_SLOTS)
_STATUS, _SHORT = JOB_SLOTS.index("status"), JOB_SLOTS.index("short")
RTLD_NOLOAD = getattr(os, "RTLD_NOLOAD", 4)


class Team:
    """libgomp's entry points, from the copy already loaded."""

    def __init__(self, lib: ctypes.CDLL):
        self._parallel = lib.GOMP_parallel
        self._parallel.argtypes = [_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        self._parallel.restype = None
        self._thread = lib.omp_get_thread_num
        self._size = lib.omp_get_num_threads
        self._inside = lib.omp_in_parallel
        for f in (self._thread, self._size, self._inside):
            f.restype, f.argtypes = ctypes.c_int, []
        self._parallel_native = _NATIVE_PARALLEL(_address(lib.GOMP_parallel))
        self._queries = (_address(self._thread), _address(self._size))

    def run_kernel(self, body: int, kernel: int, T: int, B: int, table: int, threads: int,
                   sync: int, arena: int) -> int | None:
        """The status of a threaded kernel run by a team of `threads` threads, each
        calling it natively from `body` (lstmc_openmp_body); None (nothing run) inside a
        parallel region or when the team came out smaller."""
        if self._inside():
            return None
        job = _JOB(kernel, T, B, table, threads, sync, arena, *self._queries, 0, 0)
        self._parallel_native(body, ctypes.addressof(job), threads, 0)
        return None if job[_SHORT] else job[_STATUS]

    def map(self, run: Callable[[int], T], count: int) -> list[T] | None:
        """[run(0), ..., run(count-1)], run by a team of `count` threads (a smaller team
        than asked takes several each); None when called inside a parallel region."""
        if self._inside():
            return None
        results: list = [None] * count
        errors: list[BaseException] = []

        def body(_data) -> None:
            size = self._size()
            for i in range(self._thread(), count, size):
                try:
                    results[i] = run(i)
                except BaseException as error:  # raised again by the caller, below
                    errors.append(error)

        callback = _BODY(body)
        self._parallel(callback, None, count, 0)
        if errors:
            raise errors[0]
        return results


def _address(function) -> int:
    address = ctypes.cast(function, ctypes.c_void_p).value
    assert address  # a symbol ctypes found
    return address


_found: tuple[int, Team] | None = None  # (the process that found it, its team)
_modules_when_missing = -1  # len(sys.modules) at the last lookup that found none


def team() -> Team | None:
    """The loaded libgomp's team in this process, or None. Looked up again after a new
    import (torch may come after lstmc's first call); a lookup costs ~60 µs."""
    global _found, _modules_when_missing
    if _found is None:
        if len(sys.modules) == _modules_when_missing:
            return None
        found = _lookup()
        if found is None:
            _modules_when_missing = len(sys.modules)
            return None
        _found = (os.getpid(), found)
    pid, found = _found
    return found if pid == os.getpid() else None


def _lookup() -> Team | None:
    if os.environ.get("LSTMC_OPENMP") == "0":
        return None
    try:
        lib = ctypes.CDLL("libgomp.so.1", mode=RTLD_NOLOAD)
    except OSError:  # not loaded (or not GNU OpenMP): lstmc's own threads run slices
        return None
    try:
        return Team(lib)
    except AttributeError:
        return None


def forget() -> None:
    """Look again at the next call (tests; after loading a library by hand)."""
    global _found, _modules_when_missing
    _found, _modules_when_missing = None, -1


def map_slices(run: Callable[[int], T], count: int,
               fallback: Callable[[Callable[[int], T], Sequence[int]], list[T]]) -> list[T]:
    """run over 0..count-1 on the OpenMP team if there is one, else with `fallback`."""
    found = team()
    if found is not None:
        results = found.map(run, count)
        if results is not None:
            return results
    return fallback(run, range(count))


def run_kernel(body: int | None, kernel: int, T: int, B: int, table: int, threads: int,
               sync: int, arena: int) -> int | None:
    """The status of a threaded kernel (T, B, its table, thread index and count, barrier
    words, arena) run by `threads` threads of the OpenMP team at once (they meet at
    barriers), through the library's `body` (lstmc_openmp_body); None where there is no
    such team or body (nothing run)."""
    found = team()
    if found is None or not body:
        return None
    return found.run_kernel(body, kernel, T, B, table, threads, sync, arena)
