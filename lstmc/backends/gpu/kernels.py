"""A Program rendered as GPU kernels in the portable dialect, plus the launch plan.

Kernels (all in one source text):
- `lstmc_gemm`: every product: the input projections before the loop, the recurrent
  products of each step, the weight gradients after it;
- `{mode}_r{i}`: elementwise region i of a step (mode: infer, train, backward), one
  work-group per batch row;
- `{mode}_persistent` (infer, train): the whole forward sequence in one launch, each
  work-group keeping its columns of the recurrent weights in local memory across steps
  and meeting the others at a grid-wide barrier between stages (Diamos et al. 2016).

The launch plan (lstmc_runtime.gpu.plan, typed, with a schema version): buffers, the
per-step launch sequence, what runs before and after the loop. lstmc_runtime follows it;
it needs no compiler.
"""
from __future__ import annotations

from lstmc_runtime.gpu import buffers as names
from lstmc_runtime.gpu.plan import (
    DeviceBuffer,
    GemmLaunch,
    GpuManifest,
    HoistedGemm,
    LaunchPlan,
    ModePlan,
    ParamReduction,
    PersistentKernel,
    PrologueLaunch,
    RegionLaunch,
    SlotRef,
    Threads,
    WeightGradient,
)
from lstmc_runtime.manifest import CellDescription, PackedSpec

from ...ir.graph import Op
from ...ir.program import Program
from .. import bind_packed, check_renderable
from .dialect import GEMM, GEMM_THREADS, GEMM_TILE, PERSISTENT_THREADS, PRELUDE, REGION_THREADS
from .prologue import prologue_layouts, union
from .regions import MODES, StepLayout

# The masks' key, two 32-bit words of the call's seed (read by cells with dropout).
RNG_PARAM = "GLOBAL const u32* RESTRICT rng"


def _shape(buffer: DeviceBuffer) -> str:
    return {"seq": "(T, B, {w})", "history": "(T+1, B, {w})", "ring": "(2, B, {w})",
            "step": "(B, {w})", "param": "({w},)"}[buffer.slots].format(w=buffer.width)


def _param(buffer: DeviceBuffer) -> str:
    const = "const " if buffer.const else ""
    return f"GLOBAL {const}float* RESTRICT {buffer.name}"


class PackedWeights:
    """The program's packed matrices, bound and named as the launch plan names them."""

    def __init__(self, program: Program, sizes: dict[str, int]):
        self.program = program
        self.specs = [bind_packed(w, sizes, names.packed(w.index)) for w in program.packed_weights]

    def get(self, segments) -> PackedSpec:
        return self.specs[self.program.packed_weight(segments).index]


def generate(program: Program, sizes: dict[str, int]) -> tuple[str, LaunchPlan]:
    """(kernel source in the portable dialect, launch plan)."""
    check_renderable(program)
    packed = PackedWeights(program, sizes)
    parts = [PRELUDE, (f"#define REGION_THREADS {REGION_THREADS}\n"
                       f"#define PERSISTENT_THREADS {PERSISTENT_THREADS}\n"), GEMM]
    modes, layouts = {}, {}
    prologue_kernels: dict[int, dict[str, tuple[str, ...]]] = {}
    for mode in MODES:
        layout = layouts[mode] = StepLayout(program, sizes, mode)
        prologues = prologue_layouts(program, sizes, mode)
        # Every kernel of a mode takes all of the mode's buffers, its prologues' too.
        buffers = union(layout.buffers, *(p.buffers for p in prologues))
        steps: list[GemmLaunch | RegionLaunch] = []
        for index, stage in enumerate(layout.stages):
            if stage.kind == "product":
                for node in stage.nodes:
                    steps.append(_gemm_step(layout, packed, node))
            else:
                name = f"{mode}_r{index}"
                parts.append(_region_kernel(layout, index, name, buffers))
                steps.append(RegionLaunch(name))
        for prologue in prologues:
            names_ = []
            for index in prologue.regions:
                name = f"{mode}_p{prologue.level}_r{index}"
                parts.append(_region_kernel(prologue, index, name, buffers, every_row=True))
                names_.append(name)
            prologue_kernels.setdefault(prologue.level, {})[mode] = tuple(names_)
        persistent = (None if mode == "backward"
                      else _persistent(layout, packed, mode, parts, buffers))
        modes[mode] = ModePlan(tuple(buffers), tuple(steps), persistent)
    backward = layouts["backward"]
    prologue_grads = {level: tuple(ParamReduction(s.name, s.width) for s in p.stores
                                   if s.kind == "param")
                      for p in prologue_layouts(program, sizes, "backward")
                      for level in [p.level]}
    plan = LaunchPlan(
        Threads(GEMM_THREADS, GEMM_TILE, REGION_THREADS, PERSISTENT_THREADS),
        modes,
        # Products of inputs: each reads its input's units `offset` onwards of the packed
        # input rows, `input_width` apart; products of derived values read those.
        input_width=backward.input_size,
        hoisted=tuple(HoistedGemm(h.index, packed.get(h.segments).name,
                                  0 if h.level else backward.input_columns[h.operand][0],
                                  h.level, h.operand if h.level else "")
                      for h in program.hoisted),
        products=tuple(_product_gradient(backward, packed, p)
                       for p in program.recurrent_products),
        param_grads=tuple(ParamReduction(s.name, s.width)
                          for s in backward.stores if s.kind == "param"),
        packed=tuple(packed.specs),
        prologues=tuple(PrologueLaunch(level, prologue_kernels[level], prologue_grads[level])
                        for level in sorted(prologue_kernels)),
    )
    return "\n".join(parts), plan


def _gemm_step(layout: StepLayout, packed: PackedWeights, node) -> GemmLaunch:
    weights = packed.get(node.segments)
    if node.op == Op.MATMUL:  # (B, K) @ W^T, W (rows, K)
        n, k, stride_k, stride_n = weights.rows, weights.columns, 1, weights.columns
    else:  # MATMUL_T: (B, rows) @ W
        n, k, stride_k, stride_n = weights.columns, weights.rows, weights.columns, 1
    return GemmLaunch(node.id, weights.name, SlotRef(*layout.operand(node.inputs[0])),
                      SlotRef(names.node(node.id), layout.slot(node), n), n, k,
                      stride_k, stride_n)


def _product_gradient(backward: StepLayout, packed: PackedWeights, product) -> WeightGradient:
    """dW of a recurrent product = dP^T @ operand over all T*B rows; the operand as the
    training forward kept it (slot t of a sequence buffer, or a learned vector)."""
    buffer, slot, stride = backward.operand(product.inputs[0])
    if slot not in ("t", "state", "param"):
        raise AssertionError(f"operand %{product.inputs[0].id} of a product is not kept")
    return WeightGradient(product.id, packed.get(product.segments).name, buffer, stride)


def _header(buffers: list[DeviceBuffer], title: str, extra: list[str]) -> list[str]:
    lines = [f"/* {title}", " * int t: step; int B: batch rows; lens (B,) int: row lengths;",
             " * rng (3,) u32: the seed of dropout and zoneout masks (low, high), draw (0/1)"]
    lines += [f" * {b.name} {_shape(b)}" for b in buffers]
    lines += [f" * {e}" for e in extra]
    lines.append(" */")
    return lines


def _region_kernel(layout: StepLayout, index: int, name: str, buffers: list[DeviceBuffer],
                   every_row: bool = False) -> str:
    """`every_row`: a prologue's region (t = 0, B = T*B: no row is past its length)."""
    cell = layout.program.info.name
    args = ", ".join(["int t", "int B", "GLOBAL const int* RESTRICT lens", RNG_PARAM]
                     + [_param(b) for b in buffers])
    lines = _header(buffers, f"{cell}: {layout.mode} step, region {index}; one work-group of "
                             f"REGION_THREADS per batch row (grid: B).", [])
    lines.append(f"KERNEL {name}({args}) {{")
    lines.append(f"  SHARED float red_scratch[REGION_THREADS * {layout.max_reductions(index)}];")
    lines.append(f"  SHARED float red_out[{max(1, layout.reductions_in(index))}];")
    lines.append("  const int row = GID;")
    lines.append("  const int active = 1;" if every_row else "  const int active = t < lens[row];")
    lines += ["  " + s for s in layout.region_body(index)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _persistent(layout: StepLayout, packed: PackedWeights, mode: str,
                parts: list[str], buffers: list[DeviceBuffer]) -> PersistentKernel:
    """The whole forward sequence in one kernel. Each work-group owns a fixed share of
    every recurrent product's columns and keeps those weight rows in local memory.
    Usually ("units" partition, see StepLayout.unit_local) a group owns units j of the
    state and computes the product columns k * U + j its own gate math reads, so a step
    is: products, a local barrier, the region for its units of every row, one grid-wide
    barrier. Otherwise ("columns") the columns are split evenly, rows are shared out for
    the regions, and every stage ends at a grid-wide barrier."""
    program = layout.program
    name = f"{mode}_persistent"
    products = [n for s in layout.stages if s.kind == "product" for n in s.nodes]
    weights = [packed.get(p.segments) for p in products]
    unique = list({w.name: w for w in weights}.values())
    units = layout.unit_local()
    args = ", ".join(["int T", "int B", "GLOBAL const int* RESTRICT lens", RNG_PARAM]
                     + [_param(b) for b in buffers]
                     + [f"GLOBAL const float* RESTRICT {w.name}" for w in unique]
                     + ["COUNTER* counter"])
    extra = [f"{w.name} ({w.rows}, {w.columns}): packed recurrent weights" for w in unique]
    extra.append("counter: one zeroed unsigned int (the grid barrier); dynamic local memory: "
                 "this group's weight rows, sum over products of cw * (K + 1) floats")
    partition = f"units (U = {units})" if units else "columns"
    lines = _header(buffers, f"{program.info.name}: the whole {mode} sequence in one launch; "
                            f"PERSISTENT_THREADS per group, every group resident at once; "
                            f"work shared out by {partition}.", extra)
    lines.append(f"KERNEL {name}({args} DYN_SHARED_PARAM) {{")
    lines.append("  DYN_SHARED_DECL")
    scratch = max(layout.max_reductions(i) for i in layout.regions)
    lines.append(f"  SHARED float red_scratch[PERSISTENT_THREADS * {scratch}];")
    reductions = max([1] + [layout.reductions_in(i) for i in layout.regions])
    lines.append(f"  SHARED float red_out[{reductions}];")
    lines.append("  unsigned int epoch = 0;")
    if units:
        lines.append(f"  const int uw = ({units} + NGROUPS - 1) / NGROUPS, u0 = GID * uw;")
        lines.append(f"  const int u1 = u0 + uw < {units} ? u0 + uw : {units};")
    columns = []  # per product: (C expression of column c's index, of its validity)
    offset = "0"
    for i, (p, w) in enumerate(zip(products, weights)):
        rows, cols = w.rows, w.columns
        if units:
            lines.append(f"  const int cw{i} = {rows // units} * uw;")
            column = (f"((c) / uw * {units} + u0 + (c) % uw)", f"(u0 + (c) % uw < {units})")
        else:
            lines.append(f"  const int cw{i} = ({rows} + NGROUPS - 1) / NGROUPS, "
                         f"c0{i} = GID * cw{i};")
            column = (f"(c0{i} + (c))", f"(c0{i} + (c) < {rows})")
        columns.append(column)
        col, valid = (e.replace("(c)", "c") for e in column)
        lines += [
            f"  /* this group's rows of product %{p.id}'s weights, resident all sequence */",
            f"  LOCAL float* wl{i} = dyn_smem + {offset};",
            f"  for (int e = LID; e < cw{i} * {cols}; e += LSZ) {{",
            f"    const int c = e / {cols}, k = e % {cols};",
            f"    wl{i}[c * {cols + 1} + k] = {valid} ? {w.name}[{col} * {cols} + k] : 0.0f;",
            "  }",
        ]
        offset = f"{offset} + cw{i} * {cols + 1}"
    lines.append("  BARRIER();")
    lines.append("  for (int t = 0; t < T; ++t) {")
    index_of = {p.id: i for i, p in enumerate(products)}
    for stage_index, stage in enumerate(layout.stages):
        if stage.kind == "product":
            for p in stage.nodes:
                i = index_of[p.id]
                lines += ["    " + s for s in _persistent_product(layout, p, i, weights[i],
                                                                 columns[i])]
            lines.append("    BARRIER();" if units else
                         "    grid_sync(counter, ++epoch * (unsigned int)NGROUPS);")
        else:
            rows_loop = ("for (int row = 0; row < B; ++row) {" if units else
                         "for (int row = GID; row < B; row += NGROUPS) {")
            lines.append("    " + rows_loop)
            lines.append("      const int active = t < lens[row];")
            lines += ["      " + s for s in layout.region_body(
                stage_index, ("u0", "u1") if units else None)]
            lines.append("    }")
            lines.append("    grid_sync(counter, ++epoch * (unsigned int)NGROUPS);")
    lines.append("  }")
    lines.append("}")
    parts.append("\n".join(lines) + "\n")
    return PersistentKernel(name, tuple(w.name for w in unique),
                            static_floats=scratch * PERSISTENT_THREADS + reductions,
                            partition="units" if units else "columns", units=units or None,
                            products=tuple((w.rows, w.columns) for w in weights))


def _slot_index(layout: StepLayout, slot: str) -> str:
    return {"t": "t", "0": "0", "state": layout.state_read_slot(), "param": "0"}[slot]


def _persistent_product(layout: StepLayout, product, i: int, w: PackedSpec,
                        column) -> list[str]:
    """C[b, col] = sum_k A[b, k] * W[col, k] for this group's cw columns (`column`: C
    expressions of local column c's index and validity): a team of work-items per (row,
    column) pair splits k, then adds its partial sums."""
    buffer, slot, stride = layout.operand(product.inputs[0])
    out, out_slot, n = names.node(product.id), layout.slot(product), w.rows
    k = w.columns
    col, valid = (e.replace("(c)", "c") for e in column)
    return [
        f"{{ /* product %{product.id}: ({n} x {k}) weights, operand {buffer} */",
        f"  GLOBAL const float* A = {buffer} + ({_slot_index(layout, slot)}) * B * {stride};",
        f"  GLOBAL float* Cp = {out} + ({out_slot}) * B * {n};",
        f"  const int pairs = B * cw{i};",
        "  int team = 1;",
        "  while (team < 32 && team * 2 * pairs <= LSZ) team *= 2;",
        "  for (int base = 0; base < pairs; base += LSZ / team) {",
        "    const int pair = base + LID / team, lane = LID % team;",
        f"    const int b = pair / cw{i}, c = pair % cw{i}, col = {col};",
        f"    const int live = pair < pairs && {valid};",
        "    float acc = 0.0f;",
        (f"    if (live) for (int k = lane; k < {k}; k += team) "
         f"acc += LD(&A[b * {stride} + k]) * wl{i}[c * {k + 1} + k];"),
        "    red_scratch[LID] = acc;",
        "    BARRIER();",
        "    for (int s = team / 2; s > 0; s >>= 1) {",
        "      if (lane < s) red_scratch[LID] += red_scratch[LID + s];",
        "      BARRIER();",
        "    }",
        f"    if (live && lane == 0) Cp[b * {n} + col] = red_scratch[LID];",
        "    BARRIER();",
        "  }",
        "}",
    ]


def manifest_for(program: Program, sizes: dict[str, int],
                 target: str) -> tuple[str, GpuManifest]:
    """(kernel source, the manifest GpuCell runs it by)."""
    info = program.info
    source, plan = generate(program, sizes)
    cell = CellDescription(
        name=info.name, target=target, dtype="float32", sizes=dict(sizes),
        input_size=info.input[1].bind(sizes), output=info.output,
        states={n: s.bind(sizes) for n, s in info.states.items()},
        params=dict(info.param_specs(sizes)),
        extra_inputs={n: s.bind(sizes) for n, s in info.extra_inputs.items()})
    return source, GpuManifest(cell, plan)
