"""Run by test_oclgrind under `oclgrind --data-races`: every kernel of the standard LSTM
and the GRU on small shapes (forward for inference and training, backward, and the
persistent kernel with one work-group: Oclgrind runs work-groups one after another, so a
grid-wide barrier across several would never open)."""
import sys

import numpy as np

import lstmc

for spec in sys.argv[1:]:
    cell = lstmc.compile(spec, 3, 5, target="opencl")
    params = cell.init_params(seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 3)).astype(np.float32)
    lengths = np.array([3, 2])
    for persistent in (False, True):
        cell.persistent, cell.persistent_groups = persistent, 1
        y, _ = cell.forward(x, params, lengths=lengths)
        y, _, tape = cell.forward(x, params, train=True, lengths=lengths)
        tape.backward(np.ones_like(y))
    print(spec, "ran on", cell.device.name, flush=True)
