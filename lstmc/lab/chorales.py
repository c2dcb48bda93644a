"""Bach chorales as piano rolls, from music21's bundled corpus (no network): polyphonic
next-step prediction, the JSB-Chorales setting of Boulanger-Lewandowski et al. 2012 that
Greff et al. 2017 used. Parsing the scores takes a minute, so the rolls are cached on disk
(under lstmc's cache directory, `LSTMC_CACHE_DIR`) after the first use."""
from __future__ import annotations

import hashlib
import os
from typing import ClassVar

import numpy as np

from .errors import ExperimentError, require
from .task import Split, Task

LOW, HIGH = 21, 108  # the piano's keys, MIDI numbers: 88 binary units per step
KEYS = HIGH - LOW + 1
FORMAT = 1  # bump when the roll's construction changes, to invalidate caches


class Chorales(Task):
    """Predict which of the 88 piano keys sound at the next step (quarter notes by
    default, `step` in quarter lengths) of a chorale from the keys sounding now. The
    chorales are split 60 / 20 / 20 % by a hash of their corpus path (a split that does
    not change when the corpus grows); `limit` keeps the first N chorales (sorted by path)
    for quick runs. Loss and metric: negative log-likelihood per time step (nats), the sum
    over the 88 keys of the Bernoulli log-likelihoods, averaged over the steps."""

    name = "chorales"
    summary = "polyphonic next-step prediction on Bach chorales (music21 corpus; NLL/step)"
    metric = "nll"
    lower_is_better = True
    per_step = True
    loss_kind = "bernoulli"
    options: ClassVar[dict] = {"step": 1.0, "limit": 0, "max_steps": 160}
    features = KEYS
    output_size = KEYS

    def check_options(self) -> None:
        if not self.config["step"] > 0:
            raise ExperimentError(f"task 'chorales' option 'step' must be positive, "
                                  f"got {self.config['step']}")
        if self.config["limit"] < 0 or self.config["max_steps"] < 2:
            raise ExperimentError("task 'chorales': 'limit' must be >= 0 (0: all) and "
                                  "'max_steps' >= 2")

    def build(self) -> dict[str, Split]:
        rolls = load_rolls(self.config["step"], self.config["limit"])
        parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
        for path, roll in rolls:
            bucket = int(hashlib.sha256(path.encode()).hexdigest()[:8], 16) % 10
            parts["train" if bucket < 6 else "valid" if bucket < 8 else "test"].append(roll)
        splits = {}
        for name, pieces in parts.items():
            if not pieces:
                raise ExperimentError(f"task 'chorales': no chorale fell into the {name} "
                                      "split; raise 'limit' (or set it to 0 for all)")
            splits[name] = _pad(pieces, self.config["max_steps"])
        return splits

    def score(self, prediction: np.ndarray, split: Split) -> float:
        z = np.asarray(prediction, dtype=np.float64)
        # log sigmoid(z) for a sounding key, log sigmoid(-z) for a silent one, stably
        nll = np.logaddexp(0.0, -z) * split.y + np.logaddexp(0.0, z) * (1 - split.y)
        per_step = nll.sum(-1)
        mask = split.step_mask()
        return float(per_step[mask].mean())


def _pad(rolls: list[np.ndarray], max_steps: int) -> Split:
    """Inputs are the steps 0..T-2 of each roll, targets 1..T-1; long chorales are cut into
    pieces of at most `max_steps` steps (so a batch does not run to the longest one)."""
    pieces = []
    for roll in rolls:
        for start in range(0, len(roll) - 1, max_steps):
            piece = roll[start: start + max_steps + 1]
            if len(piece) >= 2:
                pieces.append(piece)
    lengths = np.array([len(p) - 1 for p in pieces], dtype=np.int64)
    x = np.zeros((len(pieces), int(lengths.max()), KEYS), dtype=np.float32)
    y = np.zeros_like(x)
    for i, piece in enumerate(pieces):
        x[i, : len(piece) - 1] = piece[:-1]
        y[i, : len(piece) - 1] = piece[1:]
    return Split(x, y, lengths)


def load_rolls(step: float, limit: int) -> list[tuple[str, np.ndarray]]:
    """(corpus path, roll (T, 88) of 0/1) per chorale, from the cache or parsed now."""
    from ..cache import cache_root

    path = cache_root() / "lab" / f"chorales-v{FORMAT}-step{step:g}-limit{limit}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in data["names"]]
            return [(n, data[f"roll{i}"].astype(np.float32)) for i, n in enumerate(names)]
    rolls = _parse_all(step, limit)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    paths = np.array([n for n, _ in rolls])
    arrays = {f"roll{i}": r.astype(np.uint8) for i, (_, r) in enumerate(rolls)}
    # mypy lets **arrays stand for allow_pickle too; its keys are roll0, roll1, ...
    np.savez_compressed(tmp, names=paths, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)  # readers never see a half-written cache
    return rolls


def chorale_paths() -> list[str]:
    """The corpus paths of the four-part chorales bundled with music21, sorted."""
    corpus = require("music21.corpus")
    paths = corpus.chorales.Iterator(returnType="filename", numberingSystem="bwv")
    found = sorted({str(corpus.getWork(p)) for p in paths})
    if not found:
        raise ExperimentError("music21's corpus holds no Bach chorales here (is music21 "
                              "installed with its corpus?)")
    return found


def _parse_all(step: float, limit: int) -> list[tuple[str, np.ndarray]]:
    converter = require("music21.converter")
    paths = chorale_paths()
    if limit:
        paths = paths[:limit]
    rolls = []
    for path in paths:
        roll = piano_roll(converter.parse(path), step)
        if len(roll) >= 2:
            rolls.append((_short(path), roll))
    return rolls


def _short(path: str) -> str:
    """The path inside the corpus (stable across machines), for the split hash."""
    return "/".join(path.replace(os.sep, "/").split("/")[-2:])


def piano_roll(score, step: float) -> np.ndarray:
    """(T, 88) float32: 1 where a key sounds during the step."""
    notes = list(score.flatten().notes)
    end = max((float(n.offset) + float(n.duration.quarterLength) for n in notes), default=0.0)
    steps = int(np.ceil(end / step))
    roll = np.zeros((steps, KEYS), dtype=np.float32)
    for note in notes:
        start = round(float(note.offset) / step)
        stop = max(start + 1, round((float(note.offset) +
                                     float(note.duration.quarterLength)) / step))
        for pitch in note.pitches:
            if LOW <= pitch.midi <= HIGH:
                roll[start:stop, pitch.midi - LOW] = 1.0
    return roll
