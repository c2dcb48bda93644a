"""Experiments as Optuna studies: open a storage, create or resume a study, queue and claim
trials.

One study per experiment, in any SQLAlchemy URL (SQLite file by default, PostgreSQL for
many machines). The resolved `Experiment` is stored as a study attribute. The budget is
queued up front as WAITING trials, one variant each, round-robin; workers claim a waiting
trial atomically (the storage's WAITING -> RUNNING update succeeds for one worker only;
on SQLite, which ignores the SELECT ... FOR UPDATE that makes it so elsewhere, only
under a lock file beside the database: `claims_locked`), so no trial runs twice. A
running trial records a heartbeat; when a worker dies, its trial goes stale and the next
worker to look fails it and queues a retry with the same variant, hyperparameters and
seed (Optuna's RetryFailedTrialCallback).
"""
from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

from .errors import ExperimentError, require
from .experiment import Experiment

EXPERIMENT_ATTR = "lstmc_experiment"
DEFAULT_STORAGE = "sqlite:///lab.db"


def default_study_name(task: str) -> str:
    return task


def open_storage(url: str, heartbeat: int | None = None, max_retry: int = 3):
    """An RDBStorage for `url`; with `heartbeat` (seconds), stale trials are detected after
    three missed beats and retried up to `max_retry` times."""
    optuna = quiet_optuna()
    kwargs: dict = {}
    if url.startswith("sqlite"):  # several processes share the file: wait for its lock
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    if heartbeat:
        kwargs.update(heartbeat_interval=heartbeat, grace_period=3 * heartbeat)
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if retry is not None:  # Optuna >= 4.9
            kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=max_retry)
        else:
            kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(
                max_retry=max_retry)
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as exc:  # SQLAlchemy's errors: bad URL, driver missing, server down
        raise ExperimentError(f"cannot open the storage {url}: {type(exc).__name__}: "
                              f"{_first_line(exc)}") from exc


def quiet_optuna():
    """Optuna, with its per-trial log lines and experimental-feature warnings silenced
    (the lab reports progress itself; heartbeats are experimental but relied upon)."""
    import warnings

    optuna = require("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def retry_callback(max_retry: int):
    """Queue a retry of an interrupted trial (same variant, hyperparameters and slot)."""
    optuna = quiet_optuna()
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if retry is None:  # Optuna < 4.9
        retry = optuna.storages.RetryFailedTrialCallback
    return retry(max_retry=max_retry)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def read_experiment(url: str, name: str) -> Experiment:
    """The experiment stored with study `name`, or an ExperimentError saying what exists."""
    storage = open_storage(url)
    study = _load(storage, url, name)
    text = study.user_attrs.get(EXPERIMENT_ATTR)
    if text is None:
        raise ExperimentError(f"study '{name}' in {url} was not made by lstmc experiment run "
                              "(it holds no experiment definition)")
    return Experiment.from_json(text)


def _load(storage, url: str, name: str):
    optuna = require("optuna")
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        known = f"its studies: {', '.join(names)}" if names else "it holds no study"
        raise ExperimentError(f"no study '{name}' in {url} ({known}); start one with "
                              "`lstmc experiment run`") from None


def load_study(url: str, name: str, experiment: Experiment, sampler=None):
    storage = open_storage(url, experiment.heartbeat, experiment.max_retry)
    optuna = require("optuna")
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler)


def create_or_resume(url: str, name: str, experiment: Experiment | None) -> Experiment:
    """Create the study for `experiment`, or resume the one named `name` (which must hold
    the same design; a larger `trials` budget extends it). Queues the budget. Returns the
    experiment in force."""
    optuna = require("optuna")
    if experiment is None:
        experiment = read_experiment(url, name)
    storage = open_storage(url, experiment.heartbeat, experiment.max_retry)
    direction = "minimize" if experiment.make_task().lower_is_better else "maximize"
    study = optuna.create_study(study_name=name, storage=storage, direction=direction,
                                load_if_exists=True)
    stored = study.user_attrs.get(EXPERIMENT_ATTR)
    if stored is None:
        study.set_user_attr(EXPERIMENT_ATTR, experiment.to_json())
    else:
        previous = Experiment.from_json(stored)
        if not previous.same_design(experiment):
            raise ExperimentError(
                f"study '{name}' in {url} holds a different experiment (task "
                f"{previous.task}, variants {', '.join(previous.variant_names)}, ...); resume "
                "it with the same settings, or name a new study with --study")
        queued = first_attempts(study)
        if experiment.trials is not None and experiment.trials < queued:
            # its queued trials would run all the same, under a stored budget that says less
            raise ExperimentError(
                f"study '{name}' in {url} already holds {queued} trials: a resumed run can "
                f"raise its budget, not lower it to {experiment.trials} (resume it with "
                f"--trials {queued} or more, or with --study {name} alone)")
        if experiment.trials != previous.trials:
            study.set_user_attr(EXPERIMENT_ATTR, experiment.to_json())
    queue_budget(study, experiment)
    return experiment


def first_attempts(study) -> int:
    """Trials queued as first attempts (retries of interrupted ones not counted)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if is_original(t))


def is_original(trial) -> bool:
    """A first attempt (not a retry of an interrupted trial)."""
    return "failed_trial" not in trial.system_attrs


def queue_budget(study, experiment: Experiment, rounds: int = 0) -> None:
    """Queue WAITING trials until the study holds `experiment.trials` first attempts (or,
    without a trial budget, `rounds` more rounds of one trial per variant)."""
    queued = first_attempts(study)
    target = experiment.trials if experiment.trials is not None else queued + rounds * len(
        experiment.variants)
    names = experiment.variant_names
    for index in range(queued, target):
        # The slot goes in at queueing: a retry copies it even when its worker died
        # before the trial started, so the slot is counted once.
        study.enqueue_trial({"variant": names[index % len(names)]}, user_attrs={"slot": index})


@contextmanager
def claims_locked(url: str) -> Iterator[None]:
    """Hold the study's claim lock, where its storage needs one: SQLite ignores the
    SELECT ... FOR UPDATE that makes Optuna's WAITING -> RUNNING update atomic on other
    databases (optuna issues 4002, 4621), so two processes could both take one trial.
    On an SQLite file, claims (and the failing and retrying of stale trials) take turns
    on an exclusive lock of the file `<database>.claims` beside it."""
    path = _sqlite_file(url)
    if path is None or fcntl is None:
        yield
        return
    with open(path + ".claims", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sqlite_file(url: str) -> str | None:
    """The database file of an SQLite URL; None for other databases or in memory."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return os.path.realpath(parsed.database)  # one lock whatever name reaches it


def claim(study) -> int | None:
    """Atomically take a WAITING trial (its id), or None when none is left; the caller
    holds `claims_locked` (not reentrant: an flock of a second open file waits for the
    first)."""
    optuna = require("optuna")
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    waiting = storage.get_all_trials(study._study_id, deepcopy=False,
                                     states=(optuna.trial.TrialState.WAITING,))
    beats = is_heartbeat_enabled(storage)
    for trial in sorted(waiting, key=lambda t: t.number):
        try:
            # Beat before taking it: a RUNNING trial with no heartbeat never turns stale,
            # so a worker killed between the two writes would leave it RUNNING for ever.
            # (A beat on a trial still WAITING is harmless: only RUNNING ones go stale.)
            if beats:
                storage.record_heartbeat(trial._trial_id)
            if storage.set_trial_state_values(trial._trial_id,
                                              state=optuna.trial.TrialState.RUNNING):
                if beats:
                    storage.record_heartbeat(trial._trial_id)
                return trial._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker finished it
            continue
    return None


def worker_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Records a running trial's heartbeat now and every `interval` seconds until stopped,
    so other workers can tell a live trial from one whose worker died."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self.storage.record_heartbeat(trial_id)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001, S112 -- a lost beat: try at the next interval
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
