"""How many threads one call may use: the process's cores (or LSTMC_NUM_THREADS), or
less inside `threads_limited` (a stack running a layer's two directions at once gives
each half the cores). Per thread, so each direction's calls see their own share."""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager


class _Budget(threading.local):
    threads: int | None = None  # (a class default: read without a failed lookup)


_budget = _Budget()  # this thread's share of the cores (threads_limited)


def thread_limit() -> int | None:
    """This thread's limit from `threads_limited`, or None (cheap: no system call, and
    read on every lean call)."""
    return _budget.threads


def thread_count() -> int:
    """Threads one call may use: LSTMC_NUM_THREADS, else the cores this process may run
    on; inside `threads_limited(n)`, at most n."""
    limit = thread_limit()
    return system_threads() if limit is None else limit


@contextmanager
def threads_limited(count: int):
    """Calls on this thread use at most `count` threads (a stack running its two
    directions at once gives each half the cores)."""
    before = thread_limit()
    _budget.threads = max(1, min(count, system_threads()))
    try:
        yield
    finally:
        _budget.threads = before


def system_threads() -> int:
    env = os.environ.get("LSTMC_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return _cores()


_AFFINITY_TTL_S = 1.0  # the cores are looked up again after this long
_affinity = (-1.0, 0)  # (when, cores): a call reads it several times (~1 µs each lookup)


def _cores() -> int:
    """The cores this process may run on, looked up at most once a second (a system call
    and a set of the cores each time: several per call of a small cell added up)."""
    global _affinity
    now = time.monotonic()
    when, cores = _affinity
    if now - when < _AFFINITY_TTL_S:
        return cores
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    _affinity = (now, cores)
    return cores
