import functools
import os
import pathlib
import signal
import tempfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPECS_DIR = ROOT / "specs"
# xlstm/slstm needs its head count (NH) and is tested on its own (tests/test_heads.py);
# its persistent-kernel and ONNX runs in the generic suites are not yet verified.
SPEC_NAMES = sorted(str(p.relative_to(SPECS_DIR).with_suffix(""))
                    for p in SPECS_DIR.rglob("*.lstm") if p.stem != "slstm")
# Sizes used across the tests: small, distinct, so a transposed matrix cannot pass.
SIZES = {"input_size": 3, "hidden_size": 5}
EXTRA_SIZES = {"lstmp": {"P": 4}}


def needs_opencl() -> None:
    """Skip the calling test (or module) where the GPU kernels cannot run as OpenCL:
    no pyopencl, or an OpenCL compiler that cannot build even a one-line kernel here.
    PoCL 3.0 (pyopencl's) does that on CPUs newer than its LLVM 14, such as AMD Zen 5:
    it asks clang for the CPU 'generic', which clang 14 rejects."""
    reason = _opencl_unusable()
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)


def opencl_usable() -> bool:
    """Whether needs_opencl() would let a test run (for tests that skip a part only)."""
    return _opencl_unusable() is None


@functools.cache
def _opencl_unusable() -> str | None:
    try:
        import pyopencl as cl
    except ImportError as error:
        return f"could not import 'pyopencl': {error}"
    try:
        devices = [d for p in cl.get_platforms() for d in p.get_devices()]
        device = devices[int(os.environ.get("LSTMC_OPENCL_DEVICE") or 0)]
        program = cl.Program(cl.Context([device]), "__kernel void probe(__global float *a)"
                             " { a[get_global_id(0)] = 1.0f; }")
        program.build()
    except Exception as error:  # any failure to build this is the machine's, not lstmc's
        lines = [line for line in str(error).splitlines() if "error:" in line]
        return ("OpenCL cannot build a kernel on this machine: "
                + (lines[0].strip() if lines else f"{type(error).__name__}: {error}"))
    return None


def spec_path(name: str) -> str:
    return str(SPECS_DIR / f"{name}.lstm")


def compile_spec(name: str, dtype="float64", **kwargs):
    import lstmc

    sizes = {**SIZES, **EXTRA_SIZES.get(name, {}), **kwargs}
    return lstmc.compile(spec_path(name), dtype=dtype, **sizes)


def has_masks(reference_cell) -> bool:
    """Whether a reference-target cell draws dropout or zoneout masks in training."""
    return any(n.op.value == "mask" for n in reference_cell.program.graph.nodes)


def random_inputs(cell, T=4, B=3, seed=0, scale=1.0):
    """Input, parameters and initial states for a cell, drawn at random."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, cell.input_size)).astype(cell.dtype)
    params = {n: (scale * rng.uniform(-0.6, 0.6, s)).astype(cell.dtype)
              for n, s in cell.param_shapes.items()}
    state = {n: (0.5 * rng.standard_normal((B, s))).astype(cell.dtype)
             for n, s in cell.state_sizes.items()}
    return x, params, state


def random_extra_inputs(cell, T=4, B=3, seed=0) -> dict:
    """The inputs after the first of a cell that has several (`inputs=` of forward),
    drawn at random: {} for the others. Timestamps (phased_lstm's ts) need no order."""
    rng = np.random.default_rng(seed + 7919)
    extra = getattr(cell, "extra_inputs", {})
    return {n: (2.0 * rng.standard_normal((T, B, size))).astype(cell.dtype)
            for n, size in extra.items()}


def central_difference(loss, array: np.ndarray, indices=None, eps: float = 1e-6) -> np.ndarray:
    """d loss / d array by central differences (float64), at every element or at the
    given indices (in that order); `array` is perturbed in place and restored."""
    flat = array.reshape(-1)
    assert np.shares_memory(flat, array), "central_difference needs a contiguous array"
    positions = (range(flat.size) if indices is None
                 else [np.ravel_multi_index(i, array.shape) for i in indices])
    numeric = []
    for k in positions:
        keep = flat[k]
        flat[k] = keep + eps
        plus = loss()
        flat[k] = keep - eps
        minus = loss()
        flat[k] = keep
        numeric.append((plus - minus) / (2 * eps))
    return np.array(numeric)


def exit_of_forked_child(check, locks=(), seconds: int = 30) -> int:
    """The exit status of a forked child that runs `check()` (true: status 0) while the
    parent holds `locks`, as another thread of the parent would at the fork; a child
    that waits for one of them is ended by an alarm after `seconds`. The child never
    returns into pytest. (Torch ops that use OpenMP may hang in a forked child, as
    PyTorch warns: compute what torch should give before the fork.)"""
    for lock in locks:
        lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                # ended by the alarm even while stuck in native code (pytest-timeout's
                # handler, inherited, would wait for Python code to run)
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(seconds)
                code = 0 if check() else 1
            finally:
                os._exit(code)
    finally:
        for lock in locks:
            lock.release()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture(params=SPEC_NAMES)
def spec_name(request):
    return request.param


_SLICING_DEFAULTS: dict[str, int] = {}


def pytest_configure(config):
    # Compiled cells go to a cache private to this test session.
    if "LSTMC_CACHE_DIR" not in os.environ:
        os.environ["LSTMC_CACHE_DIR"] = tempfile.mkdtemp(prefix="lstmc-test-cache-")
    # Every call of the session, module fixtures' included, cuts batches the same way.
    from lstmc_runtime import native

    session = {"MIN_SLICED_WORK": 0, "MIN_SLICED_TRAINING_WORK": 0,
               "MIN_TRAINING_ROWS_PER_SLICE": native.MIN_ROWS_PER_THREAD}
    for name, value in session.items():
        _SLICING_DEFAULTS[name] = getattr(native, name)
        setattr(native, name, value)


@pytest.fixture(autouse=True)
def watchdog():
    """A test that hangs (a kernel waiting at a grid barrier for a work-group that never
    runs, say) ends the run with every thread's traceback instead of stalling CI."""
    import faulthandler

    faulthandler.dump_traceback_later(900, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def default_slicing(request, monkeypatch):
    """The test session cuts even tiny batches into slices (pytest_configure), which in
    use would run uncut (native.MIN_SLICED_WORK; in training, batches of fewer than 32
    rows), so the slices stay tested; a test
    marked `default_slicing` has the thresholds of use."""
    if request.node.get_closest_marker("default_slicing") is not None:
        from lstmc_runtime import native

        for name, value in _SLICING_DEFAULTS.items():
            monkeypatch.setattr(native, name, value)
    yield


@pytest.fixture
def cache_calls(monkeypatch, tmp_path):
    """A private compile cache under tmp_path/cache; the returned list records, per cache
    lookup, whether it was a hit (True) or a build (False)."""
    from lstmc import cache

    monkeypatch.setenv("LSTMC_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    original = cache.cached

    def spy(key, build, load):
        result = original(key, build, load)
        calls.append(result[1])
        return result

    monkeypatch.setattr(cache, "cached", spy)
    return calls


def pytest_terminal_summary(terminalreporter):
    """The fuzz tests' case counts (recorded with record_property), shown after the run:
    output capture hides anything a passing test prints."""
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get(
            "failed", []):
        if "test_fuzz.py" in report.nodeid and report.when == "call":
            for name, value in report.user_properties:
                terminalreporter.write_line(f"fuzz {name}: {value}")


# Hypothesis draws the same examples on every machine (no example database), so a CI run
# tests what a local run tested.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("lstmc", derandomize=True, database=None)
_hypothesis_settings.load_profile("lstmc")
