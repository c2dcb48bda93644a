"""lstmc's custom ops and Recurrent: gradcheck and opcheck (a custom spec and a stack),
torch.compile(fullgraph=True) training equal to eager, torch.export, double backward,
autocast, DropConnect, packed-weight reuse, RecurrentCell, and bad input."""
import os
import pathlib

import pytest
import torch
from conftest import exit_of_forked_child
from torch.nn.utils import parametrize, prune
from torch.nn.utils.parametrizations import weight_norm

import lstmc
import lstmc.nn as lnn
from lstmc.nn import ops

ROOT = pathlib.Path(__file__).resolve().parent.parent
PEEPHOLE = str(ROOT / "specs" / "peephole_lstm.lstm")
T, B, I, H = 5, 3, 3, 5


def peephole(dtype=torch.float64, **options):
    torch.manual_seed(0)
    return lnn.Recurrent(PEEPHOLE, I, H, dtype=dtype, **options)


def stack(dtype=torch.float64):
    torch.manual_seed(0)
    return lnn.Recurrent(PEEPHOLE, I, H, num_layers=2, bidirectional=True, dtype=dtype)


def test_parameters_named_after_the_spec():
    single = peephole()
    assert [n for n, _ in single.named_parameters()][:3] == ["W_i", "W_f", "W_g"]
    names = [n for n, _ in stack().named_parameters()]
    assert "l0_W_i" in names and "l0_reverse_p_o" in names and "l1_reverse_b_o" in names
    assert stack().l1_W_i.shape == (H, 2 * H)


def _gradcheck(module):
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in module.named_parameters()]
    params = list(module.parameters())
    state = {n: (0.3 * torch.randn(module.num_layers * module.num_directions, B, s,
                                   dtype=torch.float64)).requires_grad_()
             for n, s in module.state_sizes.items()}
    lengths = torch.tensor([5, 2, 4])

    def f(x, *args):
        init = dict(zip(state, args[:len(state)]))
        y, final = torch.func.functional_call(module, dict(zip(names, args[len(state):])),
                                              (x, init, lengths))
        return (y, *final.values())

    return torch.autograd.gradcheck(f, (x, *state.values(), *params), eps=1e-6, atol=1e-6,
                                    rtol=1e-5)


def test_gradcheck_custom_spec_and_stack():
    assert _gradcheck(peephole())
    assert _gradcheck(stack())


def _op_args(module, x, lengths, train):
    key = module._keys[-1]
    layer_input = x if module.num_layers == 1 else torch.randn(
        x.shape[0], x.shape[1], module.num_directions * H, dtype=x.dtype)
    state = [0.3 * torch.randn(x.shape[1], s, dtype=x.dtype)
             for s in module.state_sizes.values()]
    weights = [w.detach().clone().requires_grad_() for w in module._weights(
        module.num_layers - 1, module.num_directions - 1)]
    return (key, layer_input.requires_grad_(), weights, [s.requires_grad_() for s in state],
            lengths, train, None)


@pytest.mark.parametrize("which", ["peephole", "stack"])
def test_opcheck(which):
    module = peephole() if which == "peephole" else stack()
    x = torch.randn(T, B, I, dtype=torch.float64)
    for lengths in (None, torch.tensor([5, 2, 4])):
        args = _op_args(module, x, lengths, True)
        torch.library.opcheck(torch.ops.lstmc.forward.default, args)
        torch.library.opcheck(torch.ops.lstmc.forward.default, args[:5] + (False, None),
                              test_utils=("test_schema", "test_faketensor"))
        y, final, work = torch.ops.lstmc.forward(*args)
        back = (args[0], args[1].detach(), [w.detach() for w in args[2]], work, lengths,
                torch.randn_like(y), [torch.randn_like(f) for f in final], None)
        torch.library.opcheck(torch.ops.lstmc.backward.default, back,
                              test_utils=("test_schema", "test_faketensor"))


def _train(model, steps, x, target):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = lnn.Recurrent(PEEPHOLE, I, H)
        self.head = torch.nn.Linear(H, 1)

    def forward(self, x):
        y, state = self.rnn(x)
        return self.head(y[-1] + state["c"][0])


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_trains_like_eager(backend):
    x, target = torch.randn(T, B, I), torch.randn(B, 1)
    eager = _train(Model(), 3, x, target)
    torch._dynamo.reset()
    compiled = torch.compile(Model(), fullgraph=True, backend=backend)
    torch.testing.assert_close(_train(compiled, 3, x, target), eager, rtol=1e-5, atol=1e-6)


class ZoneoutModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = lnn.Recurrent(str(ROOT / "specs" / "zoneout_lstm.lstm"), I, H)
        self.head = torch.nn.Linear(H, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])


def test_compile_fullgraph_draws_the_masks_eager_draws():
    """The masks' seed comes from torch's generator inside the graph: compiled training
    with dropout/zoneout in the cell reproduces eager training for one torch seed."""
    x, target = torch.randn(T, B, I), torch.randn(B, 1)
    model = ZoneoutModel()
    torch.manual_seed(5)
    eager = _train(model, 3, x, target)
    torch._dynamo.reset()
    compiled = torch.compile(ZoneoutModel(), fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    torch.testing.assert_close(_train(compiled, 3, x, target), eager, rtol=1e-6, atol=1e-7)


def test_export_inference():
    model = Model().eval()
    x = torch.randn(T, B, I)
    exported = torch.export.export(model, (x,))
    assert any("lstmc.forward" in str(n.target) for n in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(x), model(x))


def test_double_backward_raises():
    module = peephole()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    y, _ = module(x)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(ops.DoubleBackwardError, match="second derivative"):
        gx.sum().backward()


def test_parameters_take_torchs_default_dtype():
    """As torch.nn's modules: no dtype given, the parameters get torch's default dtype;
    one lstmc cannot compute in is refused by name."""
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        for module in (lnn.Recurrent(PEEPHOLE, I, H), lnn.RecurrentCell(PEEPHOLE, I, H)):
            assert {p.dtype for p in module.parameters()} == {torch.float64}
            x = torch.randn(B, I) if isinstance(module, lnn.RecurrentCell) else torch.randn(
                T, B, I)
            assert module(x)[0].dtype == torch.float64
        torch.set_default_dtype(torch.bfloat16)
        with pytest.raises(lstmc.ShapeError, match="default dtype is torch.bfloat16"):
            lnn.Recurrent(PEEPHOLE, I, H)
    finally:
        torch.set_default_dtype(default)
    with pytest.raises(lstmc.ShapeError, match="got torch.float16"):
        lnn.RecurrentCell(PEEPHOLE, I, H, dtype=torch.float16)


def test_autocast_casts_inputs_to_the_cells_dtype():
    module = peephole(dtype=torch.float32)
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _state = module(x.to(torch.bfloat16))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, module(x.to(torch.bfloat16).float())[0])


def test_dropconnect_masks_recurrent_weights_without_replacing_parameters():
    module = peephole(weight_dropout=0.5)
    before = {n: p for n, p in module.named_parameters()}
    x = torch.randn(T, B, I, dtype=torch.float64)
    first, second = module(x)[0], module(x)[0]
    assert not torch.equal(first, second)
    assert all(p is before[n] for n, p in module.named_parameters())
    first.sum().backward()
    assert module.U_i.grad is not None and module.W_i.grad is not None
    module.eval()
    torch.testing.assert_close(module(x)[0], peephole()(x)[0])


def test_packed_weights_follow_parameter_updates():
    module = peephole()
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        before = module(x)[0]
        module.U_f.mul_(0.5)  # an in-place update, as an optimizer step
        after = module(x)[0]
    fresh = peephole()
    with torch.no_grad():
        fresh.U_f.mul_(0.5)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, fresh(x)[0], rtol=0, atol=0)


def test_training_keeps_one_pack_per_weight_set():
    """Each step's training forward packs afresh; the packs of past steps are dropped
    (they held megabytes each), not kept until the cache's limit."""
    torch.manual_seed(0)
    module = lnn.LSTM(5, 7, num_layers=2, bidirectional=True)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    x = torch.randn(T, B, 5)
    for _ in range(6):
        optimizer.zero_grad()
        module(x)[0].sum().backward()
        optimizer.step()
    cells = [cell for cell in list(ops._packs.keys()) if cell.hidden_size == 7
             and cell.input_size in (5, 14)]
    held = [len(ops._packs[cell].entries) for cell in cells]
    assert sum(held) == 4, held  # one per layer and direction
    with torch.no_grad():  # the last step's weights: packed again once, then reused
        first = module(x)[0]
        assert sum(len(ops._packs[cell].entries) for cell in cells) == 4
        torch.testing.assert_close(module(x)[0], first, rtol=0, atol=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_pack_cache_is_locked_runs_on():
    """A fork (a DataLoader worker) while another thread holds a pack cache's lock: in
    the child that thread does not exist, and the module's next call must not wait for
    it."""
    module = lnn.LSTM(5, 7)
    x = torch.randn(T, B, 5)
    expected = module(x)[0].detach()  # a training forward: through the pack cache
    caches = list(ops._packs.values())
    assert caches
    check = lambda: torch.equal(module(x)[0].detach(), expected)  # noqa: E731
    assert exit_of_forked_child(check, [cache.lock for cache in caches]) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_cell_compiles_compiles_its_own():
    """A fork while another thread compiles a module's cell (the registry's lock held):
    the child compiles the cells it needs instead of waiting for that thread."""
    from lstmc.nn import registry

    module = lnn.GRU(3, 9)  # a cell no other test compiles
    x = torch.randn(T, B, 3)
    with torch.no_grad():
        theirs = torch.nn.GRU(3, 9).eval()
        theirs.load_state_dict(module.state_dict())
        expected = theirs(x)[0]  # here: torch's OpenMP may hang in a forked child
        check = lambda: torch.allclose(module(x)[0], expected, atol=1e-5)  # noqa: E731
        assert exit_of_forked_child(check, [registry._lock], seconds=60) == 0


def test_recurrent_cell_steps_equal_the_sequence():
    torch.manual_seed(0)
    cell = lnn.RecurrentCell(PEEPHOLE, I, H, dtype=torch.float64)
    sequence = lnn.Recurrent(PEEPHOLE, I, H, dtype=torch.float64)
    sequence.load_state_dict(cell.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    y, final = sequence(x)
    state = None
    for t in range(T):
        out, state = cell(x[t], state)
        torch.testing.assert_close(out, y[t])
    torch.testing.assert_close(state["c"], final["c"][0])
    out, one = cell(x[0, 0])
    assert out.shape == (H,) and one["c"].shape == (H,)


def test_bad_input_is_a_named_error():
    module = peephole()
    x = torch.randn(T, B, I, dtype=torch.float64)
    with pytest.raises(lstmc.ShapeError, match="expected 3 features"):
        module(torch.randn(T, B, 4, dtype=torch.float64))
    with pytest.raises(lstmc.ShapeError, match="state: expected the states h, c; missing c"):
        module(x, {"h": torch.zeros(1, B, H, dtype=torch.float64)})
    with pytest.raises(lstmc.ShapeError, match=r"state\['c'\]: expected shape \(1, 3, 5\)"):
        module(x, {"h": torch.zeros(1, B, H), "c": torch.zeros(B, H)})
    with pytest.raises(lstmc.ShapeError, match="between 1 and T=5, got 6 for row 1"):
        module(x, lengths=[5, 6, 1])
    with pytest.raises(lstmc.ShapeError, match="unexpected input"):
        module(x, extra=x)
    with pytest.raises(lstmc.CompileError, match="unknown target"):
        lnn.Recurrent(PEEPHOLE, I, H, target="tpu")
    with pytest.raises(lstmc.SpecError):
        lnn.Recurrent("cell broken(x: I) -> h: H { h' = tanh(W @ x) + gg }", I, H)


def test_opcheck_with_an_extra_input():
    """A cell with inputs after the first (phased_lstm's timestamps): the op takes them
    concatenated to x along the last axis, and returns their gradient as part of dx."""
    torch.manual_seed(0)
    module = lnn.Recurrent(str(ROOT / "specs" / "phased_lstm.lstm"), I, H,
                           dtype=torch.float64)
    x = torch.cat([torch.randn(T, B, I, dtype=torch.float64),
                   torch.cumsum(torch.rand(T, B, 1, dtype=torch.float64), 0)], -1)
    for lengths in (None, torch.tensor([5, 2, 4])):
        args = _op_args(module, x, lengths, True)
        assert args[1].shape == (T, B, I + 1)
        torch.library.opcheck(torch.ops.lstmc.forward.default, args)
        y, final, work = torch.ops.lstmc.forward(*args)
        back = (args[0], args[1].detach(), [w.detach() for w in args[2]], work, lengths,
                torch.randn_like(y), [torch.randn_like(f) for f in final], None)
        torch.library.opcheck(torch.ops.lstmc.backward.default, back,
                              test_utils=("test_schema", "test_faketensor"))
        dx = torch.ops.lstmc.backward(*back)[0]
        assert dx.shape == (T, B, I + 1) and dx[..., I:].abs().sum() > 0
    with pytest.raises(lstmc.ShapeError, match=r"3 \+ 1 = 4 units packed"):
        torch.ops.lstmc.forward(module._keys[0], x[..., :I], [w.detach() for w in
                                module._weights(0, 0)], [], None, False, None)


def _cell_like(torch_cell: torch.nn.LSTMCell, dtype) -> lnn.RecurrentCell:
    """An lstmc RecurrentCell of the standard LSTM with nn.LSTMCell's weights."""
    n_in, n_h = torch_cell.input_size, torch_cell.hidden_size
    ours = lnn.RecurrentCell(lnn.specs.SPECS["lstm"], n_in, n_h, dtype=dtype)
    with torch.no_grad():
        for kind, weight, bias in (("i", torch_cell.weight_ih, torch_cell.bias_ih),
                                   ("h", torch_cell.weight_hh, torch_cell.bias_hh)):
            for k, gate in enumerate("ifgo"):
                rows = slice(k * n_h, (k + 1) * n_h)
                getattr(ours, f"W_{kind}{gate}").copy_(weight[rows])
                getattr(ours, f"b_{kind}{gate}").copy_(bias[rows])
    return ours


@pytest.mark.parametrize("fused", [True, False])
def test_inference_sees_fused_optimizer_steps(fused):
    """A fused optimizer step (Adam(fused=True) on CPU) writes the weights without
    bumping their version counters: inference after it (the op path with a
    PackedSequence, the direct path of one and of two layers, RecurrentCell) must use
    the new weights, as torch's modules do."""
    torch.manual_seed(0)
    ours, theirs = lnn.LSTM(I, H, num_layers=2).double(), torch.nn.LSTM(I, H, num_layers=2)
    theirs = theirs.double()
    theirs.load_state_dict(ours.state_dict())
    one, their_one = lnn.LSTM(I, H).double(), torch.nn.LSTM(I, H).double()
    their_one.load_state_dict(one.state_dict())
    their_cell = torch.nn.LSTMCell(I, H).double()
    cell = _cell_like(their_cell, torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [T, T - 2, 1], enforce_sorted=False)

    def same_outputs():
        with torch.no_grad():
            torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(ours(packed)[0].data, theirs(packed)[0].data,
                                       rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(one(x)[0], their_one(x)[0], rtol=1e-12, atol=1e-12)
            state = {"h": torch.zeros(B, H, dtype=torch.float64),
                     "c": torch.zeros(B, H, dtype=torch.float64)}
            torch.testing.assert_close(cell(x[0], state)[0], their_cell(x[0])[0],
                                       rtol=1e-12, atol=1e-12)

    same_outputs()  # every path has packed its weights
    modules = [(ours, theirs), (one, their_one), (cell, None)]
    versions = [p._version for m, _ in modules for p in m.parameters()]
    for module, twin in modules:
        optimizer = torch.optim.Adam(module.parameters(), lr=0.1, fused=fused)
        out = module(x[0])[0] if twin is None else module(x)[0]
        out.square().sum().backward()
        optimizer.step()
        if twin is not None:
            twin.load_state_dict(module.state_dict())
    with torch.no_grad():
        for kind, weight, bias in (("i", their_cell.weight_ih, their_cell.bias_ih),
                                   ("h", their_cell.weight_hh, their_cell.bias_hh)):
            for k, gate in enumerate("ifgo"):
                weight[k * H:(k + 1) * H] = getattr(cell, f"W_{kind}{gate}")
                bias[k * H:(k + 1) * H] = getattr(cell, f"b_{kind}{gate}")
    if fused:  # the case a version counter cannot tell
        assert [p._version for m, _ in modules for p in m.parameters()] == versions
    same_outputs()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_inference_matches_lstmcell_and_sees_weight_updates(dtype):
    """Eager no-grad steps (the streaming fast path: NumPy views, weights packed once)
    against nn.LSTMCell, batched and unbatched, then after an in-place weight update."""
    torch.manual_seed(0)
    theirs = torch.nn.LSTMCell(I, H).to(dtype)
    ours = _cell_like(theirs, dtype)
    xs = torch.randn(6, B, I, dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else {}
    with torch.no_grad():
        state, hc = None, None
        for t in range(6):
            out, state = ours(xs[t], state)
            hc = theirs(xs[t], hc)
            torch.testing.assert_close(out, hc[0], **tol)
            torch.testing.assert_close(state["c"], hc[1], **tol)
        one, one_state = ours(xs[0, 1])
        h1, c1 = theirs(xs[0, 1:2])
        assert one.shape == (H,) and one_state["c"].shape == (H,)
        torch.testing.assert_close(one, h1[0], **tol)
        ours.W_hf.mul_(0.5)  # the forget gate's rows of weight_hh
        ours.b_io.mul_(0.5)  # the output gate's rows of bias_ih
        theirs.weight_hh[H:2 * H].mul_(0.5)
        theirs.bias_ih[3 * H:].mul_(0.5)
        out, _ = ours(xs[0], state)
        torch.testing.assert_close(out, theirs(xs[0], hc)[0], **tol)


def test_streaming_inference_takes_the_fast_path_and_checks_its_input(monkeypatch):
    torch.manual_seed(0)
    ours = _cell_like(torch.nn.LSTMCell(I, H), torch.float32)
    x = torch.randn(B, I)
    with torch.no_grad():
        ours(x)  # compiles and packs
        monkeypatch.setattr(lnn.cell, "call_forward", lambda *a, **k: pytest.fail("slow path"))
        out, state = ours(x, {"h": torch.zeros(B, H), "c": torch.zeros(B, H)})
        assert out.shape == (B, H)
        monkeypatch.undo()
        with pytest.raises(lstmc.ShapeError, match=r"state\['c'\]: expected shape \(3, 5\)"):
            ours(x, {"h": torch.zeros(B, H), "c": torch.zeros(B, H + 1)})
        with pytest.raises(lstmc.ShapeError, match=r"state\['h'\]: expected shape \(5,\)"):
            ours(x[0], {"h": torch.zeros(1, H), "c": torch.zeros(1, H)})
        with pytest.raises(lstmc.ShapeError, match="input: expected shape"):
            ours(torch.randn(B, I + 1))
        # Another dtype or a strided input takes the ordinary path, which converts it.
        strided = torch.randn(I, B).t()
        torch.testing.assert_close(ours(strided)[0], ours(strided.contiguous())[0])
        torch.testing.assert_close(ours(x.double())[0], ours(x)[0])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_eager_inference_takes_the_lean_call_and_equals_torch(monkeypatch, bidirectional):
    """No-grad forwards of lstmc.nn.LSTM run the kernels on the tensors' memory (no op
    call) and equal nn.LSTM's: 2 layers, with and without hx, unbatched, then after an
    in-place weight update and after a parameter's storage is replaced. A deep copy and
    a pickle of the module, made after such calls, compute the same."""
    import copy
    import io

    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, H, num_layers=2, bidirectional=bidirectional).double()
    ours = lnn.LSTM(I, H, num_layers=2, bidirectional=bidirectional).double()
    ours.load_state_dict(theirs.state_dict())
    count = 2 * (2 if bidirectional else 1)
    x = torch.randn(T, B, I, dtype=torch.float64)
    hc = (torch.randn(count, B, H, dtype=torch.float64),
          torch.randn(count, B, H, dtype=torch.float64))

    def check():
        for args in ((x,), (x, hc), (x[:, 0], (hc[0][:, 0], hc[1][:, 0]))):
            got, (h, c) = ours(*args)
            want, (h0, c0) = theirs(*args)
            torch.testing.assert_close(got, want)
            torch.testing.assert_close(h, h0)
            torch.testing.assert_close(c, c0)

    with torch.no_grad():
        check()  # compiles, packs, makes the plans
        monkeypatch.setattr(lnn.recurrent, "call_forward",
                            lambda *a, **k: pytest.fail("the op ran"))
        check()
        ours.weight_hh_l1.mul_(0.5)
        theirs.weight_hh_l1.mul_(0.5)
        check()
        ours.weight_ih_l0 = torch.nn.Parameter(ours.weight_ih_l0 * 2)
        theirs.weight_ih_l0 = torch.nn.Parameter(theirs.weight_ih_l0 * 2)
        check()
        buffer = io.BytesIO()
        torch.save(ours, buffer)
        buffer.seek(0)
        for other in (copy.deepcopy(ours), torch.load(buffer, weights_only=False)):
            torch.testing.assert_close(other(x, hc)[0], theirs(x, hc)[0])


def test_a_module_made_in_inference_mode_runs_and_sees_in_place_changes():
    """Parameters made under torch.inference_mode have no version counter: their packs
    are vouched for by their bytes, so an in-place change is still seen."""
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, H).double()
    state = theirs.state_dict()
    with torch.inference_mode():
        ours = lnn.LSTM(I, H).double()
        ours.load_state_dict(state)
        x = torch.randn(T, B, I, dtype=torch.float64)
        for _ in range(2):
            torch.testing.assert_close(ours(x)[0], theirs(x)[0])
            ours.weight_hh_l0.mul_(0.5)
            with torch.no_grad():
                theirs.weight_hh_l0.mul_(0.5)
        cell = lnn.RecurrentCell(lnn.specs.SPECS["lstm"], I, H, dtype=torch.float64)
        out, _ = cell(x[0])
        cell.W_ii.zero_()  # h starts at zero: the input weights count
        assert not torch.equal(cell(x[0])[0], out)


def test_eager_inference_from_two_threads_at_once_is_right():
    """A second caller inside the same cell's lean call takes the op instead."""
    import threading

    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, H).double()
    ours = lnn.LSTM(I, H).double()
    ours.load_state_dict(theirs.state_dict())
    xs = torch.randn(8, 40, B, I, dtype=torch.float64)
    wrong = []

    def run(rows):
        with torch.no_grad():
            for x in xs[rows]:
                if not torch.allclose(ours(x)[0], theirs(x)[0]):
                    wrong.append(x)

    threads = [threading.Thread(target=run, args=(slice(k, 8, 2),)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_accumulated_micro_batches_pack_once_and_a_data_write_packs_again(monkeypatch):
    """Training forwards compare the weights' bytes with the last pack's copies: between
    the micro-batches of accumulated gradients nothing changed (one pack), while a write
    through .data (no version bump) changes bytes and packs again, and the gradients are
    those of the weights as they are."""
    torch.manual_seed(0)
    module = lnn.LSTM(5, 7).double()
    x = torch.randn(T, B, 5, dtype=torch.float64)
    packed = []
    from lstmc_runtime.native import NativeCell

    original = NativeCell.pack_params
    monkeypatch.setattr(NativeCell, "pack_params",
                        lambda self, *a, **k: packed.append(self) or original(self, *a, **k))
    for _ in range(3):
        module(x)[0].sum().backward()
    assert len(packed) == 1
    reference = torch.nn.LSTM(5, 7).double()
    reference.load_state_dict(module.state_dict())
    module.weight_hh_l0.data.mul_(0.5)  # no version bump
    reference.weight_hh_l0.data.mul_(0.5)
    module.zero_grad()
    module(x)[0].sum().backward()
    assert len(packed) == 2
    reference(x)[0].sum().backward()
    torch.testing.assert_close(module.weight_hh_l0.grad, reference.weight_hh_l0.grad)


def test_a_replaced_parameter_is_never_served_the_old_ones_pack():
    """Eager inference keeps packed weights while the same tensors keep their storage and
    version: a parameter replaced by a new tensor (which may get the old one's freed
    memory, at the same version) is packed again. Against torch.nn.LSTM each time."""
    torch.manual_seed(0)
    ours, theirs = lnn.LSTM(I, H), torch.nn.LSTM(I, H)
    x = torch.randn(T, B, I)
    with torch.no_grad():
        for _ in range(40):
            ours.weight_hh_l0 = torch.nn.Parameter(torch.randn(4 * H, H))
            ours(x)
            ours.weight_hh_l0 = torch.nn.Parameter(torch.randn(4 * H, H))
            ours.weight_hh_l0 = torch.nn.Parameter(torch.randn(4 * H, H))
            theirs.load_state_dict(ours.state_dict())
            torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-5, atol=1e-6)


def _half(module, name):
    class Half(torch.nn.Module):
        def forward(self, w):
            return 0.5 * w
    parametrize.register_parametrization(module, name, Half())


@pytest.mark.parametrize("apply", [
    _half,
    lambda m, name: weight_norm(m, name),
    lambda m, name: prune.l1_unstructured(m, name, 0.5)],
    ids=["parametrize", "weight_norm", "prune"])
def test_parametrized_weights_as_torch(apply):
    """torch.nn.utils.parametrize, weight_norm and prune compute a weight on access (it
    leaves _parameters): outputs and gradients as torch.nn.LSTM's under the same
    parametrization, and eager inference after its parameters change in place."""
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, H, num_layers=2, dtype=torch.float64)
    ours = lnn.LSTM(I, H, num_layers=2, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    for module in (theirs, ours):
        apply(module, "weight_hh_l1")
    x = torch.randn(T, B, I, dtype=torch.float64)
    (y0, _), (y1, _) = theirs(x), ours(x)
    torch.testing.assert_close(y1, y0)
    y0.square().sum().backward()
    y1.square().sum().backward()
    for (name, p0), p1 in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p1.grad, p0.grad, msg=name)
    with torch.no_grad():
        for module in (theirs, ours):
            for p in module.parameters():
                p.mul_(1.5)
        torch.testing.assert_close(ours(x)[0], theirs(x)[0])


def test_recurrent_cell_draws_its_masks_in_training_mode():
    """Zoneout in training: each unit of the new c and h is its old value (a hit, with
    p 0.15 and 0.05) or the plain LSTM's new value (nn.LSTMCell with the same weights);
    hits differ from call to call and follow torch's generator; eval gives the
    expectation, as the sequence module does."""
    spec = str(ROOT / "specs" / "zoneout_lstm.lstm")
    torch.manual_seed(0)
    cell = lnn.RecurrentCell(spec, I, 32, dtype=torch.float64).train()
    plain = torch.nn.LSTMCell(I, 32, dtype=torch.float64)
    with torch.no_grad():
        plain.weight_ih.copy_(torch.cat([getattr(cell, f"W_i{g}") for g in "ifgo"]))
        plain.weight_hh.copy_(torch.cat([getattr(cell, f"W_h{g}") for g in "ifgo"]))
        plain.bias_ih.copy_(torch.cat([getattr(cell, f"b_{g}") for g in "ifgo"]))
        plain.bias_hh.zero_()
    x = torch.randn(8, I, dtype=torch.float64)
    state = {"h": torch.randn(8, 32, dtype=torch.float64),
             "c": torch.randn(8, 32, dtype=torch.float64)}
    h_new, c_new = plain(x, (state["h"], state["c"]))
    hits = []
    for grad in (True, False, False):
        with torch.set_grad_enabled(grad):
            _, out = cell(x, state)
        for name, new in (("h", h_new), ("c", c_new)):
            kept = torch.isclose(out[name], state[name], rtol=0, atol=1e-12)
            fresh = torch.isclose(out[name], new.detach(), rtol=0, atol=1e-12)
            assert bool((kept | fresh).all()), name
            hits.append(kept & ~fresh)
    assert all(0 < int(h.sum()) < h.numel() for h in hits)
    assert not torch.equal(hits[2], hits[4]) and not torch.equal(hits[3], hits[5])
    torch.manual_seed(7)
    first = cell(x, state)[1]["c"]
    torch.manual_seed(7)
    torch.testing.assert_close(cell(x, state)[1]["c"], first)
    sequence = lnn.Recurrent(spec, I, 32, dtype=torch.float64).eval()
    sequence.load_state_dict(cell.state_dict())
    cell.eval()
    expected = sequence(x[None], {n: s[None] for n, s in state.items()})[1]
    for name, value in cell(x, state)[1].items():
        torch.testing.assert_close(value, expected[name][0])


def test_recurrent_cell_refuses_what_one_step_cannot_do():
    with pytest.raises(TypeError, match="num_layers is an option of lstmc.nn.Recurrent"):
        lnn.RecurrentCell(PEEPHOLE, I, H, num_layers=2)
    with pytest.raises(TypeError, match="weight_dropout"):
        lnn.RecurrentCell(PEEPHOLE, I, H, weight_dropout=0.5)
    variational = lnn.RecurrentCell(str(ROOT / "specs" / "awd_lstm.lstm"), I, H)
    with pytest.raises(lstmc.LstmcError, match="per-sequence .variational. mask"):
        variational(torch.randn(B, I))
    assert variational.eval()(torch.randn(B, I))[0].shape == (B, H)


def test_standard_modules_name_hx_as_torch_does():
    with pytest.raises(lstmc.ShapeError, match=r"hx\[1\]: expected shape \(1, 3, 5\), "
                                               r"got \(2, 3, 5\)"):
        lnn.LSTM(I, H)(torch.randn(T, B, I), (torch.randn(1, B, H), torch.randn(2, B, H)))
    with pytest.raises(lstmc.ShapeError, match=r"hx: expected shape \(1, 3, 5\) \(a 3-D "
                                               r"tensor for batched input\), got \(3, 5\)"):
        lnn.GRU(I, H)(torch.randn(T, B, I), torch.randn(B, H))
    with pytest.raises(lstmc.ShapeError, match=r"at least one step, got shape \(3, 0, 3\)"):
        lnn.GRU(I, H, batch_first=True)(torch.randn(B, 0, I))
