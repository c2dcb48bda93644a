"""Running one claimed trial: sample its configuration, train it with each seed, and
record everything the report needs as the trial's attributes.

A trial that raises (a NaN loss, a spec the compiler rejects, anything) is told FAIL with
its message in the `error` attribute; the worker goes on. An interrupted one (Ctrl-C) is
told FAIL and queued again at once.
"""
from __future__ import annotations

import math
import statistics

import numpy as np

from . import space as search_space
from .errors import require
from .experiment import Experiment
from .progress import Progress
from .study import Heartbeat, load_study, retry_callback, worker_label
from .task import Task


def seed_of(experiment: Experiment, slot: int, index: int) -> int:
    """The seed of a trial's `index`-th training run: a function of the experiment's
    seed and the trial's slot only, so a retried trial trains exactly the same."""
    return int(np.random.SeedSequence([experiment.seed, slot, index]).generate_state(1)[0])


def make_sampler(experiment: Experiment, slot: int):
    """A sampler seeded by the slot: with random search, a trial's configuration depends
    on the experiment's seed and its slot only (not on which worker ran it, or when)."""
    optuna = require("optuna")
    seed = seed_of(experiment, slot, 1 << 20)
    if experiment.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def run_trial(url: str, name: str, experiment: Experiment, task: Task, trial_id: int,
              progress: Progress) -> bool:
    """Run the claimed trial `trial_id`; True if it completed."""
    optuna = require("optuna")
    from .train import train

    probe = load_study(url, name, experiment)
    frozen = probe._storage.get_trial(trial_id)
    slot = frozen.user_attrs.get("slot", frozen.number)  # a retry keeps its first slot
    study = load_study(url, name, experiment, sampler=make_sampler(experiment, slot))
    study.get_trials(deepcopy=False)  # Optuna's storage cache must know the claimed trial
    beat = Heartbeat(study._storage, trial_id, experiment.heartbeat)
    trial = optuna.trial.Trial(study, trial_id)
    variant = "?"
    try:
        trial.set_user_attr("slot", slot)
        trial.set_user_attr("worker", worker_label())
        variant = trial.suggest_categorical("variant", experiment.variant_names)
        config = search_space.sample(trial, experiment.space)
        trial.set_user_attr("config", config)
        progress.trial_started(trial.number, variant, config, experiment.epochs)
        runs = []
        for index in range(experiment.seeds):
            def on_epoch(epoch, value, index=index):
                progress.epoch(index, epoch, experiment.epochs, task.metric, value)
            runs.append(train(task, experiment.variant(variant), config,
                              epochs=experiment.epochs, seed=seed_of(experiment, slot, index),
                              patience=experiment.patience, clip=experiment.clip,
                              layers=experiment.layers, on_epoch=on_epoch))
        record(trial, runs)
        value = statistics.fmean(r.valid for r in runs)
        study.tell(trial, value)
        progress.trial_finished(trial.number, variant,
                                f"valid {task.metric} {value:.4g}, test "
                                f"{statistics.fmean(r.test for r in runs):.4g}")
        return True
    except KeyboardInterrupt:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        frozen = study._storage.get_trial(trial_id)
        retry_callback(experiment.max_retry)(study, frozen)
        raise
    except Exception as exc:  # noqa: BLE001 -- any failure is recorded; the run goes on
        message = describe_failure(exc)
        trial.set_user_attr("error", message)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        progress.trial_finished(trial.number, variant, f"FAILED: {message}")
        return False
    finally:
        beat.stop()


def describe_failure(exc: BaseException) -> str:
    """The message recorded for a failed trial: lstmc's own errors say what and where
    already; anything else also names the line that raised it."""
    import traceback

    from ..errors import LstmcError

    message = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if not isinstance(exc, LstmcError) and frames:
        last = frames[-1]
        message += f" (at {last.filename}:{last.lineno}, in {last.name})"
    return message


def record(trial, runs) -> None:
    """The trial's results as user attributes (means over seeds, and each run)."""
    from .train import device

    def finite(v: float):
        return v if math.isfinite(v) else None

    attrs = {
        "valid": statistics.fmean(r.valid for r in runs),
        "test": statistics.fmean(r.test for r in runs),
        "valid_per_seed": [finite(r.valid) for r in runs],
        "test_per_seed": [finite(r.test) for r in runs],
        "valid_curves": [[finite(v) for v in r.valid_curve] for r in runs],
        "train_loss": [[finite(v) for v in r.train_loss] for r in runs],
        "epochs": [r.epochs for r in runs],
        "seconds": sum(r.seconds for r in runs),
        "seconds_per_epoch": statistics.fmean(r.seconds_per_epoch for r in runs),
        "parameters": runs[0].parameters,
        "device": str(device()),
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
