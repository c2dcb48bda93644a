"""The cell IR: a typed dataflow graph of one time step.

Every value is a per-row vector (one row per batch element) with a symbolic feature size.
Nodes are interned, so building the same expression twice yields the same node (common
subexpressions are shared for free). Node ids follow creation order, which is always a
topological order.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeGuard

from . import ops
from .ops import Elementwise
from .size import SCALAR, Size


class Op(Enum):
    """Structural ops. Elementwise ops are not listed here: they are entries of the op
    registry (`ops.py`), and a node's `op` is then that entry."""

    # Leaves: values that come into the step from outside.
    INPUT = "input"  # x_t; attr: input name
    STATE = "state"  # the state at the start of the step; attr: state name
    PARAM = "param"  # a learned vector, broadcast over rows; attr: parameter name
    CONST = "const"  # a per-row scalar constant; attr: value
    HOISTED = "hoisted"  # this step's rows of a product computed before the loop; attr: index
    ADJOINT = "adjoint"  # backward only: the incoming gradient of a new state; attr: state name
    MASK = "mask"  # a dropout/zoneout mask drawn from (seed, step, row, unit); attr: MaskAttr
    # Products with learned matrices; attr: ProductAttr.
    MATMUL = "matmul"  # packed W @ v; the segments' matrices are stacked by rows
    MATMUL_T = "matmul_t"  # packed W^T @ g (backward)
    # Layout.
    SLICE = "slice"  # attr: SliceAttr
    CONCAT = "concat"
    BROADCAST = "broadcast"  # a per-row scalar repeated to the node's size
    # Reductions across the units of a row, to a per-row scalar.
    MEAN = "mean"
    SUM = "sum"


AnyOp = Op | Elementwise

LEAVES = {Op.INPUT, Op.STATE, Op.PARAM, Op.CONST, Op.HOISTED, Op.ADJOINT, Op.MASK}
# Leaves any step can compute again from its position: never saved, never differentiated.
REGENERATED = {Op.CONST, Op.MASK}
PRODUCTS = {Op.MATMUL, Op.MATMUL_T}
REDUCTIONS = {Op.MEAN, Op.SUM}


def is_elementwise(op: AnyOp) -> TypeGuard[Elementwise]:
    """An op of the registry: computed per unit from its operands at the same unit."""
    return isinstance(op, Elementwise)


@dataclass(frozen=True)
class ProductAttr:
    """A packed product: the matrices `segments` ((parameter, rows), ...) stacked by rows,
    each with `in_size` columns."""

    segments: tuple[tuple[str, Size], ...]
    in_size: Size

    @property
    def rows(self) -> Size:
        return sum((rows for _, rows in self.segments), Size())


@dataclass(frozen=True)
class SliceAttr:
    """Units offset <= j < offset + size of the operand."""

    offset: Size
    size: Size


class Node:
    __slots__ = ("attr", "id", "inputs", "op", "size")
    # Declared, not only inferred from __init__: ops.py, in an import cycle with this
    # module, may be type-checked first.
    id: int
    op: AnyOp
    inputs: tuple[Node, ...]
    size: Size
    attr: Any

    def __init__(self, id: int, op: AnyOp, inputs: tuple[Node, ...], size: Size, attr):
        self.id, self.op, self.inputs, self.size, self.attr = id, op, inputs, size, attr

    def __repr__(self) -> str:
        return f"%{self.id}"

    @property
    def segments(self) -> tuple[tuple[str, Size], ...]:
        return self.attr.segments


class IRError(AssertionError):
    """The IR broke one of its invariants: a compiler bug, not a user error."""


class Graph:
    """An append-only, interned set of nodes plus named outputs."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.outputs: dict[str, Node] = {}
        self._interned: dict[tuple, Node] = {}
        # Set by the fold_constants pass and kept by every rewrite after it: an elementwise
        # node of constants is built as the constant it evaluates to (forward and backward).
        self.folds_constants = False

    # -- construction -------------------------------------------------------------------

    def node(self, op: AnyOp, inputs: Iterable[Node] = (), size: Size | None = None, attr=None) -> Node:
        inputs = tuple(inputs)
        if self.folds_constants and is_elementwise(op) and all(i.op == Op.CONST for i in inputs):
            value = ops.fold(op, [i.attr for i in inputs])
            if value is not None:
                return self.const(value)
        # A broadcast is the one op whose size its operands do not decide: part of its key
        # (zeros of size H and of size H-1 are two nodes).
        key = (op, tuple(i.id for i in inputs), attr,
               Size.of(size) if op == Op.BROADCAST and size is not None else None)
        found = self._interned.get(key)
        if found is not None:
            return found
        if size is None:
            size = infer_size(op, inputs, attr)
        node = Node(len(self.nodes), op, inputs, Size.of(size), attr)
        self.nodes.append(node)
        self._interned[key] = node
        return node

    def const(self, value: float) -> Node:
        return self.node(Op.CONST, (), SCALAR, float(value))

    def unary(self, op: Elementwise, a: Node) -> Node:
        return self.node(op, (a,))

    def binary(self, op: Elementwise, a: Node, b: Node) -> Node:
        return self.node(op, (a, b))

    def add(self, a: Node, b: Node) -> Node:
        return self.binary(ops.ADD, a, b)

    def sub(self, a: Node, b: Node) -> Node:
        return self.binary(ops.SUB, a, b)

    def mul(self, a: Node, b: Node) -> Node:
        return self.binary(ops.MUL, a, b)

    def div(self, a: Node, b: Node) -> Node:
        return self.binary(ops.DIV, a, b)

    def reduce(self, op: Op, a: Node) -> Node:
        """mean or sum across a row's units; of a per-row scalar, the scalar itself."""
        return a if a.size == SCALAR else self.node(op, (a,))

    def broadcast(self, a: Node, size: Size) -> Node:
        return a if a.size == size else self.node(Op.BROADCAST, (a,), size)

    # -- queries ------------------------------------------------------------------------

    def live_nodes(self, roots: Iterable[Node] | None = None) -> list[Node]:
        """Nodes the roots (default: the outputs) depend on, in topological order."""
        seen: set[int] = set()
        stack = list(self.outputs.values() if roots is None else roots)
        while stack:
            node = stack.pop()
            if node.id not in seen:
                seen.add(node.id)
                stack.extend(node.inputs)
        return [n for n in self.nodes if n.id in seen]

    def verify(self) -> None:
        """Check every invariant the passes rely on; raises IRError."""
        for index, node in enumerate(self.nodes):
            if node.id != index:
                raise IRError(f"node {node} has id {node.id} at position {index}")
            for inp in node.inputs:
                if inp.id >= node.id or self.nodes[inp.id] is not inp:
                    raise IRError(f"{node} reads {inp}, which is not an earlier node of this graph")
            expected = infer_size(node.op, node.inputs, node.attr, node.size)
            if expected != node.size:
                raise IRError(f"{node} ({node.op.value}) has size {node.size}, expected {expected}")
        for name, node in self.outputs.items():
            if self.nodes[node.id] is not node:
                raise IRError(f"output {name} is not a node of this graph")


def infer_size(op: AnyOp, inputs: tuple[Node, ...], attr, declared: Size | None = None) -> Size:
    """The size an op's result must have; raises IRError on inconsistent operands."""
    if op in LEAVES or op == Op.BROADCAST:
        if declared is None:
            raise IRError(f"{op.value} needs an explicit size")
        if op == Op.CONST and declared != SCALAR:
            raise IRError("a constant is a per-row scalar")
        if op == Op.BROADCAST and inputs[0].size != SCALAR:
            raise IRError("only a per-row scalar can be broadcast")
        return declared
    if is_elementwise(op):
        if len(inputs) != op.arity:
            raise IRError(f"{op.value} takes {op.arity} operand(s), got {len(inputs)}")
        result = SCALAR
        for size in (i.size for i in inputs):
            if result == SCALAR:
                result = size
            elif size not in (SCALAR, result):
                raise IRError(f"{op.value} of sizes " + ", ".join(str(i.size) for i in inputs))
        return result
    if op in REDUCTIONS:
        return SCALAR
    if op in PRODUCTS:
        if not isinstance(attr, ProductAttr):
            raise IRError(f"{op.value} needs a ProductAttr, got {attr!r}")
        rows, in_size = attr.rows, attr.in_size
        expect_in, out = (in_size, rows) if op == Op.MATMUL else (rows, in_size)
        if inputs[0].size != expect_in:
            raise IRError(f"{op.value} expects an operand of size {expect_in}, got {inputs[0].size}")
        return out
    if op == Op.SLICE:
        if not isinstance(attr, SliceAttr):
            raise IRError(f"slice needs a SliceAttr, got {attr!r}")
        return attr.size
    if op == Op.CONCAT:
        return sum((i.size for i in inputs), Size())
    raise IRError(f"no size rule for {op}")


def consumers_of(nodes: Iterable[Node]) -> dict[int, list[Node]]:
    """For each node id, the nodes among `nodes` that read it, in order."""
    result: dict[int, list[Node]] = {}
    for node in nodes:
        for inp in node.inputs:
            result.setdefault(inp.id, []).append(node)
    return result


def format_node(node: Node) -> str:
    """One line of printed IR: `%7: H = sigmoid %5`."""
    args = " ".join(repr(i) for i in node.inputs)
    if node.op in PRODUCTS:
        names = ", ".join(f"{p}[{r}x{node.attr.in_size}]" for p, r in node.attr.segments)
        t = "^T" if node.op == Op.MATMUL_T else ""
        detail = f"[{names}]{t} @ {args}"
    elif node.op == Op.SLICE:
        offset, size = node.attr.offset, node.attr.size
        detail = f"{args}[{offset}:{offset + size}]"
    elif node.op == Op.CONST:
        detail = f"{node.attr:g}"
    elif node.op in LEAVES:
        detail = str(node.attr)
    else:
        detail = args
    return f"%{node.id}: {node.size} = {node.op.value} {detail}"
