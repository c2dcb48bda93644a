"""The faster of two ways to make the same call (a threaded kernel or its one-thread
twin), by measurement.

Whether threads pay depends on the machine and on what else runs on it: a threaded step
meets at barriers, and a barrier waits for a descheduled thread (on a busy machine, a
whole time slice). So the first calls of a kind (PROBES each, in turn) are timed, and
the one with the lower median runs from then on; every RECHECK calls it measures again,
so a machine that gets busier or quieter is followed."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class FasterOf:
    PROBES = 5
    RECHECK = 4096

    def __init__(self) -> None:
        self.times: tuple[list[float], list[float]] = ([], [])  # one thread, threads
        self.best: bool | None = None  # threads faster? (None: measuring)
        self.calls = 0

    def choose(self, alone: Callable[[], T], together: Callable[[], T | None],
               work: float = 1.0) -> T:
        """The result of the call made the measured faster way; `together` may return
        None (its threads are busy with another call): `alone` runs instead. Times are
        compared per unit of `work` (calls of one kind may differ in length)."""
        best = self.best
        if best is not None and self.calls < self.RECHECK:
            self.calls += 1
            result = together() if best else None
            return alone() if result is None else result
        if best is not None:  # time to measure again
            self.best, self.times = None, ([], [])
        times = self.times
        threads = len(times[1]) <= len(times[0])
        start = time.perf_counter()
        result = together() if threads else None
        if result is None:
            threads = False
            result = alone()
        times[threads].append((time.perf_counter() - start) / work)
        if min(len(times[0]), len(times[1])) >= self.PROBES:
            self.best = statistics.median(times[1]) < statistics.median(times[0])
            self.calls = 0
        return result
