"""Handwritten digits (scikit-learn's bundled `load_digits`, 1797 8x8 images), read as a
sequence: row by row (8 steps of 8 pixels) or pixel by pixel (64 steps of 1)."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from .errors import ExperimentError, require
from .task import Split, Task, accuracy


class Digits(Task):
    """Classify an 8x8 digit from its rows (`mode="rows"`) or pixels (`mode="pixels"`),
    seen one step at a time. A fixed stratified split (60 / 20 / 20 %, by `seed`) keeps the
    test set the same for every trial. Metric: accuracy."""

    name = "digits"
    summary = "classify 8x8 digit images read row by row or pixel by pixel (scikit-learn)"
    metric = "accuracy"
    lower_is_better = False
    loss_kind = "cross_entropy"
    options: ClassVar[dict] = {"mode": "rows", "seed": 0}
    output_size = 10

    def __init__(self, **options):
        super().__init__(**options)
        self.features = 8 if self.config["mode"] == "rows" else 1

    def check_options(self) -> None:
        if self.config["mode"] not in ("rows", "pixels"):
            raise ExperimentError("task 'digits' option 'mode' must be 'rows' or 'pixels', "
                                  f"got {self.config['mode']!r}")

    def build(self) -> dict[str, Split]:
        datasets = require("sklearn.datasets")
        data = datasets.load_digits()
        images = (data.images / 16.0).astype(np.float32)  # pixel values 0..16
        steps = 8 if self.config["mode"] == "rows" else 64
        x = images.reshape(len(images), steps, 64 // steps)
        y = data.target.astype(np.int64)
        rng = np.random.default_rng(self.config["seed"])
        parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
        for label in range(10):  # stratified: each class split 60 / 20 / 20
            index = rng.permutation(np.flatnonzero(y == label))
            a, b = int(0.6 * len(index)), int(0.8 * len(index))
            parts["train"].append(index[:a])
            parts["valid"].append(index[a:b])
            parts["test"].append(index[b:])
        splits = {}
        for name, pieces in parts.items():
            index = rng.permutation(np.concatenate(pieces))
            splits[name] = Split(x[index], y[index])
        return splits

    def score(self, prediction: np.ndarray, split: Split) -> float:
        return accuracy(np.asarray(prediction), split.y)
