"""The lab's tasks: shapes, disjoint splits, metrics on hand-made predictions, offline."""
from __future__ import annotations

import math
import socket

import numpy as np
import pytest

pytest.importorskip("sklearn")

from lstmc.lab.errors import ExperimentError
from lstmc.lab.tasks import get_task

SMALL = {
    "adding": {"length": 12, "train": 200, "valid": 50, "test": 60},
    "copy": {"delay": 7, "symbols": 5, "train": 200, "valid": 50, "test": 60},
    "temporal_order": {"length": 30, "train": 200, "valid": 50, "test": 60},
    "digits": {"mode": "rows"},
    "chorales": {"limit": 14},
    "charlm": {"length": 40, "max_chars": 20_000},
}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No network: any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a task tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


class Built(dict):
    """Tasks built on first use, once per module (chorales skip without music21)."""

    def __missing__(self, name):
        if name == "chorales":
            pytest.importorskip("music21")
        task = get_task(name, **SMALL[name])
        task.splits()
        self[name] = task
        return task


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """The chorales' cache goes to a fresh directory, so the parse path is tested too."""
    patch = pytest.MonkeyPatch()
    patch.setenv("LSTMC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield Built()
    patch.undo()


def rows(split) -> set[bytes]:
    """Each sequence (inputs and target) as bytes, to compare splits."""
    return {split.x[i].tobytes() + np.asarray(split.y[i]).tobytes() for i in range(len(split))}


@pytest.mark.parametrize("name", list(SMALL))
def test_shapes(tasks, name):
    task = tasks[name]
    splits = task.splits()
    assert set(splits) == {"train", "valid", "test"}
    for split in splits.values():
        n, t = split.x.shape[:2]
        assert n > 0 and t > 0
        if task.vocab:
            assert split.x.dtype == np.int64 and split.x.ndim == 2
            assert 0 <= split.x.min() and split.x.max() < task.vocab
        else:
            assert split.x.dtype == np.float32 and split.x.shape[2] == task.features
        if task.per_step:
            assert split.y.shape[:2] == (n, t)
        else:
            assert len(split.y) == n
        if split.lengths is not None:
            assert split.lengths.shape == (n,) and split.lengths.max() == t
            assert split.lengths.min() >= 1


@pytest.mark.parametrize("name", list(SMALL))
def test_splits_disjoint(tasks, name):
    splits = tasks[name].splits()
    train, valid, test = (rows(splits[s]) for s in ("train", "valid", "test"))
    assert not train & valid and not train & test and not valid & test


def test_digits_split_covers_the_dataset_once(tasks):
    from sklearn.datasets import load_digits

    splits = tasks["digits"].splits()
    assert sum(len(s) for s in splits.values()) == len(load_digits().target)
    counts = np.bincount(splits["test"].y, minlength=10)
    assert counts.min() >= 30  # stratified: every class in the test set


def test_adding_targets_and_metric(tasks):
    task = tasks["adding"]
    split = task.splits()["test"]
    marked = split.x[:, :, 1] == 1
    assert (marked.sum(1) == 2).all()
    half = split.x.shape[1] // 2
    assert marked[:, :half].sum(1).tolist() == [1] * len(split)
    np.testing.assert_allclose(split.y[:, 0], (split.x[:, :, 0] * marked).sum(1), rtol=1e-6)
    assert task.score(split.y + 0.1, split) == pytest.approx(0.01, rel=1e-5)
    trivial = task.score(np.ones_like(split.y), split)
    assert 0.1 < trivial < 0.25  # the variance of a sum of two U(0, 1): 1/6


def one_hot_logits(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels] * 5.0


def test_copy_metric_counts_only_the_recall(tasks):
    task = tasks["copy"]
    split = task.splits()["test"]
    s = task.config["symbols"]
    assert (split.y[:, :-s] == 0).all() and (split.y[:, -s:] >= 1).all()
    np.testing.assert_array_equal(split.x[:, :s], split.y[:, -s:])
    logits = one_hot_logits(split.y, task.output_size)
    assert task.score(logits, split) == 1.0
    wrong = logits.copy()
    wrong[:, :-s] = 0  # errors outside the recall do not count
    assert task.score(wrong, split) == 1.0
    half = logits.copy()
    half[: len(split) // 2, -s:] = np.roll(half[: len(split) // 2, -s:], 1, axis=-1)
    assert task.score(half, split) == pytest.approx((len(split) - len(split) // 2) / len(split))


def test_temporal_order_labels_and_metric(tasks):
    task = tasks["temporal_order"]
    split = task.splits()["test"]
    for i in range(len(split)):
        seq = split.x[i, : split.lengths[i]]
        relevant = seq[(seq == task.X) | (seq == task.Y)]
        assert len(relevant) == 2 and seq[0] == task.START and seq[-1] == task.END
        assert split.y[i] == 2 * (relevant[0] - task.X) + (relevant[1] - task.X)
    logits = one_hot_logits(split.y, 4)
    assert task.score(logits, split) == 1.0
    assert task.score(one_hot_logits((split.y + 1) % 4, 4), split) == 0.0


def test_digits_metric(tasks):
    task = tasks["digits"]
    split = task.splits()["valid"]
    logits = one_hot_logits(split.y, 10)
    logits[:10] = one_hot_logits((split.y[:10] + 1) % 10, 10)
    assert task.score(logits, split) == pytest.approx(1 - 10 / len(split))
    pixels = get_task("digits", mode="pixels").splits()["test"]
    assert pixels.x.shape[1:] == (64, 1)


def test_chorales_metric_and_cache(tasks):
    task = tasks["chorales"]
    split = task.splits()["test"]
    assert set(np.unique(split.x)) <= {0.0, 1.0}
    mask = split.step_mask()
    np.testing.assert_array_equal(split.x[:, 1:][mask[:, 1:]], split.y[:, :-1][mask[:, 1:]])
    # logits 0: each key has probability 1/2, so the NLL per step is 88 ln 2
    assert task.score(np.zeros_like(split.y), split) == pytest.approx(88 * math.log(2))
    sure = np.where(split.y > 0, 20.0, -20.0)
    assert task.score(sure, split) < 1e-6
    again = get_task("chorales", limit=14)  # from the cache: the same rolls
    np.testing.assert_array_equal(again.splits()["test"].x, split.x)


def test_charlm_metric(tasks):
    task = tasks["charlm"]
    split = task.splits()["valid"]
    assert split.x.shape[1] == 40
    np.testing.assert_array_equal(split.x[:, 1:], split.y[:, :-1])
    uniform = np.zeros(split.y.shape + (task.vocab,), dtype=np.float32)
    assert task.score(uniform, split) == pytest.approx(math.log2(task.vocab))
    sure = one_hot_logits(split.y, task.vocab) * 10
    assert task.score(sure, split) < 1e-3


def test_bad_options_are_named():
    with pytest.raises(ExperimentError, match="task 'adding' has no option 'lenght'"):
        get_task("adding", lenght=3)
    with pytest.raises(ExperimentError, match="'mode' must be 'rows' or 'pixels'"):
        get_task("digits", mode="columns")
    with pytest.raises(ExperimentError, match="unknown task 'addding'"):
        get_task("addding")
    with pytest.raises(ExperimentError, match="option 'length' must be an integer"):
        get_task("adding", length="long")


def test_copy_refuses_more_rows_than_distinct_sequences():
    with pytest.raises(ExperimentError, match="2\\^2 distinct sequences cannot fill 5"):
        get_task("copy", symbols=2, categories=2, train=3, valid=1, test=1).splits()
