"""lstmc.nn probed against PyTorch: bugs found by comparing the modules with torch.nn and
their errors with what the caller passed (each test failed before its fix)."""
import io
import pathlib
import pickle

import pytest
import torch

import lstmc
import lstmc.nn as lnn

ROOT = pathlib.Path(__file__).resolve().parent.parent
PHASED = str(ROOT / "specs" / "phased_lstm.lstm")
T, B, I, H = 5, 2, 3, 4


def lstm_spec_like(torch_lstm: torch.nn.LSTM, cls=lnn.Recurrent, **options):
    """An lstmc module of the standard LSTM spec holding torch_lstm's (one layer) weights:
    the spec's row blocks W_ii, W_if, ... of PyTorch's stacked weight_ih_l0, ..."""
    module = cls(lnn.specs.SPECS["lstm"], torch_lstm.input_size, torch_lstm.hidden_size,
                 **options)
    n = torch_lstm.hidden_size
    sources = {"W_i": torch_lstm.weight_ih_l0, "W_h": torch_lstm.weight_hh_l0,
               "b_i": torch_lstm.bias_ih_l0, "b_h": torch_lstm.bias_hh_l0}
    with torch.no_grad():
        for prefix, stacked in sources.items():
            for k, gate in enumerate("ifgo"):
                getattr(module, prefix + gate).copy_(stacked[k * n:(k + 1) * n])
    return module


def test_the_op_names_a_short_weights_list():
    """torch.ops.lstmc.forward is public: too few weight tensors for the key's layout is
    a ShapeError naming `weights`, not an IndexError from inside the op."""
    module = lnn.LSTM(I, H)
    weights = [module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0,
               module.bias_hh_l0]
    x = torch.randn(T, B, I)
    with pytest.raises(lstmc.ShapeError, match=r"weights: .*weights\[2\].* got 2 weight"):
        torch.ops.lstmc.forward(module._keys[0], x, weights[:2], [], None, False, None)


@pytest.mark.parametrize("cls", ["GRU", "RNN"])
def test_gru_and_rnn_refuse_proj_size_by_name(cls):
    """torch refuses proj_size for GRU and RNN by name; lstmc raised a TypeError about a
    duplicate argument of its private base class."""
    with pytest.raises(ValueError, match="proj_size"):
        getattr(torch.nn, cls)(I, H, proj_size=2)
    with pytest.raises(lstmc.CompileError, match="proj_size is an LSTM option"):
        getattr(lnn, cls)(I, H, proj_size=2)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_recurrent_and_recurrent_cell_pickle_as_torch_modules(how):
    """torch.save(model) and pickling (spawned workers) of Recurrent and RecurrentCell:
    they raised PicklingError (the cells' metadata holds lambdas); the loaded modules
    compute what nn.LSTM / nn.LSTMCell compute, and can reset their parameters."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(I, H)
    x = torch.randn(T, B, I)

    def round_trip(module):
        if how == "pickle":
            return pickle.loads(pickle.dumps(module))
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)

    sequence = round_trip(lstm_spec_like(reference))
    cell = round_trip(lstm_spec_like(reference, lnn.RecurrentCell))
    expected, (h_n, c_n) = reference(x)
    y, state = sequence(x)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(state["c"], c_n)
    step, _ = cell(x[0])
    torch.testing.assert_close(step, expected[0])
    sequence.reset_parameters()
    assert not torch.equal(sequence(x)[0], expected)


def test_recurrent_cell_names_a_step_input_of_the_wrong_shape():
    """A RecurrentCell step takes each input after the first as (B, n) ((n,) unbatched):
    a wrong one is a ShapeError with the shape this call takes and the one given, not a
    RuntimeError from a reshape, nor the one-step sequence shape (1, B, n)."""
    cell = lnn.RecurrentCell(PHASED, I, H).eval()
    x = torch.randn(B, I)
    with pytest.raises(lstmc.ShapeError, match=r"ts: expected shape \(2, 1\).*got \(3, 1\)"):
        cell(x, ts=torch.rand(3, 1))
    with pytest.raises(lstmc.ShapeError, match=r"ts: expected shape \(2, 1\).*got \(2, 2\)"):
        cell(x, ts=torch.rand(2, 2))
    with pytest.raises(lstmc.ShapeError, match=r"ts: expected shape \(1,\).*got \(1, 1\)"):
        cell(x[0], ts=torch.rand(1, 1))
    out, _ = cell(x, ts=torch.rand(B, 1))  # the shapes it takes still run
    assert out.shape == (B, H)
    assert cell(x[0], ts=torch.rand(1))[0].shape == (H,)
