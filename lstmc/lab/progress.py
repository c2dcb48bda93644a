"""Progress of an experiment: tqdm bars on a terminal, plain log lines otherwise.

`Progress` receives the events of a worker (a trial starts, an epoch ends, a trial ends);
`tty` picks the form. Bars: one over the experiment's trials, one over the epochs of the
running trial. Lines: one per trial start and end and one per epoch, flushed at once so a
log file or CI shows them as they happen.
"""
from __future__ import annotations

import sys


class Progress:
    """Report a worker's events; `prefix` labels lines (e.g. a worker's name)."""

    def __init__(self, total: int | None, done: int = 0, tty: bool | None = None,
                 prefix: str = "", stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total, self.done, self.prefix, self.quiet = total, done, prefix, quiet
        self._trials = self._epochs = None
        if self.tty and not quiet:
            from tqdm import tqdm

            self._tqdm = tqdm
            self._trials = tqdm(total=total, initial=done, desc="trials", unit="trial",
                                file=self.stream, position=0, dynamic_ncols=True)

    def _line(self, text: str) -> None:
        if not self.quiet:
            print(f"{self.prefix}{text}", file=self.stream, flush=True)

    def _count(self) -> str:
        return f"{self.done + 1}/{self.total}" if self.total else f"{self.done + 1}"

    def trial_started(self, number: int, variant: str, config: dict, epochs: int) -> None:
        if self._trials is not None:
            self._trials.set_postfix_str(f"trial {number}: {variant}")
            self._epochs = self._tqdm(total=epochs, desc=f"  {variant}", unit="epoch",
                                      file=self.stream, position=1, leave=False,
                                      dynamic_ncols=True)
        else:
            settings = ", ".join(f"{k}={_short(v)}" for k, v in config.items())
            self._line(f"trial {self._count()} (#{number}) {variant}: {settings}")

    def epoch(self, seed_index: int, epoch: int, epochs: int, metric: str, value: float) -> None:
        if self._epochs is not None:
            if epoch == 1 and seed_index:
                self._epochs.reset()
            self._epochs.update(1)
            self._epochs.set_postfix_str(f"valid {metric} {value:.4g}")
        else:
            self._line(f"  seed {seed_index}, epoch {epoch}/{epochs}: valid {metric} "
                       f"{value:.4g}")

    def trial_finished(self, number: int, variant: str, message: str) -> None:
        self.done += 1
        if self._epochs is not None:
            self._epochs.close()
            self._epochs = None
        if self._trials is not None:
            self._trials.update(1)
            self._trials.write(f"trial #{number} {variant}: {message}", file=self.stream)
        else:
            self._line(f"trial #{number} {variant}: {message}")

    def set_done(self, done: int) -> None:
        """Advance the trial bar to `done` (for a parent polling its workers)."""
        if self._trials is not None and done > self.done:
            self._trials.update(done - self.done)
        self.done = max(self.done, done)

    def close(self) -> None:
        for bar in (self._epochs, self._trials):
            if bar is not None:
                bar.close()
        self._epochs = self._trials = None


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
