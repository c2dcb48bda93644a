"""Deep and wide expressions: no stage of the compiler recurses on the expression, so
nesting 4,000 deep and sums of 100,000 terms parse, check, lower, differentiate and
generate code (Python's recursion limit is 1,000). The oracle is NumPy, written here."""
import sys

import numpy as np
import pytest

import lstmc

DEPTH = 4_000  # four times Python's recursion limit (10,000 deep: 69 s of LLVM on Zen 4)
TERMS = 100_000


def _cell(body: str) -> str:
    return f"cell deep(x: H) -> h: H {{\n  h' = {body}\n}}\n"


def _run(cell, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (2, 3, cell.input_size)).astype(cell.dtype)
    h0 = rng.uniform(-1, 1, (3, cell.state_sizes["h"])).astype(cell.dtype)
    y, _, tape = cell.forward(x, {}, {"h": h0}, train=True)
    return x, y, tape.backward(np.ones_like(y))


def test_the_limit_is_far_below_the_expressions():
    assert sys.getrecursionlimit() < DEPTH


def test_nested_calls_and_parentheses():
    body = "tanh(" * DEPTH + "x" + ")" * DEPTH
    cell = lstmc.compile(_cell(body), input_size=4, hidden_size=4, dtype="float64")
    x, y, grads = _run(cell)
    expected, slope = x, np.ones_like(x)
    for _ in range(DEPTH):
        expected = np.tanh(expected)
        slope = slope * (1 - expected ** 2)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    np.testing.assert_allclose(grads["x"], slope, rtol=1e-9)


def test_unary_minus_chain_compiles_to_native_code():
    body = "-" * DEPTH + "(" * DEPTH + "x" + ")" * DEPTH  # an even count: +x
    for target in ("reference", "cpu"):
        cell = lstmc.compile(_cell(body), input_size=4, hidden_size=4, dtype="float64",
                             target=target)
        x, y, grads = _run(cell)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(grads["x"], np.ones_like(x))


def test_flat_sum_of_a_hundred_thousand_terms():
    n = TERMS - 1  # copies of x, then h
    body = " + ".join(["x"] * n + ["h"])
    cell = lstmc.compile(_cell(body), input_size=2, hidden_size=2, dtype="float64")
    x, y, grads = _run(cell)
    h0 = y[0] - n * x[0]
    # Summing n terms one by one may err by n * eps * sum|terms| (the worst-case bound);
    # the oracle n * x multiplies once.
    bound = n * np.finfo(np.float64).eps * (n * np.abs(x[1]) + np.abs(y[0]))
    np.testing.assert_array_less(np.abs(y[1] - (n * x[1] + y[0])), bound)
    # d sum(y) / dx: step 1 feeds y[1] only; step 0 feeds y[0] and, through h, y[1].
    np.testing.assert_allclose(grads["x"][1], np.full_like(x[1], n))
    np.testing.assert_allclose(grads["x"][0], np.full_like(x[0], 2 * n))
    assert np.isfinite(h0).all()


@pytest.mark.parametrize("expr", ["x" + " * x" * 2000, "-(" * 3000 + "x" + ")" * 3000])
def test_checker_and_cli_emit_ir(tmp_path, expr):
    from lstmc.cli import main

    path = tmp_path / "deep.lstm"
    path.write_text(_cell(expr))
    assert main(["check", str(path)]) == 0
    assert main(["compile", str(path), "--emit", "ir", "--hidden-size", "2",
                 "--input-size", "2"]) == 0


@pytest.mark.parametrize("body", [
    "tanh(x) " + "** 1 " * 400,  # right-associative: each '**' reads a deeper exponent
    "elu(" * 400 + "x" + ", 1.0)" * 400,  # each elu's alpha, its first argument deep
    "tanh((W" + " * 1" * 400 + ") @ x)",  # a matrix's coefficient: each '*' link's operand
])
def test_numbers_in_chains_are_folded_once_not_once_per_link(monkeypatch, body):
    """The checker and the IR builder ask for the constant value of exponents, numeric
    arguments and coefficients; asked node by node down a chain, each question folded
    the whole operand again (quadratic: 2,000 links took 10-19 s). Counted, not timed:
    at most a few evaluations per node of the expression, and values as NumPy's."""
    from lstmc.frontend import ast

    calls = []
    original = ast.number_of
    monkeypatch.setattr(ast, "number_of", lambda e, args: calls.append(1) or original(e, args))
    param = "  param W: [H, H] = eye\n" if "W" in body else ""
    spec = f"cell chain(x: H) -> h: H {{\n{param}  h' = {body}\n}}\n"
    cell = lstmc.compile(spec, input_size=3, hidden_size=3, dtype="float64")
    assert len(calls) < 10 * 3 * 400, len(calls)  # was 80,000 to 240,000
    x = np.random.default_rng(0).uniform(-1, 1, (1, 2, 3))
    y, _ = cell.forward(x, cell.init_params(0), {"h": np.zeros((2, 3))})
    if body.startswith("elu"):
        expected = x[0]
        for _ in range(400):
            expected = np.where(expected > 0, expected, np.expm1(expected))
    else:
        expected = np.tanh(x[0])
    np.testing.assert_allclose(y[0], expected, rtol=1e-12)
