"""Stacks, directions and variable lengths against PyTorch's packed sequences: a 2-layer
bidirectional LSTM and GRU, values and every gradient, on every target."""
import threading

import numpy as np
import pytest
import torch
from conftest import spec_path
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstmc
from lstmc.api import write_artifact_dir

T, B, I, H = 6, 4, 3, 5
LENGTHS = np.array([6, 3, 5, 1])


def _module(kind):
    torch.manual_seed(0)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    return cls(I, H, num_layers=2, bidirectional=True).double()


@pytest.mark.parametrize("target", ["reference", "cpu"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_two_layer_bidirectional_with_lengths_equals_pytorch(kind, target, batch_first):
    module = _module(kind)
    module.batch_first = batch_first
    stack = lstmc.compile(spec_path(kind), I, H, dtype="float64", target=target,
                          num_layers=2, bidirectional=True, batch_first=batch_first)
    params = lstmc.params_from_torch(stack, module)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    state = {n: 0.5 * rng.standard_normal((4, B, H)) for n in stack.state_sizes}

    y, final, tape = stack.forward(x, params, state, train=True, lengths=LENGTHS)

    xt = torch.tensor(x, requires_grad=True)
    init = {n: torch.tensor(v, requires_grad=True) for n, v in state.items()}
    packed = pack_padded_sequence(xt, torch.tensor(LENGTHS), batch_first=batch_first,
                                  enforce_sorted=False)
    hx = (init["h"], init["c"]) if kind == "lstm" else init["h"]
    out, final_t = module(packed, hx)
    yt, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    final_t = dict(zip(["h", "c"], final_t)) if kind == "lstm" else {"h": final_t}

    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    for n in final:
        np.testing.assert_allclose(final[n], final_t[n].detach().numpy(), rtol=1e-10, atol=1e-12)

    dy = rng.standard_normal(y.shape)
    valid = (np.arange(T)[:, None] < LENGTHS[None, :])
    valid = valid.T[:, :, None] if batch_first else valid[:, :, None]
    dy = dy * valid  # outputs past a row's length are constant zeros in both
    dstate = {n: rng.standard_normal(v.shape) for n, v in final.items()}
    grads = tape.backward(dy, dstate)
    loss = (yt * torch.tensor(dy)).sum() + sum((final_t[n] * torch.tensor(dstate[n])).sum()
                                               for n in final_t)
    loss.backward()

    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    expected = {k: v.grad.numpy() for k, v in module.named_parameters()}
    got = {k: v.numpy() for k, v in lstmc.params_to_torch(stack, grads["params"]).items()}
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-9, atol=1e-11, err_msg=key)
    for n in state:
        np.testing.assert_allclose(grads["state"][n], init[n].grad.numpy(), rtol=1e-9,
                                   atol=1e-11)


def test_single_cell_batch_first_matches_time_major():
    cell = lstmc.compile(spec_path("gru"), I, H, dtype="float64")
    cell_bf = lstmc.compile(spec_path("gru"), I, H, dtype="float64", batch_first=True)
    params = cell.init_params()
    x = np.random.default_rng(1).standard_normal((T, B, I))
    y, _ = cell.forward(x, params)
    y_bf, _, tape = cell_bf.forward(np.ascontiguousarray(x.transpose(1, 0, 2)), params, train=True)
    np.testing.assert_allclose(y_bf, y.transpose(1, 0, 2), rtol=1e-14)
    assert tape.backward(np.ones_like(y_bf))["x"].shape == (B, T, I)


def test_stack_parameter_names_and_shapes():
    stack = lstmc.compile(spec_path("lstm"), I, H, num_layers=2, bidirectional=True)
    assert stack.param_shapes["l0.W_ii"] == (H, I)
    assert stack.param_shapes["l1_reverse.W_ii"] == (H, 2 * H)
    assert set(stack.init_params()) == set(stack.param_shapes)


def test_stack_bad_inputs(tmp_path):
    stack = lstmc.compile(spec_path("gru"), I, H, num_layers=2)
    params = stack.init_params()
    x = np.zeros((T, B, I), np.float32)
    with pytest.raises(lstmc.ShapeError, match=r"state\['h'\]: expected shape \(2, 4, 5\)"):
        stack.forward(x, params, {"h": np.zeros((1, B, H), np.float32)})
    with pytest.raises(lstmc.ShapeError, match="params: missing 'l1.W_hn'"):
        stack.forward(x, {k: v for k, v in params.items() if k != "l1.W_hn"})
    with pytest.raises(lstmc.ShapeError, match="lengths: each must be between 0 and T=6"):
        stack.forward(x, params, lengths=[1, 2, 7, 1])
    with pytest.raises(lstmc.CompileError, match="num_layers must be a positive integer"):
        lstmc.compile(spec_path("gru"), I, H, num_layers=0)
    # more layers than the runtime loads: refused when compiled, not when loaded
    for make in (lambda n: lstmc.compile(spec_path("gru"), I, H, num_layers=n),
                 lambda n: write_artifact_dir(spec_path("gru"), tmp_path / "a", I, H,
                                              num_layers=n)):
        with pytest.raises(lstmc.CompileError, match="num_layers=4097 is more than a stack"):
            make(4097)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("layers", [1, 2])
def test_dstate_that_is_not_a_dict_is_a_named_error(layers):
    cell = lstmc.compile(spec_path("gru"), I, H, num_layers=layers)
    x = np.zeros((T, B, I), np.float32)
    y, final, tape = cell.forward(x, cell.init_params(), train=True)
    with pytest.raises(lstmc.ShapeError, match="dstate: expected a dict of arrays, got list"):
        tape.backward(np.ones_like(y), [np.ones_like(final["h"])])


def test_a_layers_two_directions_run_at_once_on_half_the_cores_each():
    """Native cells: direction 1 on the stack's own thread while the caller runs
    direction 0, each limited to half the cores; an error in either reaches the caller,
    and the caller's own limit is as before afterwards."""
    from lstmc_runtime.threads import thread_count

    stack = lstmc.compile(spec_path("lstm"), 3, 4, target="cpu", bidirectional=True)
    cores = thread_count()
    seen = {}

    def run(d):
        seen[d] = (threading.get_ident(), thread_count())
        return d

    assert stack.each_direction(run, 2) == [0, 1]
    if cores >= 2:
        assert seen[0][0] != seen[1][0]
        assert seen[0][1] == seen[1][1] == cores // 2
    assert thread_count() == cores

    def fail(d):
        if d == 1:
            raise ValueError("direction 1")
        return d

    with pytest.raises(ValueError, match="direction 1"):
        stack.each_direction(fail, 2)
    assert thread_count() == cores
    reference = lstmc.compile(spec_path("lstm"), 3, 4, bidirectional=True)
    assert reference.each_direction(run, 2) == [0, 1]  # not native: one after the other


def test_a_packed_stack_runs_as_torch_and_stays_a_snapshot():
    """stack.pack_params: validated and packed once per layer and direction; forward
    (inference, lengths, training) with it equals nn.LSTM's; the snapshot does not see
    later changes to the caller's arrays and cannot be edited."""
    theirs = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True).double()
    stack = lstmc.compile(spec_path("lstm"), I, H, target="cpu", dtype="float64",
                          num_layers=2, bidirectional=True)
    params = lstmc.params_from_torch(stack, theirs)
    packed = stack.pack_params(params)
    assert set(packed) == set(params)
    x = torch.randn(T, B, I, dtype=torch.float64)
    want, _ = theirs(x)
    for name in params:  # the snapshot is a copy
        params[name][...] = 0
    np.testing.assert_allclose(stack.forward(x.numpy(), packed)[0], want.detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    lengths = LENGTHS
    y, _, tape = stack.forward(x.numpy(), packed, train=True, lengths=lengths)
    ours = stack.forward(x.numpy(), dict(packed), lengths=lengths)[0]
    np.testing.assert_allclose(y, ours, rtol=1e-12, atol=1e-14)
    with pytest.raises(lstmc.LstmcError, match="immutable"):
        packed["l0.W_hi"] = np.zeros((H, H))
    other = lstmc.compile(spec_path("lstm"), I, H, target="cpu", dtype="float64",
                          num_layers=2, bidirectional=True)
    np.testing.assert_allclose(other.forward(x.numpy(), packed)[0], want.detach().numpy(),
                               rtol=1e-10, atol=1e-12)  # another stack: checked as a dict
    reference = lstmc.compile(spec_path("lstm"), I, H, num_layers=2)
    with pytest.raises(lstmc.LstmcError, match="only cpu cells pack"):
        reference.pack_params(reference.init_params())


def test_a_layers_directions_are_separate_cell_objects():
    """The two directions of one compiled cell run at once, each through a lean path of
    its own: the stack holds a twin (same library, own plans) for the second."""
    stack = lstmc.compile(spec_path("lstm"), 3, 4, target="cpu", bidirectional=True)
    forward, reverse = stack.layers[0]
    assert forward is not reverse and forward.plans is not reverse.plans
    assert forward._entries is reverse._entries  # the same kernels


def test_inference_measures_directions_at_once_against_one_after_the_other(monkeypatch):
    """Each layer of a bidirectional stack offers both ways to a FasterOf of its own
    (keyed by layer and batch size); both compute what the reference computes."""
    from lstmc_runtime.choice import FasterOf

    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    ways = []
    original = FasterOf.choose

    def choose(self, alone, together, work=1.0):
        ways.append(id(self))
        return original(self, alone, together, work)
    monkeypatch.setattr(FasterOf, "choose", choose)
    reference, stack = (lstmc.compile(spec_path("lstm"), 3, 4, target=t, dtype="float64",
                                      num_layers=2, bidirectional=True)
                        for t in ("reference", "cpu"))
    params = reference.init_params(0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    expected = reference.forward(x, params)
    for _ in range(2 * FasterOf.PROBES + 1):  # each way measured, then the faster
        y, final = stack.forward(x, params)
        np.testing.assert_allclose(y, expected[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(final["c"], expected[1]["c"], rtol=1e-12, atol=1e-12)
    choices = stack._direction_choices
    assert sorted(choices) == [(0, 2), (1, 2)]  # one choice per layer and batch size
    assert all(c.best is not None for c in choices.values())
    ids = {id(c) for c in choices.values()}
    assert sum(w in ids for w in ways) == 2 * (2 * FasterOf.PROBES + 1)
