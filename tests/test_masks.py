"""Dropout and zoneout: the mask generator against Random123's known answers, masks that
agree bit for bit on every target, their statistics, gradients through a fixed mask by
finite differences, and the shipped specs against PyTorch implementations written here."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import central_difference, needs_opencl, spec_path
from lstmc_runtime.errors import UsageError

import lstmc
from lstmc.errors import SpecError
from lstmc.ir import masks
from lstmc.ir.graph import Op

# Random123's tests/kat_vectors, the three philox4x32 10-round lines: counter, key, result.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

TARGETS = [
    pytest.param("reference", "float64", id="reference-f64"),
    pytest.param("reference", "float32", id="reference-f32"),
    pytest.param("cpu", "float64", id="cpu-f64"),
    pytest.param("cpu", "float32", id="cpu-f32"),
    pytest.param("opencl", "float32", id="opencl"),
]

ONLY_MASKS = """
cell masks(x: H) -> h: H {
  state a: H, v: H
  a' = dropout(x, 0.3)
  v' = variational_dropout(x, 0.5)
  h' = zoneout(x, h, 0.25)
}
"""


def compile_source(source, target, dtype, tmp_path, I=6, H=6, **kw):
    if target == "opencl":
        needs_opencl()
    path = tmp_path / "cell.lstm"
    path.write_text(source)
    return lstmc.compile(str(path), I, H, target=target, dtype=dtype, **kw)


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_matches_random123_known_answers(counter, key, expected):
    words = masks.philox4x32(counter, key)
    assert tuple(int(w) for w in words) == expected


def _mask_outputs(cell, seed, T=5, B=11):
    """(a, v, h): the dropout, variational dropout and zoneout masks of ONLY_MASKS, read
    through outputs: x = 1 gives a = dropout mask, v = variational mask; h starts at 2
    with x = 1, so zoneout keeps 2 (hit) or takes 1."""
    x = np.ones((T, B, cell.input_size), cell.dtype)
    state = {n: np.full((B, s), 2.0, cell.dtype) for n, s in cell.state_sizes.items()}
    y, final, tape = cell.forward(x, {}, state, train=True, seed=seed)
    return host(y), {n: host(v) for n, v in final.items()}, tape


@pytest.mark.parametrize("target, dtype", TARGETS)
def test_masks_are_bit_identical_across_targets(target, dtype, tmp_path):
    ref = compile_source(ONLY_MASKS, "reference", "float64", tmp_path)
    cell = compile_source(ONLY_MASKS, target, dtype, tmp_path)
    for seed in (0, 12345, 2**64 - 1):
        y_ref, final_ref, _ = _mask_outputs(ref, seed)
        y, final, tape = _mask_outputs(cell, seed)
        assert tape.seed == seed
        # every value is exactly 0, 1, 2 or 1/(1-p): equal once rounded to the dtype
        np.testing.assert_array_equal(y, y_ref.astype(dtype))
        for name in final_ref:
            np.testing.assert_array_equal(final[name], final_ref[name].astype(dtype))


def test_masks_follow_their_definition(tmp_path):
    """The values drawn are the ones ir/masks.py defines, computed here from the Philox
    words themselves (KAT-checked above), for the dropout and zoneout of ONLY_MASKS."""
    cell = compile_source(ONLY_MASKS, "reference", "float64", tmp_path)
    T, B, H, seed = 5, 11, 6, 99
    y, final, _ = _mask_outputs(cell, seed, T, B)
    lo, hi = seed & 0xFFFFFFFF, seed >> 32
    j, b = np.meshgrid(np.arange(H), np.arange(B))
    # zoneout is site 2 (the third random call); its last step decides final h
    word = masks.philox4x32((j, b, T - 1, 2), (lo, hi))[0]
    keep_old = (word >> 8) < round(0.25 * 2**24)
    previous = y[T - 2]
    np.testing.assert_array_equal(final["h"], np.where(keep_old, previous, 1.0))
    # variational dropout is site 1 with the step word 0xFFFFFFFF at every step
    word = masks.philox4x32((j, b, 0xFFFFFFFF, 1), (lo, hi))[0]
    dropped = (word >> 8) < round(0.5 * 2**24)
    np.testing.assert_array_equal(final["v"], np.where(dropped, 0.0, 2.0))


def test_seeds_differ_and_variational_masks_hold_over_the_sequence(tmp_path):
    cell = compile_source(ONLY_MASKS, "cpu", "float64", tmp_path)
    T, B = 7, 16
    x = np.ones((T, B, 6))
    ys = []
    for seed in (1, 2):
        y, final, tape = cell.forward(x, {}, None, train=True, seed=seed)
        ys.append(final["a"])
    assert not np.array_equal(ys[0], ys[1])
    # the unseeded calls draw fresh seeds, recorded on the tape
    _, f1, t1 = cell.forward(x, {}, None, train=True)
    _, f2, t2 = cell.forward(x, {}, None, train=True)
    assert t1.seed != t2.seed and not np.array_equal(f1["a"], f2["a"])
    # v's state is written at every step; a one-step and a long sequence end alike
    _, short, _ = cell.forward(x[:1], {}, None, train=True, seed=5)
    _, long, _ = cell.forward(x, {}, None, train=True, seed=5)
    np.testing.assert_array_equal(short["v"], long["v"])
    assert not np.array_equal(short["a"], long["a"])  # a fresh dropout mask per step


def test_dropout_rate_is_within_a_binomial_bound(tmp_path):
    cell = compile_source(ONLY_MASKS, "cpu", "float32", tmp_path, I=64, H=64)
    T, B = 50, 32
    x = np.ones((T, B, 64), np.float32)
    state = {n: np.full((B, 64), 2.0, np.float32) for n in cell.state_sizes}
    _, final, _ = cell.forward(x, {}, state, train=True, seed=2024)
    y, _, _ = cell.forward(x, {}, state, train=True, seed=2024)
    # the zoneout output h: 2 held over from the start while kept, else 1; count over
    # every step through y: at step t h is 1 unless every step so far kept it
    for values, p, hit in ((final["a"], 0.3, 0.0), (final["v"], 0.5, 0.0)):
        n = values.size
        rate = float(np.mean(values == hit))
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n), (p, rate)
        kept = values[values != hit]
        np.testing.assert_allclose(kept, 1.0 / (1.0 - p), rtol=1e-6)
    first = y[0]  # step 0: kept (2) with probability 0.25
    rate = float(np.mean(first == 2.0))
    assert abs(rate - 0.25) < 5 * math.sqrt(0.25 * 0.75 / first.size)


@pytest.mark.parametrize("target, dtype", TARGETS)
def test_inference_uses_the_expectation(target, dtype, tmp_path):
    """Zoneout at inference: h_t = p h_{t-1} + (1 - p) x_t; dropout: the identity."""
    cell = compile_source(ONLY_MASKS, target, dtype, tmp_path)
    rng = np.random.default_rng(3)
    T, B = 6, 4
    x = rng.standard_normal((T, B, 6)).astype(dtype)
    h0 = rng.standard_normal((B, 6)).astype(dtype)
    state = {"h": h0, "a": np.zeros_like(h0), "v": np.zeros_like(h0)}
    y, final = cell.forward(x, {}, state)
    h, expected = h0.astype(np.float64), []
    for t in range(T):
        h = 0.25 * h + 0.75 * x[t]
        expected.append(h)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(host(y), np.stack(expected), rtol=tol, atol=tol)
    np.testing.assert_allclose(host(final["a"]), x[-1], rtol=tol, atol=tol)


GRAD_SPEC = """
cell dz(x: I) -> h: H {
  state c: H
  param W, U, b
  g = tanh(W @ dropout(x, 0.4) + U @ variational_dropout(h, 0.3) + b)
  c' = zoneout(g * 0.5 + c, c, 0.35)
  h' = zoneout(tanh(c'), dropout(h, 0.2), 0.25)
}
"""


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_gradient_through_fixed_masks_matches_finite_differences(target, tmp_path):
    cell = compile_source(GRAD_SPEC, target, "float64", tmp_path, I=3, H=4)
    rng = np.random.default_rng(0)
    T, B, seed = 5, 3, 77
    params = {n: rng.uniform(-0.8, 0.8, s) for n, s in cell.param_shapes.items()}
    x = rng.standard_normal((T, B, 3))
    state = {n: 0.5 * rng.standard_normal((B, s)) for n, s in cell.state_sizes.items()}
    w = rng.standard_normal((T, B, 4))

    def loss(x, params, state):
        y, final, _ = cell.forward(x, params, state, train=True, seed=seed)
        return float(np.sum(y * w) + np.sum(final["c"]))

    _, final, tape = cell.forward(x, params, state, train=True, seed=seed)
    g = tape.backward(w, {"c": np.ones_like(final["c"])})

    def numeric(array, index, f):
        return central_difference(f, array, [index])[0]

    for index in [(0, 0, 0), (2, 1, 2), (4, 2, 1)]:
        d = numeric(x, index, lambda: loss(x, params, state))
        assert abs(d - g["x"][index]) < 1e-6 * max(1, abs(d))
    for name, value in params.items():
        for index in list(np.ndindex(value.shape))[:: max(1, value.size // 4)]:
            d = numeric(value, index, lambda: loss(x, params, state))
            assert abs(d - g["params"][name][index]) < 1e-6 * max(1, abs(d)), (name, index)
    for name, value in state.items():
        d = numeric(value, (1, 2), lambda: loss(x, params, state))
        assert abs(d - g["state"][name][1, 2]) < 1e-6 * max(1, abs(d)), name


def test_the_backward_never_stores_a_mask(tmp_path):
    cell = compile_source(GRAD_SPEC, "reference", "float64", tmp_path, I=3, H=4)
    program = cell.program
    mask_nodes = [n for n in program.graph.nodes if n.op == Op.MASK]
    assert len(mask_nodes) == 5
    assert not [n for n in program.saved if n.op == Op.MASK]
    # the backward step reads the masks (it draws them again)
    backward_reads = {i.id for s in program.backward for n in s.nodes for i in n.inputs}
    assert {n.id for n in mask_nodes} & backward_reads
    native = compile_source(GRAD_SPEC, "cpu", "float64", tmp_path, I=3, H=4)
    saved = {b.name for b in native.contract.entries["backward"].buffers
             if b.name.startswith("saved:")}
    assert saved == {f"saved:{n.id}" for n in program.saved}


def test_stacks_give_each_layer_its_own_masks(tmp_path):
    path = tmp_path / "d.lstm"
    path.write_text("cell d(x: H) -> h: H { h' = dropout(x, 0.5) + 0 * h }")
    stack = lstmc.compile(str(path), 8, 8, target="cpu", num_layers=4)
    x = np.ones((3, 4, 8), np.float32)
    params = stack.init_params()
    y1, final1, tape = stack.forward(x, params, train=True, seed=3)
    y2, _, _ = stack.forward(x, params, train=True, seed=3)
    np.testing.assert_array_equal(y1, y2)
    assert tape.seed == 3
    h = final1["h"]  # (layers, B, 8): four different masks
    assert len({h[k].tobytes() for k in range(4)}) == 4
    y3, _ = stack.forward(x, params)  # inference: no dropout
    np.testing.assert_array_equal(y3, np.ones((3, 4, 8), np.float32))


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "7", True])
def test_bad_seeds_are_refused(seed, tmp_path):
    cell = compile_source(ONLY_MASKS, "cpu", "float32", tmp_path)
    with pytest.raises(UsageError, match="seed"):
        cell.forward(np.ones((2, 2, 6), np.float32), {}, train=True, seed=seed)


@pytest.mark.parametrize("call, message", [
    ("dropout(x, 1)", r"\[0, 1\), got 1"),
    ("dropout(x, 1.5)", r"\[0, 1\), got 1.5"),
    ("zoneout(x, h, 2)", r"\[0, 1\], got 2"),
    ("dropout(x, h)", "must be a number"),
    ("dropout(x)", "takes 2 arguments"),
])
def test_bad_probabilities_are_spec_errors(call, message, tmp_path):
    path = tmp_path / "bad.lstm"
    path.write_text(f"cell bad(x: H) -> h: H {{\n  h' = {call}\n}}\n")
    with pytest.raises(SpecError, match=message) as info:
        lstmc.compile(str(path), 4, 4)
    assert "bad.lstm:2:" in str(info.value)


# -- the shipped specs against PyTorch ------------------------------------------------------

torch = pytest.importorskip("torch")


def _mask(site, p, seed, t, B, H, per_sequence=False):
    """The hits of one mask site, from the Philox words (KAT-checked above)."""
    step = 0xFFFFFFFF if per_sequence else t
    j, b = np.meshgrid(np.arange(H), np.arange(B))
    word = masks.philox4x32((j, b, step, site), (seed & 0xFFFFFFFF, seed >> 32))[0]
    return torch.from_numpy((word >> 8) < round(p * 2**24))


def _lstm_gates(P, x, h):
    z = {}
    for g in "ifgo":
        z[g] = x @ P[f"W_i{g}"].T + h @ P[f"W_h{g}"].T + P[f"b_{g}"]
    return (torch.sigmoid(z["i"]), torch.sigmoid(z["f"]), torch.tanh(z["g"]),
            torch.sigmoid(z["o"]))


def torch_zoneout_lstm(P, x, h, c, seed):
    ys = []
    for t in range(x.shape[0]):
        i, f, g, o = _lstm_gates(P, x[t], h)
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        if seed is None:  # inference: the expectation
            c, h = 0.15 * c + 0.85 * c_new, 0.05 * h + 0.95 * h_new
        else:
            B, H = h.shape
            c = torch.where(_mask(0, 0.15, seed, t, B, H), c, c_new)
            h = torch.where(_mask(1, 0.05, seed, t, B, H), h, h_new)
        ys.append(h)
    return torch.stack(ys), h, c


def torch_awd_lstm(P, x, h, c, seed):
    B, H = h.shape
    keep = (1.0 if seed is None else
            (~_mask(0, 0.25, seed, 0, B, H, per_sequence=True)).double() / 0.75)
    ys = []
    for t in range(x.shape[0]):
        i, f, g, o = _lstm_gates(P, x[t], h * keep)
        c = f * c + i * g
        h = o * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), h, c


@pytest.mark.parametrize("name, oracle", [("zoneout_lstm", torch_zoneout_lstm),
                                          ("awd_lstm", torch_awd_lstm)])
@pytest.mark.parametrize("target, dtype", [("reference", "float64"), ("cpu", "float64"),
                                           ("cpu", "float32"), ("opencl", "float32")])
@pytest.mark.parametrize("train", [True, False])
def test_shipped_specs_match_pytorch(name, oracle, target, dtype, train):
    if target == "opencl":
        needs_opencl()
    cell = lstmc.compile(spec_path(name), 3, 5, target=target, dtype=dtype)
    rng = np.random.default_rng(4)
    T, B, seed = 6, 9, 31337
    params = {n: rng.uniform(-0.5, 0.5, s).astype(dtype) for n, s in cell.param_shapes.items()}
    x = rng.standard_normal((T, B, 3)).astype(dtype)
    state = {n: (0.5 * rng.standard_normal((B, 5))).astype(dtype) for n in ("h", "c")}
    dy = rng.standard_normal((T, B, 5)).astype(dtype)

    P = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in params.items()}
    X = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    S = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in state.items()}
    ys, h, c = oracle(P, X, S["h"], S["c"], seed if train else None)
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == "float64" else dict(rtol=2e-4, atol=2e-5)
    if not train:
        y, final = cell.forward(x, params, state)
        np.testing.assert_allclose(host(y), ys.detach().numpy(), **tol)
        return
    y, final, tape = cell.forward(x, params, state, train=True, seed=seed)
    np.testing.assert_allclose(host(y), ys.detach().numpy(), **tol)
    np.testing.assert_allclose(host(final["c"]), c.detach().numpy(), **tol)
    (ys * torch.tensor(dy, dtype=torch.float64)).sum().add(c.sum()).backward()
    g = tape.backward(dy, {"c": np.ones((B, 5), dtype)})
    np.testing.assert_allclose(host(g["x"]), X.grad.numpy(), **tol)
    for n in params:
        np.testing.assert_allclose(host(g["params"][n]), P[n].grad.numpy(), **tol, err_msg=n)
    for n in ("h", "c"):
        np.testing.assert_allclose(host(g["state"][n]), S[n].grad.numpy(), **tol, err_msg=n)


@pytest.mark.parametrize("target, dtype", TARGETS)
def test_a_training_pass_without_masks_differentiates_the_inference_function(
        target, dtype, tmp_path):
    cell = compile_source(ONLY_MASKS, target, dtype, tmp_path)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 6)).astype(dtype)
    y_infer, _ = cell.forward(x, {})
    y, _, tape = cell.forward(x, {}, train=True, masks=False)
    assert tape.seed is None
    np.testing.assert_array_equal(host(y), host(y_infer))
    g = tape.backward(np.ones(y.shape, dtype))
    # h_t = 0.25 h_{t-1} + 0.75 x_t: dL/dx_t = 0.75 * sum_{k>=0} 0.25^k over later steps
    T = x.shape[0]
    expected = np.array([0.75 * sum(0.25 ** k for k in range(T - t)) for t in range(T)])
    np.testing.assert_allclose(host(g["x"]), np.broadcast_to(expected[:, None, None], x.shape),
                               rtol=1e-6)


# -- lstmc.nn: masks from torch's generator ---------------------------------------------------

def test_nn_module_draws_masks_in_training_mode_only():
    import lstmc.nn as lnn

    m = lnn.Recurrent(spec_path("zoneout_lstm"), 3, 5, dtype=torch.float64)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    torch.manual_seed(1)
    y1, _ = m(x)
    torch.manual_seed(1)
    y2, _ = m(x)
    y3, _ = m(x)
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    m.eval()
    y_eval, _ = m(x)
    cell = lstmc.compile(spec_path("zoneout_lstm"), 3, 5, dtype="float64")
    params = {n: p.detach().numpy() for n, p in m.named_parameters()}
    y_ref, _ = cell.forward(x.numpy(), params)
    np.testing.assert_allclose(y_eval.detach().numpy(), y_ref, rtol=1e-12, atol=1e-12)


def test_nn_module_gradients_through_its_masks():
    import lstmc.nn as lnn

    m = lnn.Recurrent(spec_path("awd_lstm"), 3, 4, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)

    def run(x, *params):
        torch.manual_seed(123)  # the same masks at every evaluation
        return m(x)[0]

    assert torch.autograd.gradcheck(run, (x,), eps=1e-6, atol=1e-7)
    torch.manual_seed(123)
    m(x)[0].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
