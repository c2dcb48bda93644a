"""Inference on bfloat16 weights (cell.pack_params(params, weights="bfloat16")): the
rounding against PyTorch's bfloat16 conversion; the forward against torch.nn.LSTM and the
reference executor run with the same rounded weights (so the only difference left is
float32 arithmetic), on every path (lean, general, threaded, slices, stacks); and the
errors around it."""
import numpy as np
import pytest
from conftest import SPEC_NAMES, compile_spec, random_inputs, spec_path
from lstmc_runtime.bfloat16 import from_bfloat16, to_bfloat16
from lstmc_runtime.errors import ArtifactError, UsageError
from lstmc_runtime.manifest import CpuManifest

import lstmc

torch = pytest.importorskip("torch")
CLOSE = dict(rtol=2e-5, atol=2e-6)  # float32 arithmetic in different orders


def torch_bf16(values: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.asarray(values, np.float32)).to(torch.bfloat16).float().numpy()


def test_rounding_matches_torch_bfloat16():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, 100_000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0.0, -0.0, 1.0, np.inf, -np.inf, 3.4028235e38, -3.4028235e38,
                        1e-45, 1.1754942e-38, 1.00390625, 1.01171875, 0.1], np.float32)
    ties = np.array([0x3F808000, 0x3F818000, 0x3F80_8001, 0x3F80_7FFF], np.uint32)
    values = np.concatenate([bits.view(np.float32), special, ties.view(np.float32)])
    ours = from_bfloat16(to_bfloat16(values))
    theirs = torch_bf16(values)
    nan = np.isnan(theirs)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours[~nan].view(np.uint32), theirs[~nan].view(np.uint32))


def rounded_weights(cell, params: dict) -> dict:
    """params with every matrix the kernels pack (the products' weights) rounded."""
    packed = {name for p in cell.contract.packed.values() for name, _ in p.segments}
    return {n: torch_bf16(v).astype(v.dtype) if n in packed else v for n, v in params.items()}


@pytest.mark.parametrize("threads", ["1", "2"])
def test_lstm_on_bf16_weights_matches_torch_with_those_weights(monkeypatch, threads):
    """B = 1 (the lean path, threaded by units with 2 threads), B = 3 with lengths (the
    general path), B = 40 (batch slices) and bound steps, against torch.nn.LSTM holding
    the bf16-rounded weights."""
    monkeypatch.setenv("LSTMC_NUM_THREADS", threads)
    monkeypatch.setattr("lstmc_runtime.native.THREADED_STEP_WEIGHTS", 0)
    H = 64
    cell = lstmc.compile(spec_path("lstm"), H, H, target="cpu")
    module = torch.nn.LSTM(H, H)
    params = lstmc.params_from_torch(cell, module)
    packed = cell.pack_params(params, weights="bfloat16")
    assert packed.weights == "bfloat16"
    assert all(v.dtype == np.uint16 for v in packed.packs.values())
    with torch.no_grad():
        for w in (module.weight_ih_l0, module.weight_hh_l0):
            w.copy_(w.to(torch.bfloat16).float())
    rng = np.random.default_rng(2)
    for B, lengths in ((1, None), (3, np.array([12, 5, 9])), (40, None)):
        x = rng.standard_normal((12, B, H)).astype(np.float32)
        with torch.no_grad():
            if lengths is None:
                expected, (h_n, c_n) = module(torch.from_numpy(x))
            else:
                seq = torch.nn.utils.rnn.pack_padded_sequence(
                    torch.from_numpy(x), torch.from_numpy(lengths), enforce_sorted=False)
                out, (h_n, c_n) = module(seq)
                expected = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=12)[0]
        for _ in range(2):  # a plan made, then reused
            y, final = cell.forward(x, packed, lengths=lengths)
            np.testing.assert_allclose(y, expected.numpy(), **CLOSE)
            np.testing.assert_allclose(final["h"], h_n[0].numpy(), **CLOSE)
            np.testing.assert_allclose(final["c"], c_n[0].numpy(), **CLOSE)
    bound = cell.bind(packed)
    x = rng.standard_normal((12, 1, H)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x))[0].numpy()
    y = np.concatenate([bound.step(x[:5]), bound.step(x[5:])])
    np.testing.assert_allclose(y, expected, **CLOSE)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_every_spec_on_bf16_weights_matches_the_reference(monkeypatch, name):
    """Each spec's bf16 forward (threaded, split by units or stage by stage; H = 64)
    against the reference executor in float64 on the same rounded weights."""
    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    monkeypatch.setattr("lstmc_runtime.native.THREADED_STEP_WEIGHTS", 0)
    reference = compile_spec(name, hidden_size=64)
    native = compile_spec(name, hidden_size=64, target="cpu", dtype="float32")
    if native.extra_inputs:
        pytest.skip("takes inputs after x: packed calls give them by name, covered below")
    x, params, state = random_inputs(reference, T=7, B=2)
    params32 = {n: v.astype(np.float32) for n, v in params.items()}
    packed = native.pack_params(params32, weights="bfloat16")
    state32 = {n: v.astype(np.float32) for n, v in state.items()}
    if native.derived:  # matrices the runtime computes from parameters, then rounds
        y32 = native.forward(x.astype(np.float32), params32, state32)[0]
        y16 = native.forward(x.astype(np.float32), packed, state32)[0]
        assert 0 < np.abs(y16 - y32).max() < 2e-2
        return
    rounded = rounded_weights(native, {n: v.astype(np.float64) for n, v in params32.items()})
    y0, f0 = reference.forward(x, rounded, state)
    y1, f1 = native.forward(x.astype(np.float32), packed, state32)
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-5)
    for n in f0:
        np.testing.assert_allclose(f1[n], f0[n], rtol=1e-4, atol=1e-5, err_msg=n)


def test_extra_inputs_and_stacks_on_bf16_weights():
    """phased_lstm's timestamps by name; a 2-layer bidirectional stack packed once."""
    reference = compile_spec("phased_lstm", hidden_size=32)
    native = compile_spec("phased_lstm", hidden_size=32, target="cpu", dtype="float32")
    x, params, state = random_inputs(reference, T=6, B=2)
    ts = np.abs(np.random.default_rng(3).standard_normal((6, 2, 1))) * 5
    params32 = {n: v.astype(np.float32) for n, v in params.items()}
    rounded = rounded_weights(native, {n: v.astype(np.float64) for n, v in params32.items()})
    y0, _ = reference.forward(x, rounded, state, inputs={"ts": ts})
    y1, _ = native.forward(x.astype(np.float32), native.pack_params(params32, "bfloat16"),
                           {n: v.astype(np.float32) for n, v in state.items()},
                           inputs={"ts": ts.astype(np.float32)})
    np.testing.assert_allclose(y1, y0, rtol=1e-3, atol=1e-4)  # float32 timestamps' phases

    H = 32
    stack = lstmc.compile(spec_path("lstm"), H, H, target="cpu", num_layers=2,
                          bidirectional=True)
    module = torch.nn.LSTM(H, H, num_layers=2, bidirectional=True)
    params = lstmc.params_from_torch(stack, module)
    packed = stack.pack_params(params, weights="bfloat16")
    with torch.no_grad():
        for name, w in module.named_parameters():
            if name.startswith("weight"):
                w.copy_(w.to(torch.bfloat16).float())
        x = np.random.default_rng(4).standard_normal((10, 1, H)).astype(np.float32)
        expected = module(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(stack.forward(x, packed)[0], expected, **CLOSE)


def test_bf16_weights_errors():
    cell32 = compile_spec("lstm", hidden_size=8, target="cpu", dtype="float32")
    cell64 = compile_spec("lstm", hidden_size=8, target="cpu")
    params = {n: v.astype(np.float32) for n, v in cell64.init_params(0).items()}
    with pytest.raises(UsageError, match="weights must be 'float32' or 'bfloat16', got "
                                         "'float16'"):
        cell32.pack_params(params, weights="float16")
    with pytest.raises(UsageError, match="bfloat16 weights are for float32 cells; this "
                                         "cell is float64"):
        cell64.pack_params(cell64.init_params(0), weights="bfloat16")
    packed = cell32.pack_params(params, weights="bfloat16")
    x = np.zeros((3, 1, 3), np.float32)
    with pytest.raises(UsageError, match=r"forward\(train=True\): these parameters were "
                                         "packed with bfloat16 weights"):
        cell32.forward(x, packed, train=True)
    with pytest.raises(UsageError, match="immutable"):
        packed["W_ii"] = params["W_ii"]
    assert cell32.pack_params(params, weights="float32").weights == "float32"


def test_manifests_name_the_bf16_entries_of_float32_cells_only():
    cell32 = compile_spec("lstm", hidden_size=8, target="cpu", dtype="float32")
    cell64 = compile_spec("lstm", hidden_size=8, target="cpu")
    assert {"forward_bf16", "forward_bf16_mt"} <= set(cell32.manifest["entries"])
    assert not {"forward_bf16", "forward_bf16_mt"} & set(cell64.manifest["entries"])
    data = dict(cell32.manifest, entries=dict(cell32.manifest["entries"]))
    del data["entries"]["forward_bf16_mt"]
    with pytest.raises(ArtifactError, match="entry points must be exactly"):
        CpuManifest.from_json(data)
    data = dict(cell64.manifest, entries=dict(cell64.manifest["entries"],
                                              forward_bf16=cell32.manifest["entries"][
                                                  "forward_bf16"]))
    with pytest.raises(ArtifactError, match="entry points must be exactly"):
        CpuManifest.from_json(data)
    entries = dict(cell32.manifest["entries"])
    forward = dict(entries["forward_bf16"])
    forward["buffers"] = [dict(b, dtype="float") if b["name"].startswith("panelsT16")
                          else b for b in forward["buffers"]]
    with pytest.raises(ArtifactError, match="has dtype 'float', expected 'uint16'"):
        CpuManifest.from_json(dict(cell32.manifest, entries=dict(entries,
                                                                 forward_bf16=forward)))
