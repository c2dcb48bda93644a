"""The plan of one step that every native backend renders: what the step hands out
(routes) and, for each elementwise region, its loops over units.

A region runs once per batch row. Its work splits into loops over units, one per
(phase, size): the phase counts what a value must wait for (a reduction to finish, a
value to reach memory), the size is the loop's trip count. A loop keeps its values in
registers; a value goes to memory only when something outside its loop reads it
(`read_outside_loop`). Row-level loops (`Loop.row_level`) compute scalars (means, sums
and what is made of them) once per row. Built by `passes.plan_step`; the LLVM backend
renders a loop as a vectorized function, the GPU backend as a work-group loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from .graph import IRError, Node, Op
from .size import Size

# -- the weights products read ------------------------------------------------------------


@dataclass(frozen=True)
class PackedWeight:
    """Matrices stacked by rows in the order a product reads them. One per distinct row
    order in the program, shared by every product that reads it (hoisted, recurrent, and
    transposed in the backward step); `index` numbers them in order of first use."""

    index: int
    segments: tuple[tuple[str, Size], ...]  # (parameter, rows)
    columns: Size

    @property
    def rows(self) -> Size:
        return sum((r for _, r in self.segments), Size())


# -- what one step hands out ---------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """A value the step hands out, besides feeding its own consumers.

    Forward: `state` (the new state `key`), `output` (the sequence output, `key` its
    state), `saved` (a value the backward step reads; `key` its node id).
    Backward: `carry` (the gradient of state `key` at the step's start; `node` None: zero),
    `input`, `hoisted`, `product`, `param` (the gradients of Program.gradients' keys).
    `alias_of`: a `param` route whose gradient node another parameter's route already
    hands out (PyTorch's twin biases), named by that parameter."""

    kind: str
    key: str | int
    node: Node | None
    width: Size
    alias_of: str | None = None

    @property
    def name(self) -> str:
        """`key` of a route keyed by a name: state, output, carry, input, param."""
        if not isinstance(self.key, str):
            raise IRError(f"a {self.kind} route keyed by {self.key!r}, not a name")
        return self.key

    @property
    def index(self) -> int:
        """`key` of a route keyed by a number: saved (a node id), hoisted, product."""
        if not isinstance(self.key, int):
            raise IRError(f"a {self.kind} route keyed by {self.key!r}, not a number")
        return self.key

    @property
    def source(self) -> Node:
        """`node` of a route that hands out a value: every route but a zero carry."""
        if self.node is None:
            raise IRError(f"the {self.kind} route {self.key!r} hands out zero, not a node")
        return self.node


FORWARD_ROUTES = ("state", "output", "saved")
BACKWARD_ROUTES = ("carry", "input", "hoisted", "product", "param")

# -- the work of one loop ------------------------------------------------------------------


@dataclass(frozen=True)
class Compute:
    """Compute `node` (elementwise, a slice or a broadcast) for every unit of the loop."""

    node: Node


@dataclass(frozen=True)
class Assemble:
    """Write `part` into units offset.. of `concat` (a concat is never computed: its parts'
    loops write it to memory, where its readers find it)."""

    concat: Node
    part: Node
    offset: Size


@dataclass(frozen=True)
class Reduce:
    """Sum `node.inputs[0]` over the loop's units into `node` (a mean or a sum); the
    result is ready for the loops after this one."""

    node: Node


@dataclass(frozen=True)
class Finish:
    """(Row-level loops only.) The reduction `node` is complete: its value is the sum
    (divided by the count, for a mean)."""

    node: Node


Work = Compute | Assemble | Reduce | Finish


@dataclass
class Loop:
    phase: int
    size: Size
    row_level: bool  # scalars computed once per row, not a loop over units
    work: list[Work] = field(default_factory=list)

    @property
    def computed(self) -> list[Node]:
        return [w.node for w in self.work if isinstance(w, Compute)]

    @property
    def reductions(self) -> list[Node]:
        return [w.node for w in self.work if isinstance(w, Reduce)]

    @property
    def assembled(self) -> list[Assemble]:
        return [w for w in self.work if isinstance(w, Assemble)]


@dataclass
class Region:
    """The loops of one elementwise stage, in the order they run."""

    stage_index: int
    nodes: list[Node]
    loops: list[Loop]
    loop_of: dict[int, int]  # node id -> index of the loop that computes it (or reduces it)
    consumers: dict[int, list[Node]]

    @cached_property
    def ids(self) -> set[int]:
        return {n.id for n in self.nodes}

    def read_outside_region(self, node: Node) -> bool:
        return any(c.id not in self.ids for c in self.consumers.get(node.id, []))

    def read_outside_loop(self, node: Node) -> bool:
        """Something reads `node` other than from a register of its own loop: a consumer
        in another stage or another loop. Its reduction and the writing of it into a
        concat count as reads where they are done."""
        home = self.loop_of.get(node.id)
        for c in self.consumers.get(node.id, []):
            if c.op == Op.CONCAT:
                where = self.assembled_in.get((c.id, node.id))
            else:
                where = self.loop_of.get(c.id)
            if where is None or where != home:  # another stage, or another loop
                return True
        return False

    @cached_property
    def assembled_in(self) -> dict[tuple[int, int], int]:
        """(concat id, part id) -> the loop that writes the part into the concat."""
        return {(w.concat.id, w.part.id): index for index, loop in enumerate(self.loops)
                for w in loop.assembled}


@dataclass
class StepPlan:
    """One step (forward or backward) as the native backends render it."""

    routes: list[Route]
    regions: dict[int, Region]  # stage index -> its region (elementwise stages only)
    consumers: dict[int, list[Node]]

    def routes_of(self, kind: str) -> list[Route]:
        return [r for r in self.routes if r.kind == kind]

    def format(self, title: str) -> str:
        return format_plan(self, title)




def format_plan(plan: StepPlan, title: str) -> str:
    """The plan as text: its routes, then each region's loops and what they do."""
    lines = [f"{title}:"]
    for r in plan.routes:
        value = repr(r.node) if r.node is not None else "zero"
        alias = f" (the gradient of {r.alias_of}: summed once)" if r.alias_of else ""
        lines.append(f"  {r.kind} {r.key} = {value} ({r.width} units){alias}")
    for index, region in plan.regions.items():
        lines.append(f"  region of stage {index}:")
        for k, loop in enumerate(region.loops):
            where = "once per row" if loop.row_level else f"over {loop.size} units"
            lines.append(f"    loop {k} (phase {loop.phase}, {where}):")
            for w in loop.work:
                if isinstance(w, Compute):
                    memory = "  -> memory" if region.read_outside_loop(w.node) else ""
                    lines.append(f"      compute {w.node!r}{memory}")
                elif isinstance(w, Reduce):
                    lines.append(f"      sum {w.node.inputs[0]!r} into {w.node!r}")
                elif isinstance(w, Finish):
                    lines.append(f"      finish {w.node!r}")
                else:
                    lines.append(f"      write {w.part!r} to {w.concat!r}[{w.offset}:]")
    return "\n".join(lines)


__all__ = ["Assemble", "Compute", "Finish", "Loop", "PackedWeight", "Reduce", "Region", "Route",
           "StepPlan", "Work", "format_plan"]
