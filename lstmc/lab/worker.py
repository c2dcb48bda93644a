"""Workers: the loop that takes trials from a study until its budget is done, and `--jobs N`
as N such workers in local processes.

A worker, on any machine that reaches the storage, loops: fail (and queue a retry of) any
trial whose worker stopped beating; claim a waiting trial; run it. When nothing waits but
trials still run elsewhere, it waits for them (a dead worker's trial turns stale after three
missed heartbeats and is retried here), so `run` returns only when the budget is done.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from .errors import ExperimentError, require
from .experiment import Experiment
from .progress import Progress
from .runner import run_trial
from .study import claim, claims_locked, is_original, load_study, queue_budget


def finished(study, max_retry: int = 3) -> int:
    """First attempts that are over: completed, failed with an error, or failed for good
    (interrupted more often than retries allow); their retries stand in for the rest."""
    optuna = require("optuna")
    state = optuna.trial.TrialState
    slots = set()
    for t in study.get_trials(deepcopy=False, states=(state.COMPLETE, state.FAIL)):
        if t.state == state.COMPLETE or "error" in t.user_attrs or _exhausted(t, max_retry):
            slots.add(t.user_attrs.get("slot", t.number))
    return len(slots)


def _exhausted(trial, max_retry: int) -> bool:
    """An interrupted trial whose retry will never be queued (RetryFailedTrialCallback
    stops once a slot's retry history exceeds max_retry)."""
    return len(trial.system_attrs.get("retry_history", [])) + 1 > max_retry


def work(url: str, name: str, experiment: Experiment, *, deadline: float | None = None,
         progress: Progress | None = None, threads: int | None = None) -> int:
    """Take and run trials until none is left (or `deadline`, a time.time(), passes);
    returns how many this worker ran."""
    optuna = require("optuna")
    torch = require("torch")
    if threads:
        torch.set_num_threads(threads)
    task = experiment.make_task()
    task.splits()  # build (or read the cached) data once per worker
    study = load_study(url, name, experiment)
    if progress is None:
        progress = Progress(experiment.trials, finished(study, experiment.max_retry))
    ran = 0
    try:
        while deadline is None or time.time() < deadline:
            # One worker at a time fails (and retries) stale trials, queues and claims:
            # each stale trial is retried once, each round queued once.
            with claims_locked(url):
                optuna.storages.fail_stale_trials(study)
                trial_id = claim(study)
                if trial_id is None and experiment.trials is None:
                    queue_budget(study, experiment, rounds=1)  # no budget: one more round
                    trial_id = claim(study)
            if trial_id is None:
                running = study.get_trials(deepcopy=False,
                                           states=(optuna.trial.TrialState.RUNNING,))
                if not running:
                    break
                time.sleep(min(1.0, experiment.heartbeat))  # others' trials, maybe stale
                continue
            run_trial(url, name, experiment, task, trial_id, progress)
            ran += 1
    finally:
        progress.close()
    return ran


def run_jobs(url: str, name: str, experiment: Experiment, jobs: int,
             minutes: float | None, tty: bool) -> None:
    """`jobs` worker processes (`lstmc experiment worker`) on this machine, each with its
    share of the cores; a bar (terminal) or the workers' own lines show the progress."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    command = [sys.executable, "-m", "lstmc.cli", "experiment", "worker", "--storage", url,
               "--study", name, "--threads", str(threads)]
    if minutes is not None:
        command += ["--minutes", str(minutes)]
    # On a terminal the parent draws one bar and the workers stay quiet (errors still show);
    # otherwise each worker prints its own labelled lines.
    procs = [subprocess.Popen(command + (["--quiet"] if tty else ["--label", f"[worker {k}] "]))
             for k in range(jobs)]
    study = load_study(url, name, experiment)
    done = finished(study, experiment.max_retry)
    progress = Progress(experiment.trials, done, tty=tty, quiet=not tty)
    try:
        while any(p.poll() is None for p in procs):
            progress.set_done(finished(study, experiment.max_retry))
            time.sleep(1.0)
        progress.set_done(finished(study, experiment.max_retry))
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        progress.close()
    failed = [p.returncode for p in procs if p.returncode]
    if failed:
        raise ExperimentError(f"{len(failed)} of {jobs} worker processes exited with an error "
                              f"(status {', '.join(map(str, failed))}); rerun to resume")


__all__ = ["finished", "is_original", "run_jobs", "work"]
