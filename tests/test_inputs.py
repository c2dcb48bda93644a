"""Cells with several inputs (`cell c(x: I, ts: 1)`): the inputs after the first come to
forward by name, are validated like x, get gradients in backward(...)["inputs"], and
work with lengths, stacks, batch_first, every target and lstmc.nn. The Phased LSTM
(specs/phased_lstm.lstm) against a PyTorch implementation written here from the paper."""
import math

import numpy as np
import pytest
import torch
from conftest import central_difference, needs_opencl, spec_path
from lstmc_runtime.errors import UsageError

import lstmc
from lstmc.errors import ShapeError, SpecError

PHASED = spec_path("phased_lstm")
I, H, T, B = 3, 5, 6, 4
LEAK = 0.001
TOLERANCE = {"float64": dict(rtol=1e-9, atol=1e-11), "float32": dict(rtol=2e-4, atol=2e-5)}


def _opencl():
    needs_opencl()


TARGETS = [
    pytest.param("reference", "float64", id="reference-f64"),
    pytest.param("cpu", "float64", id="cpu-f64"),
    pytest.param("cpu", "float32", id="cpu-f32"),
    pytest.param("opencl", "float32", id="opencl-f32"),
]


# -- the oracle: Neil et al. 2016 in PyTorch ----------------------------------------------

def phased_step(p, x, ts, h, c):
    """One step of the Phased LSTM, eqs. (1), (2), (4), (6)-(11) of the paper, for rows
    x (B, I), timestamps ts (B, 1), states h, c (B, H)."""
    lin = lambda W, v: v @ W.T  # noqa: E731
    i = torch.sigmoid(lin(p["W_xi"], x) + lin(p["W_hi"], h) + p["w_ci"] * c + p["b_i"])
    f = torch.sigmoid(lin(p["W_xf"], x) + lin(p["W_hf"], h) + p["w_cf"] * c + p["b_f"])
    c_tilde = f * c + i * torch.tanh(lin(p["W_xc"], x) + lin(p["W_hc"], h) + p["b_c"])
    o = torch.sigmoid(lin(p["W_xo"], x) + lin(p["W_ho"], h) + p["w_co"] * c_tilde + p["b_o"])
    h_tilde = o * torch.tanh(c_tilde)
    phi = torch.remainder(ts - p["s"], p["tau"]) / p["tau"]
    r_on = p["r_on"]
    k = torch.where(phi < 0.5 * r_on, 2 * phi / r_on,
                    torch.where(phi < r_on, 2 - 2 * phi / r_on, LEAK * phi))
    return k * h_tilde + (1 - k) * h, k * c_tilde + (1 - k) * c


def phased_sequence(p, x, ts, h, c, lengths=None):
    """Over a sequence (T, B, .); rows past their length keep their state, output 0."""
    ys = []
    for t in range(x.shape[0]):
        h2, c2 = phased_step(p, x[t], ts[t], h, c)
        if lengths is not None:
            active = torch.as_tensor(t < lengths).unsqueeze(1)
            h2, c2 = torch.where(active, h2, h), torch.where(active, c2, c)
            ys.append(torch.where(active, h2, torch.zeros_like(h2)))
        else:
            ys.append(h2)
        h, c = h2, c2
    return torch.stack(ys), h, c


def draw(cell, T=T, B=B, seed=0):
    """Parameters in the paper's ranges (periods exp(U(0, 3)), shifts in [0, tau), open
    ratios 0.05..0.5 so that units open within a few steps), x, and increasing timestamps
    with irregular gaps."""
    rng = np.random.default_rng(seed)
    params = {n: rng.uniform(-0.5, 0.5, s) for n, s in cell.param_shapes.items()}
    params["tau"] = np.exp(rng.uniform(0, 3, H))
    params["s"] = rng.uniform(0, 1, H) * params["tau"]
    params["r_on"] = rng.uniform(0.05, 0.5, H)
    x = rng.standard_normal((T, B, I))
    ts = np.cumsum(rng.uniform(0.1, 3.0, (T, B, 1)), axis=0)
    state = {n: 0.5 * rng.standard_normal((B, H)) for n in ("h", "c")}
    return params, x, ts, state


def torch_reference(params, x, ts, state, dy, dstate, lengths=None):
    """(y, final, grads) of the oracle by autograd, every array float64."""
    leaf = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)  # noqa: E731
    p = {n: leaf(v) for n, v in params.items()}
    xt, tst, h0, c0 = leaf(x), leaf(ts), leaf(state["h"]), leaf(state["c"])
    y, h, c = phased_sequence(p, xt, tst, h0, c0, lengths)
    loss = (y * torch.tensor(dy)).sum() + (h * torch.tensor(dstate["h"])).sum() \
        + (c * torch.tensor(dstate["c"])).sum()
    loss.backward()
    grads = {"x": xt.grad.numpy(), "ts": tst.grad.numpy(), "h": h0.grad.numpy(),
             "c": c0.grad.numpy(), **{f"param {n}": v.grad.numpy() for n, v in p.items()}}
    return y.detach().numpy(), {"h": h.detach().numpy(), "c": c.detach().numpy()}, grads


def cast(d, dtype):
    return {k: np.asarray(v, dtype) for k, v in d.items()}


# -- the Phased LSTM on every target --------------------------------------------------------

@pytest.mark.parametrize("target,dtype", TARGETS)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_phased_lstm_against_torch(target, dtype, with_lengths):
    if target == "opencl":
        _opencl()
    cell = lstmc.compile(PHASED, I, H, target=target, dtype=dtype)
    assert cell.extra_inputs == {"ts": 1}
    params, x, ts, state = draw(cell)
    rng = np.random.default_rng(1)
    dy = rng.standard_normal((T, B, H))
    dstate = {n: rng.standard_normal((B, H)) for n in state}
    lengths = np.array([6, 2, 5, 1]) if with_lengths else None
    y0, final0, g0 = torch_reference(params, x, ts, state, dy, dstate, lengths)
    y, final, tape = cell.forward(np.asarray(x, dtype), cast(params, dtype),
                                  cast(state, dtype), train=True, lengths=lengths,
                                  inputs={"ts": np.asarray(ts, dtype)})
    g = tape.backward(np.asarray(dy, dtype), cast(dstate, dtype))
    tol = TOLERANCE[dtype]
    got = {"x": g["x"], "ts": g["inputs"]["ts"], "h": g["state"]["h"], "c": g["state"]["c"],
           **{f"param {n}": v for n, v in g["params"].items()}}
    np.testing.assert_allclose(np.asarray(y), y0, **tol, err_msg="y")
    for n in final0:
        np.testing.assert_allclose(np.asarray(final[n]), final0[n], **tol, err_msg=f"final {n}")
    assert got.keys() == g0.keys()
    for name, expected in g0.items():
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(np.asarray(got[name]), expected, rtol=tol["rtol"],
                                   atol=tol["atol"] * scale, err_msg=f"gradient of {name}")
    assert np.any(g0["ts"] != 0)  # the timestamps matter: some gate opens or closes
    if with_lengths:
        assert np.all(np.asarray(y)[2:, 1] == 0) and np.all(g["inputs"]["ts"][1:, 3] == 0)


def test_phased_lstm_time_gate_as_in_the_paper():
    """k_t of eq. (7) seen through the cell: a unit whose gate is closed keeps its state
    (up to the leak), one at the peak of its open phase takes the LSTM's new values."""
    cell = lstmc.compile(PHASED, 1, 2, dtype="float64")
    params = {n: np.full(s, 0.3) for n, s in cell.param_shapes.items()}
    params.update(tau=np.array([10.0, 10.0]), s=np.array([0.0, 5.0]),
                  r_on=np.array([0.2, 0.2]))
    x = np.ones((1, 1, 1))
    state = {"h": np.array([[0.7, 0.7]]), "c": np.array([[-0.4, -0.4]])}
    # ts = 1: unit 0 at phi = 0.1 = r_on / 2, the peak (k = 1); unit 1 at phi = 0.6,
    # closed (k = alpha * phi). Every parameter 0.3, x = 1, h = 0.7, c = -0.4, H = 2:
    y, final = cell.forward(x, params, state, inputs={"ts": np.array([[[1.0]]])})
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    gate = 0.3 + 0.3 * 0.7 * 2 + 0.3 * -0.4 + 0.3  # W x + U h + w_c c + b
    c_tilde = sig(gate) * -0.4 + sig(gate) * math.tanh(0.3 + 0.42 + 0.3)
    h_tilde = sig(0.3 + 0.42 + 0.3 * c_tilde + 0.3) * math.tanh(c_tilde)
    k = LEAK * 0.6
    assert y[0, 0, 0] == pytest.approx(h_tilde, abs=1e-12)
    assert final["c"][0, 0] == pytest.approx(c_tilde, abs=1e-12)
    assert y[0, 0, 1] == pytest.approx(k * h_tilde + (1 - k) * 0.7, abs=1e-12)
    assert final["c"][0, 1] == pytest.approx(k * c_tilde + (1 - k) * -0.4, abs=1e-12)


def test_reference_gradients_of_the_timestamps_match_finite_differences():
    cell = lstmc.compile(PHASED, I, H, dtype="float64")
    params, x, ts, state = draw(cell, T=4, B=2, seed=5)
    dy = np.random.default_rng(6).standard_normal((4, 2, H))
    _, _, tape = cell.forward(x, params, state, train=True, inputs={"ts": ts})
    grads = tape.backward(dy)

    def loss(p=params, ts=ts):
        y, _ = cell.forward(x, p, state, inputs={"ts": ts})
        return float(np.sum(y * dy))

    for label, array, analytic in [("ts", ts, grads["inputs"]["ts"]),
                                   ("tau", params["tau"], grads["params"]["tau"]),
                                   ("s", params["s"], grads["params"]["s"]),
                                   ("r_on", params["r_on"], grads["params"]["r_on"])]:
        numeric = central_difference(loss, array)
        np.testing.assert_allclose(analytic.reshape(-1), numeric, rtol=1e-6, atol=1e-8,
                                   err_msg=f"gradient of {label}")


# -- a cell with a vector input: products of it hoist -----------------------------------------

CONDITIONED = """
cell conditioned(x: I, z: C, m: H) -> h: H {
  param W, V, U, b
  h' = tanh(W @ x + V @ z + U @ h + b) * sigmoid(m) + m * h
}
"""


def conditioned_torch(p, x, z, m, h):
    ys = []
    for t in range(x.shape[0]):
        h = torch.tanh(x[t] @ p["W"].T + z[t] @ p["V"].T + h @ p["U"].T + p["b"]) \
            * torch.sigmoid(m[t]) + m[t] * h
        ys.append(h)
    return torch.stack(ys), h


def test_products_of_every_input_leave_the_loop():
    cell = lstmc.compile(CONDITIONED, I, H, C=2)
    text = cell.program.format()
    assert "cell conditioned(x: I, z: C, m: H)" in text
    assert "hoisted #0: H = [W[HxI]] @ x" in text
    assert "hoisted #1: H = [V[HxC]] @ z" in text
    assert cell.program.products_per_step() == 1  # U @ h only


@pytest.mark.parametrize("target,dtype", TARGETS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_conditioned_cell_against_torch(target, dtype, batch_first):
    if target == "opencl":
        _opencl()
    cell = lstmc.compile(CONDITIONED, I, H, C=2, target=target, dtype=dtype,
                         batch_first=batch_first)
    rng = np.random.default_rng(2)
    p = {n: rng.uniform(-0.6, 0.6, s) for n, s in cell.param_shapes.items()}
    x, z, m = (rng.standard_normal((T, B, n)) for n in (I, 2, H))
    h0 = rng.standard_normal((B, H))
    dy = rng.standard_normal((T, B, H))
    leaf = lambda a: torch.tensor(a, requires_grad=True)  # noqa: E731
    pt, xt, zt, mt, ht = {n: leaf(v) for n, v in p.items()}, leaf(x), leaf(z), leaf(m), leaf(h0)
    y0, _ = conditioned_torch(pt, xt, zt, mt, ht)
    (y0 * torch.tensor(dy)).sum().backward()

    lay = (lambda a: np.ascontiguousarray(np.swapaxes(a, 0, 1), dtype)) if batch_first \
        else (lambda a: np.asarray(a, dtype))
    y, _, tape = cell.forward(lay(x), cast(p, dtype), {"h": np.asarray(h0, dtype)},
                              train=True, inputs={"z": lay(z), "m": lay(m)})
    g = tape.backward(lay(dy))
    tol = TOLERANCE[dtype]
    unlay = (lambda a: np.swapaxes(np.asarray(a), 0, 1)) if batch_first else np.asarray
    np.testing.assert_allclose(unlay(y), y0.detach().numpy(), **tol)
    for name, leaf_ in [("x", xt), ("z", zt), ("m", mt)]:
        got = g["x"] if name == "x" else g["inputs"][name]
        np.testing.assert_allclose(unlay(got), leaf_.grad.numpy(), **tol, err_msg=name)
    for name, leaf_ in pt.items():
        np.testing.assert_allclose(g["params"][name], leaf_.grad.numpy(), **tol, err_msg=name)
    np.testing.assert_allclose(g["state"]["h"], ht.grad.numpy(), **tol)


# -- stacks: only x chains, the other inputs go to every layer ----------------------------------

@pytest.mark.parametrize("target,dtype", [("reference", "float64"), ("cpu", "float64"),
                                          ("opencl", "float32")])
def test_bidirectional_stack_against_torch(target, dtype):
    if target == "opencl":
        _opencl()
    stack = lstmc.compile(PHASED, I, H, num_layers=2, bidirectional=True, target=target,
                          dtype=dtype, batch_first=True)
    assert stack.extra_inputs == {"ts": 1}
    rng = np.random.default_rng(3)
    cells = {}
    for l in range(2):
        for d, suffix in enumerate(("", "_reverse")):
            size = I if l == 0 else 2 * H
            p = {n: rng.uniform(-0.5, 0.5, s) for n, s in
                 stack.layers[l][d].param_shapes.items()}
            p.update(tau=np.exp(rng.uniform(0, 2, H)), s=rng.uniform(0, 1, H),
                     r_on=rng.uniform(0.1, 0.6, H))
            assert p["W_xi"].shape == (H, size)
            cells[f"l{l}{suffix}."] = p
    params = {prefix + n: v for prefix, p in cells.items() for n, v in p.items()}
    x = rng.standard_normal((T, B, I))
    ts = np.cumsum(rng.uniform(0.1, 2.0, (T, B, 1)), axis=0)
    lengths = np.array([6, 3, 5, 1])
    dy = rng.standard_normal((T, B, 2 * H))

    leaf = lambda a: torch.tensor(a, requires_grad=True)  # noqa: E731
    pt = {n: leaf(v) for n, v in params.items()}
    xt, tst = leaf(x), leaf(ts)

    def reverse(seq):  # each row's valid prefix backwards
        index = [[(lengths[b] - 1 - t) if t < lengths[b] else t for b in range(B)]
                 for t in range(T)]
        return seq[torch.tensor(index), torch.arange(B)]

    zeros = torch.zeros(B, H, dtype=torch.float64)
    layer_input = xt
    for l in range(2):
        outs = []
        for suffix, back in (("", False), ("_reverse", True)):
            p = {n[len(f"l{l}{suffix}."):]: v for n, v in pt.items()
                 if n.startswith(f"l{l}{suffix}.")}
            seq, times = (reverse(layer_input), reverse(tst)) if back else (layer_input, tst)
            y, _, _ = phased_sequence(p, seq, times, zeros, zeros, lengths)
            outs.append(reverse(y) if back else y)
        layer_input = torch.cat(outs, -1)
    (layer_input * torch.tensor(dy)).sum().backward()

    bf = lambda a: np.ascontiguousarray(np.swapaxes(a, 0, 1), dtype)  # noqa: E731
    y, _, tape = stack.forward(bf(x), cast(params, dtype), train=True, lengths=lengths,
                               inputs={"ts": bf(ts)})
    g = tape.backward(bf(dy))
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(np.swapaxes(y, 0, 1), layer_input.detach().numpy(), **tol)
    np.testing.assert_allclose(np.swapaxes(g["x"], 0, 1), xt.grad.numpy(), **tol)
    np.testing.assert_allclose(np.swapaxes(g["inputs"]["ts"], 0, 1), tst.grad.numpy(),
                               rtol=tol["rtol"], atol=10 * tol["atol"])
    for name, value in pt.items():
        scale = max(1.0, float(value.grad.abs().max()))
        np.testing.assert_allclose(g["params"][name], value.grad.numpy(), rtol=tol["rtol"],
                                   atol=tol["atol"] * scale, err_msg=name)


# -- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_bad_inputs_are_named_errors(target):
    cell = lstmc.compile(PHASED, I, H, target=target, dtype="float64")
    params, x, ts, _ = draw(cell)
    with pytest.raises(ShapeError, match=r"inputs: missing 'ts' \(the cell's inputs after "
                                         r"the first: ts\)"):
        cell.forward(x, params)
    with pytest.raises(ShapeError, match="unexpected 'dt'"):
        cell.forward(x, params, inputs={"ts": ts, "dt": ts})
    with pytest.raises(ShapeError, match="missing 'ts'; unexpected 'dt'"):
        cell.forward(x, params, inputs={"dt": ts})
    with pytest.raises(ShapeError, match=r"inputs\['ts'\]: expected shape \(6, 4, 1\), "
                                         r"got \(6, 4, 2\)"):
        cell.forward(x, params, inputs={"ts": np.concatenate([ts, ts], -1)})
    with pytest.raises(ShapeError, match=r"inputs\['ts'\]: expected shape \(6, 4, 1\), "
                                         r"got \(5, 4, 1\)"):
        cell.forward(x, params, inputs={"ts": ts[:5]})
    with pytest.raises(ShapeError, match=r"inputs\['ts'\].*float64.*float32"):
        cell.forward(x, params, inputs={"ts": ts.astype(np.float32)})
    with pytest.raises(ShapeError, match="inputs: expected a dict of arrays, got list"):
        cell.forward(x, params, inputs=[ts])
    single = lstmc.compile(spec_path("lstm"), I, H, target=target, dtype="float64")
    with pytest.raises(ShapeError, match=r"unexpected 'ts' \(the cell's inputs after the "
                                         r"first: none\)"):
        single.forward(x, single.init_params(), inputs={"ts": ts})


def test_batch_first_inputs_are_batch_first():
    cell = lstmc.compile(PHASED, I, H, dtype="float64", batch_first=True)
    params, x, ts, _ = draw(cell)
    xb, tsb = np.ascontiguousarray(x.swapaxes(0, 1)), np.ascontiguousarray(ts.swapaxes(0, 1))
    with pytest.raises(ShapeError, match=r"inputs\['ts'\]: expected shape \(4, 6, 1\)"):
        cell.forward(xb, params, inputs={"ts": ts})
    y, _, tape = cell.forward(xb, params, train=True, inputs={"ts": tsb})
    assert tape.backward(np.ones_like(y))["inputs"]["ts"].shape == (B, T, 1)


def test_padding_never_reaches_an_output_or_gradient():
    cell = lstmc.compile(PHASED, I, H, target="cpu", dtype="float64")
    params, x, ts, _ = draw(cell)
    lengths = np.array([6, 2, 0, 4])
    for b, n in enumerate(lengths):
        x[n:, b] = np.nan
        ts[n:, b] = np.inf
    y, final, tape = cell.forward(x, params, train=True, lengths=lengths, inputs={"ts": ts})
    g = tape.backward(np.ones_like(y))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(g["inputs"]["ts"]))
    assert np.all(g["inputs"]["ts"][2:, 1] == 0) and np.all(g["inputs"]["ts"][:, 2] == 0)
    assert all(np.all(np.isfinite(v)) for v in g["params"].values())
    np.testing.assert_array_equal(final["h"][2], 0)  # length 0: the initial state (zeros)


def test_spec_errors_and_bound_cells():
    with pytest.raises(SpecError, match="'x' is declared twice"):
        lstmc.check_spec("cell c(x: I, x: 1) -> h: H { h' = tanh(W @ x) }")
    with pytest.raises(SpecError, match="'h' is declared twice"):
        lstmc.check_spec("cell c(x: I, h: 1) -> h: H { h' = tanh(W @ x) }")
    cell = lstmc.compile(PHASED, I, H, target="cpu")
    with pytest.raises(UsageError, match="takes inputs after the first"):
        cell.bind(cell.init_params())


def test_stack_inputs_whose_size_follows_x_are_refused():
    spec = "cell c(x: I, m: I) -> h: H { param W, U\n h' = tanh(W @ (x * m) + U @ h) }"
    assert lstmc.compile(spec, 3, 4).extra_inputs == {"m": 3}
    with pytest.raises(lstmc.CompileError, match=r"\{'m': 3\} in layer 0, \{'m': 4\} above"):
        lstmc.compile(spec, 3, 4, num_layers=2)


def test_artifact_round_trip(tmp_path):
    from lstmc.api import write_artifact_dir

    write_artifact_dir(PHASED, str(tmp_path / "a"), I, H, dtype="float64")
    loaded = lstmc.load(str(tmp_path / "a"))
    cell = lstmc.compile(PHASED, I, H, dtype="float64")
    params, x, ts, state = draw(cell)
    assert loaded.extra_inputs == {"ts": 1}
    y0, _ = cell.forward(x, params, state, inputs={"ts": ts})
    y1, _ = loaded.forward(x, params, state, inputs={"ts": ts})
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-12)
    write_artifact_dir(PHASED, str(tmp_path / "s"), I, H, dtype="float64", num_layers=2,
                       bidirectional=True)
    stack = lstmc.load(str(tmp_path / "s"))
    reference = lstmc.compile(PHASED, I, H, dtype="float64", num_layers=2, bidirectional=True)
    params = reference.init_params(0)
    y0, _ = reference.forward(x, params, inputs={"ts": ts})
    y1, _ = stack.forward(x, params, inputs={"ts": ts})
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-12)


# -- lstmc.nn ----------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"batch_first": True}, {"num_layers": 2,
                                                                 "bidirectional": True}])
def test_nn_recurrent_takes_inputs_by_keyword(options):
    import lstmc.nn as lnn

    torch.manual_seed(0)
    module = lnn.Recurrent(PHASED, I, H, dtype=torch.float64, **options)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("tau"):
                p.copy_(torch.exp(torch.rand(H) * 2))
            elif name.endswith("r_on"):
                p.uniform_(0.1, 0.6)
    bf = options.get("batch_first", False)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    ts = torch.cumsum(torch.rand(T, B, 1, dtype=torch.float64) * 2, 0).requires_grad_()
    lay = (lambda a: a.transpose(0, 1)) if bf else (lambda a: a)
    y, state = module(lay(x), ts=lay(ts))
    y = lay(y)
    (y ** 2).sum().backward()
    assert ts.grad is not None and ts.grad.abs().sum() > 0

    if not options.get("num_layers"):  # one layer: the torch oracle directly
        p = {n: v.detach().clone().requires_grad_() for n, v in module.named_parameters()}
        x2, ts2 = x.detach().clone().requires_grad_(), ts.detach().clone().requires_grad_()
        zeros = torch.zeros(B, H, dtype=torch.float64)
        y2, _, _ = phased_sequence(p, x2, ts2, zeros, zeros)
        (y2 ** 2).sum().backward()
        torch.testing.assert_close(y, y2)
        torch.testing.assert_close(ts.grad, ts2.grad)
        torch.testing.assert_close(x.grad, x2.grad)
        for n, v in module.named_parameters():
            torch.testing.assert_close(v.grad, p[n].grad, msg=n)

    with pytest.raises(ShapeError, match=r"missing input\(s\) ts: cell 'phased_lstm' takes "
                                         r"the inputs ts by keyword"):
        module(lay(x))
    with pytest.raises(ShapeError, match=r"unexpected input\(s\) dt"):
        module(lay(x), ts=lay(ts), dt=lay(ts))
    with pytest.raises(ShapeError, match="ts: expected shape"):
        module(lay(x), ts=lay(ts)[:2])


def test_nn_packed_inputs_must_share_the_input_lengths():
    """A packed extra input is read at the input's steps: one of other lengths (rows
    with fewer steps than the input) is refused, naming both."""
    from torch.nn.utils.rnn import pack_padded_sequence as pack

    import lstmc.nn as lnn

    module = lnn.Recurrent(PHASED, I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    ts = torch.cumsum(torch.rand(T, B, 1, dtype=torch.float64), 0)
    lengths = torch.tensor([T, 2, 3])
    y, _ = module(pack(x, lengths, enforce_sorted=False),
                  ts=pack(ts, lengths, enforce_sorted=False))
    with pytest.raises(ShapeError, match=r"ts: a PackedSequence of the input's lengths "
                                         rf"\[{T}, 2, 3\] expected, got lengths \[{T}, 1, 1\]"):
        module(pack(x, lengths, enforce_sorted=False),
               ts=pack(ts, torch.tensor([T, 1, 1]), enforce_sorted=False))


def test_nn_unbatched_and_gradcheck():
    import lstmc.nn as lnn

    torch.manual_seed(1)
    module = lnn.Recurrent(PHASED, I, H, dtype=torch.float64)
    with torch.no_grad():
        module.tau.copy_(torch.exp(torch.rand(H) * 2))
        module.r_on.uniform_(0.1, 0.6)
    x = torch.randn(T, I, dtype=torch.float64)
    ts = torch.cumsum(torch.rand(T, 1, dtype=torch.float64) * 2, 0)
    y, _ = module(x, ts=ts)
    y_batched, _ = module(x.unsqueeze(1), ts=ts.unsqueeze(1))
    torch.testing.assert_close(y, y_batched.squeeze(1))
    xb = torch.randn(T, 2, I, dtype=torch.float64, requires_grad=True)
    tsb = torch.cumsum(torch.rand(T, 2, 1, dtype=torch.float64) * 2, 0).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: module(a, ts=b)[0], (xb, tsb), eps=1e-6,
                                    atol=1e-6, rtol=1e-5)


def test_nn_recurrent_cell_steps_with_inputs():
    """RecurrentCell, one step at a time with the timestamp of each step, computes what
    Recurrent computes over the whole sequence."""
    import lstmc.nn as lnn

    torch.manual_seed(2)
    cell = lnn.RecurrentCell(PHASED, I, H, dtype=torch.float64)
    whole = lnn.Recurrent(PHASED, I, H, dtype=torch.float64)
    whole.load_state_dict(cell.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    ts = torch.cumsum(torch.rand(T, B, 1, dtype=torch.float64) * 10, 0)
    y, final = whole(x, ts=ts)
    state = None
    for t in range(T):
        out, state = cell(x[t], state, ts=ts[t])
        torch.testing.assert_close(out, y[t])
    torch.testing.assert_close(state["c"], final["c"][0])
    out, _ = cell(x[0, 0], None, ts=ts[0, 0])  # unbatched
    torch.testing.assert_close(out, y[0, 0])
    with pytest.raises(ShapeError, match=r"missing input\(s\) ts"):
        cell(x[0])
    # eager inference too: its kernels read ts as a column of x, so no lean call runs
    # (it would read past the end of a narrower x)
    with torch.no_grad(), pytest.raises(ShapeError, match=r"missing input\(s\) ts"):
        cell(x[0].float().double())


def test_nn_compiled_fullgraph_with_inputs():
    """torch.compile(fullgraph=True) traces the op with the timestamps packed into its x:
    the same outputs and gradients as eager."""
    import lstmc.nn as lnn

    torch.manual_seed(3)
    module = lnn.Recurrent(PHASED, I, H, dtype=torch.float64)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = torch.randn(T, B, I, dtype=torch.float64)
    ts = torch.cumsum(torch.rand(T, B, 1, dtype=torch.float64) * 10, 0)
    results = []
    for run in (module, compiled):
        tsg = ts.clone().requires_grad_()
        module.zero_grad()
        y, _ = run(x, ts=tsg)
        (y ** 2).sum().backward()
        results.append((y.detach(), tsg.grad, module.tau.grad.clone()))
    for eager, traced in zip(*results):
        torch.testing.assert_close(traced, eager)


def test_cuda_whole_sequence_products_read_an_input_at_its_offset():
    """The cuda target's whole-sequence GEMMs (cuBLAS through strided_gemm) with NumPy as
    the array module, as GpuCell calls them for a product of an input after the first:
    its hoisted product, weight gradient and input gradient read and write that input's
    units of the packed (T*B, I + C) rows only."""
    from lstmc_runtime.gpu.cuda import strided_gemm

    rng = np.random.default_rng(4)
    TB, width, offset, C, rows = 7, 5, 3, 2, 4  # x: 3 units, z: 2 units at offset 3
    packed = rng.standard_normal(TB * width)
    W = rng.standard_normal((rows, C))
    dh = rng.standard_normal((TB, rows))
    z = packed.reshape(TB, width)[:, offset:]
    out = np.zeros(TB * rows)
    strided_gemm(np, np.lib.stride_tricks.as_strided, TB, rows, C, packed, offset, width, 1,
                 W.reshape(-1), 0, 1, C, out, 0, rows, False)
    np.testing.assert_allclose(out.reshape(TB, rows), z @ W.T)
    dW = np.zeros(rows * C)
    strided_gemm(np, np.lib.stride_tricks.as_strided, rows, C, TB, dh.reshape(-1), 0, 1, rows,
                 packed, offset, width, 1, dW, 0, C, False)
    np.testing.assert_allclose(dW.reshape(rows, C), dh.T @ z)
    dx = np.ones(TB * width)
    strided_gemm(np, np.lib.stride_tricks.as_strided, TB, C, rows, dh.reshape(-1), 0, rows, 1,
                 W.reshape(-1), 0, C, 1, dx, offset, width, True)
    expected = np.ones((TB, width))
    expected[:, offset:] += dh @ W
    np.testing.assert_allclose(dx.reshape(TB, width), expected)
