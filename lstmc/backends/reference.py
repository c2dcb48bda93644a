"""The reference executor: runs a Program's forward and backward schedules with NumPy.

This is the living definition of the IR and the oracle every compiled backend is tested
against, so it favours being obviously right over being fast: one NumPy expression per
node, the sequence loop in Python. It is itself checked against PyTorch and against finite
differences in float64 (tests/).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import masks
from ..ir.graph import IRError, Node, Op, is_elementwise
from ..ir.program import Program
from . import check_renderable


@dataclass
class Saved:
    """What a training forward pass keeps for the backward pass."""

    x: np.ndarray
    steps: list[dict[int, np.ndarray]]  # per step: saved forward node id -> value
    batch: int
    lengths: np.ndarray
    seed: int | None = None  # of the masks the forward drew; the backward draws them again
    derived: dict[str, np.ndarray] | None = None  # $k -> (T, B, n), made by the prologues
    prologues: list[dict[int, np.ndarray]] | None = None  # each one's saved values


class ReferenceExecutor:
    def __init__(self, program: Program, sizes: dict[str, int], dtype: np.dtype):
        check_renderable(program)
        self.program, self.sizes, self.dtype = program, sizes, np.dtype(dtype)
        info = program.info
        self.output = info.output
        self.state_sizes = {n: s.bind(sizes) for n, s in info.states.items()}
        # x is every input packed: input `name` is x[..., offset:offset + width]
        self.columns = {n: slice(o, o + w) for n, (o, w) in info.input_columns(sizes).items()}

    # -- weights ------------------------------------------------------------------------

    def packed(self, segments, params) -> np.ndarray:
        """The matrices of a packed product stacked by rows, as the kernel reads them."""
        return np.concatenate([params[name] for name, _ in segments], axis=0)

    def _split_rows(self, grad: np.ndarray, segments, into: dict) -> None:
        offset = 0
        for name, rows in segments:
            n = rows.bind(self.sizes)
            into[name] = into.get(name, 0) + grad[offset:offset + n]
            offset += n

    # -- one node -----------------------------------------------------------------------

    def _evaluate(self, node: Node, env: dict[int, np.ndarray], params, batch: int):
        op, args = node.op, [env[i.id] for i in node.inputs]
        if is_elementwise(op):  # the registry's NumPy definition, in the cell's dtype
            return np.asarray(op.reference(*args), dtype=self.dtype)
        if op == Op.MATMUL:
            return args[0] @ self.packed(node.segments, params).T
        if op == Op.MATMUL_T:
            return args[0] @ self.packed(node.segments, params)
        if op == Op.SLICE:
            offset, size = (s.bind(self.sizes) for s in (node.attr.offset, node.attr.size))
            return args[0][..., offset:offset + size]
        if op == Op.CONCAT:  # parts may be per-row scalars or constants (one unit each)
            return np.concatenate([np.broadcast_to(a, (batch, part.size.bind(self.sizes)))
                                   for a, part in zip(args, node.inputs)], axis=-1)
        if op == Op.BROADCAST:
            return np.broadcast_to(args[0], (batch, node.size.bind(self.sizes))).copy()
        if op == Op.SUM:
            return np.sum(args[0], axis=-1, keepdims=True)
        if op == Op.MEAN:
            return np.mean(args[0], axis=-1, keepdims=True)
        raise IRError(f"the reference executor has no rule for op '{op.value}'")

    def _run(self, stages, env, params, batch) -> None:
        for stage in stages:
            for node in stage.nodes:
                env[node.id] = self._evaluate(node, env, params, batch)

    def _leaves(self, nodes, values, t: int, batch: int, seed: int | None) -> dict[int, np.ndarray]:
        env = {}
        for node in nodes:
            if node.op == Op.CONST:
                env[node.id] = np.asarray(node.attr, dtype=self.dtype)
            elif node.op == Op.MASK:  # seed None: inference, the mask's expectation
                env[node.id] = masks.values(node.attr, seed, t, np.arange(batch),
                                            node.size.bind(self.sizes), self.dtype)
            elif node.op in values:
                env[node.id] = values[node.op](node.attr)
        return env

    # -- whole sequences ----------------------------------------------------------------

    def forward(self, x: np.ndarray, params: dict, state: dict, train: bool, lengths=None,
                seed: int | None = None):
        """With `lengths` (B,), row b stops at step lengths[b]: later outputs are zero
        and its state stays as it was at its length. Training draws dropout and zoneout
        masks from `seed`; seed None (and inference) uses their expectations."""
        program = self.program
        T, B, _ = x.shape
        lengths = np.full(B, T) if lengths is None else lengths
        hoisted, derived, prologue_saved = self._before_loop(x, params, train)
        forward_nodes = program.graph.live_nodes()
        saved_ids = [n.id for n in program.saved]
        outputs = program.graph.outputs
        ys = np.empty((T, B, self.state_sizes[self.output]), dtype=self.dtype)
        steps = []
        for t in range(T):
            env = self._leaves(forward_nodes, {  # called right here, in this step
                Op.INPUT: lambda name, t=t: x[t][:, self.columns[name]],
                Op.STATE: lambda name, state=state: state[name],
                Op.PARAM: lambda name: params[name],
                Op.HOISTED: lambda index, t=t: hoisted[index][t],
            }, t, B, seed if train else None)
            self._run(program.forward, env, params, B)
            active = (t < lengths)[:, None]
            state = {name: np.where(active, env[node.id], state[name]).astype(self.dtype)
                     for name, node in outputs.items()}
            ys[t] = np.where(active, state[self.output], 0)
            if train:
                steps.append({i: env[i] for i in saved_ids})
        return ys, state, (Saved(x, steps, B, lengths, seed, derived, prologue_saved)
                           if train else None)

    def _before_loop(self, x, params, train: bool):
        """The hoisted products, level by level, each level's operands computed by its
        prologue over all T*B rows at once; and what the prologues' backward needs."""
        program = self.program
        T, B, _ = x.shape
        rows = lambda v: v.reshape(T * B, -1)
        hoisted: list = [None] * len(program.hoisted)
        derived: dict[str, np.ndarray] = {}
        saved: list[dict[int, np.ndarray]] = []
        for level in range(len(program.prologues) + 1):
            if level:
                prologue = program.prologues[level - 1]
                env = self._leaves(prologue.graph.live_nodes(), {
                    Op.INPUT: lambda name: rows(x[..., self.columns[name]]),
                    Op.PARAM: lambda name: params[name],
                    Op.HOISTED: lambda index: rows(hoisted[index]),
                }, 0, T * B, None)
                self._run(prologue.forward, env, params, T * B)
                for name, node in prologue.graph.outputs.items():
                    n = node.size.bind(self.sizes)
                    derived[name] = np.broadcast_to(env[node.id], (T * B, n)).reshape(T, B, n)
                if train:
                    saved.append({n.id: env[n.id] for n in prologue.saved})
            for h in program.hoisted_at(level):
                operand = self._operand(h, x, derived)
                hoisted[h.index] = (rows(operand) @ self.packed(h.segments, params).T
                                    ).reshape(T, B, -1)
        return hoisted, derived, saved

    def backward(self, saved: Saved, params: dict, dy: np.ndarray, dstate: dict):
        program, sizes = self.program, self.sizes
        x, B = saved.x, saved.batch
        T = x.shape[0]
        carry = {n: dstate[n] for n in self.state_sizes}
        grads = program.gradients
        backward_nodes = program.graph.live_nodes(grads.values())
        dx = np.zeros_like(x)
        dparams: dict[str, np.ndarray] = {}
        d_hoisted = [np.zeros((T, B, h.rows.bind(sizes)), self.dtype) for h in program.hoisted]
        products = program.recurrent_products
        d_products = {p.id: np.zeros((T, B, p.size.bind(sizes)), self.dtype) for p in products}
        for t in reversed(range(T)):
            # Rows past their length pass their gradient through untouched; zero adjoints
            # make everything else they would contribute zero (the pass is linear in them).
            active = (t < saved.lengths)[:, None]
            env = dict(saved.steps[t])
            env.update(self._leaves(backward_nodes, {
                Op.PARAM: lambda name: params[name],
                Op.ADJOINT: lambda name, t=t, active=active, carry=carry: np.where(
                    active, carry[name] + (dy[t] if name == self.output else 0), 0),
            }, t, B, saved.seed))
            self._run(program.backward, env, params, B)
            previous, carry = carry, {}
            for name, size in self.state_sizes.items():
                node = grads.get(("state", name))
                value = (np.zeros((B, size), self.dtype) if node is None
                         else np.broadcast_to(env[node.id], (B, size)))
                carry[name] = np.where(active, value, previous[name]).astype(self.dtype)
            for (kind, key), node in grads.items():
                value = env[node.id]
                # a gradient's key is a name (input, param) or a number (hoisted, product)
                if kind == "input":
                    assert isinstance(key, str)
                    dx[t][:, self.columns[key]] += value
                elif kind == "hoisted":
                    assert isinstance(key, int)
                    d_hoisted[key][t] = value
                elif kind == "product":
                    assert isinstance(key, int)
                    d_products[key][t] = value
                elif kind == "param":
                    assert isinstance(key, str)
                    n = params[key].shape[0]
                    dparams[key] = dparams.get(key, 0) + np.broadcast_to(value, (B, n)).sum(0)
        # Deferred weight gradients: one product over all T*B rows each, the prologues'
        # gradients between the levels they join.
        rows = lambda v: v.reshape(T * B, -1)
        d_derived = {name: np.zeros_like(value) for name, value in (saved.derived or {}).items()}
        for level in reversed(range(len(program.prologues) + 1)):
            for h in program.hoisted_at(level):
                dh2 = rows(d_hoisted[h.index])
                operand = self._operand(h, x, saved.derived)
                self._split_rows(dh2.T @ rows(operand), h.segments, dparams)
                d_operand = (dh2 @ self.packed(h.segments, params)).reshape(T, B, -1)
                if level:
                    d_derived[h.operand] += d_operand
                else:
                    dx[..., self.columns[h.operand]] += d_operand
            if level:
                self._prologue_backward(level, saved, params, d_derived, d_hoisted, dx, dparams)
        for p in products:
            width = p.inputs[0].size.bind(sizes)  # a learned vector operand has no rows
            operand = np.stack([np.broadcast_to(saved.steps[t][p.inputs[0].id], (B, width))
                                for t in range(T)]).reshape(T * B, width)
            dp = d_products[p.id].reshape(T * B, -1)
            self._split_rows(dp.T @ operand, p.segments, dparams)
        for name, value in params.items():
            dparams[name] = np.asarray(dparams.get(name, np.zeros_like(value)), self.dtype)
        return dx, {name: dparams[name] for name in params}, carry

    def _operand(self, h, x, derived) -> np.ndarray:
        """(T, B, n): what hoisted product h multiplies, an input or a derived value."""
        return derived[h.operand] if h.level else x[..., self.columns[h.operand]]

    def _prologue_backward(self, level: int, saved: Saved, params, d_derived, d_hoisted, dx,
                           dparams) -> None:
        """Prologue `level`'s backward over all T*B rows: its derived values' gradients
        in, gradients added to the inputs, hoisted products and learned vectors it read."""
        T, B = saved.x.shape[:2]
        prologue = self.program.prologues[level - 1]
        assert saved.prologues is not None
        env = dict(saved.prologues[level - 1])
        env.update(self._leaves(prologue.graph.live_nodes(prologue.gradients.values()), {
            Op.PARAM: lambda name: params[name],
            Op.ADJOINT: lambda name: d_derived[name].reshape(T * B, -1),
        }, 0, T * B, None))
        self._run(prologue.backward, env, params, T * B)
        for (kind, key), node in prologue.gradients.items():
            if kind == "param":
                n = params[key].shape[0]
                dparams[key] = dparams.get(key, 0) + np.broadcast_to(env[node.id],
                                                                     (T * B, n)).sum(0)
                continue
            if kind == "input":
                assert isinstance(key, str)
                target = dx[..., self.columns[key]]  # a view: added to in place
            elif kind == "hoisted":
                target = d_hoisted[key]
            else:
                raise IRError(f"a prologue has no gradient of kind {kind}")
            target += np.broadcast_to(env[node.id], (T * B, target.shape[-1])).reshape(
                target.shape)
