"""Property: for randomly generated well-formed cells, the generated backward pass agrees
with central finite differences of the forward pass (float64).

The generator only uses smooth functions (no relu/min/max/abs kinks, no log or sqrt of
values that may be negative; `where` only on the sign of a learned vector, which finite
differences do not move across 0), so finite differences are a sound oracle: a failure is a
wrong derivative rule, a wrong accumulation, or a wrong schedule through time. Cells may
read inputs after x: z (2 units, through a product, hoisted as x's) and m (H units), and
draw dropout, variational dropout and zoneout masks (from a fixed seed: the masks are the
same on every target and in every forward of the finite differences)."""
import itertools
import os

import numpy as np
from conftest import needs_opencl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmc
from lstmc.gradcheck import gradcheck

FUNCTIONS = ["sigmoid", "tanh", "softsign", "layernorm", "softplus", "logsigmoid", "elu",
             "gelu", "gelu_tanh", "silu", "sin", "cos", "erf"]
# Random cells run through the GPU kernels in CI; LSTMC_GPU_EXAMPLES=80 for a longer run.
GPU_EXAMPLES = int(os.environ.get("LSTMC_GPU_EXAMPLES", "15"))


@st.composite
def cells(draw):
    n_states = draw(st.integers(1, 3))
    states = ["h"] + [f"s{k}" for k in range(1, n_states)]
    params: list[str] = []
    counter = itertools.count()
    inputs: set[str] = set()  # inputs after x the cell reads: z (2 units), m (H units)

    def param(shape: str) -> str:
        name = f"{'W' if ',' in shape else 'p'}{next(counter)}"
        params.append(f"{name}: {shape}")
        return name

    def expr(depth: int, names: list[str], vector: bool) -> str:
        kinds = ["x_product", "name", "vector", "input"] + ([] if vector else ["number"])
        if depth > 0:
            kinds += ["add", "sub", "mul", "function", "state_product", "divide", "power",
                      "select", "slice", "dropout", "chain"]
            kinds += [] if vector else ["mean"]
        kind = draw(st.sampled_from(kinds))
        sub = lambda v=True: expr(depth - 1, names, v)  # noqa: E731
        if kind == "x_product":
            return f"{param('[H, I]')} @ x"
        if kind == "name":
            return draw(st.sampled_from(names))
        if kind == "input":  # a product of z (hoisted, as x's), or m itself
            name = draw(st.sampled_from(["z", "m"]))
            inputs.add(name)
            return f"{param('[H, 2]')} @ z" if name == "z" else "m"
        if kind == "vector":
            return param("H")
        if kind == "number":
            return repr(draw(st.sampled_from([0.5, 1.0, 2.0, -1.5])))
        if kind in ("add", "sub", "mul"):
            op = {"add": "+", "sub": "-", "mul": "*"}[kind]
            first_vector = draw(st.booleans()) if vector else False
            return f"({sub(first_vector)} {op} {sub(vector and not first_vector)})"
        if kind == "function":
            return f"{draw(st.sampled_from(FUNCTIONS))}({sub()})"
        if kind == "state_product":
            return f"{param('[H, H]')} @ {sub()}"
        if kind == "chain":  # a product of a value made from x alone: hoisted after a prologue
            inner = f"{draw(st.sampled_from(FUNCTIONS))}({param('[H, I]')} @ x + {param('H')})"
            if draw(st.booleans()):  # two levels deep
                inner = f"tanh({param('[H, H]')} @ {inner})"
            return f"{param('[H, H]')} @ {inner}"
        if kind == "power":
            return f"({sub(vector)}) ** {draw(st.sampled_from([2, 3]))}"
        if kind == "slice":  # of a concat: a part of each, or one of them
            start, stop = draw(st.sampled_from([("0", "H"), ("1", "H + 1"), ("H", "2*H")]))
            return f"concat({sub()}, {sub()})[{start}:{stop}]"
        if kind == "dropout":  # masks drawn from the call's seed, the same on every target
            which = draw(st.sampled_from(["dropout", "variational_dropout", "zoneout"]))
            if which == "zoneout":
                return f"zoneout({sub()}, {draw(st.sampled_from(names))}, 0.3)"
            return f"{which}({sub()}, 0.25)"
        if kind == "select":  # a learned vector decides: no step near the sampled points
            return f"where({param('H')} > 0, {sub()}, {sub()})"
        if kind == "divide":
            return f"({sub()} / (2 + tanh({sub()})))"
        return f"mean({sub()})"

    names = list(states)
    lines = []
    for k in range(draw(st.integers(0, 2))):
        lines.append(f"a{k} = {expr(2, names, True)}")
        names.append(f"a{k}")
    for s in states:
        value = expr(3, names, True)
        lines.append(f"{s}' = " + (f"tanh({value})" if draw(st.booleans()) else value))
        names.append(f"{s}'")
    declarations = [f"state {s}: H" for s in states[1:]]
    if params:
        declarations.append("param " + ", ".join(params))
    body = "\n  ".join(declarations + lines)
    ports = "".join(f", {n}: {size}" for n, size in (("z", 2), ("m", "H")) if n in inputs)
    return f"cell random(x: I{ports}) -> h: H {{\n  {body}\n}}\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells())
def test_generated_backward_matches_finite_differences(spec):
    cell = lstmc.compile(spec, input_size=2, hidden_size=3, dtype="float64")
    result = gradcheck(cell, steps=3, batch=2, seed=0)
    assert result.passed(1e-5), (spec, result.errors)


def test_generator_makes_cells_that_compile():
    # A fixed example of what the generator produces, checked by hand.
    spec = ("cell random(x: I) -> h: H {\n  state s1: H\n  param W0: [H, I], W1: [H, H], p2: H\n"
            "  a0 = sigmoid(W0 @ x)\n  h' = tanh(W1 @ (a0 * s1) + p2)\n  s1' = layernorm(h' - s1)\n}\n")
    cell = lstmc.compile(spec, input_size=2, hidden_size=3, dtype="float64")
    assert gradcheck(cell).passed(1e-6)
    assert np.isfinite(gradcheck(cell).worst_error)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells())
def test_generated_native_code_matches_the_reference_executor(spec):
    """The same random cells through the LLVM backend: values and gradients equal the
    reference executor's (float64), which the test above ties to finite differences."""
    reference = lstmc.compile(spec, input_size=2, hidden_size=3, dtype="float64")
    native = lstmc.compile(spec, input_size=2, hidden_size=3, dtype="float64", target="cpu")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2))
    params = reference.init_params(1)
    state = {n: 0.5 * rng.standard_normal((3, s)) for n, s in reference.state_sizes.items()}
    dy = rng.standard_normal((4, 3, 3))
    more = {n: rng.standard_normal((4, 3, size)) for n, size in reference.extra_inputs.items()}
    results = []
    for cell in (reference, native):
        y, final, tape = cell.forward(x, params, state, train=True, inputs=more, seed=7)
        results.append((y, final, tape.backward(dy)))
    (y0, f0, g0), (y1, f1, g1) = results
    close = dict(rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(y1, y0, **close, err_msg=spec)
    np.testing.assert_allclose(g1["x"], g0["x"], **close, err_msg=spec)
    for n in g0["inputs"]:
        np.testing.assert_allclose(g1["inputs"][n], g0["inputs"][n], **close, err_msg=spec)
    for n in g0["params"]:
        np.testing.assert_allclose(g1["params"][n], g0["params"][n], **close, err_msg=spec)
    for n in g0["state"]:
        np.testing.assert_allclose(g1["state"][n], g0["state"][n], **close, err_msg=spec)


@settings(max_examples=GPU_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells(), st.booleans())
def test_generated_gpu_kernels_match_the_reference_executor(spec, persistent):
    """The same random cells through the GPU kernels, run as OpenCL on PoCL (float32),
    step by step or persistent, against the float64 reference executor."""
    needs_opencl()
    reference = lstmc.compile(spec, input_size=2, hidden_size=3, dtype="float64")
    gpu = lstmc.compile(spec, input_size=2, hidden_size=3, target="opencl")
    gpu.persistent = persistent
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2))
    params = reference.init_params(1)
    state = {n: 0.5 * rng.standard_normal((3, s)) for n, s in reference.state_sizes.items()}
    dy = rng.standard_normal((4, 3, 3))
    lengths = np.array([4, 2, 3])
    more = {n: rng.standard_normal((4, 3, size)) for n, size in reference.extra_inputs.items()}
    f32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}  # noqa: E731
    y0, s0, t0 = reference.forward(x, params, state, train=True, lengths=lengths, inputs=more,
                                   seed=7)
    y1, s1, t1 = gpu.forward(x.astype(np.float32), f32(params), f32(state), train=True,
                             lengths=lengths, inputs=f32(more), seed=7)
    g0, g1 = t0.backward(dy), t1.backward(dy.astype(np.float32))
    pairs = [("y", y0, y1), ("dx", g0["x"], g1["x"])]
    pairs += [(f"state {n}", s0[n], s1[n]) for n in s0]
    pairs += [(f"d{n}", g0["params"][n], g1["params"][n]) for n in g0["params"]]
    pairs += [(f"d{n}", g0["inputs"][n], g1["inputs"][n]) for n in g0["inputs"]]
    pairs += [(f"dstate {n}", g0["state"][n], g1["state"][n]) for n in g0["state"]]
    for label, expected, actual in pairs:
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=f"{label}\n{spec}")
