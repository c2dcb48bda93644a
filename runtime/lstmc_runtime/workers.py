"""The process's parked worker threads, which run threaded kernels with the caller.

Each worker is a thread made once that spends its life inside the native function
`lstmc_workers_loop` of a cell's library (see lstmc/backends/llvm/workers.py); a call,
`lstmc_workers_run`, hands them a job through shared memory and runs thread 0's share
itself: no Python thread is woken per call. One pool serves every cell of the process
(the job names its kernel by address), so many cells alive do not multiply threads. It
is made again, larger, when a call needs more threads, and afresh in a forked child
(a fork copies the memory of the pool but none of its threads)."""
from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable

import numpy as np

from .openmp import run_kernel

SYMBOLS = ("lstmc_workers_loop", "lstmc_workers_run")  # exported by cell libraries
STATE_WORDS = 16  # as lstmc/backends/llvm/workers.py lays them out
READY, STOP = 5, 4
LOOP = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64)
RUN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, *[ctypes.c_int64] * 8)
# A threaded kernel, as the workers call it: T, B, its buffers (or job) table, thread
# index, thread count, barrier words, shared scratch.
THREADED_ENTRY = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_int64,
                                  ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64,
                                  ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)


_calloc = ctypes.CDLL(None).calloc  # workers exist on Linux only (a futex parks them)
_calloc.restype, _calloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_size_t]


def barrier_words() -> np.ndarray:
    """The two words a threaded kernel's barrier spins on, zeroed, alone on their cache
    line (128 bytes: adjacent lines are fetched in pairs): a write to memory that shared
    it would stall every waiting thread."""
    block = np.zeros(48, np.int64)
    start = (-block.ctypes.data % 128) // 8
    return block[start:start + 2]


class Workers:
    """`count` parked threads running `loop` (from a library kept alive by `keepalive`)."""

    def __init__(self, loop: int, run: int, count: int, keepalive=None):
        # Memory never freed: a worker may still spin on it while the interpreter tears
        # down (its objects freed, their memory reused: it would read a "job" there).
        self._address = _calloc(STATE_WORDS, 8)
        if not self._address:
            raise MemoryError("cannot allocate the worker threads' shared state")
        self.state = np.ctypeslib.as_array(
            (ctypes.c_int64 * STATE_WORDS).from_address(self._address))
        self._loop, self._run = LOOP(loop), RUN(run)
        self.count, self.pid, self._keepalive = count, os.getpid(), keepalive
        self.lock = threading.Lock()  # one job at a time: the state holds one
        self.closed = False
        self._threads = [threading.Thread(target=self._loop, args=(self._address, tid),
                                          name=f"lstmc-worker-{tid}", daemon=True)
                         for tid in range(1, count + 1)]
        for thread in self._threads:
            thread.start()
        while self.state[READY] < count:  # each has read the generation it waits past
            time.sleep(0)

    def run(self, kernel: int, T: int, B: int, pointers: int, threads: int, sync: int,
            arena: int) -> int:
        """The kernel's status, run by the caller and threads-1 workers (call with the
        lock held, and only while the pool is not closed: no worker would acknowledge)."""
        return self._run(self._address, self.count, kernel, T, B, pointers, threads, sync,
                         arena)

    def close(self) -> None:
        """Let every worker leave its loop (and its thread end)."""
        with self.lock:
            self.closed = True
            self.state[STOP] = 1
            self._run(self._address, self.count, 0, 0, 0, 0, 0, 0, 0)
        for thread in self._threads:
            thread.join()


def run_threaded(body: int | None, kernel: int, T: int, B: int, table: int, threads: int,
                 sync: int, arena: int, pool: Callable[[], Workers | None]) -> int | None:
    """The status of a threaded kernel run by `threads` threads at once: on PyTorch's
    OpenMP team where it is loaded, through the library's `body` (its threads spin after
    each torch op: the parked workers would find the cores taken), else on the parked
    workers `pool()` gives; None, having run nothing, when there is no team and the
    workers are missing, closed or busy with another call."""
    status = run_kernel(body, kernel, T, B, table, threads, sync, arena)
    if status is not None:
        return status
    workers = pool()
    if workers is None or not workers.lock.acquire(False):
        return None
    try:
        if workers.closed:
            return None
        return workers.run(kernel, T, B, table, threads, sync, arena)
    finally:
        workers.lock.release()


_pool: Workers | None = None
_pool_lock = threading.Lock()


def workers(threads: int, functions: dict[str, int], keepalive) -> Workers | None:
    """The process's pool, with room for `threads` threads (the caller is one), made
    from these library functions if there is none yet; None if the library has none."""
    global _pool
    if os.environ.get("LSTMC_NATIVE_WORKERS") == "0":  # Python's threads run them instead
        return None
    pool = _pool
    if pool is not None and pool.pid == os.getpid() and pool.count >= threads - 1:
        return pool
    loop, run = (functions.get(symbol) for symbol in SYMBOLS)
    if not loop or not run:
        return None
    with _pool_lock:
        pool = _pool
        if pool is not None and pool.pid == os.getpid() and pool.count >= threads - 1:
            return pool
        if pool is not None and pool.pid == os.getpid():
            pool.close()  # too small: its threads leave, a larger pool replaces it
        _pool = Workers(loop, run, threads - 1, keepalive)
        return _pool


def _forget_after_fork() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
