"""Thirty seconds of lstmc: compile the peephole LSTM, run it, get gradients, and compare
a standard LSTM with PyTorch's nn.LSTM (if torch is installed)."""
import pathlib

import numpy as np

import lstmc

SPECS = pathlib.Path(__file__).resolve().parent.parent / "specs"

cell = lstmc.compile(SPECS / "peephole_lstm.lstm", input_size=8, hidden_size=16, target="cpu")
params = cell.init_params(seed=0)
x = np.random.default_rng(0).standard_normal((20, 4, 8)).astype(np.float32)  # (T, B, I)

y, state, tape = cell.forward(x, params, train=True)
grads = tape.backward(np.ones_like(y))  # gradients of sum(y)
print(cell, "y", y.shape, "dW_i", grads["params"]["W_i"].shape)

try:
    import torch
except ImportError:
    raise SystemExit(0) from None
lstm = lstmc.compile(SPECS / "lstm.lstm", input_size=8, hidden_size=16, target="cpu")
module = torch.nn.LSTM(8, 16)
y, _ = lstm.forward(x, lstmc.params_from_torch(lstm, module))
y_torch, _ = module(torch.from_numpy(x))
print("max |lstmc - nn.LSTM| =", float(np.abs(y - y_torch.detach().numpy()).max()))
