"""The hyperparameter search space: what each trial samples, per task, overridable.

An entry is a fixed value (a number or a string) or a distribution:
`{low, high}` (a float, or an int when both bounds are ints), with `log = true` for a
log-uniform one, or `{choices = [...]}`. The names and what they mean:

| name | meaning |
|---|---|
| `learning_rate` | the optimizer's step size |
| `optimizer` | `"adam"` or `"momentum"` (SGD with Nesterov momentum) |
| `momentum` | SGD's momentum, or Adam's beta1 |
| `hidden_size` | H of every recurrent layer (the input layer maps to H too) |
| `batch_size` | sequences per training step |
| `input_noise` | std of Gaussian noise added to the inputs (tokens: their embeddings) |
| `dropout` | dropout on the recurrent stack's output and between its layers |

Defaults per task are in `DEFAULTS` (as Greff et al. 2017: log-uniform learning rate and
hidden size, uniform momentum and noise); an experiment's `[space]` table replaces
entries by name.
"""
from __future__ import annotations

import math

from .errors import ExperimentError

NAMES = ("learning_rate", "optimizer", "momentum", "hidden_size", "batch_size", "input_noise",
         "dropout")

_COMMON = {
    "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
    "optimizer": {"choices": ["adam", "momentum"]},
    "momentum": {"low": 0.0, "high": 0.95},
    "hidden_size": {"low": 16, "high": 128, "log": True},
    "batch_size": {"choices": [16, 32, 64]},
    "input_noise": 0.0,
    "dropout": 0.0,
}

DEFAULTS: dict[str, dict] = {
    "adding": {**_COMMON, "learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
               "hidden_size": {"low": 16, "high": 64, "log": True},
               "batch_size": {"choices": [32, 64, 128]}},
    "copy": {**_COMMON, "learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
             "hidden_size": {"low": 16, "high": 96, "log": True},
             "batch_size": {"choices": [32, 64, 128]}},
    "temporal_order": {**_COMMON, "learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
                       "hidden_size": {"low": 16, "high": 64, "log": True},
                       "batch_size": {"choices": [32, 64, 128]}},
    "digits": {**_COMMON, "input_noise": {"low": 0.0, "high": 0.3},
               "dropout": {"low": 0.0, "high": 0.5}},
    "chorales": {**_COMMON, "input_noise": {"low": 0.0, "high": 0.3},
                 "dropout": {"low": 0.0, "high": 0.5}},
    "charlm": {**_COMMON, "hidden_size": {"low": 32, "high": 256, "log": True},
               "dropout": {"low": 0.0, "high": 0.3}},
}


def default_space(task: str) -> dict:
    return {name: _copy(entry) for name, entry in DEFAULTS.get(task, _COMMON).items()}


def _copy(entry):
    return dict(entry) if isinstance(entry, dict) else entry


def resolve(task: str, overrides: dict | None) -> dict:
    """The task's default space with `overrides` applied, every entry checked."""
    space = default_space(task)
    for name, entry in (overrides or {}).items():
        if name not in NAMES:
            raise ExperimentError(f"unknown hyperparameter '{name}' in the search space "
                                  f"(known: {', '.join(NAMES)})")
        space[name] = _copy(entry)
    for name, entry in space.items():
        check_entry(name, entry)
    return space


def is_int(value) -> bool:
    """An integer as TOML and JSON give it (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_entry(name: str, entry) -> None:
    where = f"search space entry '{name}'"
    if isinstance(entry, dict):
        if "choices" in entry:
            choices = entry["choices"]
            if set(entry) != {"choices"} or not isinstance(choices, list) or not choices:
                raise ExperimentError(f"{where}: expected {{choices = [...]}} with at least "
                                      f"one choice, got {entry!r}")
            for choice in choices:
                check_value(name, choice)
            return
        if set(entry) - {"low", "high", "log"} or not {"low", "high"} <= set(entry):
            raise ExperimentError(f"{where}: expected {{low, high[, log]}} or "
                                  f"{{choices}}, got {entry!r}")
        if not isinstance(entry.get("log", False), bool):  # "no" would read as true
            raise ExperimentError(f"{where}: log must be true or false, got {entry['log']!r}")
        low, high = entry["low"], entry["high"]
        if not all(is_number(v) for v in (low, high)):
            raise ExperimentError(f"{where}: low and high must be numbers, got {entry!r}")
        if not low <= high or (entry.get("log") and low <= 0):
            raise ExperimentError(f"{where}: need low <= high (and low > 0 when log), "
                                  f"got {entry!r}")
        check_value(name, low)
        check_value(name, high)
        return
    check_value(name, entry)


def check_value(name: str, value) -> None:
    where = f"search space entry '{name}'"
    if name == "optimizer":
        if value not in ("adam", "momentum"):
            raise ExperimentError(f"{where}: 'adam' or 'momentum', got {value!r}")
        return
    if not is_number(value):
        raise ExperimentError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):  # TOML writes nan and inf; no hyperparameter takes them
        raise ExperimentError(f"{where}: expected a finite number, got {value!r}")
    if name in ("hidden_size", "batch_size") and (not isinstance(value, int) or value < 1):
        raise ExperimentError(f"{where}: expected a positive integer, got {value!r}")
    if name == "learning_rate" and value <= 0:
        raise ExperimentError(f"{where}: must be positive, got {value!r}")
    if name in ("dropout", "momentum") and not 0 <= value < 1:
        raise ExperimentError(f"{where}: must be in [0, 1), got {value!r}")
    if name == "input_noise" and value < 0:
        raise ExperimentError(f"{where}: must be at least 0, got {value!r}")


def sample(trial, space: dict) -> dict:
    """One configuration: each distribution suggested through the Optuna trial (so the
    sampler and fANOVA see it), each fixed value taken as is."""
    config = {}
    for name in NAMES:
        entry = space[name]
        if not isinstance(entry, dict):
            config[name] = entry
        elif "choices" in entry:
            config[name] = trial.suggest_categorical(name, entry["choices"])
        elif isinstance(entry["low"], int) and isinstance(entry["high"], int):
            config[name] = trial.suggest_int(name, entry["low"], entry["high"],
                                             log=bool(entry.get("log")))
        else:
            config[name] = trial.suggest_float(name, float(entry["low"]), float(entry["high"]),
                                               log=bool(entry.get("log")))
    return config
