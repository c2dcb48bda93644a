"""An experiment's definition: task, variants, search space, budget and training settings.

It is resolved once (from CLI flags or a TOML file), then stored as JSON with the Optuna
study, so `report`, `worker` and a resumed `run` need nothing else: not even the spec
files, whose text is stored too.

A TOML file holds the same keys as the flags, plus tables (all optional but `task` and one
of `variants` / `preset`):

    task = "adding"
    preset = "greff"               # or: variants = ["specs/lstm.lstm", "my_cell.lstm"]
    trials = 18                    # total, spread evenly over the variants
    epochs = 3
    seeds = 1                      # training runs per configuration (metrics averaged)
    sampler = "random"             # or "tpe"
    [task_options]
    length = 100
    [space]
    learning_rate = { low = 1e-4, high = 1e-2, log = true }
    batch_size = 32
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import space as search_space
from .errors import ExperimentError

PRESETS = {
    "greff": [("vanilla", "peephole_lstm.lstm")] + [
        (name, f"greff/{name}.lstm")
        for name in ("nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr")],
}
SAMPLERS = ("random", "tpe")


@dataclass(frozen=True)
class Variant:
    """A cell to train: its label, where its spec came from, and the spec's text."""

    name: str
    path: str
    text: str
    cell: str | None = None


@dataclass
class Experiment:
    """Everything that determines an experiment's trials (the budget aside)."""

    task: str
    variants: list[Variant]
    task_options: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)
    epochs: int = 10
    seeds: int = 1
    sampler: str = "random"
    seed: int = 0
    layers: int = 1
    patience: int = 5          # epochs without a better validation metric before stopping
    clip: float = 1.0          # gradient norm clipping
    trials: int | None = None  # None: until --minutes runs out
    heartbeat: int = 20        # seconds between a running trial's heartbeats
    max_retry: int = 3         # times an interrupted trial is retried

    @property
    def baseline(self) -> str:
        return self.variants[0].name

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ExperimentError(f"the experiment has no variant '{name}' "
                              f"(its variants: {', '.join(self.variant_names)})")

    def make_task(self):
        from .tasks import get_task

        return get_task(self.task, **self.task_options)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Experiment:
        data = json.loads(text)
        data["variants"] = [Variant(**v) for v in data["variants"]]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def same_design(self, other: Experiment) -> bool:
        """Equal but for the budget (trials), which a resumed run may raise."""
        mine, theirs = asdict(self), asdict(other)
        mine.pop("trials")
        theirs.pop("trials")
        return mine == theirs

    def check(self) -> None:
        from .tasks import TASKS

        if self.task not in TASKS:
            raise ExperimentError(f"unknown task '{self.task}' (known: {', '.join(TASKS)})")
        if not self.variants:
            raise ExperimentError("an experiment needs at least one variant (a spec or "
                                  "--preset greff)")
        names = self.variant_names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ExperimentError(f"two variants are named {', '.join(dupes)}: give each "
                                  "spec file a distinct name")
        for key in ("epochs", "seeds", "layers", "patience", "heartbeat"):
            value = getattr(self, key)
            if not search_space.is_int(value) or value < 1:
                raise ExperimentError(f"'{key}' must be a positive integer, got {value!r}")
        if self.trials is not None and (not search_space.is_int(self.trials) or self.trials < 1):
            raise ExperimentError(f"'trials' must be a positive integer, got {self.trials!r}")
        # the seeds of numpy's SeedSequence, which every trial draws from, and the retry
        # budget: refused here, before a study is stored with them
        for key in ("seed", "max_retry"):
            value = getattr(self, key)
            if not search_space.is_int(value) or value < 0:
                raise ExperimentError(f"'{key}' must be an integer >= 0, got {value!r}")
        if self.sampler not in SAMPLERS:
            raise ExperimentError(f"unknown sampler '{self.sampler}' (known: "
                                  f"{', '.join(SAMPLERS)})")
        if not search_space.is_number(self.clip) or not self.clip > 0:
            raise ExperimentError(f"'clip' must be a positive number, got {self.clip!r}")
        if not isinstance(self.task_options, dict):
            raise ExperimentError(f"'task_options' must be a table of options, got "
                                  f"{self.task_options!r}")
        if not isinstance(self.space, dict):
            raise ExperimentError(f"'space' must be a table of search space entries, got "
                                  f"{self.space!r}")
        self.make_task()  # checks the task's options
        self.space = search_space.resolve(self.task, self.space)


def specs_dir() -> Path:
    """The shipped specs: `specs/` beside the package (a source checkout), else in the
    current directory."""
    here = Path(__file__).resolve().parents[2] / "specs"
    for candidate in (here, Path.cwd() / "specs"):
        if candidate.is_dir():
            return candidate
    raise ExperimentError(f"cannot find the shipped specs/ directory (looked in {here} and "
                          f"{Path.cwd() / 'specs'}); pass the variants' spec files instead")


def load_variants(paths: list[str] | None, preset: str | None) -> list[Variant]:
    """Variants from a preset and/or spec paths (`NAME=PATH` names one explicitly), each
    with its spec text read now, so the study carries it."""
    entries: list[tuple[str, str]] = []
    if preset is not None:
        if preset not in PRESETS:
            raise ExperimentError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
        root = specs_dir()
        entries += [(name, str(root / rel)) for name, rel in PRESETS[preset]]
    for item in paths or []:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        entries.append((name, _shipped_or_path(path)))
    variants = []
    for name, path in entries:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ExperimentError(f"cannot read the spec {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ExperimentError(f"the spec {path} is not UTF-8 text") from exc
        variants.append(Variant(name=name, path=os.path.relpath(path), text=text))
    return variants


def _shipped_or_path(path: str) -> str:
    """A spec path as given, or, when no such file exists, a shipped spec by its name
    ("lstm", "greff/cifg", "peephole_lstm.lstm")."""
    if Path(path).exists():
        return path
    try:
        root = specs_dir()
    except ExperimentError:
        return path
    for candidate in (root / path, root / f"{path}.lstm"):
        if candidate.is_file():
            return str(candidate)
    return path


def read_toml(path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError as exc:
            raise ExperimentError("reading a TOML config on Python 3.10 needs tomli: "
                                  "pip install tomli") from exc
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ExperimentError(f"cannot read the config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8 text
        raise ExperimentError(f"{path}: not valid TOML: not UTF-8 text (byte "
                              f"0x{exc.object[exc.start]:02x} at offset {exc.start})") from exc


CONFIG_KEYS = {"task", "variants", "preset", "task_options", "space", "epochs", "seeds",
               "sampler", "seed", "layers", "patience", "clip", "trials", "heartbeat",
               "max_retry"}


def define(config: dict, where: str = "the command line") -> Experiment:
    """Resolve a definition (TOML keys, or the CLI's flags in the same form) and check it."""
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ExperimentError(f"{where}: unknown key {', '.join(repr(u) for u in unknown)} "
                              f"(known: {', '.join(sorted(CONFIG_KEYS))})")
    if not config.get("task"):
        raise ExperimentError(f"{where}: no task (choose one with --task; "
                              "`lstmc experiment tasks` lists them)")
    if not isinstance(config["task"], str):
        raise ExperimentError(f"{where}: 'task' must be a task's name, got {config['task']!r}")
    preset = config.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ExperimentError(f"{where}: 'preset' must be a preset's name, got {preset!r}")
    variants = config.get("variants") or []
    if isinstance(variants, str) or not isinstance(variants, list) or not all(
            isinstance(v, str) for v in variants):
        raise ExperimentError(f"{where}: 'variants' must be a list of spec paths, got "
                              f"{variants!r}")
    settings = {k: v for k, v in config.items()
                if k not in ("variants", "preset") and v is not None}
    experiment = Experiment(variants=load_variants(variants, config.get("preset")), **settings)
    experiment.check()
    return experiment
