"""Threaded inference split by hidden units (backends/llvm/units.py): where a cell's step
is unit by unit, each thread computes its own units of the products and of the
elementwise code and the threads meet once per step. Which cells qualify, and their
values against the reference executor (any thread count, units not divisible by the
threads, lengths, extra inputs) and the standard LSTM against torch.nn.LSTM."""
import numpy as np
import pytest
from conftest import SPEC_NAMES, compile_spec, random_extra_inputs, random_inputs, spec_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_random_cells import cells

import lstmc
from lstmc.backends.llvm.smallgemm import panel_width
from lstmc.backends.llvm.units import step_units

TOL = dict(rtol=1e-10, atol=1e-12)
PANEL = panel_width("float64")  # 16 columns
SPLIT = {"lstm", "lstm1997", "lstm_packed", "peephole_lstm", "gru", "minimal_rnn",
         "phased_lstm", "greff/np"}
STAGED = {"gru_cho", "lstmp", "layernorm_lstm", "indrnn"}  # reductions, two product stages


def split_of(name: str, hidden_size: int):
    cell = compile_spec(name, hidden_size=hidden_size)
    return step_units(cell.program, cell.sizes, cell.state_sizes, PANEL)


def test_unit_by_unit_steps_are_found():
    U, offsets = split_of("lstm", 64)
    assert U == 64 and list(offsets.values()) == [[0, 64, 128, 192]]  # i, f, g, o
    U, offsets = split_of("gru", 64)
    assert list(offsets.values()) == [[0, 64, 128]]  # r, z, n's recurrent part
    for name in sorted(SPLIT):
        assert split_of(name, 64) is not None, name
    for name in sorted(STAGED):
        assert split_of(name, 64) is None, name
    assert split_of("lstm", 40) is None  # units are not whole panels


@pytest.fixture
def threaded(monkeypatch):
    """Every inference call of one slice runs the threaded entry, the general path and
    the lean path (on the parked workers) alike; records the entries and the jobs."""
    from lstmc_runtime import workers
    from lstmc_runtime.bound import Threaded
    from lstmc_runtime.native import NativeCell

    monkeypatch.setattr("lstmc_runtime.native.THREADED_STEP_WEIGHTS", 0)
    monkeypatch.setattr("lstmc_runtime.workers.run_kernel", lambda *job: None)
    monkeypatch.setattr(Threaded, "choose",  # threads, not a measured choice
                        lambda self, alone, together: (lambda s: alone() if s is None else s)(
                            together()))
    ran = {"entries": [], "jobs": 0}
    original = NativeCell._run_threaded
    monkeypatch.setattr(NativeCell, "_run_threaded",
                        lambda self, *a: ran["entries"].append(a[0]) or original(self, *a))
    run = workers.Workers.run

    def counted(self, *a):
        ran["jobs"] += 1
        return run(self, *a)
    monkeypatch.setattr(workers.Workers, "run", counted)
    return ran


@pytest.mark.parametrize("name", SPEC_NAMES)
@pytest.mark.parametrize("threads", ["2", "3", "5"])
def test_every_spec_split_by_units_matches_the_reference(monkeypatch, threaded, name,
                                                         threads):
    """H = 64: four panels, so 3 threads split them unevenly and one of 5 has none."""
    monkeypatch.setenv("LSTMC_NUM_THREADS", threads)
    reference = compile_spec(name, hidden_size=64)
    native = compile_spec(name, hidden_size=64, target="cpu")
    x, params, state = random_inputs(reference, T=9, B=3)
    inputs = random_extra_inputs(reference, T=9, B=3)
    lengths = np.array([9, 2, 5])
    y0, f0 = reference.forward(x, params, state, lengths=lengths, inputs=inputs)
    y1, f1 = native.forward(x, params, state, lengths=lengths, inputs=inputs)
    assert threaded["entries"] == ["forward_mt"]
    np.testing.assert_allclose(y1, y0, **TOL)
    for n in f0:
        np.testing.assert_allclose(f1[n], f0[n], **TOL, err_msg=f"final {n}")
    if inputs:  # the lean path takes x alone
        return
    y0, f0 = reference.forward(x, params, state)
    bound = native.bind(params)
    for _ in range(3):  # the lean path: a plan of the threaded kernel, reused
        y1, f1 = bound(x, state)
        np.testing.assert_allclose(y1, y0, **TOL)
        for n in f0:
            np.testing.assert_allclose(f1[n], f0[n], **TOL, err_msg=f"final {n}")
    if name in SPLIT:
        assert threaded["jobs"] == 4


@pytest.mark.parametrize("threads", ["2", "3"])
def test_lstm_split_by_units_matches_torch(monkeypatch, threaded, threads):
    """float32 (32-column panels, H = 128) at batch 1 and 3, with and without a given
    state, against torch.nn.LSTM loaded with the same weights."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("LSTMC_NUM_THREADS", threads)
    H = 128
    cell = lstmc.compile(spec_path("lstm"), H, H, target="cpu")
    assert step_units(compile_spec("lstm", hidden_size=H).program, {"I": H, "H": H},
                      {"h": H, "c": H}, panel_width("float32")) is not None
    module = torch.nn.LSTM(H, H)
    params = lstmc.params_from_torch(cell, module)
    rng = np.random.default_rng(1)
    for B, with_state in ((1, False), (3, True)):
        x = rng.standard_normal((20, B, H)).astype(np.float32)
        h0 = rng.standard_normal((1, B, H)).astype(np.float32)
        c0 = rng.standard_normal((1, B, H)).astype(np.float32)
        state = {"h": h0[0], "c": c0[0]} if with_state else None
        with torch.no_grad():
            hc = (torch.from_numpy(h0), torch.from_numpy(c0)) if with_state else None
            expected, (h_n, c_n) = module(torch.from_numpy(x), hc)
        y, final = cell.forward(x, params, state)
        np.testing.assert_allclose(y, expected.numpy(), rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(final["h"], h_n[0].numpy(), rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(final["c"], c_n[0].numpy(), rtol=2e-5, atol=2e-6)
    assert threaded["jobs"] == 2  # the lean path, on the parked workers


@st.composite
def unit_cells(draw):
    """Cells whose step is unit by unit: gates act(W @ x + U @ state + b), then new
    states drawn as random elementwise expressions of a gate, the gates and the states
    (under an activation: a new state that is an old one as it is, h' = h, is no such
    step)."""
    states = ["h"] + (["c"] if draw(st.booleans()) else [])
    gates = draw(st.integers(1, 4))
    acts = ["sigmoid", "tanh", "relu", ""]
    params, lines = [], []
    for k in range(gates):
        act = draw(st.sampled_from(acts))
        operand = draw(st.sampled_from(states))
        params += [f"W{k}: [H, I]", f"U{k}: [H, H]", f"b{k}: H"]
        lines.append(f"g{k} = {act}(W{k} @ x + U{k} @ {operand} + b{k})")
    leaves = [f"g{k}" for k in range(gates)] + states

    def expression(depth: int) -> str:
        if depth == 0 or draw(st.booleans()):
            return draw(st.sampled_from(leaves))
        if draw(st.booleans()):
            return f"{draw(st.sampled_from(acts[:2]))}({expression(depth - 1)})"
        op = draw(st.sampled_from(["*", "+", "-"]))
        return f"({expression(depth - 1)} {op} {expression(depth - 1)})"

    for name in reversed(states):  # c' first: h' may read it
        gate = draw(st.sampled_from(leaves[:gates]))  # a product is read
        op = draw(st.sampled_from(["*", "+", "-"]))
        lines.append(f"{name}' = {draw(st.sampled_from(acts[:2]))}({gate} {op} "
                     f"{expression(2)})")
    state = "  state c: H\n" if "c" in states else ""
    body = "\n  ".join(lines)
    return (f"cell random(x: I) -> h: H {{\n{state}  param {', '.join(params)}\n"
            f"  {body}\n}}\n")


def run_threaded(monkeypatch, spec):
    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    reference = lstmc.compile(spec, input_size=2, hidden_size=32, dtype="float64")
    native = lstmc.compile(spec, input_size=2, hidden_size=32, dtype="float64", target="cpu")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 2, 2))
    params = reference.init_params(1)
    state = {n: 0.5 * rng.standard_normal((2, s)) for n, s in reference.state_sizes.items()}
    more = {n: rng.standard_normal((9, 2, size)) for n, size in reference.extra_inputs.items()}
    lengths = np.array([9, 6])
    y0, f0 = reference.forward(x, params, state, lengths=lengths, inputs=more)
    y1, f1 = native.forward(x, params, state, lengths=lengths, inputs=more)
    np.testing.assert_allclose(y1, y0, **TOL, err_msg=spec)
    for n in f0:
        np.testing.assert_allclose(f1[n], f0[n], **TOL, err_msg=spec)
    return reference


SETTINGS = dict(deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@settings(max_examples=12, **SETTINGS)
@given(unit_cells())
def test_random_unit_cells_split_by_units_match_the_reference(monkeypatch, threaded, spec):
    """H = 32: two float64 panels, one per thread."""
    reference = run_threaded(monkeypatch, spec)
    assert threaded["entries"][-1:] == ["forward_mt"]
    assert step_units(reference.program, reference.sizes, reference.state_sizes,
                      PANEL) is not None, spec


@settings(max_examples=6, **SETTINGS)
@given(cells())
def test_random_cells_threaded_match_the_reference(monkeypatch, threaded, spec):
    """The general random cells (reductions, concats, products of computed values: the
    stage-by-stage split) through the same threaded entry."""
    run_threaded(monkeypatch, spec)
    assert threaded["entries"][-1:] == ["forward_mt"]
