"""Generated long-range memory tasks: adding, copy memory, temporal order.

Each is generated from its options alone (a fixed seed per split), so every trial of an
experiment sees the same data, and no file or network is needed.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from .errors import ExperimentError
from .task import Split, Task, accuracy, rng_for


class Adding(Task):
    """Hochreiter & Schmidhuber 1997 (experiment 4), in the form of Le et al. 2015: each
    step carries a value in [0, 1) and a marker; two steps are marked, one in each half of
    the sequence; the target is the sum of the two marked values. Predicting 1 always
    gives an MSE of about 1/6 (the variance of the sum)."""

    name = "adding"
    summary = "sum of the two marked values of a sequence (Hochreiter & Schmidhuber 1997)"
    metric = "mse"
    lower_is_better = True
    loss_kind = "mse"
    options: ClassVar[dict] = {"length": 50, "train": 4000, "valid": 500, "test": 1000, "seed": 0}
    features = 2
    output_size = 1

    def check_options(self) -> None:
        self.positive("train", "valid", "test")
        if self.config["length"] < 2:
            raise ExperimentError(f"task 'adding' option 'length' must be at least 2, "
                                  f"got {self.config['length']}")

    def build(self) -> dict[str, Split]:
        return {split: self._make(self.config[split], rng_for(self.config["seed"], split))
                for split in ("train", "valid", "test")}

    def _make(self, n: int, rng: np.random.Generator) -> Split:
        t = self.config["length"]
        half = t // 2
        x = np.zeros((n, t, 2), dtype=np.float32)
        x[:, :, 0] = rng.random((n, t))
        first = rng.integers(0, half, n)
        second = rng.integers(half, t, n)
        rows = np.arange(n)
        x[rows, first, 1] = 1.0
        x[rows, second, 1] = 1.0
        y = (x[rows, first, 0] + x[rows, second, 0])[:, None]
        return Split(x, y.astype(np.float32))

    def score(self, prediction: np.ndarray, split: Split) -> float:
        return float(np.mean((np.asarray(prediction).reshape(split.y.shape) - split.y) ** 2))


class Copy(Task):
    """Copy memory (Arjovsky et al. 2016): `symbols` tokens from `categories` kinds, then
    `delay` blanks with a delimiter at the last of them; the model must output blanks, then
    the tokens again. Token 0 is the blank, 1..categories the symbols, categories+1 the
    delimiter. The loss covers every step (as in the paper); the metric is the accuracy
    over the recalled tokens only. A memoryless model scores 1/categories."""

    name = "copy"
    summary = "recall a sequence of tokens after a delay (Arjovsky et al. 2016)"
    metric = "accuracy"
    lower_is_better = False
    per_step = True
    loss_kind = "cross_entropy"
    options: ClassVar[dict] = {"delay": 50, "symbols": 10, "categories": 8, "train": 4000,
                               "valid": 500,
               "test": 1000, "seed": 0}

    def __init__(self, **options):
        super().__init__(**options)
        self.vocab = self.config["categories"] + 2
        self.output_size = self.config["categories"] + 1

    def check_options(self) -> None:
        self.positive("delay", "symbols", "train", "valid", "test")
        if self.config["categories"] < 2:
            raise ExperimentError("task 'copy' option 'categories' must be at least 2, "
                                  f"got {self.config['categories']}")
        wanted = sum(self.config[split] for split in ("train", "valid", "test"))
        if self.config["categories"] ** self.config["symbols"] < wanted:
            raise ExperimentError(
                f"task 'copy': {self.config['categories']}^{self.config['symbols']} distinct "
                f"sequences cannot fill {wanted} disjoint train/valid/test rows; raise "
                "'symbols' or 'categories'")

    def build(self) -> dict[str, Split]:
        # Short token strings repeat by chance (the birthday bound); a sequence seen in
        # training must not be scored in valid or test, so all rows are drawn distinct
        # from one generator and then dealt out.
        counts = [self.config[split] for split in ("train", "valid", "test")]
        tokens = self._distinct_tokens(sum(counts), rng_for(self.config["seed"], "train"))
        ends = np.cumsum(counts)
        return {split: self._make(tokens[end - n:end])
                for split, n, end in zip(("train", "valid", "test"), counts, ends)}

    def _distinct_tokens(self, n: int, rng: np.random.Generator) -> np.ndarray:
        s, k = self.config["symbols"], self.config["categories"]
        drawn = np.empty((0, s), dtype=np.int64)
        while len(drawn) < n:
            more = np.concatenate([drawn, rng.integers(1, k + 1, (n, s))])
            _, first = np.unique(more, axis=0, return_index=True)
            drawn = more[np.sort(first)]  # keep the order drawn: reproducible per seed
        return drawn[:n]

    def _make(self, tokens: np.ndarray) -> Split:
        s, d, k = self.config["symbols"], self.config["delay"], self.config["categories"]
        t = 2 * s + d
        n = len(tokens)
        x = np.zeros((n, t), dtype=np.int64)
        x[:, :s] = tokens
        x[:, s + d - 1] = k + 1  # the delimiter: "start recalling now"
        y = np.zeros((n, t), dtype=np.int64)
        y[:, s + d:] = tokens
        return Split(x, y)

    def score(self, prediction: np.ndarray, split: Split) -> float:
        s = self.config["symbols"]
        return accuracy(np.asarray(prediction)[:, -s:], split.y[:, -s:])


class TemporalOrder(Task):
    """Temporal order (Hochreiter & Schmidhuber 1997, experiment 6a): a sequence of random
    distractors a, b, c, d between a start symbol E and an end symbol B holds two relevant
    symbols, X or Y, one near 10-20% and one near 50-60% of its length; the class is their
    order (XX, XY, YX, YY). Sequences are `length` to 1.1 x `length` long."""

    name = "temporal_order"
    summary = "classify the order of two far-apart symbols (Hochreiter & Schmidhuber 1997)"
    metric = "accuracy"
    lower_is_better = False
    loss_kind = "cross_entropy"
    options: ClassVar[dict] = {"length": 100, "train": 4000, "valid": 500, "test": 1000, "seed": 0}
    vocab = 8  # a b c d X Y B E
    output_size = 4
    X, Y, END, START = 4, 5, 6, 7

    def check_options(self) -> None:
        self.positive("train", "valid", "test")
        if self.config["length"] < 10:
            raise ExperimentError("task 'temporal_order' option 'length' must be at least 10, "
                                  f"got {self.config['length']}")

    def build(self) -> dict[str, Split]:
        return {split: self._make(self.config[split], rng_for(self.config["seed"], split))
                for split in ("train", "valid", "test")}

    def _make(self, n: int, rng: np.random.Generator) -> Split:
        base = self.config["length"]
        lengths = base + rng.integers(0, base // 10 + 1, n)
        x = rng.integers(0, 4, (n, int(lengths.max()))).astype(np.int64)
        rows = np.arange(n)
        x[:, 0] = self.START
        x[rows, lengths - 1] = self.END
        t1 = rng.integers(base // 10, 2 * base // 10 + 1, n)
        t2 = rng.integers(5 * base // 10, 6 * base // 10 + 1, n)
        first, second = rng.integers(0, 2, n), rng.integers(0, 2, n)
        x[rows, t1] = self.X + first
        x[rows, t2] = self.X + second
        return Split(x, (2 * first + second).astype(np.int64), lengths.astype(np.int64))

    def score(self, prediction: np.ndarray, split: Split) -> float:
        return accuracy(np.asarray(prediction), split.y)
