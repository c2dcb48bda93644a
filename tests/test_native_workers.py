"""The parked native worker threads (lstmc_runtime.workers) that run threaded kernels with
the caller: results against the reference executor for any thread count, through both
call paths; one pool per process, grown when needed, made afresh after a fork."""
import os
import threading

import numpy as np
import pytest
from conftest import compile_spec, random_inputs
from lstmc_runtime import workers
from lstmc_runtime.bound import Threaded
from lstmc_runtime.choice import FasterOf

TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture
def threaded(monkeypatch):
    """Every inference call of a small batch runs threaded; counts the pool's jobs."""
    monkeypatch.setattr("lstmc_runtime.native.THREADED_STEP_WEIGHTS", 0)
    monkeypatch.setattr("lstmc_runtime.workers.run_kernel", lambda *job: None)  # no team
    monkeypatch.setattr(Threaded, "choose",  # the lean path: threads, not a measured choice
                        lambda self, alone, together: (lambda s: alone() if s is None else s)(
                            together()))
    jobs = []
    original = workers.Workers.run
    monkeypatch.setattr(workers.Workers, "run",
                        lambda self, *a: jobs.append(a[4]) or original(self, *a))
    return jobs


def check(got, expected):
    (y1, f1), (y0, f0) = got, expected
    np.testing.assert_allclose(y1, y0, **TOL)
    for n in f0:
        np.testing.assert_allclose(f1[n], f0[n], **TOL, err_msg=n)


@pytest.mark.parametrize("name", ["lstm", "gru_cho", "lstmp", "layernorm_lstm", "indrnn",
                                  "greff/fgr"])
@pytest.mark.parametrize("threads", ["2", "3", "5"])
def test_threaded_kernels_on_parked_workers_match_the_reference(monkeypatch, threaded,
                                                                name, threads):
    """H = 37: shares of columns that divide neither by the threads nor by panels."""
    monkeypatch.setenv("LSTMC_NUM_THREADS", threads)
    reference = compile_spec(name, hidden_size=37)
    native = compile_spec(name, hidden_size=37, target="cpu")
    x, params, state = random_inputs(reference, T=9, B=3)
    lengths = np.array([9, 2, 5])
    check(native.forward(x, params, state, lengths=lengths),
          reference.forward(x, params, state, lengths=lengths))  # the general path
    expected = reference.forward(x, params, state)
    bound = native.bind(params)
    for _ in range(3):  # the lean path: a plan of the threaded kernel, reused
        check(bound(x, state), expected)
        check(native.forward(x, params, state), expected)
    bound.reset(state)
    y = np.concatenate([bound.step(x[:4]), bound.step(x[4:8]), bound.step(x[8:])])
    np.testing.assert_allclose(y, reference.forward(x, params, state)[0], **TOL)
    assert len(threaded) >= 7 and set(threaded) == {native._threads()}


def test_one_pool_for_every_cell_grown_when_a_call_needs_more(monkeypatch, threaded):
    cells = [compile_spec(name, hidden_size=20, target="cpu") for name in ("lstm", "gru")]
    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    for cell in cells:
        x, params, state = random_inputs(cell, T=8, B=1)
        cell.forward(x, params, state)
    pool = workers._pool
    assert pool is not None and pool.count >= 1
    monkeypatch.setenv("LSTMC_NUM_THREADS", str(pool.count + 2))
    x, params, state = random_inputs(cells[0], T=9, B=1)  # a new shape: a new plan
    cells[0].forward(x, params, state)
    assert workers._pool is not pool and workers._pool.count == pool.count + 1
    assert pool.closed and not any(t.is_alive() for t in pool._threads)  # the old ones left
    names = [t.name for t in threading.enumerate() if t.name.startswith("lstmc-worker")]
    assert len(names) == workers._pool.count


def test_calls_from_several_threads_share_the_workers(monkeypatch, threaded):
    """One call at a time holds the workers; the others run on Python's threads or alone."""
    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    reference = compile_spec("lstm", hidden_size=24)
    native = compile_spec("lstm", hidden_size=24, target="cpu")
    cases = [random_inputs(reference, T=10, B=1, seed=s) for s in range(3)]
    packed = native.pack_params(cases[0][1])
    errors = []

    def run(x, state, expected):
        try:
            for _ in range(60):
                check(native.forward(x, packed, state), expected)
                check(native.forward(x, packed, state, lengths=np.array([7])),
                      reference.forward(x, cases[0][1], state, lengths=np.array([7])))
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    runners = [threading.Thread(target=run, args=(x, s, reference.forward(x, cases[0][1], s)))
               for x, _, s in cases]
    for t in runners:
        t.start()
    for t in runners:
        t.join()
    assert not errors and threaded


def test_one_team_at_a_time_runs_on_pythons_threads(monkeypatch):
    """With the native workers and OpenMP's team unavailable, a threaded call's helpers
    run on Python's executor, one team at a time: a call while another's team is there
    runs the one-thread twin. (Teams at once filled the executor's workers with parts of
    teams, each waiting at a barrier for a helper still queued: a deadlock.)"""
    from lstmc_runtime import native as runtime

    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    monkeypatch.setenv("LSTMC_NATIVE_WORKERS", "0")
    monkeypatch.setattr("lstmc_runtime.workers.run_kernel", lambda *job: None)  # no team
    monkeypatch.setattr("lstmc_runtime.native.SHARED_TRAINING_WORK", 0)
    monkeypatch.setattr(FasterOf, "choose",  # the threaded way whenever it runs at all
                        lambda self, alone, together, work=1.0: together() or alone())
    submitted = []
    executor = runtime._executor()
    monkeypatch.setattr(runtime, "_executor", lambda: executor)
    original = executor.submit
    monkeypatch.setattr(executor, "submit",
                        lambda fn, *a: submitted.append(a) or original(fn, *a))
    reference = compile_spec("lstm", hidden_size=24)
    cell = compile_spec("lstm", hidden_size=24, target="cpu")
    x, params, state = random_inputs(reference, T=9, B=1)  # (steps shared from T = 8)
    y0, f0, tape0 = reference.forward(x, params, state, train=True)
    g0 = tape0.backward(np.ones_like(y0))

    def train():
        y, final, tape = cell.forward(x, params, state, train=True)
        g = tape.backward(np.ones_like(y))
        np.testing.assert_allclose(y, y0, **TOL)
        for n in g0["params"]:
            np.testing.assert_allclose(g["params"][n], g0["params"][n], **TOL, err_msg=n)

    train()
    assert len(submitted) == 2  # forward and backward: one helper each
    with runtime._PYTHON_TEAM:  # another call's team is on the executor
        train()
    assert len(submitted) == 2  # both ran as their one-thread twins


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_workers(monkeypatch, threaded):
    """A fork copies the pool's memory but not its threads: the child must not wait for
    workers that do not exist."""
    import multiprocessing

    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    cell = compile_spec("gru", hidden_size=30, target="cpu")
    x, params, state = random_inputs(cell, T=12, B=1)
    expected, _ = cell.forward(x, params, state)
    assert workers._pool is not None
    _FORKED.update(cell=cell, x=x, params=params, state=state)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got, jobs = pool.apply_async(_forward_in_child).get(timeout=60)
    np.testing.assert_array_equal(got, expected)
    assert jobs >= 1


_FORKED: dict = {}


def _forward_in_child():
    case = _FORKED
    y = case["cell"].forward(case["x"], case["params"], case["state"])[0]
    y = case["cell"].forward(case["x"], case["params"], case["state"])[0]
    pool = workers._pool
    assert pool is not None and pool.pid == os.getpid()
    return y, int(pool.state[0])  # the generation: jobs the child's pool ran


class FakeKernels:
    """Kernels for FasterOf on a fake clock: each call advances it by its kernel's cost
    and is recorded in `ran`; a busy one runs nothing (its workers are taken)."""

    def __init__(self, monkeypatch, alone: float, together: float):
        self.clock = 0.0
        monkeypatch.setattr("lstmc_runtime.choice.time.perf_counter", lambda: self.clock)
        self.cost = {"alone": alone, "together": together}
        self.ran: list[str] = []

    def kernel(self, name: str, busy: bool = False):
        def run():
            if busy:
                return None
            self.ran.append(name)
            self.clock += self.cost[name]
            return 0
        return run


def test_the_measured_faster_kernel_runs_and_is_measured_again(monkeypatch):
    """FasterOf (the choice of a Threaded plan and of training's threaded entries) on a
    fake clock: each kernel advances it by its own cost."""
    monkeypatch.setattr(FasterOf, "RECHECK", 20)
    fake = FakeKernels(monkeypatch, alone=2.0, together=1.0)
    choice, cost, ran, kernel = FasterOf(), fake.cost, fake.ran, fake.kernel

    for _ in range(2 * FasterOf.PROBES):  # measuring: in turn
        choice.choose(kernel("alone"), kernel("together"))
    assert ran.count("alone") == ran.count("together") == FasterOf.PROBES
    assert choice.best is True
    ran.clear()
    for _ in range(20):
        choice.choose(kernel("alone"), kernel("together"))
    assert ran == ["together"] * 20
    choice.choose(kernel("alone"), kernel("together", busy=True))  # workers busy: alone
    assert ran[-1] == "alone" and choice.best is None  # and measuring again
    cost.update(alone=1.0, together=3.0)  # the machine got busier: threads lose now
    for _ in range(2 * FasterOf.PROBES + 5):
        choice.choose(kernel("alone"), kernel("together"))
    assert choice.best is False and ran[-5:] == ["alone"] * 5


def test_a_chosen_kernel_that_slows_down_is_measured_again_at_once(monkeypatch):
    """Another process taking a core makes a threaded kernel several times slower: the
    choice follows within two windows of WATCH calls, not after RECHECK, and comes back
    RETRY calls later; noise, and calls run alone because the workers were busy, do not
    send it back to measuring."""
    monkeypatch.setattr(FasterOf, "RETRY", 1000)  # no scheduled measuring meanwhile
    fake = FakeKernels(monkeypatch, alone=2.0, together=1.0)
    choice, cost, ran, kernel = FasterOf(), fake.cost, fake.ran, fake.kernel

    for _ in range(2 * FasterOf.PROBES):
        choice.choose(kernel("alone"), kernel("together"))
    assert choice.best is True
    ran.clear()
    for i in range(10 * FasterOf.WATCH):  # noise within SLOWER, and busy workers
        cost["together"] = (1.0, 1.4)[i % 2]
        choice.choose(kernel("alone"), kernel("together", busy=i % 3 == 0))
    assert choice.best is True and ran.count("together") == sum(i % 3 != 0 for i in range(
        10 * FasterOf.WATCH))
    cost["together"] = 5.0  # a background process took the other core
    ran.clear()
    for _ in range(2 * FasterOf.WATCH + 2 * FasterOf.PROBES):  # a window may have begun
        choice.choose(kernel("alone"), kernel("together"))
    assert choice.best is False
    ran.clear()
    for _ in range(20):
        choice.choose(kernel("alone"), kernel("together"))
    assert ran == ["alone"] * 20
    cost["together"] = 1.0  # the other process ended: threads are measured again soon
    for _ in range(FasterOf.RETRY + 2 * FasterOf.PROBES):
        choice.choose(kernel("alone"), kernel("together"))
    assert choice.best is True
    assert choice.period == 2 * FasterOf.RETRY  # then less often, up to RECHECK


def test_a_first_choice_made_in_a_noisy_moment_is_checked_soon(monkeypatch):
    """The first probes of a threaded kernel, run while PyTorch's OpenMP threads still
    spin after a torch op, measured it ten times slower than it is: the choice they make
    is measured again RETRY calls later, not RECHECK."""
    fake = FakeKernels(monkeypatch, alone=2.0, together=10.0)
    choice, cost, ran, kernel = FasterOf(), fake.cost, fake.ran, fake.kernel

    for _ in range(2 * FasterOf.PROBES):
        choice.choose(kernel("alone"), kernel("together"))
    assert choice.best is False
    cost["together"] = 1.0  # the other threads went quiet
    for _ in range(FasterOf.RETRY + 2 * FasterOf.PROBES):
        choice.choose(kernel("alone"), kernel("together"))
    assert choice.best is True and choice.period == 2 * FasterOf.RETRY
    ran.clear()
    for _ in range(2 * FasterOf.RETRY):
        choice.choose(kernel("alone"), kernel("together"))
    assert ran == ["together"] * (2 * FasterOf.RETRY)


def test_a_choice_measured_slower_than_the_other_ways_probes_is_measured_again(
        monkeypatch):
    """Two close ways, and probes that favoured the wrong one: once the chosen one's
    calls run RIVAL times slower than the other's probes (though not SLOWER times its
    own), both are measured again and the faster one runs from then on."""
    monkeypatch.setattr(FasterOf, "RETRY", 1000)  # no scheduled measuring meanwhile
    fake = FakeKernels(monkeypatch, alone=1.0, together=1.1)
    choice, cost, ran, kernel = FasterOf(), fake.cost, fake.ran, fake.kernel
    for _ in range(2 * FasterOf.PROBES):
        choice.choose(kernel("alone"), kernel("together"))
    assert choice.best is False
    cost["alone"] = 1.3  # under SLOWER x 1.0, over RIVAL x 1.1
    for _ in range(2 * FasterOf.WATCH + 2 * FasterOf.PROBES):
        choice.choose(kernel("alone"), kernel("together"))
    assert choice.best is True
    ran.clear()
    for _ in range(50):
        choice.choose(kernel("alone"), kernel("together"))
    assert ran == ["together"] * 50
    cost["together"] = 1.15  # noise within RIVAL of the other way's probes: kept
    for _ in range(10 * FasterOf.WATCH):
        choice.choose(kernel("alone"), kernel("together"))
    assert choice.best is True and ran[-1] == "together"


def test_a_choice_whose_workers_stay_busy_keeps_no_growing_record(monkeypatch):
    """Workers busy with another caller on every call: each call runs alone, and the
    probes kept stay at most PROBES (no list growing for the life of the process)."""
    fake = FakeKernels(monkeypatch, alone=2.0, together=1.0)
    choice = FasterOf()
    for _ in range(1000):
        choice.choose(fake.kernel("alone"), fake.kernel("together", busy=True))
    assert fake.ran == ["alone"] * 1000 and choice.best is None
    assert len(choice.times[0]) == FasterOf.PROBES and choice.times[1] == []


def test_after_a_slowdown_the_next_measure_is_no_later_than_recheck(monkeypatch):
    monkeypatch.setattr(FasterOf, "RECHECK", 20)  # below RETRY
    fake = FakeKernels(monkeypatch, alone=2.0, together=1.0)
    choice = FasterOf()
    for _ in range(2 * FasterOf.PROBES):
        choice.choose(fake.kernel("alone"), fake.kernel("together"))
    fake.cost["together"] = 5.0
    for _ in range(FasterOf.WATCH):
        choice.choose(fake.kernel("alone"), fake.kernel("together"))
    assert choice.best is None and choice.period == 20


def test_workers_outlive_the_objects_of_an_ending_interpreter(tmp_path):
    """Idle workers spin on their shared state until the process ends: its memory must
    stay theirs after the interpreter freed the pool (it would read a job in reused memory
    and run it)."""
    import subprocess
    import sys

    script = tmp_path / "ending.py"
    script.write_text(
        "import gc, os, time, numpy as np\n"
        "from conftest import compile_spec, random_inputs\n"
        "from lstmc_runtime import workers\n"
        "os.environ['LSTMC_NUM_THREADS'] = '2'\n"
        "cell = compile_spec('lstm', hidden_size=20, target='cpu')\n"
        "x, params, state = random_inputs(cell, T=8, B=1)\n"
        "pool = cell.native_workers(2)\n"
        "assert pool is not None\n"
        "workers._pool = pool = None\n"
        "gc.collect()\n"
        "job = np.zeros(16, np.int64)\n"
        "job[[0, 6, 10]] = 12345, 8, 2  # a new generation, a kernel at address 8\n"
        "junk = [job.copy() for _ in range(20000)]  # in reused memory: a worker would run it\n"
        "time.sleep(0.2)\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(__file__)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.default_slicing
def test_a_batch_is_cut_only_where_the_work_repays_it(monkeypatch):
    """Batch slices need MIN_ROWS_PER_THREAD rows each (training: 16) and, per call,
    T x B x the step's recurrent weights of at least MIN_SLICED_WORK (training:
    MIN_SLICED_TRAINING_WORK); an uncut call of a batch that large computes the same."""
    from lstmc_runtime import native

    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    reference, cell = (compile_spec("lstm", input_size=64, hidden_size=64, target=t)
                       for t in ("reference", "cpu"))
    weights = cell.contract.step_weight_elements
    assert weights == 4 * 64 * 64
    rows_for = {train: -(-least // (10 * weights)) for train, least in
                ((False, native.MIN_SLICED_WORK), (True, native.MIN_SLICED_TRAINING_WORK))}
    for train in (False, True):
        B = rows_for[train]
        assert cell._bounds(10, B, train) == [0, B // 2, B]
        assert cell._bounds(10, B - 2, train) == [0, B - 2]
    assert cell._bounds(10 ** 6, 8, False) == [0, 8]  # too few rows for two slices
    assert cell._bounds(10 ** 6, 16, True) == [0, 16]  # training: 16 rows a slice
    assert cell._bounds(10 ** 6, 32, True) == [0, 16, 32]
    x, params, state = random_inputs(reference, T=10, B=64)
    y0, f0 = reference.forward(x, params, state)
    y, final = cell.forward(x, params, state)
    assert cell._bounds(10, 64, False) == [0, 64]
    np.testing.assert_allclose(y, y0, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(final["c"], f0["c"], rtol=1e-10, atol=1e-12)


def test_a_stack_and_a_call_with_lengths_measure_threads_as_a_lone_cell_does(monkeypatch):
    """Inference measures the threaded kernel against one thread from
    MIN_THREADED_WEIGHTS on every path, not only the lean one: a layer of a stack and a
    call with lengths (the general path) offer the threaded entry to FasterOf too (they
    ran one thread below 256K weights: a 2-layer stack at H=128, B=1 took 1.0 ms where
    its layers called alone took 0.3 ms each). Results as the reference's."""
    from lstmc_runtime import native

    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    monkeypatch.setenv("LSTMC_WAVEFRONT", "0")  # its layers one after the other, each called
    monkeypatch.setattr("lstmc_runtime.workers.run_kernel", lambda *job: None)
    offered = []
    original = FasterOf.choose
    monkeypatch.setattr(FasterOf, "choose", lambda self, alone, together, work=1.0: (
        offered.append(True), original(self, alone, together, work))[1])
    H = 64  # 4H x H = MIN_THREADED_WEIGHTS: the least that measures threads
    reference, cell = (compile_spec("lstm", input_size=H, hidden_size=H, num_layers=2,
                                    target=t) for t in ("reference", "cpu"))
    assert cell.layers[1][0].contract.step_weight_elements == native.MIN_THREADED_WEIGHTS
    assert native.MIN_THREADED_WEIGHTS < native.THREADED_STEP_WEIGHTS
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 1, H))
    params = {n: rng.uniform(-0.5, 0.5, s) for n, s in reference.param_shapes.items()}
    for lengths in (None, np.array([7])):
        offered.clear()
        for _ in range(2 * FasterOf.PROBES + 2):  # both kernels measured, then the faster
            y, final = cell.forward(x, params, lengths=lengths)
        assert len(offered) == 2 * (2 * FasterOf.PROBES + 2)  # every call of both layers
        y0, f0 = reference.forward(x, params, lengths=lengths)
        np.testing.assert_allclose(y, y0, **TOL)
        np.testing.assert_allclose(final["c"], f0["c"], **TOL)
    small = compile_spec("lstm", input_size=8, hidden_size=8, target="cpu")
    offered.clear()
    small.forward(np.ascontiguousarray(x[:, :, :8]), small.init_params(0),
                  lengths=np.array([5]))
    assert not offered  # below MIN_THREADED_WEIGHTS a barrier costs more than a share
