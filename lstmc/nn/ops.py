"""lstmc's torch.library custom ops: a whole sequence of one cell, forward and backward.

    lstmc::forward(str key, Tensor x, Tensor[] weights, Tensor[] state, Tensor? lengths,
                   bool train, Tensor? seed) -> (Tensor y, Tensor[] final,
                   Tensor workspace)
        x: (T, B, I), or for a cell with inputs after the first (`cell c(x: I, dt: 1)`)
        all its inputs concatenated along the last axis in declared order,
        (T, B, I + 1) (so they share x's autograd edge and its gradient, which the
        caller's torch.cat splits); weights: the tensors the key's layout maps onto the spec's
        parameters; state: (B, n) per state of the cell, in its order, or [] for zeros;
        lengths: (B,) int64 on the CPU, or None for full-length rows.
        y: (T, B, out); final: (B, n) per state; workspace: what the backward needs
        (train=True; see workspace.py), else an empty tensor. seed: an int64 scalar
        tensor, the dropout and zoneout masks' seed (train=True); None: their
        expectations (as at inference).
    lstmc::backward(str key, Tensor x, Tensor[] weights, Tensor workspace, Tensor? lengths,
                    Tensor dy, Tensor[] dfinal, Tensor? seed) -> (Tensor dx,
                    Tensor[] dweights, Tensor[] dstate)
        Gradients of x (of every input, concatenated as x is), of each weight tensor and
        of the initial states.

Both have fake (meta) implementations, so torch.compile and torch.export trace them
without graph breaks; forward's autograd formula calls backward. Double backward raises
`DoubleBackwardError`: the backward op has no derivative of its own.

Device routing: CPU tensors run the cpu target on NumPy views of the tensors (no copy of
x, y or the gradients); CUDA tensors run the cuda target on CuPy views (DLPack), ordered
on PyTorch's current stream; a key whose target is "opencl" runs CPU tensors through the
OpenCL kernels.
"""
# No `from __future__ import annotations` here: torch.library reads the ops' annotations
# at run time to infer their schemas.
import math
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from lstmc_runtime.bound import address
from lstmc_runtime.forksafe import fork_safe_lock
from lstmc_runtime.packcache import equal_at
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..errors import LstmcError, ShapeError
from . import workspace as ws
from .registry import compiled, key_of, target_for

DTYPES = {torch.float32: "float32", torch.float64: "float64"}


class DoubleBackwardError(LstmcError, RuntimeError):
    """A second derivative through an lstmc op was asked for (create_graph=True)."""


# -- arguments -----------------------------------------------------------------------------

def dtype_name(dtype: torch.dtype) -> str:
    name = DTYPES.get(dtype)
    if name is None:
        raise ShapeError(f"lstmc cells compute in float32 or float64, got {dtype} "
                         "(under torch.autocast, lstmc.nn modules cast their inputs to the "
                         "parameters' dtype)")
    return name


def cell_for(key: str, x: Tensor):
    k = key_of(key)
    return compiled(key, dtype_name(x.dtype), target_for(k, x.device.type))


def _host(t: Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (a copy only if it is not contiguous)."""
    return t.detach().contiguous().numpy()


def split_inputs(cell, x: Tensor, convert) -> tuple:
    """(x, {name: array}) of the op's x: for a cell with inputs after the first, its
    last axis holds them all, in declared order (converted by `convert`)."""
    extra = getattr(cell, "extra_inputs", {})
    if not extra:
        return convert(x), {}
    width = cell.input_size + sum(extra.values())
    if x.shape[-1] != width:
        raise ShapeError(f"x: cell '{cell.name}' takes its inputs {cell.input_size} + "
                         f"{' + '.join(str(n) for n in extra.values())} = {width} units "
                         f"packed along the last axis, got shape {tuple(x.shape)}")
    offset, inputs = cell.input_size, {}
    for name, size in extra.items():
        inputs[name] = convert(x[..., offset:offset + size])
        offset += size
    return convert(x[..., :cell.input_size]), inputs


def join_gradients(cell, grads: dict):
    """The gradient of the op's x from a tape's gradients: dx, then each input's."""
    if not getattr(cell, "extra_inputs", {}):
        return grads["x"]
    xp = getattr(cell, "xp", np)
    return xp.concatenate([grads["x"], *(grads["inputs"][n] for n in cell.extra_inputs)],
                          axis=-1)


# Optimizer steps taken in this process, by any optimizer: a fused step (Adam(fused=True)
# on CPU) writes the parameters without bumping their version counters, so a pack kept by
# versions alone would outlive it. After any step, a kept pack is vouched for by its bytes.
_steps = [0]


def _count_step(optimizer, args, kwargs) -> None:
    _steps[0] += 1


register_optimizer_step_post_hook(_count_step)


def signature(weights: list[Tensor]) -> tuple:
    """(optimizer steps so far, and the (version, address) of each weight): equal while
    no optimizer has stepped and no weight was changed in place or moved (read on every
    eager call: `_version` straight, and `version` only where an inference tensor makes
    it raise)."""
    try:
        return _steps[0], tuple([(w._version, w.data_ptr()) for w in weights])
    except RuntimeError:  # an inference tensor: no version counter
        return _steps[0], tuple([(version(w), w.data_ptr()) for w in weights])


def version(t: Tensor) -> object:
    """The tensor's version counter; an inference tensor (made in torch.inference_mode)
    has none and may change in place unseen, so it gets a value equal to nothing: its
    pack is vouched for by comparing bytes."""
    return object() if t.is_inference() else t._version


class _PackCache:
    """Packed weights of the last few weight sets of a cell, one pack per set: an entry
    is reused while the same tensor objects hold the same storage at the same version
    (in-place updates such as an optimizer step bump the version), so inference packs
    once and training once per step (forward and backward share it). A new pack of a set
    replaces its old one, which no call can match again: the packs of past steps are not
    kept alive (their memory goes back to the runtime's pool while still in the caches,
    for the next step's packs)."""

    LIMIT = 16  # weight sets (a stack's layers and directions share a cell)

    def __init__(self) -> None:
        self.entries: OrderedDict = OrderedDict()
        self.lock = fork_safe_lock(self, "lock")

    def get(self, cell, key, weights: list[Tensor], build, reuse: bool = True,
            unchanged=None):
        """The remembered pack of these tensors, else `build()`. Without `reuse`, or at
        another version, `unchanged(pack)` (if given) may still vouch for it."""
        ids = tuple(id(t) for t in weights)
        sig = (_steps[0], tuple([(t.data_ptr(), version(t), t.shape) for t in weights]))
        with self.lock:
            hit = self.entries.get(ids)
            if hit is not None and not all(r() is t for r, t in zip(hit[1], weights)):
                hit = None
            if hit is not None and reuse and hit[0] == sig:
                self.entries.move_to_end(ids)
                return hit[2]
        if hit is not None and unchanged is not None and unchanged(hit[2]):
            value = hit[2]
        else:
            value = build()
        with self.lock:
            self.entries[ids] = (sig, [weakref.ref(t) for t in weights], value)
            self.entries.move_to_end(ids)
            while len(self.entries) > self.LIMIT:
                self.entries.popitem(last=False)
        return value


_packs: "weakref.WeakKeyDictionary[object, _PackCache]" = weakref.WeakKeyDictionary()
_zeros: dict = {}


def spec_params(cell, key: str, weights: list[Tensor], convert) -> dict:
    """{spec parameter: array} from the op's weight tensors, by the key's layout;
    `convert` turns a tensor into the target's array type."""
    layout = key_of(key).layout
    if len(layout) != len(cell.param_shapes):
        raise ShapeError(f"cell '{cell.name}' has {len(cell.param_shapes)} parameters, the "
                         f"key's layout maps {len(layout)}")
    arrays = [convert(t) for t in weights]
    params = {}
    for (name, shape), entry in zip(cell.param_shapes.items(), layout):
        if entry is None:
            zkey = (shape, cell.dtype, id(type(arrays[0])) if arrays else 0)
            if zkey not in _zeros:
                xp = getattr(cell, "xp", np)
                _zeros[zkey] = xp.zeros(shape, cell.dtype)
            params[name] = _zeros[zkey]
            continue
        index, r0, r1 = entry
        if index >= len(arrays):  # the op is public: name the argument, not an IndexError
            raise ShapeError(f"weights: the key's layout reads weights[{index}] for "
                             f"parameter {name}, got {len(arrays)} weight tensors")
        array = arrays[index] if r0 is None else arrays[index][r0:r1]
        if tuple(array.shape) != tuple(shape):
            raise ShapeError(f"weights[{index}] rows {r0}:{r1} for parameter {name}: "
                             f"expected shape {tuple(shape)}, got {tuple(array.shape)}")
        params[name] = array
    return params


def host_params(cell, key: str, weights: list[Tensor], reuse: bool):
    """Parameters of a CPU-target cell, validated and packed. Every pack is remembered;
    with `reuse` (inference, and a backward: its forward's pack), a remembered pack is
    taken while no weight's version changed and no optimizer stepped; otherwise, and in
    a training forward, while the weights hold the bytes it was packed from (after an
    optimizer step the first bytes differ: it packs afresh at once; between the
    micro-batches of accumulated gradients nothing differs: the pack is reused). Writes
    through `.data` bump no version: a training forward sees them, inference does not."""
    made: list[dict] = []  # built once per call, for the comparison and the pack alike

    def params() -> dict:
        if not made:
            made.append(spec_params(cell, key, weights, _host))
        return made[0]

    def build():
        return cell.pack_params(params()) if hasattr(cell, "pack_params") else params()

    if not hasattr(cell, "pack_params"):
        return build()
    cache = _packs.get(cell)
    if cache is None:
        cache = _packs.setdefault(cell, _PackCache())
    return cache.get(cell, key, weights, build, reuse,
                     lambda packed: holds_bytes(weights, packed_bytes(cell, key, weights,
                                                                      packed)))


def packed_bytes(cell, key: str, weights: list[Tensor], packed) -> tuple:
    """What `holds_bytes` compares to tell whether `weights` still hold the bytes
    `packed` (their pack) was made from: their shapes then, and per spec parameter the
    key's layout maps, (weight index, byte offset, the address of the pack's copy of
    the parameter, bytes). The pack keeps its copies alive."""
    layout = key_of(key).layout
    parts = []
    for name, entry in zip(cell.param_shapes, layout):
        if entry is None:  # a constant zero, not read from the weights
            continue
        index, r0, _ = entry
        copy = packed[name]
        offset = 0 if r0 is None or copy.ndim == 0 else r0 * copy.strides[0]
        parts.append((index, offset, address(copy), copy.nbytes))
    return tuple(tuple(w.shape) for w in weights), tuple(parts)


def holds_bytes(weights: list[Tensor], checks: tuple) -> bool:
    """Whether contiguous CPU `weights` of the shapes they had hold, byte for byte, the
    copies `checks` (packed_bytes) describe; a weight reshaped or moved since (`p.data =
    ...`) is compared where it is now, one not contiguous is taken as changed."""
    shapes, parts = checks
    if len(weights) != len(shapes) or not all(
            w.is_contiguous() and not w.is_cuda and tuple(w.shape) == shape
            for w, shape in zip(weights, shapes)):
        return False
    starts = [w.data_ptr() for w in weights]
    return all(equal_at(starts[index] + offset, at, size)
               for index, offset, at, size in parts)


def weight_grads(key: str, weights: list[Tensor], dparams: dict, names, to_tensor):
    """Per weight tensor, the gradient assembled from the spec parameters' gradients: when
    they are consecutive row blocks of one array (the kernels' packed gradient of a
    stacked weight, as nn.LSTM's weight_ih), that array itself, else a copy of each."""
    layout = key_of(key).layout
    blocks: list[list] = [[] for _ in weights]
    for name, entry in zip(names, layout):
        if entry is not None:
            index, r0, r1 = entry
            blocks[index].append((r0, r1, dparams[name]))
    grads = []
    for weight, parts in zip(weights, blocks):
        if not parts:
            grads.append(torch.zeros_like(weight))
        elif len(parts) == 1 and parts[0][0] is None:
            grads.append(to_tensor(parts[0][2]))
        else:
            joined = _joined(parts, tuple(weight.shape))
            grads.append(to_tensor(_stacked(parts, tuple(weight.shape))
                                   if joined is None else joined))
    return grads


def _stacked(parts, shape: tuple):
    """A new array of `shape` holding each part (r0, r1, array) in its rows r0:r1 (rows
    no part covers: zero), made by the parts' own array library: one NumPy (CuPy) array
    filled in place, where torch would take a zeros_like and a slice assignment per
    part (~10 µs each on a small machine: 4 gates' biases cost 100 µs a step)."""
    first = parts[0][2]
    xp: Any = np
    if not isinstance(first, np.ndarray):
        import cupy
        xp = cupy
    row = 0
    for r0, r1, _ in sorted(parts, key=lambda p: p[0] or 0):
        row = r1 if r0 == row else -1
    out = (xp.empty if row == shape[0] else xp.zeros)(shape, first.dtype)  # tiled: no zeros
    for r0, r1, g in parts:
        out[r0:r1] = g
    return out


def _joined(parts, shape: tuple):
    """The array whose consecutive row blocks `parts` ((r0, r1, array)) are, when they
    cover `shape` exactly, in order, in one C-contiguous NumPy buffer; else None.
    (Addresses by `address`: `__array_interface__` builds a dict per call, and this runs
    for every weight of every backward.)"""
    parts = sorted(parts, key=lambda p: p[0])
    first = parts[0][2]
    if type(first) is not np.ndarray:
        return None
    row_bytes = math.prod(shape[1:]) * first.itemsize
    start = address(first)
    row = 0
    for r0, r1, g in parts:
        if (r0 != row or type(g) is not np.ndarray or g.dtype != first.dtype
                or g.shape != (r1 - r0,) + shape[1:] or not g.flags.c_contiguous
                or address(g) != start + r0 * row_bytes):
            return None
        row = r1
    if row != shape[0]:
        return None
    root = first
    while isinstance(root.base, np.ndarray):
        root = root.base
    lo = address(root)
    if not root.flags.c_contiguous or start < lo or start + row * row_bytes > lo + root.nbytes:
        return None
    offset = (start - lo) // first.itemsize
    return root.reshape(-1)[offset:offset + row * row_bytes // first.itemsize].reshape(shape)


# -- CUDA ------------------------------------------------------------------------------------

class _TorchStream:
    """Runs a GpuCell's launches on PyTorch's current stream: a non-default current
    stream is lent to the cell's device for the call; on the default stream the device's
    own blocking stream is already ordered with it. No host synchronization either way."""

    def __init__(self, cell):
        self.device = cell.device

    def __enter__(self):
        import cupy

        current = torch.cuda.current_stream()
        self.saved = None
        if current.cuda_stream != 0 and hasattr(self.device, "stream"):
            self.saved = self.device.stream
            self.device.stream = cupy.cuda.ExternalStream(current.cuda_stream)
        self.use = (self.device.stream if hasattr(self.device, "stream") else None)
        if self.use is not None:
            self.use.__enter__()
        return self

    def __exit__(self, *exc):
        if self.use is not None:
            self.use.__exit__(*exc)
        if self.saved is not None:
            self.device.stream = self.saved


def _cupy(t: Tensor):
    import cupy

    return cupy.from_dlpack(t.detach().contiguous())


def _torch(a) -> Tensor:
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


# -- the ops -----------------------------------------------------------------------------------

def _seed(seed: Tensor | None) -> int | None:
    """The masks' seed of an op call, as the runtime takes it (0 <= seed < 2**64)."""
    return None if seed is None else int(seed.item()) & 0xFFFFFFFFFFFFFFFF


def forward_impl(key: str, x: Tensor, weights: list[Tensor], state: list[Tensor],
                 lengths: Tensor | None, train: bool, seed: Tensor | None
                 ) -> tuple[Tensor, list[Tensor], Tensor]:
    cell = cell_for(key, x)
    draws: dict[str, Any] = dict(seed=_seed(seed), masks=seed is not None)  # cell.forward's
    T, B = x.shape[0], x.shape[1]
    names = list(cell.state_sizes)
    if state and len(state) != len(names):
        raise ShapeError(f"state: cell '{cell.name}' has states {', '.join(names)}, got "
                         f"{len(state)} tensors")
    host_lengths = None if lengths is None else lengths.detach().cpu().numpy()
    if x.device.type == "cuda":
        params = spec_params(cell, key, weights, _cupy)
        init = {n: _cupy(s) for n, s in zip(names, state)} if state else None
        with torch.cuda.device(x.device), _TorchStream(cell):
            xs, inputs = split_inputs(cell, x, _cupy)
            result = cell.forward(xs, params, init, train=train, lengths=host_lengths,
                                  inputs=inputs, **draws)
            y, final = _torch(result[0]), [_torch(result[1][n]) for n in names]
            if not train:
                return y, final, x.new_empty(0)
            work = x.new_empty(ws.size(cell, T, B))
            flat = _cupy(work)

            def put(offset, array):
                flat[offset:offset + array.size] = array

            ws.pack_gpu(cell, result[2].saved, put)
        return y, final, work
    params = host_params(cell, key, weights, reuse=not train)
    init = {n: _host(s) for n, s in zip(names, state)} if state else None
    xs, inputs = split_inputs(cell, x, _host)
    native = train and ws.is_native(cell)
    if native:  # the kernels save into the workspace tensor itself
        flat = ws.allocate_native(cell, T, B)
        draws["workspace"] = flat
    result = cell.forward(xs, params, init, train=train, lengths=host_lengths, inputs=inputs,
                          **draws)
    y, final = torch.from_numpy(result[0]), [torch.from_numpy(result[1][n]) for n in names]
    if not train:
        return y, final, x.new_empty(0)
    if native:
        return y, final, torch.from_numpy(flat)
    work = x.new_empty(ws.size(cell, T, B))  # an OpenCL cell: its buffers copied out
    host = work.numpy()

    def put_host(offset, array):
        host[offset:offset + array.size] = array

    ws.pack_gpu(cell, result[2].saved, put_host)
    return y, final, work


forward = torch.library.custom_op("lstmc::forward", forward_impl, mutates_args=())


@forward.register_fake
def _forward_fake(key, x, weights, state, lengths, train, seed):
    cell = cell_for(key, x)
    T, B = x.shape[0], x.shape[1]
    y = x.new_empty((T, B, cell.state_sizes[cell.output]))
    final = [x.new_empty((B, n)) for n in cell.state_sizes.values()]
    work = x.new_empty((ws.size(cell, T, B),) if train else (0,))
    return y, final, work


@torch.library.custom_op("lstmc::backward", mutates_args=())
def backward(key: str, x: Tensor, weights: list[Tensor], workspace: Tensor,
             lengths: Tensor | None, dy: Tensor, dfinal: list[Tensor],
             seed: Tensor | None) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    from lstmc_runtime.cellbase import Tape

    cell = cell_for(key, x)
    T, B = x.shape[0], x.shape[1]
    names = list(cell.state_sizes)
    if workspace.numel() == 0:
        raise ShapeError("lstmc backward: the forward ran without train=True, so it saved "
                         "nothing to differentiate")
    host_lengths = None if lengths is None else lengths.detach().cpu().numpy().astype(np.int64)
    if x.device.type == "cuda":
        params = spec_params(cell, key, weights, _cupy)
        with torch.cuda.device(x.device), _TorchStream(cell):
            saved = ws.unpack_gpu(cell, _cupy(workspace), T, B, host_lengths, _seed(seed))
            tape = Tape(cell, params, saved, tuple(x.shape))
            g = tape.backward(_cupy(dy), {n: _cupy(d) for n, d in zip(names, dfinal)})
            to = _torch
            dx = to(join_gradients(cell, g))
            dweights = weight_grads(key, weights, g["params"], cell.param_shapes, to)
            dstate = [to(g["state"][n]) for n in names]
        return dx, dweights, dstate
    params = host_params(cell, key, weights, reuse=True)
    xn = _host(x)  # every input, packed: as the native forward saved it
    if ws.is_native(cell):
        full = np.full(B, T, np.int64) if host_lengths is None else host_lengths
        saved = ws.unpack_native(cell, workspace.detach().numpy(), xn, full, _seed(seed))
    else:
        saved = ws.unpack_gpu(cell, workspace.detach().numpy(), T, B, host_lengths,
                              _seed(seed))
    tape = Tape(cell, params, saved, tuple(x.shape))
    g = tape.backward(_host(dy), {n: _host(d) for n, d in zip(names, dfinal)})
    dx = torch.from_numpy(join_gradients(cell, g))
    dweights = weight_grads(key, weights, g["params"], cell.param_shapes, torch.from_numpy)
    dstate = [torch.from_numpy(g["state"][n]) for n in names]
    return dx, dweights, dstate


@backward.register_fake
def _backward_fake(key, x, weights, workspace, lengths, dy, dfinal, seed):
    cell = cell_for(key, x)
    B = x.shape[1]
    return (torch.empty_like(x), [torch.empty_like(w) for w in weights],
            [x.new_empty((B, n)) for n in cell.state_sizes.values()])


# -- autograd ----------------------------------------------------------------------------------

def _setup_forward(ctx, inputs, output):
    key, x, weights, state, lengths, train, seed = inputs
    ctx.key, ctx.train, ctx.has_state = key, train, bool(state)
    # Outputs nothing flows back into get None, not zeros: the workspace never has a
    # gradient, and materializing one would fill megabytes per training step.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, lengths, seed, output[2], *weights)


def _forward_backward(ctx, dy, dfinal, dworkspace):
    if not ctx.train:
        raise ShapeError("lstmc: gradients were asked of a forward run with train=False "
                         "(call the op with train=True when any input requires grad)")
    x, lengths, seed, work, *weights = ctx.saved_tensors
    cell = cell_for(ctx.key, x)
    T, B = x.shape[0], x.shape[1]
    if dy is None:
        dy = x.new_zeros((T, B, cell.state_sizes[cell.output]))
    dfinal = [x.new_zeros((B, n)) if d is None else d.contiguous()
              for d, n in zip(dfinal or [None] * len(cell.state_sizes),
                              cell.state_sizes.values())]
    dx, dweights, dstate = torch.ops.lstmc.backward(ctx.key, x, weights, work, lengths,
                                                    dy.contiguous(), dfinal, seed)
    # torch checks that the gradients mirror the inputs: an empty state list gets [].
    return None, dx, dweights, (dstate if ctx.has_state else []), None, None, None


torch.library.register_autograd("lstmc::forward", _forward_backward,
                                setup_context=_setup_forward)


def _setup_backward(ctx, inputs, output):
    pass


def _no_double_backward(ctx, *grads):
    raise DoubleBackwardError(
        "lstmc ops have no second derivative: backward through lstmc.nn modules cannot be "
        "differentiated again (create_graph=True / torch.autograd.grad of a gradient)")


torch.library.register_autograd("lstmc::backward", _no_double_backward,
                                setup_context=_setup_backward)
