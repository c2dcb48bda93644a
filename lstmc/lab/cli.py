"""`lstmc experiment ...`: run, report, worker, tasks.

Registered by lstmc's CLI through `register(commands)`. Nothing heavy (optuna, torch,
matplotlib) is imported here at module level, so `lstmc --help` works without the lab
extra; a command that needs it says which extra to install.
"""
from __future__ import annotations

import argparse
import sys
import time

from .errors import ExperimentError


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
        return value
    return parse


def register(commands) -> None:
    from ..cli import _seed  # numpy's SeedSequence, which every trial draws from: >= 0
    exp = commands.add_parser(
        "experiment", help="the variant lab: train cell variants on tasks, search their "
                           "hyperparameters, report which wins",
        description="Train recurrent cell variants on standard tasks with an Optuna "
                    "hyperparameter search, and report the results (pip install "
                    "'lstmc[lab]').")
    exp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="show tracebacks of errors")
    sub = exp.add_subparsers(dest="lab_command", metavar="SUBCOMMAND", required=True)

    run = sub.add_parser(
        "run", help="run (or resume) an experiment",
        description="Run an experiment: each trial trains one variant with hyperparameters "
                    "drawn from the task's search space. Run it again to resume: finished "
                    "trials are kept, interrupted ones retried. With no task, spec or config, "
                    "resumes the study named by --study as it was defined.")
    run.add_argument("specs", nargs="*", metavar="SPEC",
                     help="the variants' spec files, or shipped specs by name (lstm, "
                          "greff/cifg); NAME=PATH names one; the first is the baseline")
    run.add_argument("--preset", choices=["greff"],
                     help="greff: the vanilla LSTM and Greff et al.'s eight variants")
    run.add_argument("--task", help="the task (`lstmc experiment tasks` lists them)")
    run.add_argument("--option", type=_option, action="append", default=[],
                     metavar="KEY=VALUE", help="a task option, e.g. --option length=100")
    run.add_argument("--trials", type=_positive(int),
                     help="trials in all, spread over the variants (default: 4 per variant, "
                          "or unlimited with --minutes)")
    run.add_argument("--minutes", type=_positive(float),
                     help="stop starting trials after this long (resume later to go on)")
    run.add_argument("--epochs", type=_positive(int), help="epochs per training run (default 10)")
    run.add_argument("--seeds", type=_positive(int),
                     help="training runs per configuration (default 1)")
    run.add_argument("--sampler", choices=["random", "tpe"], help="default: random")
    run.add_argument("--seed", type=_seed, help="the experiment's seed, in 0..2**64-1 "
                                                "(default 0)")
    run.add_argument("--layers", type=_positive(int), help="recurrent layers (default 1)")
    run.add_argument("--jobs", type=_positive(int), default=1,
                     help="local worker processes (default 1)")
    _storage_options(run)
    run.add_argument("--config", metavar="FILE.toml",
                     help="the experiment's definition; flags override its keys")
    run.set_defaults(handler=cmd_run)

    report = sub.add_parser(
        "report", help="write the report of an experiment",
        description="Write summary.csv, summary.md, PNG plots and a self-contained "
                    "index.html for a study.")
    _storage_options(report)
    report.add_argument("-o", "--output", default="lab-report", metavar="DIR",
                        help="the report's directory (default: lab-report)")
    report.set_defaults(handler=cmd_report)

    worker = sub.add_parser(
        "worker", help="take trials of a running experiment (from any machine)",
        description="Join an experiment: take its waiting trials until its budget is done. "
                    "Start as many as you like, on any machine that reaches the storage.")
    _storage_options(worker)
    worker.add_argument("--minutes", type=_positive(float),
                        help="stop taking trials after this long")
    worker.add_argument("--threads", type=_positive(int), help="torch threads of this worker")
    worker.add_argument("--label", default="", help="a prefix for this worker's log lines")
    worker.add_argument("--quiet", action="store_true", help="print nothing but errors")
    worker.set_defaults(handler=cmd_worker)

    tasks = sub.add_parser("tasks", help="list the tasks",
                           description="List the tasks with their options and metrics.")
    tasks.set_defaults(handler=cmd_tasks)
    for parser in (run, report, worker, tasks):
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show tracebacks of errors")


def _storage_options(parser) -> None:
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="an SQLAlchemy URL (default: sqlite:///lab.db, in the current "
                             "directory; postgresql://... for many machines)")
    parser.add_argument("--study", default=None, metavar="NAME",
                        help="the study's name (default: the task's name for run; the "
                             "storage's only study otherwise)")


def _storage(args) -> str:
    from .study import DEFAULT_STORAGE

    return args.storage or DEFAULT_STORAGE


def _study_name(url: str, name: str | None) -> str:
    """The named study, or the storage's only one."""
    if name:
        return name
    from .errors import require
    from .study import open_storage

    optuna = require("optuna")
    names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))]
    if len(names) == 1:
        return names[0]
    if not names:
        raise ExperimentError(f"{url} holds no study yet; start one with "
                              "`lstmc experiment run`")
    raise ExperimentError(f"{url} holds several studies ({', '.join(names)}): choose one "
                          "with --study")


def _definition(args) -> dict | None:
    """The experiment's keys from --config and the flags (flags win), or None to resume."""
    from .experiment import read_toml

    config: dict = {}
    if args.config:
        config = read_toml(args.config)
        base = __import__("pathlib").Path(args.config).resolve().parent
        config["variants"] = [_relative_to(base, v) for v in config.get("variants", [])]
    flags = {"task": args.task, "preset": args.preset, "trials": args.trials,
             "epochs": args.epochs, "seeds": args.seeds, "sampler": args.sampler,
             "seed": args.seed, "layers": args.layers}
    config.update({k: v for k, v in flags.items() if v is not None})
    if args.specs:
        config["variants"] = list(config.get("variants", [])) + args.specs
    if args.option:
        config["task_options"] = {**config.get("task_options", {}), **dict(args.option)}
    if not config:
        return None
    return config


def _relative_to(base, item):
    """A config's spec path, relative to the config file when it is there."""
    if not isinstance(item, str):
        return item
    name, sep, path = item.partition("=")
    if not sep:
        name, path = "", item
    candidate = base / path
    resolved = str(candidate) if candidate.exists() else path
    return f"{name}={resolved}" if sep else resolved


def cmd_run(args) -> int:
    from .experiment import define
    from .study import create_or_resume, default_study_name

    url = _storage(args)
    config = _definition(args)
    experiment = None
    if config is not None:
        if config.get("trials") is None and args.minutes is None:
            count = len(config.get("variants", [])) + (9 if config.get("preset") else 0)
            config["trials"] = 4 * max(count, 1)
        experiment = define(config, args.config or "the command line")
        name = args.study or default_study_name(experiment.task)
    else:
        if not args.study and not args.storage:
            raise ExperimentError("nothing to run: give --task and specs (or --preset, or "
                                  "--config), or --study NAME to resume a stored experiment")
        name = _study_name(url, args.study)
    experiment = create_or_resume(url, name, experiment)
    deadline = time.time() + 60 * args.minutes if args.minutes else None
    tty = sys.stderr.isatty()
    print(f"experiment '{name}' in {url}: task {experiment.task}, "
          f"{len(experiment.variants)} variants, "
          f"{experiment.trials if experiment.trials else 'unlimited'} trials, "
          f"{experiment.epochs} epochs, {experiment.seeds} seed(s)", file=sys.stderr)
    if args.jobs > 1:
        from .worker import run_jobs

        run_jobs(url, name, experiment, args.jobs, args.minutes, tty)
    else:
        from .worker import work

        work(url, name, experiment, deadline=deadline)
    _print_summary(url, name, experiment)
    return 0


def _print_summary(url: str, name: str, experiment) -> None:
    from .study import load_study
    from .summary import collect, format_table, summarize

    task = experiment.make_task()
    records = collect(load_study(url, name, experiment))
    rows = summarize(experiment, records, task.lower_is_better)
    waiting = sum(1 for r in records if r.state in ("waiting", "running"))
    print(f"\n{experiment.task}: test {task.metric} "
          f"({'lower' if task.lower_is_better else 'higher'} is better), baseline "
          f"{experiment.baseline}")
    print(format_table(rows, task.metric))
    if waiting:
        print(f"{waiting} trial(s) not finished: run the same command again to resume")
    storage = "" if url == "sqlite:///lab.db" else f" --storage {url}"
    print(f"report: lstmc experiment report{storage} --study {name} -o lab-report")


def cmd_report(args) -> int:
    from .report import markdown_table, write_report

    url = _storage(args)
    name = _study_name(url, args.study)
    result = write_report(url, name, args.output)
    print(markdown_table(result["rows"], result["metric"]))
    for note in result["notes"]:
        print(note)
    print(f"wrote {', '.join(p.name for p in result['files'])} to {args.output}")
    return 0


def cmd_worker(args) -> int:
    from .progress import Progress
    from .study import read_experiment
    from .worker import finished, work

    url = _storage(args)
    name = _study_name(url, args.study)
    experiment = read_experiment(url, name)
    from .study import load_study

    done = finished(load_study(url, name, experiment))
    progress = Progress(experiment.trials, done, tty=False if args.label else None,
                        prefix=args.label, quiet=args.quiet)
    deadline = time.time() + 60 * args.minutes if args.minutes else None
    ran = work(url, name, experiment, deadline=deadline, progress=progress,
               threads=args.threads)
    if not args.quiet:
        print(f"{args.label}worker done: ran {ran} trial(s)", file=sys.stderr)
    return 0


def cmd_tasks(args) -> int:
    from .tasks import TASKS

    for name, cls in TASKS.items():
        options = ", ".join(f"{k}={v}" for k, v in cls.options.items())
        print(f"{name:15} {cls.summary}")
        print(f"{'':15} metric: {cls.metric} ({'lower' if cls.lower_is_better else 'higher'} "
              f"is better); options: {options}")
    return 0
