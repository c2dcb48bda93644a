"""What a task is: data splits, a training loss and a headline metric.

A task is a small class (see `synthetic.py` for three of them). To add one:

1. subclass `Task`; set `name`, `summary`, `metric` (the headline metric's name),
   `lower_is_better`, `output_size`, `per_step` (one prediction per time step, or one per
   sequence at its last step), `vocab` (an int: inputs are token ids of that vocabulary)
   or `features` (inputs are real vectors of that size), and `options` (the task's
   parameters with their defaults);
2. implement `build()`, returning the train / valid / test `Split`s (NumPy arrays; they
   must not depend on anything but the options, so every trial sees the same data), and
   `score(prediction, split)`, the headline metric of predictions in NumPy;
3. pick `loss_kind` ("mse", "cross_entropy" or "bernoulli") or override `loss()`;
4. add the class to `TASKS` in `tasks.py`.

Data are batch-first: `x` is (N, T, features) float32 or (N, T) int64 tokens; `y` is
(N, out) for a regression at the last step, (N,) class ids, (N, T) token ids or
(N, T, out) per-step targets; `lengths` (N,) gives each sequence's length when they differ
(padded steps are ignored by loss and metric).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .errors import ExperimentError

SPLITS = ("train", "valid", "test")
_KINDS = {int: "an integer", float: "a number", str: "a string"}


@dataclass
class Split:
    """One split of a task's data (see the module docstring for the shapes)."""

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def steps(self) -> np.ndarray:
        """Each sequence's length: `lengths`, or the padded length T for all."""
        if self.lengths is not None:
            return self.lengths
        return np.full(len(self.x), self.x.shape[1], dtype=np.int64)

    def step_mask(self) -> np.ndarray:
        """(N, T) booleans: True on the steps inside each sequence."""
        t = np.arange(self.x.shape[1])
        return t[None, :] < self.steps()[:, None]


class Task(ABC):
    """Base of every task; subclasses fill the class attributes and `build` / `score`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    metric: ClassVar[str] = ""
    lower_is_better: ClassVar[bool] = True
    per_step: ClassVar[bool] = False
    loss_kind: ClassVar[str] = "mse"
    options: ClassVar[dict] = {}
    vocab: int | None = None
    features: int | None = None
    output_size: int = 1

    def __init__(self, **options) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ExperimentError(
                f"task '{self.name}' has no option {', '.join(repr(u) for u in unknown)} "
                f"(its options: {', '.join(sorted(self.options)) or 'none'})")
        self.config = dict(self.options)
        for key, value in options.items():
            default = self.options[key]
            if default is not None and not isinstance(value, type(default)) and not (
                    isinstance(default, float) and isinstance(value, int)):
                raise ExperimentError(
                    f"task '{self.name}' option '{key}' must be "
                    f"{_KINDS.get(type(default), type(default).__name__)}, got {value!r}")
            self.config[key] = value
        if self.config.get("seed", 0) < 0:  # numpy's generators take seeds >= 0 only
            raise ExperimentError(f"task '{self.name}' option 'seed' must be at least 0, "
                                  f"got {self.config['seed']}")
        self.check_options()
        self._splits: dict[str, Split] | None = None

    def check_options(self) -> None:  # noqa: B027 -- optional hook; most tasks override
        """Raise ExperimentError for option values out of range (subclasses override)."""

    def positive(self, *keys: str) -> None:
        for key in keys:
            if self.config[key] < 1:
                raise ExperimentError(f"task '{self.name}' option '{key}' must be at least 1, "
                                      f"got {self.config[key]}")

    def splits(self) -> dict[str, Split]:
        """The train / valid / test splits, built once per instance."""
        if self._splits is None:
            self._splits = self.build()
        return self._splits

    @abstractmethod
    def build(self) -> dict[str, Split]:
        """The three splits, from the options alone."""

    @abstractmethod
    def score(self, prediction: np.ndarray, split: Split) -> float:
        """The headline metric of the model's outputs on `split` (NumPy)."""

    def loss(self, output, y, mask):
        """The training loss of a batch (torch tensors): `output` is the model's
        (B, out) or (B, T, out); `mask` (B, T) marks the real steps (per-step tasks)."""
        import torch.nn.functional as F

        if self.loss_kind == "mse":
            err = (output - y) ** 2
            if self.per_step:
                return (err.sum(-1) * mask).sum() / mask.sum()
            return err.mean()
        if self.loss_kind == "cross_entropy":
            if self.per_step:
                ce = F.cross_entropy(output.transpose(1, 2), y, reduction="none")
                return (ce * mask).sum() / mask.sum()
            return F.cross_entropy(output, y)
        if self.loss_kind == "bernoulli":  # independent binary units, summed per step
            bce = F.binary_cross_entropy_with_logits(output, y, reduction="none").sum(-1)
            if self.per_step:
                return (bce * mask).sum() / mask.sum()
            return bce.mean()
        raise ExperimentError(f"task '{self.name}': unknown loss kind '{self.loss_kind}'")

    def describe(self) -> str:
        inputs = f"tokens of {self.vocab}" if self.vocab else f"{self.features} features"
        return (f"{self.name}: {self.summary} [{inputs} -> {self.output_size}, "
                f"{'per step' if self.per_step else 'per sequence'}; metric {self.metric}, "
                f"{'lower' if self.lower_is_better else 'higher'} is better]")


def accuracy(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of argmax predictions equal to the labels (over the masked entries)."""
    hits = np.argmax(logits, axis=-1) == labels
    if mask is None:
        return float(hits.mean())
    return float(hits[mask].mean())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def rng_for(seed: int, split: str) -> np.random.Generator:
    """A generator per (seed, split), so the splits are independent and reproducible."""
    return np.random.default_rng([seed, SPLITS.index(split)])
