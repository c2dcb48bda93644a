"""Each pass specified by its printed output, in the style of xdsl's FileCheck tests: a
golden file under tests/golden/ holds the pass, the input spec (as `#` lines) and, after
`# ---`, the exact IR the pass must print. Run with LSTMC_UPDATE_GOLDEN=1 to rewrite the
files after an intended change, then read the diff."""
import os
from pathlib import Path

import pytest

from lstmc.frontend.checker import check
from lstmc.frontend.parser import parse
from lstmc.frontend.source import Source
from lstmc.ir.graph import Graph, format_node
from lstmc.passes.fold_constants import fold_constants
from lstmc.passes.fuse_gates import fuse_gates
from lstmc.passes.pipeline import lower, unfused_graph
from lstmc.passes.push_slices import push_slices

GOLDEN = Path(__file__).parent / "golden"


def _graph_text(graph: Graph) -> list[str]:
    lines = [format_node(n) for n in graph.live_nodes()]
    return lines + [f"{name}' = {node!r}" for name, node in graph.outputs.items()]


def _build(cell) -> str:
    """The step as written: composite functions expanded, nothing fused."""
    return "\n".join(_graph_text(unfused_graph(cell)[1]))


def _fold_constants(cell) -> str:
    """Every elementwise node of constants replaced by its value; nothing else changed."""
    return "\n".join(_graph_text(fold_constants(unfused_graph(cell)[1])))


def _push_slices(cell) -> str:
    """Slices that tile a value cut its operands instead (after folding constants)."""
    return "\n".join(_graph_text(push_slices(fold_constants(unfused_graph(cell)[1]))))


def _fuse_gates(cell) -> str:
    """Products sharing an operand packed; products of x hoisted out of the loop."""
    graph, hoisted = fuse_gates(unfused_graph(cell)[1])
    lines = [f"hoisted #{h.index}: {h.rows} = "
             + ", ".join(f"{p}[{r}x{h.in_size}]" for p, r in h.segments) for h in hoisted]
    return "\n".join(lines + _graph_text(graph))


def _lower(cell) -> str:
    """All passes: fused forward step, reverse-mode backward step, both staged, and the
    values the forward pass saves."""
    return lower(cell).format(backward=True)


def _plan_step(cell) -> str:
    """Each step's routes and its regions' loops: values of one size and phase share a
    loop; a value goes to memory only when read outside its loop; a concat is written by
    its parts' loops; a mean is summed in its source's loop and finished once per row."""
    program = lower(cell)
    return (program.forward_plan.format("forward step") + "\n"
            + program.backward_plan.format("backward step"))


PASSES = {"build": _build, "fold_constants": _fold_constants, "push_slices": _push_slices,
          "fuse_gates": _fuse_gates, "lower": _lower, "plan_step": _plan_step}


def _read(path: Path) -> tuple[str, str, str]:
    text = path.read_text()
    header, expected = text.split("# ---\n", 1)
    lines = header.splitlines()
    assert lines[0].startswith("# pass: "), f"{path.name}: first line names the pass"
    spec = "\n".join(line[4:] for line in lines[1:] if line.startswith("#   "))
    return lines[0][len("# pass: "):], spec + "\n", expected


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.ir")), ids=lambda p: p.stem)
def test_pass_prints_its_golden_ir(path):
    pass_name, spec, expected = _read(path)
    (cell,) = [check(c) for c in parse(Source(path.name, spec))]
    actual = PASSES[pass_name](cell) + "\n"
    if os.environ.get("LSTMC_UPDATE_GOLDEN"):
        header = path.read_text().split("# ---\n", 1)[0]
        path.write_text(header + "# ---\n" + actual)
        return
    assert actual == expected, f"{path.name}: the {pass_name} pass printed something else"


def test_every_pass_has_a_golden_file():
    assert {_read(p)[0] for p in GOLDEN.glob("*.ir")} == set(PASSES)
