"""The report's figures, as PNG files (matplotlib's Agg backend: no display needed).

- `boxplot.png`: the test metric of every trial per variant (Greff et al. 2017, Fig. 3):
  the baseline grey, variants significantly worse (Welch p < 0.05) red, better green;
- `curves.png`: the validation metric per epoch, median over a variant's trials with the
  interquartile band (a run stopped early keeps its last value);
- `importance.png`: fANOVA hyperparameter importances (Optuna's evaluator) of the test
  metric over all completed trials, the variant included as a hyperparameter;
- `time.png`: test metric against training time, one point per trial.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import require
from .summary import TrialRecord

FIGSIZE = (7.5, 4.5)


def _pyplot():
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(names: list[str]) -> dict[str, tuple]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def boxplot(path, variants, records: list[TrialRecord], rows, metric: str,
            lower_is_better: bool, title: str):
    plt = _pyplot()
    data = [[r.test for r in records if r.variant == v and r.state == "complete"]
            for v in variants]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    shown = [d if d else [math.nan] for d in data]
    box = ax.boxplot(shown, patch_artist=True, showfliers=True)
    ax.set_xticks(range(1, len(variants) + 1), variants, rotation=30, ha="right")
    pvalues = {row["variant"]: row["p_value"] for row in rows}
    medians = {row["variant"]: row["median"] for row in rows}
    base = medians[variants[0]]
    for i, (patch, name) in enumerate(zip(box["boxes"], variants)):
        color = "#bbbbbb"
        p = pvalues.get(name)
        if i and p is not None and p < 0.05 and medians[name] is not None and base is not None:
            worse = medians[name] > base if lower_is_better else medians[name] < base
            color = "#e07070" if worse else "#70c070"
        patch.set_facecolor(color)
    for i, d in enumerate(data, start=1):  # every trial as a dot, as in Greff's figure
        jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(d))
        ax.plot(np.full(len(d), i) + jitter, d, ".", color="#333333", alpha=0.6, ms=4)
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _save(plt, fig, path)


def curves(path, variants, records: list[TrialRecord], metric: str, title: str):
    plt = _pyplot()
    colors = _colors(variants)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name in variants:
        runs = [curve for r in records if r.variant == name and r.state == "complete"
                for curve in r.attrs.get("valid_curves", [])]
        runs = [[v for v in c if v is not None] for c in runs]
        runs = [c for c in runs if c]
        if not runs:
            continue
        length = max(len(c) for c in runs)
        table = np.array([c + [c[-1]] * (length - len(c)) for c in runs], dtype=np.float64)
        q1, median, q3 = np.percentile(table, [25, 50, 75], axis=0)
        epochs = np.arange(1, length + 1)
        ax.plot(epochs, median, color=colors[name], label=f"{name} ({len(runs)})", lw=1.6)
        ax.fill_between(epochs, q1, q3, color=colors[name], alpha=0.15)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)  # no epoch 1.25
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    _save(plt, fig, path)


def importance(path, importances: dict[str, float], title: str):
    plt = _pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.barh(names, [importances[n] for n in names], color="#5080c0")
    ax.set_xlabel("fANOVA importance (fraction of the test metric's variance)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    _save(plt, fig, path)


def time_scatter(path, variants, records: list[TrialRecord], metric: str, title: str):
    plt = _pyplot()
    colors = _colors(variants)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name in variants:
        done = [r for r in records if r.variant == name and r.state == "complete"]
        ax.scatter([r.attrs["seconds"] for r in done], [r.test for r in done], s=18,
                   color=colors[name], label=name, alpha=0.8)
    ax.set_xlabel("training time of the trial (s)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    _save(plt, fig, path)


def _save(plt, fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
