"""lstmc.nn.LSTM / GRU / RNN against torch.nn's modules, each loaded from the other's
state_dict: outputs, final states and every gradient; float32 and float64; layers,
directions, proj_size, batch_first, unbatched input, PackedSequence, hx, bias=False.
And a training run of both, step by step."""
import pathlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstmc.nn as lnn
from lstmc.nn.specs import SPECS

ROOT = pathlib.Path(__file__).resolve().parent.parent
T, B, I, H, P = 5, 3, 3, 5, 4
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}

# (kind, options): each a configuration of the drop-in and of torch's module
CONFIGS = [
    ("LSTM", {}),
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"num_layers": 3, "batch_first": True}),
    ("LSTM", {"proj_size": P, "num_layers": 2, "bidirectional": True}),
    ("LSTM", {"bias": False}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("GRU", {"bias": False, "batch_first": True}),
    ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2}),
]


def _name(config):
    kind, options = config
    return kind + "".join(f"-{k}={v}" for k, v in options.items())


def pair(kind, options, dtype, seed=0):
    """(torch's module, lstmc's), lstmc's loaded from torch's state_dict."""
    torch.manual_seed(seed)
    reference = getattr(torch.nn, kind)(I, H, **options).to(dtype)
    ours = getattr(lnn, kind)(I, H, dtype=dtype, **options)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def hidden(kind, options, batch, dtype, unbatched=False):
    D = 2 if options.get("bidirectional") else 1
    L = options.get("num_layers", 1)
    out = options.get("proj_size") or H
    shape = (L * D, out) if unbatched else (L * D, batch, out)
    h = (0.5 * torch.randn(shape, dtype=dtype)).requires_grad_()
    if kind != "LSTM":
        return h
    cshape = shape[:-1] + (H,)
    return h, (0.5 * torch.randn(cshape, dtype=dtype)).requires_grad_()


def _leaves(hx):
    return [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]


def run(module, x, hx):
    y, state = module(x, hx)
    data = y.data if hasattr(y, "batch_sizes") else y
    states = list(state) if isinstance(state, tuple) else [state]
    loss = (data * torch.linspace(-1, 1, data.shape[-1], dtype=data.dtype)).sum()
    loss = loss + sum((s ** 2).sum() for s in states)
    leaves = [x.data if hasattr(x, "batch_sizes") else x] + _leaves(hx)
    leaves += list(module.parameters())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [data, *states], grads


def assert_same(ours, theirs, dtype, what):
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if b is None:
            assert a is None or not a.abs().max(), f"{what} {k}"
            continue
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, k=k: f"{what} {k}: {m}")


def compare(kind, options, dtype, x, hx):
    reference, ours = pair(kind, options, dtype)
    clone = (lambda v: None if v is None else tuple(t.detach().clone().requires_grad_()
             for t in v) if isinstance(v, tuple) else v.detach().clone().requires_grad_())
    values, grads = run(ours, x, clone(hx))
    values_ref, grads_ref = run(reference, x, clone(hx))
    assert_same(values, values_ref, dtype, "output/state")
    assert_same(grads, grads_ref, dtype, "gradient")


@pytest.mark.parametrize("config", CONFIGS, ids=_name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero-hx", "hx"])
def test_equals_torch(config, dtype, with_hx):
    kind, options = config
    torch.manual_seed(1)
    shape = (B, T, I) if options.get("batch_first") else (T, B, I)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    compare(kind, options, dtype, x, hidden(kind, options, B, dtype) if with_hx else None)


@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[3], CONFIGS[5]], ids=_name)
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence(config, enforce_sorted):
    kind, options = config
    dtype = torch.float64
    torch.manual_seed(2)
    lengths = torch.tensor([5, 4, 2]) if enforce_sorted else torch.tensor([2, 5, 4])
    padded = torch.randn(T, B, I, dtype=dtype)
    x = pack_padded_sequence(padded, lengths, enforce_sorted=enforce_sorted)
    x = type(x)(x.data.requires_grad_(), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    compare(kind, options, dtype, x, hidden(kind, options, B, dtype))
    reference, ours = pair(kind, options, dtype)
    y, _ = ours(x)
    y_ref, _ = reference(x)
    assert torch.equal(y.batch_sizes, y_ref.batch_sizes)
    assert y.sorted_indices is None or torch.equal(y.sorted_indices, y_ref.sorted_indices)


@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[5], CONFIGS[8]], ids=_name)
def test_unbatched(config):
    kind, options = config
    dtype = torch.float64
    torch.manual_seed(3)
    x = torch.randn(T, I, dtype=dtype, requires_grad=True)
    compare(kind, options, dtype, x, hidden(kind, options, 1, dtype, unbatched=True))


def test_state_dict_both_ways_and_same_initialization():
    torch.manual_seed(4)
    ours = lnn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)
    torch.manual_seed(4)
    theirs = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), name
    fresh = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)
    fresh.load_state_dict(ours.state_dict())


def test_inter_layer_dropout_as_torch_applies_it():
    torch.manual_seed(5)
    x = torch.randn(T, B, I)
    module = lnn.LSTM(I, H, num_layers=2, dropout=0.5)
    module.eval()
    reference = torch.nn.LSTM(I, H, num_layers=2, dropout=0.5).eval()
    reference.load_state_dict(module.state_dict())
    torch.testing.assert_close(module(x)[0], reference(x)[0], rtol=1e-4, atol=1e-5)
    module.train()
    first, second = module(x)[0], module(x)[0]
    assert not torch.equal(first, second)  # a fresh mask per call between the layers
    with pytest.warns(UserWarning, match="dropout"):
        lnn.GRU(I, H, dropout=0.2)


def test_embedded_specs_are_the_shipped_files():
    for name, text in SPECS.items():
        assert text == (ROOT / "specs" / f"{name}.lstm").read_text(), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_training_matches_torch_step_by_step(dtype):
    """30 Adam steps of a 2-layer LSTM + linear head on a synthetic task (sum of the
    inputs' signs), from the same initialization. float64: losses agree to 1e-9 relative;
    float32: to 1e-4 (the two sum in different orders; rounding differences grow a little
    over the steps)."""
    def model(lstm_type):
        torch.manual_seed(6)
        lstm = lstm_type(I, H, num_layers=2).to(dtype)
        head = torch.nn.Linear(H, 1).to(dtype)
        return lstm, head

    g = torch.Generator().manual_seed(7)
    x = torch.randn(T, 8, I, generator=g, dtype=dtype)
    target = x.sign().sum(dim=(0, 2)).unsqueeze(1) / T

    def losses(lstm_type):
        lstm, head = model(lstm_type)
        params = list(lstm.parameters()) + list(head.parameters())
        optimizer = torch.optim.Adam(params, lr=0.02)
        out = []
        for _ in range(30):
            optimizer.zero_grad()
            y, _ = lstm(x)
            loss = torch.nn.functional.mse_loss(head(y[-1]), target)
            loss.backward()
            optimizer.step()
            out.append(loss.item())
        return torch.tensor(out, dtype=torch.float64)

    ours, theirs = losses(lnn.LSTM), losses(torch.nn.LSTM)
    rtol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=0)
    assert theirs[-1] < theirs[0]  # it learned something


@pytest.mark.parametrize("kind,options", [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3)),
    ("GRU", dict(batch_first=True)),
    ("RNN", dict(nonlinearity="relu")),
])
def test_an_empty_batch_gives_empty_results_as_torch(kind, options):
    """A batch of no rows: torch's modules return empty outputs and states, and a
    backward through them gives zero gradients; so do lstmc's."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(3, 5, **options).double()
    ours = getattr(lnn, kind)(3, 5, **options).double()
    ours.load_state_dict(theirs.state_dict())
    shape = (0, 4, 3) if options.get("batch_first") else (4, 0, 3)
    results = []
    for module in (theirs, ours):
        x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        y, state = module(x)
        states = state if isinstance(state, tuple) else (state,)
        (y.sum() + sum(s.sum() for s in states)).backward()
        results.append(([tuple(y.shape)] + [tuple(s.shape) for s in states], x.grad.shape,
                        {n: p.grad for n, p in module.named_parameters()}))
    (shapes0, dx0, grads0), (shapes1, dx1, grads1) = results
    assert shapes1 == shapes0 and dx1 == dx0
    assert set(grads1) == set(grads0)
    for name, grad in grads1.items():
        torch.testing.assert_close(grad, grads0[name], rtol=0, atol=0)
    cell = lnn.RecurrentCell(lnn.specs.SPECS["lstm"], 3, 5)
    out, finals = cell(torch.zeros(0, 3))
    assert out.shape == (0, 5) and {n: f.shape for n, f in finals.items()} == {
        "h": (0, 5), "c": (0, 5)}
