"""A one-direction stack's inference as a wavefront of layers (lstmc_runtime/wavefront.py:
layer l on chunk c while layer l + 1 is on chunk c - 1), against PyTorch's modules, and
when it runs instead of the layers one after the other."""
import numpy as np
import pytest
import torch
from conftest import spec_path
from lstmc_runtime import wavefront
from lstmc_runtime.choice import FasterOf
from lstmc_runtime.stack import PackedStackParams, Stack

import lstmc

I, H, P = 3, 5, 4
MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "lstmp": torch.nn.LSTM}


@pytest.fixture(autouse=True)
def two_threads(monkeypatch):
    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")  # a layer per core (one core: 2 anyway)
    monkeypatch.delenv("LSTMC_WAVEFRONT", raising=False)


def _pair(kind: str, layers: int, dtype: str = "float64"):
    torch.manual_seed(layers)
    extra = {"proj_size": P} if kind == "lstmp" else {}
    module = MODULES[kind](I, H, num_layers=layers, **extra)
    module = module.double() if dtype == "float64" else module
    stack = lstmc.compile(spec_path(kind), I, H, target="cpu", dtype=dtype,
                          num_layers=layers, **({"P": P} if kind == "lstmp" else {}))
    return module, stack, lstmc.params_from_torch(stack, module)


def _torch(module, x, state):
    states = [torch.tensor(state[n]) for n in ("h", "c") if n in state]
    with torch.no_grad():
        y, final = module(torch.tensor(x), tuple(states) if len(states) == 2 else states[0])
    final = final if isinstance(final, tuple) else (final,)
    return y.numpy(), {n: v.numpy() for n, v in zip(("h", "c"), final)}


def _wavefront_call(stack, x, params, state):
    """The stack's inference run as a wavefront (which must apply): y, final states."""
    final = {n: np.empty((stack.num_layers, x.shape[1], s), stack.dtype)
             for n, s in stack.state_sizes.items()}
    packed = params if isinstance(params, PackedStackParams) else None
    run = stack._wavefront(x, params, packed, state, final, None, {})
    assert run is not None
    y = run()
    assert y is not None
    return y, final


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstmp"])
@pytest.mark.parametrize("layers", [2, 3, 4])
@pytest.mark.parametrize("T, B", [(1, 1), (wavefront.CHUNK, 1), (wavefront.CHUNK + 1, 2),
                                  (37, 3)])
def test_a_wavefront_computes_what_torch_does(kind, layers, T, B):
    """Every chunk boundary (one chunk, exactly one, one and a step, many), more layers
    than threads (3 and 4 layers on 2), a second product in the step (lstmp), and the
    initial states given: outputs and final states as PyTorch's."""
    module, stack, params = _pair(kind, layers)
    rng = np.random.default_rng(T * 10 + B)
    x = rng.standard_normal((T, B, I))
    state = {n: 0.5 * rng.standard_normal((layers, B, s)) for n, s in stack.state_sizes.items()}
    want_y, want_final = _torch(module, x, state)
    for given in (params, stack.pack_params(params)):  # a dict, and packed once
        y, final = _wavefront_call(stack, x, given, state)
        np.testing.assert_allclose(y, want_y, rtol=1e-10, atol=1e-12)
        for n in want_final:
            np.testing.assert_allclose(final[n], want_final[n], rtol=1e-10, atol=1e-12)


def test_a_wavefront_on_bfloat16_weights_computes_with_the_rounded_weights():
    """A float32 stack packed with bfloat16 weights runs each layer's bfloat16 entry:
    PyTorch with the same weights rounded to bfloat16 (float32 arithmetic) agrees."""
    module, stack, params = _pair("lstm", 2, "float32")
    with torch.no_grad():
        for name, value in module.named_parameters():
            if name.startswith("weight"):
                value.copy_(value.to(torch.bfloat16).to(torch.float32))
    x = np.random.default_rng(1).standard_normal((23, 2, I)).astype(np.float32)
    state = stack.zero_state(2)
    want_y, want_final = _torch(module, x, state)
    y, final = _wavefront_call(stack, x, stack.pack_params(params, weights="bfloat16"), state)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final["c"], want_final["c"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_first", [False, True])
def test_forward_measures_the_wavefront_against_layer_by_layer(batch_first, monkeypatch):
    """stack.forward offers both ways to a FasterOf per batch size; whichever runs, the
    result is PyTorch's (the wavefront's tables are reused from call to call), batch
    first too."""
    calls = []
    original = wavefront.Wavefront.run

    def run(self, *args):
        calls.append(self)
        return original(self, *args)
    monkeypatch.setattr(wavefront.Wavefront, "run", run)
    module, stack, params = _pair("lstm", 2)
    x = np.random.default_rng(2).standard_normal((11, 2, I))
    want_y, want_final = _torch(module, x, stack.zero_state(2))
    if batch_first:
        stack = lstmc.compile(spec_path("lstm"), I, H, target="cpu", dtype="float64",
                              num_layers=2, batch_first=True)
        x, want_y = np.ascontiguousarray(x.transpose(1, 0, 2)), want_y.transpose(1, 0, 2)
    for _ in range(2 * FasterOf.PROBES + 1):
        y, final = stack.forward(x, params)
        np.testing.assert_allclose(y, want_y, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(final["h"], want_final["h"], rtol=1e-10, atol=1e-12)
    assert len(calls) >= FasterOf.PROBES and len(set(map(id, calls))) == 1
    assert stack._wavefront_choices[2].best is not None


def test_busy_workers_leave_the_call_to_the_layers_one_after_the_other(monkeypatch):
    """While another call holds the parked workers (and there is no OpenMP team to run
    on), the wavefront gives way (None) and forward runs layer by layer: the same
    result."""
    monkeypatch.setattr("lstmc_runtime.workers.run_kernel", lambda *job: None)  # no OpenMP
    module, stack, params = _pair("lstm", 2)
    x = np.random.default_rng(3).standard_normal((9, 1, I))
    want_y, _ = _torch(module, x, stack.zero_state(1))
    cell = stack.layers[0][0]
    pool = cell.native_workers(2)
    assert pool is not None
    final = {n: np.empty((2, 1, H)) for n in stack.state_sizes}
    run = stack._wavefront(x, params, None, stack.zero_state(1), final, None, {})
    with pool.lock:
        assert run() is None
        for _ in range(2 * FasterOf.PROBES + 1):
            np.testing.assert_allclose(stack.forward(x, params)[0], want_y, rtol=1e-10,
                                       atol=1e-12)


@pytest.mark.parametrize("case", ["lengths", "bidirectional", "reversed", "batch of 16",
                                  "one layer", "LSTMC_WAVEFRONT=0", "reference target"])
def test_where_a_wavefront_does_not_apply(case, monkeypatch):
    """Lengths (rows end at different steps), two directions (the layer above needs the
    whole sequence) or one reversed, batches cut into slices anyway, a single layer, the
    switch, and cells that are not native: no wavefront."""
    layers = 1 if case == "one layer" else 2
    stack = lstmc.compile(spec_path("lstm"), I, H, target="reference" if case ==
                          "reference target" else "cpu", dtype="float64",
                          num_layers=layers, bidirectional=case == "bidirectional",
                          direction="reverse" if case == "reversed" else "forward")
    if case == "one layer":
        stack = Stack([[stack]])
    B = 16 if case == "batch of 16" else 2
    if case == "LSTMC_WAVEFRONT=0":
        monkeypatch.setenv("LSTMC_WAVEFRONT", "0")
    x = np.zeros((5, B, I))
    count = layers * stack.num_directions
    final = {n: np.empty((count, B, H)) for n in stack.state_sizes}
    lengths = np.array([5, 3]) if case == "lengths" else None
    params = stack.init_params(0)
    assert stack._wavefront(x, params, None, stack.zero_state(B), final, lengths, {}) is None


@pytest.mark.parametrize("team", ["parked workers", "OpenMP"])
def test_a_wavefront_runs_on_no_more_threads_than_the_cores_allowed(team, monkeypatch):
    """4 layers, LSTMC_NUM_THREADS=2, and a pool of parked workers larger than that (made
    for another call): the wavefront runs on 2 threads, the layers taking turns, on the
    parked workers or on PyTorch's OpenMP team (where torch has loaded one)."""
    from lstmc_runtime.openmp import team as openmp_team
    from lstmc_runtime.workers import Workers

    module, stack, params = _pair("lstm", 4)
    assert stack.layers[0][0].native_workers(4) is not None
    threads = []
    if team == "OpenMP":
        if openmp_team() is None:
            pytest.skip("torch loaded no GNU OpenMP here")
        from lstmc_runtime import workers

        original_kernel = workers.run_kernel
        monkeypatch.setattr("lstmc_runtime.workers.run_kernel", lambda *job: (
            threads.append(job[5]), original_kernel(*job))[1])
    else:
        monkeypatch.setattr("lstmc_runtime.workers.run_kernel", lambda *job: None)
    original = Workers.run

    def run(self, kernel, T, B, pointers, count, sync, arena):
        threads.append(count)
        return original(self, kernel, T, B, pointers, count, sync, arena)
    monkeypatch.setattr(Workers, "run", run)
    x = np.random.default_rng(4).standard_normal((13, 2, I))
    want_y, _ = _torch(module, x, stack.zero_state(2))
    y, _ = _wavefront_call(stack, x, params, stack.zero_state(2))
    np.testing.assert_allclose(y, want_y, rtol=1e-10, atol=1e-12)
    assert threads == [2]


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("layers, batch", [(2, 1), (3, 3), (2, None)])  # None: unbatched
def test_lstmc_nn_inference_runs_its_layers_as_a_wavefront(kind, layers, batch, monkeypatch):
    """lstmc.nn.LSTM / GRU of several layers in eager inference: the wavefront (among
    the ways measured) gives nn.LSTM's / nn.GRU's outputs and final states, from zeros
    and from given states; training with dropout between layers, and calls that need
    gradients, never take it."""
    import lstmc.nn

    runs = []
    original = wavefront.Wavefront.run
    monkeypatch.setattr(wavefront.Wavefront, "run",
                        lambda self, *args: (runs.append(self), original(self, *args))[1])
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(I, H, num_layers=layers, dropout=0.5).double()
    ours = getattr(lstmc.nn, kind)(I, H, num_layers=layers, dropout=0.5).double()
    ours.load_state_dict(theirs.state_dict())
    theirs.eval(), ours.eval()
    lead = (layers,) if batch is None else (layers, batch)
    x = torch.randn((17, I) if batch is None else (17, batch, I), dtype=torch.float64)
    given = torch.randn(lead + (H,), dtype=torch.float64)
    hx = (given, 0.5 * given) if kind == "LSTM" else given
    with torch.no_grad():
        for _ in range(2 * FasterOf.PROBES + 1):
            for state in (None, hx):
                y, final = ours(x, state)
                want_y, want_final = theirs(x, state)
                torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-12)
                torch.testing.assert_close(final, want_final, rtol=1e-10, atol=1e-12)
    assert runs
    runs.clear()
    ours.train()
    with torch.no_grad():
        ours(x)  # dropout between the layers
    ours.eval()
    ours(x)[0].sum().backward()  # gradients
    assert not runs


def test_large_buffers_are_leased_per_call_not_kept(monkeypatch):
    """The outputs between layers and the work buffers of a long sequence are leased
    from the buffer pool for each call (a stack of many lengths would otherwise keep
    them all): the tables point at each call's, and the results are torch's."""
    monkeypatch.setattr(wavefront, "MAX_PLAN_BYTES", 0)
    module, stack, params = _pair("gru", 3)
    for seed in range(3):  # other inputs, the same tables
        x = np.random.default_rng(seed).standard_normal((29, 2, I))
        want_y, want_final = _torch(module, x, stack.zero_state(2))
        y, final = _wavefront_call(stack, x, params, stack.zero_state(2))
        np.testing.assert_allclose(y, want_y, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(final["h"], want_final["h"], rtol=1e-10, atol=1e-12)
    (wave,) = stack._wavefronts.values()
    assert not wave.owned and all(a.size <= 2 * H for a in wave.keep)  # states, lengths
