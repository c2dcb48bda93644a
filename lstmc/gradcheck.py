"""Finite-difference check of a cell's generated backward pass, in float64.

The loss is L = sum(dy * y) + sum_s sum(dstate[s] * final_state[s]) with random dy and
dstate; central differences of L give the oracle for every input, parameter and initial
state entry, compared with what `Tape.backward` returns.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GradcheckResult:
    worst_error: float  # max over arrays of max|analytic - numeric| / max|numeric| (floored)
    worst_array: str
    errors: dict[str, float]  # per array

    def passed(self, tolerance: float) -> bool:
        return bool(np.isfinite(self.worst_error)) and self.worst_error <= tolerance


def gradcheck(cell, steps: int = 4, batch: int = 2, seed: int = 0, eps: float = 1e-6,
              max_entries: int | None = None) -> GradcheckResult:
    """Compare the generated gradients of a float64 cell with central differences;
    `max_entries` checks a random subset of each array's entries."""
    if cell.dtype != np.float64:
        raise ValueError("gradcheck needs a float64 cell: compile with dtype='float64'")
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"gradcheck's seed must be an integer in [0, 2**64), got {seed}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((steps, batch, cell.input_size))
    inputs = {n: 2.0 * rng.standard_normal((steps, batch, size))  # the inputs after x
              for n, size in getattr(cell, "extra_inputs", {}).items()}
    params = cell.init_params(seed)
    state = {n: 0.5 * rng.standard_normal((batch, s)) for n, s in cell.state_sizes.items()}
    # Dropout and zoneout: every evaluation draws the same masks, so the differences
    # check the gradient through those masks, as training computes it.
    masks = (0x5EED + seed) % (1 << 64)  # a mask seed is 64-bit, as `seed` may be
    y, final, tape = cell.forward(x, params, state, train=True, seed=masks, inputs=inputs)
    dy = rng.standard_normal(y.shape)
    dstate = {n: rng.standard_normal(v.shape) for n, v in final.items()}
    grads = tape.backward(dy, dstate)

    def loss() -> float:
        y, final, _ = cell.forward(x, params, state, train=True, seed=masks, inputs=inputs)
        return float(np.sum(dy * y) + sum(np.sum(dstate[n] * final[n]) for n in final))

    arrays = {"x": (x, grads["x"])}
    arrays.update({f"inputs['{n}']": (inputs[n], grads["inputs"][n]) for n in inputs})
    arrays.update({f"params['{n}']": (params[n], grads["params"][n]) for n in params})
    arrays.update({f"state['{n}']": (state[n], grads["state"][n]) for n in state})
    differences, scales = {}, {}
    for label, (value, analytic) in arrays.items():
        flat, flat_grad = value.reshape(-1), analytic.reshape(-1)
        entries = np.arange(flat.size)
        if max_entries is not None and flat.size > max_entries:
            entries = rng.choice(flat.size, max_entries, replace=False)
        numeric = np.empty(len(entries))
        for k, index in enumerate(entries):
            original = flat[index]
            flat[index] = original + eps
            plus = loss()
            flat[index] = original - eps
            minus = loss()
            flat[index] = original
            numeric[k] = (plus - minus) / (2 * eps)
        scales[label] = float(np.max(np.abs(numeric)))
        differences[label] = float(np.max(np.abs(flat_grad[entries] - numeric)))
    # Relative to each array's largest gradient, but to no less than 1e-3 of the largest
    # gradient overall: smaller gradients are at the level of finite-difference noise.
    floor = max(1e-3 * max(scales.values()), 1e-12)
    errors = {k: differences[k] / max(scales[k], floor) for k in differences}
    worst = max(errors, key=lambda k: errors[k] if np.isfinite(errors[k]) else np.inf)
    return GradcheckResult(errors[worst], worst, errors)
