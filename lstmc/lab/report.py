"""`lstmc experiment report`: a study's results as files in a directory.

Writes `summary.csv` and `summary.md` (one row per variant, see `summary.py` for what each
number is), `trials.csv` (one row per trial slot), the PNG figures of `plots.py`, and
`index.html`, a self-contained page (the figures embedded) that shows them all.
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path

from . import plots
from .errors import ExperimentError, require
from .experiment import Experiment
from .html import render_html
from .study import load_study, read_experiment
from .summary import COLUMNS, TrialRecord, collect, format_table, summarize

FANOVA_MIN_TRIALS = 4


def _nothing_to_report(url: str, name: str, records) -> ExperimentError:
    """Why a study without a completed trial has no report: none ran yet (run on), or
    every one failed (running again would fail the same way: say with what)."""
    failed = [r for r in records if r.state == "failed"]
    if failed and len(failed) == len(records):
        return ExperimentError(f"study '{name}' in {url}: all {len(failed)} trial(s) failed, "
                               f"so there is nothing to report; the first failed with: "
                               f"{failed[0].error}")
    return ExperimentError(f"study '{name}' in {url} has no completed trial yet: nothing "
                           "to report (run `lstmc experiment run` or a worker first)")


def write_report(url: str, name: str, out: str | os.PathLike) -> dict:
    """Write the report of study `name` to `out`; returns {"rows", "files", "notes"}."""
    experiment = read_experiment(url, name)
    task = experiment.make_task()
    study = load_study(url, name, experiment)
    records = collect(study)
    rows = summarize(experiment, records, task.lower_is_better)
    if not any(row["trials"] for row in rows):
        raise _nothing_to_report(url, name, records)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExperimentError(f"cannot create the report directory {out}: "
                              f"{exc.strerror}") from exc
    files, notes = [], []
    files.append(_write_csv(out / "summary.csv", rows, COLUMNS))
    files.append(_write_trials(out / "trials.csv", records))
    files.append(_write_markdown(out / "summary.md", experiment, task, rows))
    variants = experiment.variant_names
    label = f"{experiment.task} ({task.metric}, {'lower' if task.lower_is_better else 'higher'}"
    label += " is better)"
    figures = {}
    plots.boxplot(out / "boxplot.png", variants, records, rows, task.metric,
                  task.lower_is_better, f"{label}: test metric per variant")
    figures["boxplot.png"] = "Test metric of every trial, per variant"
    plots.curves(out / "curves.png", variants, records, task.metric,
                 f"{experiment.task}: learning curves (median, interquartile band)")
    figures["curves.png"] = "Validation metric per epoch"
    importances = fanova(study, records)
    if importances:
        plots.importance(out / "importance.png", importances,
                         f"{experiment.task}: hyperparameter importance (fANOVA)")
        figures["importance.png"] = "fANOVA importance of each hyperparameter"
    else:
        notes.append(f"No fANOVA importances: they need at least {FANOVA_MIN_TRIALS} "
                     "completed trials with sampled hyperparameters.")
    plots.time_scatter(out / "time.png", variants, records, task.metric,
                       f"{experiment.task}: test metric vs training time")
    figures["time.png"] = "Test metric against training time"
    files += [out / f for f in figures]
    page = render_html(experiment, task, rows, records, figures, out, importances, notes)
    (out / "index.html").write_text(page, encoding="utf-8")
    files.append(out / "index.html")
    return {"rows": rows, "files": files, "notes": notes, "metric": task.metric}


def fanova(study, records: list[TrialRecord]) -> dict[str, float]:
    """fANOVA importances of the test metric ({} when there are too few trials)."""
    optuna = require("optuna")
    complete = [r for r in records if r.state == "complete"]
    if len(complete) < FANOVA_MIN_TRIALS:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optuna.importance.get_param_importances(
                study, evaluator=evaluator, target=lambda t: t.user_attrs["test"])
    except (ValueError, RuntimeError):  # e.g. no hyperparameter varies
        return {}
    return {k: float(v) for k, v in result.items() if math.isfinite(v)}


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return path


def _write_trials(path: Path, records: list[TrialRecord]) -> Path:
    keys = sorted({k for r in records for k in r.params if k != "variant"})
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["slot", "trial", "variant", "state", "valid", "test", "seconds",
                         "parameters", *keys, "error"])
        for r in records:
            writer.writerow([r.slot, r.number, r.variant, r.state, r.attrs.get("valid", ""),
                             r.attrs.get("test", ""), r.attrs.get("seconds", ""),
                             r.attrs.get("parameters", ""), *(r.params.get(k, "") for k in keys),
                             r.error if r.state == "failed" else ""])
    return path


def markdown_table(rows: list[dict], metric: str) -> str:
    heads = ["variant", "trials", "failed", f"best {metric}", "q1", "median", "q3",
             "p (Welch vs baseline)", "parameters", "s / epoch"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in rows:
        cells = [_md(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value else f"{value:.4g}"
    return str(value)


def _write_markdown(path: Path, experiment: Experiment, task, rows: list[dict]) -> Path:
    text = (f"# {experiment.task}: {len(experiment.variants)} variants\n\n"
            f"Test {task.metric} ({'lower' if task.lower_is_better else 'higher'} is better) "
            f"per variant; baseline `{experiment.baseline}`. Quartiles over trials; p: "
            "Welch's t-test against the baseline.\n\n"
            + markdown_table(rows, task.metric) + "\n\n"
            + "Experiment: `" + json.dumps(_brief(experiment)) + "`\n")
    path.write_text(text, encoding="utf-8")
    return path


def _brief(experiment: Experiment) -> dict:
    return {"task": experiment.task, "task_options": experiment.task_options,
            "trials": experiment.trials, "epochs": experiment.epochs,
            "seeds": experiment.seeds, "sampler": experiment.sampler,
            "seed": experiment.seed, "layers": experiment.layers}


__all__ = ["format_table", "markdown_table", "write_report"]
