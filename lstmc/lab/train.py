"""Training one configuration of one variant on a task, with one seed.

Guarantees: the same task options, variant, configuration and seed give the same numbers
on the cpu target (data order, initialization, dropout and noise all follow the seed);
early stopping keeps the weights of the best validation epoch, and the test metric is
measured with those; a NaN or infinite loss stops training with `TrialDiverged`.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import ExperimentError
from .experiment import Variant
from .model import SequenceModel, count_parameters
from .task import Split, Task

EVAL_BATCH = 256


class TrialDiverged(ExperimentError):
    """The training loss stopped being a finite number."""


@dataclass
class RunResult:
    """One training run: metrics at the best validation epoch, and the curves."""

    valid: float
    test: float
    valid_curve: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    epochs: int = 0
    seconds: float = 0.0
    parameters: int = 0

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(self.epochs, 1)


def device() -> torch.device:
    """Where trials run: the GPU when torch sees one (lstmc's cuda target), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(config: dict, params) -> torch.optim.Optimizer:
    lr, momentum = config["learning_rate"], config["momentum"]
    if config["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999))
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0)


def train(task: Task, variant: Variant, config: dict, *, epochs: int, seed: int,
          patience: int = 5, clip: float = 1.0, layers: int = 1,
          on_epoch: Callable[[int, float], None] | None = None) -> RunResult:
    """Train a fresh model; `on_epoch(epoch, valid_metric)` is called after each epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = device()
    splits = task.splits()
    model = SequenceModel(task, variant, config["hidden_size"], layers=layers,
                          dropout=config["dropout"],
                          input_noise=config["input_noise"]).to(dev)
    optimizer = make_optimizer(config, model.parameters())
    sign = 1.0 if task.lower_is_better else -1.0
    result = RunResult(valid=math.nan, test=math.nan, parameters=count_parameters(model))
    best_state, best_key, stale = None, math.inf, 0
    train_split = splits["train"]
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        for index in _batches(len(train_split), config["batch_size"], rng):
            x, y, lengths, mask = _batch(train_split, index, task, dev)
            loss = task.loss(model(x, lengths), y, mask)
            if not torch.isfinite(loss):
                raise TrialDiverged(f"variant '{variant.name}': the training loss became "
                                    f"{loss.item()} at epoch {epoch}, after {count} batches")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            total += loss.item()
            count += 1
        result.seconds += time.perf_counter() - start
        result.epochs = epoch
        result.train_loss.append(total / max(count, 1))
        valid = evaluate(model, task, splits["valid"])
        result.valid_curve.append(valid)
        if on_epoch is not None:
            on_epoch(epoch, valid)
        if not math.isfinite(valid):
            raise TrialDiverged(f"variant '{variant.name}': the validation metric became "
                                f"{valid} at epoch {epoch}")
        if sign * valid < best_key:
            best_key, stale = sign * valid, 0
            best_state = copy.deepcopy(model.state_dict())
            result.valid = valid
        else:
            stale += 1
            if stale >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.test = evaluate(model, task, splits["test"])
    return result


def evaluate(model: SequenceModel, task: Task, split: Split) -> float:
    """The task's metric of the model's outputs on a whole split."""
    model.eval()
    dev = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for start in range(0, len(split), EVAL_BATCH):
            index = np.arange(start, min(start + EVAL_BATCH, len(split)))
            x, _, lengths, _ = _batch(split, index, task, dev)
            out = model(x, lengths).float().cpu().numpy()
            if task.per_step and out.shape[1] < split.x.shape[1]:  # trimmed padding back
                pad = np.zeros((out.shape[0], split.x.shape[1] - out.shape[1], out.shape[2]),
                               dtype=out.dtype)
                out = np.concatenate([out, pad], axis=1)
            outputs.append(out)
    return task.score(np.concatenate(outputs), split)


def _batches(n: int, size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n, size):
        yield order[start: start + size]


def _batch(split: Split, index: np.ndarray, task: Task, dev: torch.device):
    """Tensors of a batch, cut to its longest sequence: x, y, lengths or None, mask."""
    x, y = split.x[index], split.y[index]
    lengths = mask = None
    if split.lengths is not None:
        steps = split.lengths[index]
        t = int(steps.max())
        x = x[:, :t]
        if task.per_step:
            y = y[:, :t]
        lengths = torch.as_tensor(steps, dtype=torch.long)
        mask = torch.as_tensor(np.arange(t)[None, :] < steps[:, None], dtype=torch.float32,
                               device=dev)
    elif task.per_step:
        mask = torch.ones(x.shape[:2], dtype=torch.float32, device=dev)
    return (torch.as_tensor(x, device=dev), torch.as_tensor(y, device=dev), lengths, mask)
