"""Stacks and directions, as nn.LSTM(num_layers=L, bidirectional=True) arranges them.

Layer l > 0 reads the concatenated outputs of layer l - 1's directions; the reverse
direction reads each row's valid prefix backwards (PyTorch's packed-sequence semantics
with `lengths`). Parameters are named `l{k}.{name}` and `l{k}_reverse.{name}`; states
are {name: (L * D, B, n)}, index l * D + d, as in PyTorch.

Beyond nn.LSTM (for ONNX's LSTM, GRU and RNN operators): a stack may run one reversed
direction only (`directions=("reverse",)`), and the two directions of a layer may be
different cells, as long as they have the same states."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import wavefront as wavefronts
from .bfloat16 import WEIGHTS as BF16_WEIGHTS
from .cellbase import CellBase, check_extra_inputs, check_lengths, check_seed, zero_states
from .choice import faster_for
from .errors import ArtifactError, ShapeError, UsageError
from .located import Locator
from .manifest import BF16
from .threads import thread_count, threads_limited
from .validate import check_array, check_count, check_init_seed, check_names


def reverse_in_place_of_length(seq, lengths: np.ndarray | None, xp=np):
    """Each row's first lengths[b] steps reversed; steps past a row's length stay.
    `xp`: the array module of `seq` (NumPy, or CuPy for the cuda target)."""
    T, B = seq.shape[:2]
    if lengths is None:
        return xp.ascontiguousarray(seq[::-1])
    t = np.arange(T)[:, None]
    index = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
    return xp.ascontiguousarray(seq[xp.asarray(index), xp.asarray(np.arange(B)[None, :])])


def layer_prefix(layer: int, direction: int | str) -> str:
    """`direction`: 0 / "forward" or 1 / "reverse"."""
    reverse = direction in (1, "reverse")
    return f"l{layer}{'_reverse' if reverse else ''}."


DIRECTIONS = {1: ("forward",), 2: ("forward", "reverse")}


class Stack:
    """`layers[l][d]`: the cell of layer l, direction d. `directions` names each
    direction: ("forward",) or ("forward", "reverse") (the default, from the number of
    cells per layer), or ("reverse",) for a single reversed direction."""

    def __init__(self, layers: list[list[CellBase]], batch_first: bool = False,
                 directions: tuple[str, ...] | None = None):
        # A layer's directions run at once (inference): one cell object each.
        layers = [[c.twin() if d and any(c is o for o in cells[:d]) and hasattr(c, "twin")
                   else c for d, c in enumerate(cells)] for cells in layers]
        self.layers, self.batch_first = layers, batch_first
        self.directions = _check_layout(layers, directions)
        first = layers[0][0]
        self.name, self.dtype, self.target = first.name, first.dtype, first.target
        self.xp = getattr(first, "xp", np)  # the array module cells take and return
        self.output, self.input_size = first.output, first.input_size
        self.extra_inputs = dict(first.extra_inputs)  # given to every layer alike
        self.hidden_size = first.hidden_size
        self.num_layers, self.num_directions = len(layers), len(layers[0])
        self.state_sizes = dict(first.state_sizes)
        self.output_size = sum(c.state_sizes[c.output] for c in layers[0])
        self.param_shapes = {self.prefix(l, d) + n: s
                             for l, cells in enumerate(layers) for d, cell in enumerate(cells)
                             for n, s in cell.param_shapes.items()}
        self._locator = Locator(self.param_shapes, self.dtype)  # checks dicts of them

    def prefix(self, layer: int, direction: int) -> str:
        """The prefix of the parameter names of layers[layer][direction]."""
        return layer_prefix(layer, self.directions[direction])

    def reversed(self, direction: int) -> bool:
        return self.directions[direction] == "reverse"

    def each_direction(self, run, count: int) -> list:
        """[run(d) for d in range(count)]: a layer's two directions at once, each on half
        the cores, when the cells are native CPU cells and there are cores to share."""
        if not self._shares_directions(count):
            return [run(d) for d in range(count)]
        return self._both_at_once(run)

    @staticmethod
    def _both_at_once(run) -> list:
        """[run(0), run(1)] at once, each on half the cores (which there must be)."""
        share = thread_count() // 2

        def limited(d: int):
            with threads_limited(share):
                return run(d)

        second = _directions_executor().submit(limited, 1)
        try:
            first = limited(0)
        except BaseException:
            second.exception()  # the other direction ends before the error goes up
            raise
        return [first, second.result()]

    def _shares_directions(self, count: int) -> bool:
        from .native import NativeCell

        return (count == 2 and thread_count() // 2 >= 1
                and all(isinstance(c, NativeCell) for cells in self.layers for c in cells))

    def _inference_directions(self, run, count: int, layer: int, steps: int, batch: int
                              ) -> list:
        """A layer's directions for inference: at once (each_direction) or one after
        the other, each on every core, whichever measures faster for this layer and
        batch size (choice.FasterOf). Neither wins everywhere: on a 2-core Zen 4, at
        once was 1.2x faster at H=128, B=8 and one after the other 1.1x at H=256, B=1.
        Training keeps them one after the other (its weight gradients are large GEMMs
        that use every core well)."""
        if not self._shares_directions(count):
            return [run(d) for d in range(count)]
        choices = self.__dict__.setdefault("_direction_choices", {})
        faster = faster_for(choices, (layer, batch))
        return faster.choose(lambda: [run(d) for d in range(count)],
                             lambda: self._both_at_once(run), work=max(steps, 1))

    def __repr__(self) -> str:
        return (f"<Stack {self.name} layers={self.num_layers} directions={self.num_directions}"
                f" target={self.target} dtype={self.dtype}>")

    def _cells(self):
        for l, cells in enumerate(self.layers):
            for d, cell in enumerate(cells):
                yield l, d, cell

    def init_params(self, seed: int | None = 0) -> dict[str, np.ndarray]:
        seed = check_init_seed(seed)
        params = {}
        for l, d, cell in self._cells():
            sub_seed = None if seed is None else seed + 1000 * l + d
            for n, v in cell.init_params(sub_seed).items():
                params[self.prefix(l, d) + n] = v
        return params

    def pack_params(self, params: dict, weights: str | None = None) -> PackedStackParams:
        """Validate and pack every layer's and direction's parameters once (cpu
        target), for many forward calls: pass the result to `forward` in place of the
        dict, as `cell.pack_params` for one cell (`weights="bfloat16"` too)."""
        if not all(hasattr(c, "pack_params") for _, _, c in self._cells()):
            raise UsageError(f"pack_params: a stack on the {self.target} target takes its "
                             "parameters as a dict (only cpu cells pack weights)")
        self._check_params(params)
        per_cell = [[cell.pack_params({n: params[self.prefix(l, d) + n]  # type: ignore[attr-defined]
                                       for n in cell.param_shapes}, weights)
                     for d, cell in enumerate(cells)] for l, cells in enumerate(self.layers)]
        plain = {self.prefix(l, d) + n: v for l, cells in enumerate(per_cell)
                 for d, packed in enumerate(cells) for n, v in packed.items()
                 if n in self.layers[l][d].param_shapes}
        return PackedStackParams(plain, per_cell, self)

    def _check_params(self, params) -> None:
        """Every layer's and direction's parameters, checked (remembered by identity
        from call to call: a 2-layer bidirectional LSTM has 64 arrays)."""
        self._locator.addresses(params)

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        return zero_states(self.state_sizes, (self.num_layers * self.num_directions,),
                           check_count("batch", batch), self.dtype)

    def forward(self, x, params, state=None, train: bool = False, lengths=None,
                seed: int | None = None, masks: bool = True, inputs=None):
        """x (T, B, I) (or (B, T, I) with batch_first); returns y (T, B, D * out), the
        final states {name: (L * D, B, n)}, and with train=True a tape. Each layer and
        direction draws its dropout masks from its own seed, derived from `seed`.
        Only x chains from layer to layer: the inputs after the first (`inputs`, by
        name) go to every layer and direction as they are (reversed with the sequence
        for a reverse direction); their gradients are summed over all of them."""
        xp = self.xp
        shape = (None, None, self.input_size)
        x = check_array("x", x, shape, self.dtype)
        if self.batch_first:
            x = xp.ascontiguousarray(x.transpose(1, 0, 2))
        T, B = x.shape[:2]
        lengths = check_lengths(lengths, T, B)
        extra = {n: xp.ascontiguousarray(v) for n, v in check_extra_inputs(
            self.extra_inputs, inputs, T, B, self.dtype, self.batch_first).items()}
        packed = (params if isinstance(params, PackedStackParams)
                  and params.validated_for is self else None)
        if packed is None:
            self._check_params(params)
        count = self.num_layers * self.num_directions
        if state is None:
            state = self.zero_state(B)
        check_names("state", state, list(self.state_sizes))
        for name, size in self.state_sizes.items():
            check_array(f"state['{name}']", state[name], (count, B, size), self.dtype)

        seed = check_seed(seed) if train and masks else None
        final = {n: xp.empty((count, B, s), self.dtype) for n, s in self.state_sizes.items()}

        def layer_by_layer():
            return self._layer_by_layer(x, params, packed, state, final, train, lengths,
                                        seed, extra)

        wavefront = None if train else self._wavefront(x, params, packed, state, final,
                                                       lengths, extra)
        if wavefront is None:
            layer_input, tapes = layer_by_layer()
        else:  # whichever measures faster for this batch size (choice.FasterOf)
            faster = faster_for(self.__dict__.setdefault("_wavefront_choices", {}), B)
            layer_input, tapes = faster.choose(lambda: layer_by_layer()[0], wavefront,
                                               work=T), []
        y = layer_input
        if self.batch_first:
            y = xp.ascontiguousarray(y.transpose(1, 0, 2))
        if not train:
            return y, final
        return y, final, StackTape(self, tapes, lengths, (T, B), seed)

    def _layer_by_layer(self, x, params, packed, state, final: dict, train: bool, lengths,
                        seed, extra: dict) -> tuple:
        """The stack's output and tapes (train), each layer run over the whole sequence
        before the next; `final` receives the final states."""
        xp = self.xp
        T, B = x.shape[:2]
        tapes = []
        layer_input = x
        for l, cells in enumerate(self.layers):

            def direction(d: int, l=l, cells=cells, layer_input=layer_input):
                cell, prefix, k = cells[d], self.prefix(l, d), l * self.num_directions + d
                sub = (packed.per_cell[l][d] if packed is not None
                       else {n: params[prefix + n] for n in cell.param_shapes})
                init = {n: xp.ascontiguousarray(state[n][k]) for n in self.state_sizes}
                back = self.reversed(d)
                seq = reverse_in_place_of_length(layer_input, lengths, xp) if back else layer_input
                more = {n: reverse_in_place_of_length(v, lengths, xp) if back else v
                        for n, v in extra.items()}
                result = cell.forward(seq, sub, init, train=train, lengths=lengths,
                                      seed=None if seed is None else layer_seed(seed, k),
                                      masks=seed is not None, inputs=more or None)
                y = reverse_in_place_of_length(result[0], lengths, xp) if back else result[0]
                for n in self.state_sizes:
                    final[n][k] = result[1][n]
                return y, (result[2] if train else None)

            results = (self._inference_directions(direction, len(cells), l, T, B)
                       if not train else [direction(d) for d in range(len(cells))])
            outputs = [y for y, _ in results]
            layer_input = xp.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
            tapes.append([tape for _, tape in results] if train else [])
        return layer_input, tapes

    def _wavefront(self, x, params, packed, state, final: dict, lengths, extra: dict):
        """A function running this inference call as a wavefront of layers (see
        wavefront.py), returning the stack's output (None: the workers are busy), or
        None where that does not apply: one forward direction, two layers or more,
        native cells, no lengths or other inputs, a batch small enough not to be cut
        into slices, and cores for two layers at once (LSTMC_WAVEFRONT=0: never)."""
        from .native import NativeCell, PackedParams

        T, B = x.shape[:2]
        cells = [c for c, *_ in self.layers if isinstance(c, NativeCell)]
        if (self.num_layers < 2 or self.directions != ("forward",) or lengths is not None
                or extra or len(cells) < self.num_layers):
            return None
        subs = [packed.per_cell[l][0] if packed is not None
                else {n: params[self.prefix(l, 0) + n] for n in cell.param_shapes}
                for l, cell in enumerate(cells)]
        if packed is None and any(cell.derived for cell in cells):
            return None  # (their derived matrices are made by packing: once per call)
        entries = [BF16 if getattr(sub, "weights", None) == BF16_WEIGHTS else "forward"
                   for sub in subs]
        found = wavefronts.prepared(self.__dict__.setdefault("_wavefronts", {}), cells,
                                    entries, T, B)
        if found is None:
            return None
        wave, pool, threads = found

        def run():
            known, packs = [], []
            for cell, sub in zip(cells, subs):
                if isinstance(sub, PackedParams):
                    known.append(sub.addresses)
                else:
                    addresses, kept = cell._addresses(sub)
                    known.append(addresses)
                    packs.append(kept)  # alive until the kernels return
            init = [{n: np.ascontiguousarray(state[n][l]) for n in self.state_sizes}
                    for l in range(len(cells))]
            y = np.empty((T, B, self.output_size), self.dtype)
            if not wave.run(pool, threads, x.ctypes.data, y.ctypes.data, known,
                            [{n: v.ctypes.data for n, v in s.items()} for s in init],
                            [{n: final[n][l].ctypes.data for n in self.state_sizes}
                             for l in range(len(cells))]):
                return None  # another call holds the workers or the tables
            return y
        return run


class PackedStackParams(dict):
    """`Stack.pack_params`: the parameters by their stacked names (read-only copies)
    and each layer's and direction's packed snapshot (`per_cell[l][d]`). Immutable, as
    a cell's PackedParams: to change a parameter, pack again."""

    def __init__(self, plain: dict, per_cell: list[list], owner: Stack):
        super().__init__(plain)
        self.per_cell, self.validated_for = per_cell, owner

    def _immutable(self, *args, **kwargs):
        raise UsageError("PackedStackParams is an immutable snapshot of packed parameters: "
                         "pack the changed parameters again with stack.pack_params(params)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _immutable
    __ior__ = _immutable

    def __reduce__(self):  # copies and pickles are plain dicts of the parameters
        return dict, (dict(self),)


_directions_pool: ThreadPoolExecutor | None = None
_directions_pid = 0


def _directions_executor() -> ThreadPoolExecutor:
    """One thread that runs a layer's second direction while the caller runs the first
    (its own pool: the cells' slices use the runtime's); made again after a fork."""
    global _directions_pool, _directions_pid
    if _directions_pool is None or _directions_pid != os.getpid():
        _directions_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lstmc-dir")
        _directions_pid = os.getpid()
    return _directions_pool


def layer_seed(seed: int, k: int) -> int:
    """The seed of layer-direction k (SplitMix64 of seed + k): distinct per cell."""
    z = (seed + (k + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


@dataclass
class StackTape:
    stack: Stack
    tapes: list
    lengths: np.ndarray | None
    steps_batch: tuple
    seed: int | None = None

    def backward(self, dy, dstate=None) -> dict:
        stack = self.stack
        xp = stack.xp
        T, B = self.steps_batch
        count = stack.num_layers * stack.num_directions
        shape = (B, T, stack.output_size) if stack.batch_first else (T, B, stack.output_size)
        dy = check_array("dy", dy, shape, stack.dtype)
        if stack.batch_first:
            dy = xp.ascontiguousarray(dy.transpose(1, 0, 2))
        dstate = {} if dstate is None else dstate
        if not isinstance(dstate, dict):
            raise ShapeError(f"dstate: expected a dict of arrays, got {type(dstate).__name__}")
        for name, value in dstate.items():
            if name not in stack.state_sizes:
                raise ShapeError(f"dstate: unexpected {name!r}")
            check_array(f"dstate['{name}']", value, (count, B, stack.state_sizes[name]),
                        stack.dtype)
        grads_params, grads_state = {}, {n: xp.zeros((count, B, s), stack.dtype)
                                          for n, s in stack.state_sizes.items()}
        grads_inputs = {n: xp.zeros((T, B, s), stack.dtype)
                        for n, s in stack.extra_inputs.items()}
        d_output = dy
        for l in reversed(range(stack.num_layers)):
            d_input, start = None, 0
            for d, tape in enumerate(self.tapes[l]):
                k = l * stack.num_directions + d
                cell = stack.layers[l][d]
                width = cell.state_sizes[cell.output]
                part = xp.ascontiguousarray(d_output[..., start:start + width])
                start += width
                back = stack.reversed(d)
                if back:
                    part = reverse_in_place_of_length(part, self.lengths, xp)
                ds = {n: xp.ascontiguousarray(v[k]) for n, v in dstate.items()}
                g = tape.backward(part, ds)
                dx = reverse_in_place_of_length(g["x"], self.lengths, xp) if back else g["x"]
                d_input = dx if d_input is None else d_input + dx
                for n, v in g["inputs"].items():
                    grads_inputs[n] += reverse_in_place_of_length(v, self.lengths, xp) \
                        if back else v
                for n, v in g["params"].items():
                    grads_params[stack.prefix(l, d) + n] = v
                for n, v in g["state"].items():
                    grads_state[n][k] = v
            d_output = d_input
        dx = d_output
        if stack.batch_first:
            dx = xp.ascontiguousarray(dx.transpose(1, 0, 2))
            grads_inputs = {n: xp.ascontiguousarray(v.transpose(1, 0, 2))
                            for n, v in grads_inputs.items()}
        return {"x": dx, "params": grads_params, "state": grads_state, "inputs": grads_inputs}


def _check_layout(layers: list[list[CellBase]], directions) -> tuple[str, ...]:
    """The direction names of a grid of cells; ShapeError when the cells cannot stack."""
    if not layers or not layers[0]:
        raise ShapeError("a stack needs at least one layer of at least one cell")
    count = len(layers[0])
    if directions is None:
        if count not in DIRECTIONS:
            raise ShapeError(f"a stack has 1 or 2 directions, got {count} cells per layer")
        directions = DIRECTIONS[count]
    directions = tuple(directions)
    if directions not in (("forward",), ("reverse",), ("forward", "reverse")):
        raise ShapeError(f"directions must be ('forward',), ('reverse',) or ('forward', "
                         f"'reverse'), got {directions!r}")
    states = layers[0][0].state_sizes
    width = sum(c.state_sizes[c.output] for c in layers[0])
    for l, cells in enumerate(layers):
        if len(cells) != len(directions):
            raise ShapeError(f"layer {l} has {len(cells)} cells for {len(directions)} "
                             f"direction(s)")
        for d, cell in enumerate(cells):
            if dict(cell.state_sizes) != dict(states) or cell.output != layers[0][0].output:
                raise ShapeError(f"layer {l} direction {directions[d]}: cell {cell.name} has "
                                 f"states {cell.state_sizes}, the stack's first cell "
                                 f"{dict(states)} (every cell of a stack has the same states)")
            if dict(cell.extra_inputs) != dict(layers[0][0].extra_inputs):
                raise ShapeError(f"layer {l} direction {directions[d]}: cell {cell.name} "
                                 f"takes the inputs {dict(cell.extra_inputs)} after the "
                                 f"first, the stack's first cell "
                                 f"{dict(layers[0][0].extra_inputs)} (every layer is given "
                                 "the same ones)")
            if l and cell.input_size != width:
                raise ShapeError(f"layer {l} direction {directions[d]}: cell {cell.name} "
                                 f"takes inputs of size {cell.input_size}, layer {l - 1} "
                                 f"outputs {width}")
    return directions


def load_stack(directory: str, manifest: dict) -> Stack:
    """A stack artifact (its manifest read and checksummed by `read_manifest`): the
    layout checked field by field, then against the cells it names, which must be of its
    cell, target and dtype, run time-major (the stack transposes for batch_first), and
    chain: an upper layer reads every direction of the layer below."""
    from .artifact import MANIFEST, load_cell
    from .manifest import StackManifest

    where = os.path.join(directory, MANIFEST)
    layout = StackManifest.from_json(manifest, where)
    cells = {name: load_cell(os.path.join(directory, sub))
             for name, sub in layout.cells.items()}

    def fail(field: str, message: str):
        raise ArtifactError(f"{where}: field '{field}' {message}")

    for name, cell in cells.items():
        theirs = f"but cell {name} ({os.path.join(directory, layout.cells[name])}) is"
        for field, value in (("cell", cell.name), ("target", cell.target),
                             ("dtype", cell.description.dtype)):
            if getattr(layout, field) != value:
                fail(field, f"is {getattr(layout, field)!r}, {theirs} {value!r}")
        if cell.batch_first:
            fail("cells", f"names a cell that is not time-major: {name}")
    first = cells["layer0"]
    width = layout.num_directions * first.state_sizes[first.output]
    upper = cells.get("upper")
    if upper is not None and upper.input_size != width:
        fail("layers", f"gives {layout.num_directions} direction(s), so layer0 outputs "
                       f"{width} units, but cell upper takes inputs of size "
                       f"{upper.input_size}")
    if upper is not None and (upper.state_sizes != first.state_sizes
                              or upper.output != first.output
                              or upper.extra_inputs != first.extra_inputs):
        fail("cells", f"names cells of different states or inputs: layer0 has states "
                      f"{first.state_sizes} and inputs {first.extra_inputs} after the "
                      f"first, upper {upper.state_sizes} and {upper.extra_inputs}")
    grid = [[cells["layer0" if l == 0 else "upper"] for _ in range(layout.num_directions)]
            for l in range(layout.num_layers)]
    try:
        return Stack(grid, layout.batch_first)
    except ShapeError as exc:  # what the checks above missed is still the artifact's fault
        raise ArtifactError(f"{where}: the cells do not stack: {exc}") from None
