"""Batch slices on PyTorch's OpenMP team (lstmc_runtime.openmp): used when torch has loaded
libgomp, each slice on its own team thread, results as torch.nn.LSTM's; errors come back
to the caller; never inside a parallel region, in a forked child, or when turned off."""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import compile_spec, spec_path

torch = pytest.importorskip("torch")
from lstmc_runtime import openmp  # noqa: E402  (after torch: its libgomp is then loaded)


@pytest.fixture
def team():
    openmp.forget()
    found = openmp.team()
    if found is None:
        pytest.skip("this torch build has no GNU OpenMP (libgomp.so.1) loaded")
    return found


@pytest.fixture
def spy(monkeypatch, team):
    """The OpenMP thread number each slice ran on, per map call."""
    calls: list[list[int]] = []
    original = openmp.Team.map

    def recording(self, run, count):
        seen: list[int] = []
        calls.append(seen)
        return original(self, lambda i: seen.append(self._thread()) or run(i), count)

    monkeypatch.setattr(openmp.Team, "map", recording)
    return calls


def test_a_training_batch_runs_its_slices_on_the_team_and_matches_torch(monkeypatch, spy):
    import lstmc

    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    T, B, H = 6, 32, 12
    torch.manual_seed(0)
    module = torch.nn.LSTM(H, H).double()
    cell = lstmc.compile(spec_path("lstm"), H, H, target="cpu", dtype="float64")
    params = lstmc.params_from_torch(cell, module)
    x = torch.randn(T, B, H, dtype=torch.float64, requires_grad=True)
    y, state, tape = cell.forward(x.detach().numpy(), params, train=True)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    grads = tape.backward(dy)

    expected, (h_n, c_n) = module(x)
    expected.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state["c"], c_n[0].detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["x"], x.grad.numpy(), rtol=1e-9, atol=1e-11)
    dweight = np.concatenate([grads["params"][n] for n in ("W_ii", "W_if", "W_ig", "W_io")])
    np.testing.assert_allclose(dweight, module.weight_ih_l0.grad.numpy(), rtol=1e-9,
                               atol=1e-11)
    assert len(spy) >= 2  # the forward and the backward
    assert all(sorted(seen) == [0, 1] for seen in spy)  # one slice per team thread


def test_map_keeps_order_and_raises_a_slice_error(team):
    assert team.map(lambda i: i * i, 5) == [0, 1, 4, 9, 16]
    with pytest.raises(ZeroDivisionError):
        team.map(lambda i: 1 // (i - 1), 2)


def test_inside_a_parallel_region_the_caller_falls_back(team):
    inner = team.map(lambda i: team.map(lambda j: j, 2), 2)
    assert inner == [None, None]
    used = []
    got = team.map(lambda i: openmp.map_slices(
        lambda j: j + 10, 2, lambda f, items: used.append(i) or [f(k) for k in items]), 2)
    assert got == [[10, 11], [10, 11]] and sorted(used) == [0, 1]


_FORKED: dict = {}  # what the forked child reads (a fork copies it; nothing is pickled)


def _child_forward():
    case = _FORKED
    return openmp.team() is None, case["cell"].forward(case["x"], case["params"])[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_use_the_parents_team(monkeypatch, team):
    """libgomp's team does not survive a fork: the child runs its slices on lstmc's own
    threads (a child that used the copied team would hang)."""
    import multiprocessing

    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    cell = compile_spec("gru", hidden_size=10, target="cpu")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 32, cell.input_size))
    params = cell.init_params(0)
    expected = cell.forward(x, params)[0]
    team.map(lambda i: i, 2)  # the parent's team exists
    _FORKED.update(cell=cell, x=x, params=params)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        no_team, got = pool.apply_async(_child_forward).get(timeout=60)
    assert no_team
    np.testing.assert_array_equal(got, expected)


def test_lstmc_openmp_0_turns_it_off():
    code = ("import torch\nfrom lstmc_runtime import openmp\n"
            "print(openmp.team() is None)")
    env = {**os.environ, "LSTMC_OPENMP": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "True"
