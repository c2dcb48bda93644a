"""From a study's trials to the numbers of the report: one record per trial slot, and one
summary row per variant.

Statistics, written down so a reader can recompute them: quartiles and median by NumPy's
default (linear) interpolation over the trials' test metrics (each trial's metric is the
mean over its seeds); `p_value` is Welch's two-sided t-test (scipy, unequal variances) of a
variant's test metrics against the baseline's (the first variant), empty with fewer than
two completed trials on either side; `parameters` and `seconds_per_epoch` are medians over
the variant's completed trials (the hidden size varies between trials).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import require
from .experiment import Experiment


@dataclass
class TrialRecord:
    """The outcome of one trial slot: its completed attempt, else its last failure."""

    number: int
    slot: int
    variant: str
    state: str  # "complete", "failed", "running", "waiting"
    params: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    @property
    def test(self) -> float:
        return self.attrs.get("test", math.nan)

    @property
    def error(self) -> str:
        return self.attrs.get("error", "interrupted" if self.state == "failed" else "")


def collect(study) -> list[TrialRecord]:
    """One record per slot, ordered by slot."""
    optuna = require("optuna")
    state = optuna.trial.TrialState
    names = {state.COMPLETE: "complete", state.FAIL: "failed", state.RUNNING: "running",
             state.WAITING: "waiting", state.PRUNED: "failed"}
    rank = {"complete": 3, "failed": 1, "running": 2, "waiting": 0}
    best: dict[int, TrialRecord] = {}
    for t in study.get_trials(deepcopy=False):
        variant = t.params.get("variant") or t.system_attrs.get("fixed_params", {}).get(
            "variant", "?")
        record = TrialRecord(t.number, t.user_attrs.get("slot", t.number), variant,
                             names[t.state], dict(t.params), dict(t.user_attrs))
        held = best.get(record.slot)
        if held is None or (rank[record.state], record.number) > (rank[held.state], held.number):
            best[record.slot] = record
    return [best[s] for s in sorted(best)]


def summarize(experiment: Experiment, records: list[TrialRecord],
              lower_is_better: bool) -> list[dict]:
    """One row per variant, in the experiment's order (the baseline first)."""
    stats = require("scipy.stats")
    done = {v: [r for r in records if r.variant == v and r.state == "complete"]
            for v in experiment.variant_names}
    base = np.array([r.test for r in done[experiment.baseline]], dtype=np.float64)
    rows = []
    for variant in experiment.variant_names:
        values = np.array([r.test for r in done[variant]], dtype=np.float64)
        failed = sum(1 for r in records if r.variant == variant and r.state == "failed")
        row: dict = {"variant": variant, "trials": len(values), "failed": failed}
        if len(values):
            q1, median, q3 = np.percentile(values, [25, 50, 75])
            row.update(best=float(values.min() if lower_is_better else values.max()),
                       q1=float(q1), median=float(median), q3=float(q3))
            row["parameters"] = int(np.median([r.attrs["parameters"] for r in done[variant]]))
            row["seconds_per_epoch"] = float(np.median(
                [r.attrs["seconds_per_epoch"] for r in done[variant]]))
        else:
            row.update(best=None, q1=None, median=None, q3=None, parameters=None,
                       seconds_per_epoch=None)
        row["p_value"] = None
        if variant != experiment.baseline and len(values) >= 2 and len(base) >= 2:
            p = stats.ttest_ind(values, base, equal_var=False).pvalue
            row["p_value"] = float(p) if math.isfinite(p) else None
        rows.append(row)
    return rows


COLUMNS = ["variant", "trials", "failed", "best", "q1", "median", "q3", "p_value",
           "parameters", "seconds_per_epoch"]


def format_table(rows: list[dict], metric: str) -> str:
    """The rows as an aligned plain-text table (the terminal's summary)."""
    heads = ["variant", "trials", "failed", f"best {metric}", "q1", "median", "q3",
             "p vs base", "params", "s/epoch"]
    cells = [[_fmt(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(r, widths))) for r in cells]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
