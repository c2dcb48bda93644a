"""The checker on specs that are odd but valid, or subtly wrong: each valid one against
NumPy written here, each wrong one a located error."""
from __future__ import annotations

import numpy as np
import pytest

import lstmc
from lstmc.errors import SpecError

# Two matrix expressions whose coefficients agree to six significant digits (the %g of
# the name they once shared): U + W and 2*U + W, each its own matrix.
CLOSE_COEFFICIENTS = """
cell c(x: H) -> h: H {
  param W: [H, H], U: [H, H]
  h' = tanh((1234567 * U - 1234566 * U + W) @ x + (1234568 * U - 1234566 * U + W) @ h)
}
"""


def test_matrices_with_close_coefficients_stay_distinct():
    cell = lstmc.compile(CLOSE_COEFFICIENTS, None, 3, dtype="float64")
    rng = np.random.default_rng(0)
    params = {n: rng.uniform(-0.5, 0.5, s) for n, s in cell.param_shapes.items()}
    x = rng.standard_normal((4, 2, 3))
    y, _ = cell.forward(x, params)
    W, U = params["W"], params["U"]
    h = np.zeros((2, 3))
    for t in range(4):
        h = np.tanh(x[t] @ (U + W).T + h @ (2 * U + W).T)
        np.testing.assert_allclose(y[t], h, rtol=1e-8, atol=1e-8)


def test_a_repeated_matrix_expression_is_checked_again():
    # `(W + eye(3))` is named as `(W + eye(H))` is; its eye(3) must still meet H x H
    text = ("cell c(x: H) -> h: H {\n  param W: [H, H]\n"
            "  h' = tanh((W + eye(H)) @ x + (W + eye(3)) @ h)\n}\n")
    with pytest.raises(SpecError, match=r"eye\(3\) is square") as info:
        lstmc.check_spec(text)
    assert (info.value.location.line, info.value.location.column) == (3, 37)
