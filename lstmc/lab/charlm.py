"""Character-level language modelling on the text of Python's own documentation topics
(`pydoc_data.topics`, part of the standard library, so always offline)."""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .task import Split, Task, log_softmax


class CharLM(Task):
    """Predict each next character of windows of `length` characters. The text is the
    topics of `pydoc_data.topics` in key order (about 460k characters), cut into
    contiguous parts: 90 % train, 5 % valid, 5 % test; `max_chars` keeps only its start.
    Characters seen fewer than 5 times in the text map to one "rare" token. Metric: bits
    per character."""

    name = "charlm"
    summary = "next-character prediction on Python's pydoc topics (bits per character)"
    metric = "bpc"
    lower_is_better = True
    per_step = True
    loss_kind = "cross_entropy"
    options: ClassVar[dict] = {"length": 100, "max_chars": 200_000}

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.text = _text()[: self.config["max_chars"]]
        counts: dict[str, int] = {}
        for ch in self.text:
            counts[ch] = counts.get(ch, 0) + 1
        alphabet = sorted(ch for ch, n in counts.items() if n >= 5)
        self.index = {ch: i + 1 for i, ch in enumerate(alphabet)}  # 0: the rare token
        self.vocab = self.output_size = len(alphabet) + 1

    def check_options(self) -> None:
        self.positive("length")
        if self.config["max_chars"] < 20 * (self.config["length"] + 1):
            from .errors import ExperimentError

            raise ExperimentError("task 'charlm' option 'max_chars' must be at least 20 x "
                                  f"(length + 1) = {20 * (self.config['length'] + 1)}")

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index.get(ch, 0) for ch in text], dtype=np.int64)

    def build(self) -> dict[str, Split]:
        ids = self.encode(self.text)
        n = len(ids)
        bounds = {"train": (0, int(0.9 * n)), "valid": (int(0.9 * n), int(0.95 * n)),
                  "test": (int(0.95 * n), n)}
        t = self.config["length"]
        splits = {}
        for name, (a, b) in bounds.items():
            part = ids[a:b]
            windows = (len(part) - 1) // t
            x = part[: windows * t].reshape(windows, t)
            y = part[1: windows * t + 1].reshape(windows, t)
            splits[name] = Split(x, y)
        return splits

    def score(self, prediction: np.ndarray, split: Split) -> float:
        logp = log_softmax(np.asarray(prediction, dtype=np.float64))
        picked = np.take_along_axis(logp, split.y[..., None], axis=-1)[..., 0]
        return float(-picked.mean() / math.log(2))


def _text() -> str:
    from pydoc_data import topics

    return "".join(topics.topics[key] for key in sorted(topics.topics))
