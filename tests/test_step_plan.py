"""The step plan both native backends render (passes.plan_step): its guarantees checked
on every shipped spec and on random cells, independently of any backend. A region's
loops run in order, each over its units; the checks below replay that order and ask, for
every read, whether the value read is ready there and in the place it is read from."""
import glob

import pytest
from conftest import needs_opencl
from hypothesis import HealthCheck, given, settings
from test_random_cells import cells

from lstmc.api import lower_bound
from lstmc.ir.graph import LEAVES, REDUCTIONS, Op
from lstmc.ir.size import SCALAR, Size
from lstmc.ir.step_plan import Assemble, Compute, Finish, Reduce

SPECS = sorted(glob.glob("specs/**/*.lstm", recursive=True))
EXTRA_SIZES = {"lstmp": {"P": 3}, "slstm": {"NH": 2}}


def _program(source: str, name: str = ""):
    extra = next((v for k, v in EXTRA_SIZES.items() if k in name), {})
    return lower_bound(source, None, 4, 6, extra)[0]


def check_region(region) -> None:
    ids = {n.id for n in region.nodes}
    done: dict[int, tuple[int, int]] = {}  # node id -> (loop, position) where it is ready
    assembled: dict[int, list[tuple[int, Size]]] = {}
    seen: list[int] = []
    # Reductions and concats are ready from the loop after the last one writing them.
    ready_from: dict[int, int] = {}
    for k, loop in enumerate(region.loops):
        for w in loop.work:
            if isinstance(w, Reduce):
                ready_from[w.node.id] = k + 1
            elif isinstance(w, Assemble):
                ready_from[w.concat.id] = max(ready_from.get(w.concat.id, 0), k + 1)
    for k, loop in enumerate(region.loops):
        for position, w in enumerate(loop.work):
            if isinstance(w, Compute):
                n = w.node
                assert n.op not in REDUCTIONS and n.op != Op.CONCAT
                assert n.size == SCALAR or not loop.row_level
                if not loop.row_level:
                    assert n.size == loop.size, f"%{n.id} of size {n.size} in a {loop.size} loop"
                for u in n.inputs:
                    if u.id not in ids or u.op in LEAVES:
                        continue
                    if u.op in REDUCTIONS or u.op == Op.CONCAT:
                        assert ready_from[u.id] <= k, f"%{n.id} reads %{u.id} before it is ready"
                        continue
                    assert u.id in done, f"%{n.id} in loop {k} reads %{u.id} before it is ready"
                    where, _ = done[u.id]
                    if where != k:  # from memory: stored by its own loop
                        assert region.read_outside_loop(u), f"%{u.id} read elsewhere, never stored"
                    else:  # from a register: only what reads the same unit
                        assert n.op != Op.SLICE, f"slice %{n.id} reads %{u.id} from a register"
                done[n.id] = (k, position)
                seen.append(n.id)
            elif isinstance(w, Reduce):
                src = w.node.inputs[0]
                assert not loop.row_level and loop.size == src.size
                if src.id in ids:
                    assert src.id in done and done[src.id][0] <= k
                    if done[src.id][0] < k:
                        assert region.read_outside_loop(src)
                seen.append(w.node.id)
            elif isinstance(w, Finish):
                assert loop.row_level and region.loop_of[w.node.id] < k
            else:
                assert isinstance(w, Assemble)
                part = w.part
                assert loop.size == part.size
                if part.id in ids and part.op in REDUCTIONS:
                    assert ready_from[part.id] <= k
                elif part.id in ids:
                    assert part.id in done and done[part.id][0] <= k
                assembled.setdefault(w.concat.id, []).append((k, w.offset))
    for n in region.nodes:  # a concat is ready once every part is written
        if n.op == Op.CONCAT:
            writes = assembled.get(n.id, [])
            offsets, total = [], Size()
            for part in n.inputs:
                offsets.append(total)
                total = total + part.size
            assert sorted(map(str, (o for _, o in writes))) == sorted(map(str, offsets))
            seen.append(n.id)
    assert sorted(seen) == sorted(ids), "every node of the region is in exactly one loop"


def check_program(program) -> None:
    for plan in (program.forward_plan, program.backward_plan):
        for region in plan.regions.values():
            check_region(region)
    info = program.info
    forward = program.forward_plan
    assert {r.key for r in forward.routes_of("state")} == set(info.states)
    assert [r.key for r in forward.routes_of("output")] == [info.output]
    assert {r.key for r in forward.routes_of("saved")} == {n.id for n in program.saved}
    backward = program.backward_plan
    assert sorted(r.key for r in backward.routes_of("carry")) == sorted(info.states)
    for route in backward.routes:
        if route.node is not None:
            assert route.node.size in (route.width, SCALAR) or route.kind == "input"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.split("specs/")[1])
def test_the_plan_of_every_shipped_spec_keeps_its_guarantees(path):
    check_program(_program(open(path).read(), path))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells())
def test_the_plan_of_random_cells_keeps_its_guarantees(spec):
    check_program(_program(spec))


def test_an_lstm_step_is_one_loop_over_its_units():
    """The gates are slices of the products, which are in memory already: everything
    after the products is one loop over H, with only the new states stored."""
    program = _program(open("specs/lstm.lstm").read())
    (region,) = program.forward_plan.regions.values()
    (loop,) = region.loops
    assert str(loop.size) == "H" and not loop.row_level
    assert not any(region.read_outside_loop(n) for n in loop.computed)


def test_twin_biases_are_one_gradient_summed_once():
    """PyTorch's b_ih and b_hh get the same gradient: one route of each pair names the
    other, whose gradient is the same node."""
    program = _program(open("specs/lstm.lstm").read())
    params = {r.key: r for r in program.backward_plan.routes_of("param")}
    aliases = {k: r.alias_of for k, r in params.items() if r.alias_of}
    pairs = {frozenset(pair) for pair in aliases.items()}
    assert pairs == {frozenset({"b_i" + g, "b_h" + g}) for g in "ifgo"}
    for name, first in aliases.items():
        assert params[name].node is params[first].node


def test_a_concat_is_written_by_its_parts_and_read_from_memory():
    source = """cell c(x: I) -> h: H {
      param W: [H, I], g: H
      h' = tanh(concat(W @ x * g, g)[1:H+1])
    }
    """
    program = _program(source)
    (region,) = program.forward_plan.regions.values()
    writes = [w for loop in region.loops for w in loop.work if isinstance(w, Assemble)]
    assert [str(w.offset) for w in writes] == ["0", "H"]
    concat = writes[0].concat
    (slice_,) = [n for n in region.nodes if n.op == Op.SLICE]
    assert slice_.inputs[0] is concat
    written_by = [k for k, loop in enumerate(region.loops)
                  if any(isinstance(w, Assemble) for w in loop.work)]
    assert region.loop_of[slice_.id] > max(written_by)


@pytest.mark.parametrize("target", ["cpu", "opencl", "opencl-persistent"])
def test_concats_with_row_level_parts_run_on_every_native_target(target):
    """Scalars (means, sums, and values computed from them once per row) as parts of
    concats: written into the concat by a loop of their own, read back by slices at
    offsets that straddle the parts. The reference
    executor is tied to finite differences here; each native target matches it."""
    import numpy as np

    import lstmc
    from lstmc.gradcheck import gradcheck

    if target.startswith("opencl"):
        needs_opencl()
    spec = """cell e(x: I) -> h: H {
      param W: [H, I], g: H, U: [H, H]
      z = W @ x + U @ h
      m = mean(z)
      h' = tanh(concat(m * 2, z * g, sum(z))[1:H+1] + concat(z, m, sum(z) - m)[H+1:H+2] * g)
    }
    """
    reference = lstmc.compile(spec, 3, 5, dtype="float64")
    assert gradcheck(reference).passed(1e-6)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((4, 3, 3)), rng.standard_normal((4, 3, 5))
    params = reference.init_params(1)
    y0, _, tape = reference.forward(x, params, train=True)
    g0 = tape.backward(dy)
    cell = lstmc.compile(spec, 3, 5, target=target.split("-")[0])
    if target == "opencl-persistent":
        cell.persistent = True
    f32 = {k: v.astype(np.float32) for k, v in params.items()}
    y1, _, tape = cell.forward(x.astype(np.float32), f32, train=True)
    g1 = tape.backward(dy.astype(np.float32))
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g1["x"], g0["x"], rtol=1e-5, atol=1e-6)
    for name in g0["params"]:
        np.testing.assert_allclose(g1["params"][name], g0["params"][name], rtol=1e-4,
                                   atol=1e-5, err_msg=name)
