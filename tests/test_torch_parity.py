"""Standard cells against PyTorch: values and every gradient, with parameters moved both
ways through params_from_torch / params_to_torch."""
import numpy as np
import pytest
import torch
from conftest import compile_spec

import lstmc

T, B, I, H, P = 5, 3, 3, 5, 4

MODULES = {
    "lstm": lambda: torch.nn.LSTM(I, H),
    "lstmp": lambda: torch.nn.LSTM(I, H, proj_size=P),
    "gru": lambda: torch.nn.GRU(I, H),
    "rnn_tanh": lambda: torch.nn.RNN(I, H, nonlinearity="tanh"),
    "rnn_relu": lambda: torch.nn.RNN(I, H, nonlinearity="relu"),
}


def _torch_states(name, state):
    h = torch.tensor(state["h"][None], requires_grad=True)
    if "c" in state:
        return (h, torch.tensor(state["c"][None], requires_grad=True))
    return h


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_values_and_gradients_equal_pytorch(name, dtype):
    torch.manual_seed(0)
    module = MODULES[name]().to(getattr(torch, dtype))
    cell = compile_spec(name, dtype=dtype)
    params = lstmc.params_from_torch(cell, module)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    state = {n: (0.5 * rng.standard_normal((B, s))).astype(dtype)
             for n, s in cell.state_sizes.items()}

    y, final, tape = cell.forward(x, params, state, train=True)
    xt = torch.tensor(x, requires_grad=True)
    init = _torch_states(name, state)
    yt, final_t = module(xt, init)
    final_t = {"h": final_t[0][0], "c": final_t[1][0]} if isinstance(final_t, tuple) else {
        "h": final_t[0]}

    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    for n in final:
        np.testing.assert_allclose(final[n], final_t[n].detach().numpy(), **tol)

    dy = rng.standard_normal(y.shape).astype(dtype)
    dstate = {n: rng.standard_normal(v.shape).astype(dtype) for n, v in final.items()}
    grads = tape.backward(dy, dstate)
    loss = (yt * torch.tensor(dy)).sum() + sum(
        (final_t[n] * torch.tensor(dstate[n])).sum() for n in final_t)
    loss.backward()

    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), **tol)
    expected = {k: v.grad for k, v in module.named_parameters()}
    got = lstmc.params_to_torch(cell, grads["params"])
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), **tol,
                                   err_msg=f"{name}: {key}")
    init = init if isinstance(init, tuple) else (init,)
    for n, tensor in zip(["h", "c"], init):
        np.testing.assert_allclose(grads["state"][n], tensor.grad[0].numpy(), **tol)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_params_round_trip_through_state_dict(name):
    cell = compile_spec(name, dtype="float32")
    params = cell.init_params(seed=3)
    module = MODULES[name]()
    module.load_state_dict(lstmc.params_to_torch(cell, params))
    back = lstmc.params_from_torch(cell, module)
    assert set(back) == set(params)
    for n in params:
        np.testing.assert_array_equal(back[n], params[n])


def test_init_params_follow_pytorch_bounds():
    cell = compile_spec("lstm", dtype="float32")
    params = cell.init_params(seed=0)
    bound = 1 / np.sqrt(H)
    assert all(np.abs(v).max() <= bound for v in params.values())
    assert cell.init_params(seed=0)["W_hi"].tobytes() == params["W_hi"].tobytes()
    assert cell.init_params(seed=1)["W_hi"].tobytes() != params["W_hi"].tobytes()


def test_constant_initial_values_from_the_spec():
    cell = compile_spec("layernorm_lstm", dtype="float32")
    params = cell.init_params()
    np.testing.assert_array_equal(params["ax_i"], np.ones(H, np.float32))
    np.testing.assert_array_equal(params["bc"], np.zeros(H, np.float32))


def test_conversion_errors():
    cell = compile_spec("lstm")
    with pytest.raises(lstmc.CompileError, match="corresponds to nn.LSTM, got GRU"):
        lstmc.params_from_torch(cell, torch.nn.GRU(I, H))
    with pytest.raises(lstmc.CompileError, match="module num_layers=2"):
        lstmc.params_from_torch(cell, torch.nn.LSTM(I, H, num_layers=2))
    with pytest.raises(lstmc.ShapeError, match="bias=False"):
        lstmc.params_from_torch(cell, torch.nn.LSTM(I, H, bias=False))
    with pytest.raises(lstmc.ShapeError, match="expected 20 rows"):
        lstmc.params_from_torch(cell, torch.nn.LSTM(I, H + 1))
    with pytest.raises(lstmc.CompileError, match="no PyTorch counterpart"):
        lstmc.params_from_torch(compile_spec("peephole_lstm"), torch.nn.LSTM(I, H))
    with pytest.raises(lstmc.CompileError, match="uses relu"):
        lstmc.params_from_torch(compile_spec("rnn_relu"), torch.nn.RNN(I, H))
