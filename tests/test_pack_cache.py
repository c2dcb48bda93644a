"""Weights packed for calls with plain dicts are reused only while the caller's arrays
hold the same bytes: any change, in place or by a new array, is seen; the reuse never
changes a result (oracle: the reference executor)."""
import numpy as np
import pytest
from conftest import compile_spec, random_inputs
from lstmc_runtime import packcache

TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture
def cells():
    reference = compile_spec("lstm", hidden_size=6)
    native = compile_spec("lstm", hidden_size=6, target="cpu")
    return reference, native


def packs_made(monkeypatch) -> list:
    from lstmc_runtime.packing import Packer

    made = []
    original = Packer.stacked
    monkeypatch.setattr(Packer, "stacked",
                        lambda self, parts, transposed, *rest: made.append(transposed) or
                        original(self, parts, transposed, *rest))
    return made


def test_unchanged_weights_are_packed_once(monkeypatch, cells):
    reference, native = cells
    made = packs_made(monkeypatch)
    x, params, state = random_inputs(reference, T=5, B=2)
    expected = reference.forward(x, params, state)[0]
    for _ in range(3):
        np.testing.assert_allclose(native.forward(x, params, state)[0], expected, **TOL)
    assert len(made) == 2  # the input and the recurrent weights, once each
    copy = {n: v.copy() for n, v in params.items()}  # other arrays, the same bytes
    np.testing.assert_allclose(native.forward(x, copy, state)[0], expected, **TOL)
    assert len(made) == 2


@pytest.mark.parametrize("change", ["in place", "new array", "signed zero", "nan"])
def test_any_changed_byte_packs_again(monkeypatch, cells, change):
    reference, native = cells
    x, params, state = random_inputs(reference, T=5, B=2)
    native.forward(x, params, state)
    made = packs_made(monkeypatch)
    if change == "in place":
        params["W_hf"][3, 2] += 1e-12
    elif change == "new array":
        params["W_hf"] = params["W_hf"] * 1.5
    elif change == "signed zero":  # 0.0 == -0.0, but not the same bytes
        params["W_hf"][1, 1] = 0.0
        native.forward(x, params, state)
        made.clear()
        params["W_hf"][1, 1] = -0.0
    else:  # NaN != NaN, yet the same bytes: reused
        params["W_hf"][0, 0] = np.nan
        native.forward(x, params, state)
        made.clear()
    y = native.forward(x, params, state)[0]
    assert len(made) == (0 if change == "nan" else 1)
    if change == "signed zero":
        assert np.signbit(native._pack_cache._slots["panelsT:1"].popitem()[1][0][1].array[1, 1])
    if change != "nan":
        np.testing.assert_allclose(y, reference.forward(x, params, state)[0], **TOL)


def test_a_write_while_packing_never_leaves_a_stale_pack(monkeypatch, cells):
    """Another thread writing a weight while a call packs it (a learner updating what an
    actor reads): the kept pack must hold the bytes it is kept under, so that the next
    call, with the new bytes, packs them. Here the write lands just after the packing,
    before the cache's copy: the moment a cache that copied after packing got wrong
    (its next calls reused a pack of the old weights)."""
    from lstmc_runtime.packing import Packer

    reference, native = cells
    x, params, state = random_inputs(reference, T=5, B=2)
    original = Packer.stacked
    writes = []

    def stacked(self, parts, transposed, *rest):
        pack = original(self, parts, transposed, *rest)
        if not writes and any(np.array_equal(p, params["W_hf"]) for p in parts):
            params["W_hf"][2, 3] += 0.75  # once, just after W_hf's pack is made
            writes.append(True)
        return pack

    monkeypatch.setattr(Packer, "stacked", stacked)
    native.forward(x, params, state)  # raced: its own result is not defined
    assert writes
    for _ in range(2):  # the weights written, and left alone from now on
        np.testing.assert_allclose(native.forward(x, params, state)[0],
                                   reference.forward(x, params, state)[0], **TOL)


def test_training_sees_changed_weights(cells):
    """The backward's packs (another layout) are cached alike: a step of a NumPy
    training loop that changes the weights in place gets gradients at the new ones."""
    reference, native = cells
    x, params, state = random_inputs(reference, T=5, B=2)
    dy = np.ones((5, 2, 6))
    for _ in range(2):
        got = native.forward(x, params, state, train=True)[2].backward(dy)
        want = reference.forward(x, params, state, train=True)[2].backward(dy)
        for n in want["params"]:
            np.testing.assert_allclose(got["params"][n], want["params"][n], **TOL)
        params["W_hi"][0, 0] -= 0.25


def test_release_memory_forgets_the_packs(cells):
    import lstmc

    reference, native = cells
    x, params, state = random_inputs(reference, T=5, B=2)
    native.forward(x, params, state)
    assert native._pack_cache._slots
    assert lstmc.release_memory() > 0
    assert not native._pack_cache._slots


def test_same_bytes_compares_shape_dtype_and_every_byte():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert packcache.same_bytes(a, a.copy())
    assert not packcache.same_bytes(a, a.reshape(4, 3).copy())
    assert not packcache.same_bytes(a, a.astype(np.float64))
    b = a.copy()
    b[2, 3] = np.nextafter(b[2, 3], np.float32(100))
    assert not packcache.same_bytes(a, b)
