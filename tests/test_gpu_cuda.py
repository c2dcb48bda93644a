"""On a machine with an NVIDIA GPU and CuPy: every spec on target "cuda" (step by step,
with the CUDA graph, and persistent) against the float64 reference executor, and the
standard LSTM and GRU against PyTorch's cuDNN. Skipped elsewhere.
Run them alone with: .venv/bin/python -m pytest -m gpu"""
import numpy as np
import pytest
from conftest import SPEC_NAMES, spec_path
from gpu_common import compare_spec, gpu_cell


def _cuda_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _cuda_available(), reason="no CUDA device and CuPy")]

_cells = {}


def cuda_cell(name):
    if name not in _cells:
        _cells[name] = gpu_cell(name, "cuda")
    return _cells[name]


def to_host(array):
    import cupy
    return cupy.asnumpy(array)


@pytest.mark.parametrize("name", SPEC_NAMES)
@pytest.mark.parametrize("path", ["steps", "persistent"])
def test_spec_matches_reference(name, path):
    cell = cuda_cell(name)
    for seed in (0, 1):  # the second call replays the captured CUDA graph
        compare_spec(name, "cuda", persistent=(path == "persistent"), seed=seed,
                     to_host=to_host, cell=cell)


def test_returns_cupy_arrays_and_accepts_them():
    import cupy

    import lstmc

    cell = lstmc.compile(spec_path("lstm"), 8, 16, target="cuda")
    params = {k: cupy.asarray(v) for k, v in cell.init_params().items()}
    x = cupy.ones((4, 2, 8), cupy.float32)
    y, state = cell.forward(x, params)
    assert isinstance(y, cupy.ndarray) and y.shape == (4, 2, 16)
    assert isinstance(state["c"], cupy.ndarray)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch", [1, 32])
def test_against_cudnn(kind, batch):
    import cupy
    import torch

    import lstmc
    from lstmc.interop.torch import params_from_torch, params_to_torch

    if not torch.cuda.is_available():
        pytest.skip("this PyTorch build has no CUDA (cuDNN is the oracle here)")
    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False  # cuDNN's RNNs use TF32 by default
    torch.backends.cuda.matmul.allow_tf32 = False
    T, I, H = 20, 64, 128
    module = getattr(torch.nn, kind)(I, H).cuda()
    spec = "lstm" if kind == "LSTM" else "gru"
    cell = lstmc.compile(spec_path(spec), I, H, target="cuda")
    params = {k: cupy.asarray(v) for k, v in params_from_torch(cell, module).items()}
    x = torch.randn(T, batch, I, device="cuda", requires_grad=True)
    y_ref, _ = module(x)
    dy = torch.randn_like(y_ref)
    y_ref.backward(dy)
    y, _, tape = cell.forward(cupy.asarray(x.detach()), params, train=True)
    grads = tape.backward(cupy.asarray(dy))
    np.testing.assert_allclose(cupy.asnumpy(y), y_ref.detach().cpu().numpy(), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(cupy.asnumpy(grads["x"]), x.grad.cpu().numpy(), atol=1e-4, rtol=1e-3)
    got = params_to_torch(cell, {k: cupy.asnumpy(v) for k, v in grads["params"].items()})
    for name, parameter in module.named_parameters():
        np.testing.assert_allclose(got[name].numpy(), parameter.grad.cpu().numpy(), atol=1e-3,
                                   rtol=1e-3, err_msg=name)


def test_bidirectional_stack_with_lengths():
    import cupy
    from gpu_common import assert_close, flatten

    import lstmc

    kwargs = dict(num_layers=2, bidirectional=True)
    reference = lstmc.compile(spec_path("lstm"), 3, 5, dtype="float64", **kwargs)
    stack = lstmc.compile(spec_path("lstm"), 3, 5, target="cuda", **kwargs)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 4, 3))
    params = reference.init_params(seed=2)
    lengths = np.array([6, 3, 1, 5])
    dy = rng.standard_normal((6, 4, 10))
    results = []
    for cell, xp, dtype in ((reference, np, np.float64), (stack, cupy, np.float32)):
        y, final, tape = cell.forward(xp.asarray(x, dtype),
                                      {k: xp.asarray(v, dtype) for k, v in params.items()},
                                      train=True, lengths=lengths)
        grads = tape.backward(xp.asarray(dy, dtype))
        results.append(flatten(y, final, grads, np.asarray if xp is np else cupy.asnumpy))
    assert_close(*results)
