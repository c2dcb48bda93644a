"""The faster of two ways to make the same call (a threaded kernel or its one-thread
twin), by measurement.

Whether threads pay depends on the machine and on what else runs on it: a threaded step
meets at barriers, and a barrier waits for a descheduled thread (on a busy machine, a
whole time slice). So the first calls of a kind (PROBES each, in turn) are timed, and
the one with the lower median runs from then on. The machine is followed two ways:
- the calls of the chosen way stay timed, and when WATCH of them in a row have a median
  SLOWER times their probes', both are measured again (another process took a core:
  measured on a 2-core VM, a threaded B=1 forward's calls then took 2-5x longer on
  average, one thread's 2x); so too when that median is RIVAL times the other way's
  probes (a choice between close ways that noise in five probes got wrong: a B=1
  forward with a dict of parameters ran one thread at 404 µs for a thousand calls, its
  threads' probes at 330);
- every RECHECK calls both are measured anyway (a machine that got quieter), and sooner
  at first and after a slowdown: RETRY calls after it, then twice as many each time, up
  to RECHECK. (A process's first calls are often its noisiest: PyTorch's OpenMP threads
  spin for milliseconds after each torch op, and a threaded kernel's first probes, run
  beside them, measured 3.5 ms against 0.3 ms; the choice they made is checked soon.)"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class FasterOf:
    PROBES = 5
    RECHECK = 4096
    RETRY = 64
    WATCH = 16
    SLOWER = 1.5
    RIVAL = 1.1

    def __init__(self) -> None:
        self.times: tuple[list[float], list[float]] = ([], [])  # one thread, threads
        self.best: bool | None = None  # threads faster? (None: measuring)
        self.calls = 0
        self.period = min(self.RETRY, self.RECHECK)  # chosen calls before measuring again
        self.expected = 0.0  # the chosen way's probe median (per unit of work)
        self.rival = 0.0  # the other way's
        self.recent: list[float] = []  # its times since, WATCH at most

    def choose(self, alone: Callable[[], T], together: Callable[[], T | None],
               work: float = 1.0) -> T:
        """The result of the call made the measured faster way; `together` may return
        None (its threads are busy with another call): `alone` runs instead. Times are
        compared per unit of `work` (calls of one kind may differ in length)."""
        best = self.best
        if best is not None and self.calls < self.period:
            self.calls += 1
            start = time.perf_counter()
            if best:
                chosen = together()
                if chosen is None:  # its threads are busy with another call
                    return alone()
            else:
                chosen = alone()
            self._watch((time.perf_counter() - start) / work)
            return chosen
        if best is not None:  # time to measure again
            self._measure_again(slowed=False)
        times = self.times
        threads = len(times[1]) <= len(times[0])
        start = time.perf_counter()
        result = together() if threads else None
        if result is None:
            threads = False
            result = alone()
        if len(times[threads]) < self.PROBES:  # (while the workers stay busy: alone)
            times[threads].append((time.perf_counter() - start) / work)
        if min(len(times[0]), len(times[1])) >= self.PROBES:
            # Several threads may share this choice (a stack's two directions): `best`
            # is published last, with what its readers need already set.
            medians = [statistics.median(times[0]), statistics.median(times[1])]
            best = medians[1] < medians[0]
            self.expected, self.rival = medians[best], medians[not best]
            self.calls, self.recent = 0, []
            self.best = best
        return result

    def _measure_again(self, slowed: bool) -> None:
        self.best, self.times = None, ([], [])
        self.period = min(self.RETRY if slowed else 2 * self.period, self.RECHECK)

    def _watch(self, seconds: float) -> None:
        """Measure both ways again when the chosen one's last WATCH calls have slowed
        down SLOWER times from its probes', or RIVAL times the other way's."""
        recent = self.recent
        recent.append(seconds)
        if len(recent) < self.WATCH:
            return
        self.recent = []  # a new window (not cleared in place: another thread may read it)
        if statistics.median(recent) > min(self.SLOWER * self.expected,
                                           self.RIVAL * self.rival):
            self._measure_again(slowed=True)


def faster_for(table: dict, key) -> FasterOf:
    """The FasterOf of `key` in `table`, made on first use; a table of many keys (batch
    sizes) starts over past 64."""
    faster = table.get(key)
    if faster is None:
        if len(table) >= 64:
            table.clear()
        faster = table.setdefault(key, FasterOf())
    return faster
