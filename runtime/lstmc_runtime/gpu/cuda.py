"""The CUDA device layer: CuPy arrays, kernels loaded with cupy.RawModule, and the
launches of a sequence captured once in a CUDA graph and replayed. Arrays given to and
returned from cells are CuPy arrays (NumPy arrays are accepted and copied)."""
from __future__ import annotations

import numpy as np

from ..errors import BackendError


def import_cupy():
    """CuPy with a working device, or a BackendError saying what is missing."""
    try:
        import cupy
    except ImportError as error:
        raise BackendError("target 'cuda' needs CuPy: pip install 'lstmc[cuda]' "
                           "(cupy-cuda13x), and an NVIDIA GPU with its driver") from error
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError: no driver, or a driver too old
        raise BackendError(f"target 'cuda': CuPy is installed but no CUDA device can be "
                           f"used ({error}); is there an NVIDIA GPU and driver?") from error
    if count < 1:
        raise BackendError("target 'cuda': CuPy is installed but there is no CUDA device")
    return cupy


def strided_gemm(xp, as_strided, M, N, K, A, a_off, sam, sak, Bm, b_off, sbk, sbn, C, c_off,
                 ldc, accumulate) -> None:
    """lstmc_gemm's contract on flat arrays, computed by the array module's matmul (cuBLAS
    for CuPy): C[m, n] (+)= sum_k A[a_off + m*sam + k*sak] * B[b_off + k*sbk + n*sbn],
    C row-major with leading dimension ldc. Strides may be 0 (a broadcast row)."""
    item = A.itemsize
    a = as_strided(A[a_off:], shape=(M, K), strides=(sam * item, sak * item))
    b = as_strided(Bm[b_off:], shape=(K, N), strides=(sbk * item, sbn * item))
    c = as_strided(C[c_off:], shape=(M, N), strides=(ldc * item, item))
    product = xp.matmul(a, b)
    if accumulate:
        c += product
    else:
        c[...] = product


class CudaDevice:
    kind = "cuda"

    def __init__(self, source: str, binaries: dict[str, str]):
        """`binaries`: cubin paths by architecture (sm_90, ...); the one matching this
        device is loaded as it is, otherwise NVRTC compiles `source` here."""
        cupy = import_cupy()
        self.cupy = cupy
        self.user_module = cupy
        cubin = binaries.get(f"sm_{cupy.cuda.Device().compute_capability}")  # e.g. "90"
        try:
            if cubin is not None:
                self.module = cupy.RawModule(path=cubin)
            else:
                self.module = cupy.RawModule(code=source, options=("-std=c++17",))
                self.module.compile()
        except Exception as error:
            raise BackendError(f"CUDA could not load the kernels: {error}") from error
        self.kernels: dict = {}
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
        self.compute_units = props["multiProcessorCount"]
        self.max_local_bytes = props.get("sharedMemPerBlockOptin", props["sharedMemPerBlock"])
        self.name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        # A blocking stream: ordered with the legacy default stream the caller uses.
        self.stream = cupy.cuda.Stream(non_blocking=False)
        self.graphs: dict = {}
        self.capture = True  # launches of a sequence go through a CUDA graph

    def kernel(self, name: str):
        if name not in self.kernels:
            self.kernels[name] = self.module.get_function(name)
        return self.kernels[name]

    # -- arrays ---------------------------------------------------------------------------

    def empty(self, count: int, dtype=np.float32):
        return self.cupy.empty(max(count, 1), dtype)

    def zeros(self, count: int, dtype=np.float32):
        return self.cupy.zeros(max(count, 1), dtype)

    def upload(self, array):
        return self.cupy.ascontiguousarray(self.cupy.asarray(array)).reshape(-1)

    def write(self, target, offset: int, array) -> None:
        flat = self.cupy.asarray(array).reshape(-1)
        target[offset:offset + flat.size] = flat

    def to_user(self, source, offset: int, shape: tuple):
        count = int(np.prod(shape))
        return source[offset:offset + count].reshape(shape).copy()

    def fill_zero(self, array) -> None:
        array.fill(0)

    def matmul(self, *args) -> None:
        """A whole-sequence product (outside any captured graph) by cuBLAS."""
        strided_gemm(self.cupy, self.cupy.lib.stride_tricks.as_strided, *args)

    # -- launches -------------------------------------------------------------------------

    def launch(self, name: str, groups: int, threads: int, args: list, local_floats: int = 0):
        values = tuple(np.int32(a) if isinstance(a, (int, np.integer)) else a for a in args)
        kernel = self.kernel(name)
        shared = 4 * local_floats
        if shared > 48 * 1024:
            kernel.max_dynamic_shared_size_bytes = shared
        kernel((groups,), (threads,), values, shared_mem=shared)  # on the current stream

    def sequence(self, key, run) -> None:
        """Replay the graph captured for `key` (the same launches on the same buffers);
        capture it the first time. Where capture fails (an old driver, say), launch
        directly from then on."""
        if not self.capture:
            run()
            return
        graph = self.graphs.get(key)
        if graph is None:
            try:
                self.stream.begin_capture()
                try:
                    run()
                finally:
                    graph = self.stream.end_capture()
            except Exception:  # noqa: BLE001 - any capture failure: fall back, same result
                self.capture = False
                run()
                return
            self.graphs[key] = graph
        graph.launch(self.stream)

    def context(self):
        return self.stream

    def synchronize(self) -> None:
        self.stream.synchronize()
