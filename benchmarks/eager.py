"""Eager PyTorch versions of lstmc cells, for comparison: what a researcher writes today
as a Python loop over a hand-written cell."""
from __future__ import annotations

import torch

from lstmc.ir.graph import Op


def peephole_step(p, x_t, h, c):
    """The vanilla (peephole) LSTM, by hand, as in specs/peephole_lstm.lstm."""
    i = torch.sigmoid(x_t[0] + h @ p["U_i"].T + p["p_i"] * c + p["b_i"])
    f = torch.sigmoid(x_t[1] + h @ p["U_f"].T + p["p_f"] * c + p["b_f"])
    g = torch.tanh(x_t[2] + h @ p["U_g"].T + p["b_g"])
    c = f * c + i * g
    o = torch.sigmoid(x_t[3] + h @ p["U_o"].T + p["p_o"] * c + p["b_o"])
    return o * torch.tanh(c), c


_TORCH_OPS = {  # elementwise ops of lstmc's registry (lstmc/ir/ops.py), by name
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "min": torch.minimum, "max": torch.maximum, "neg": torch.neg, "clip": torch.clamp,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "exp": torch.exp,
    "log": torch.log, "sqrt": torch.sqrt, "abs": torch.abs,
    "softsign": torch.nn.functional.softsign,
}


def make_graph_runner(spec_path: str, sizes: dict):
    """A function (params, x, state) -> (y, state) running the cell eagerly."""
    from lstmc.driver import check_spec, select_cell
    from lstmc.passes.pipeline import unfused_graph

    info, graph = unfused_graph(select_cell(check_spec(spec_path), None))
    nodes = graph.live_nodes()

    def run(params, x, state):
        outputs = []
        for t in range(x.shape[0]):
            env = {}
            for node in nodes:
                op = node.op
                if op == Op.INPUT:
                    env[node.id] = x[t]
                elif op == Op.STATE:
                    env[node.id] = state[node.attr]
                elif op == Op.PARAM:
                    env[node.id] = params[node.attr]
                elif op == Op.CONST:
                    env[node.id] = node.attr
                elif op == Op.MATMUL:
                    env[node.id] = env[node.inputs[0].id] @ params[node.segments[0][0]].T
                elif op == Op.MEAN:
                    env[node.id] = env[node.inputs[0].id].mean(-1, keepdim=True)
                elif op == Op.SUM:
                    env[node.id] = env[node.inputs[0].id].sum(-1, keepdim=True)
                elif op == Op.BROADCAST:
                    env[node.id] = env[node.inputs[0].id] * torch.ones(
                        x.shape[1], node.size.bind(sizes), dtype=x.dtype)
                else:
                    args = [env[i.id] for i in node.inputs]
                    args = [a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=x.dtype)
                            for a in args]
                    env[node.id] = _TORCH_OPS[op.value](*args)
            state = {name: env[n.id] for name, n in graph.outputs.items()}
            outputs.append(state[info.output])
        return torch.stack(outputs), state

    return run
