"""A plain dict's arrays are located once and remembered by identity (located.Locator):
whatever changes between calls (values in place, a new array, a shape or dtype assigned
in place, a view) is seen, checked as on the first call, and never read at an old
address. Oracle: the reference executor."""
import gc
import weakref

import numpy as np
import pytest
from conftest import compile_spec, random_inputs
from lstmc_runtime.located import Locator, c_strides

from lstmc.errors import ShapeError

TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture
def cells():
    return compile_spec("lstm", hidden_size=6), compile_spec("lstm", hidden_size=6,
                                                             target="cpu")


def agree(reference, native, x, params, state):
    np.testing.assert_allclose(native.forward(x, params, state)[0],
                               reference.forward(x, params, state)[0], **TOL)


def test_values_changed_in_place_and_new_arrays_are_read(cells):
    reference, native = cells
    x, params, state = random_inputs(reference, T=5, B=2)
    agree(reference, native, x, params, state)
    params["b_hf"][:] += 0.5  # a vector the kernel reads where the caller keeps it
    agree(reference, native, x, params, state)
    params["b_hf"] = params["b_hf"] - 1.0  # a new array (the old one dies)
    gc.collect()
    agree(reference, native, x, params, state)
    params["W_hi"] = np.asfortranarray(params["W_hi"]).copy(order="C")
    agree(reference, native, x, params, state)


@pytest.mark.parametrize("change", ["shape", "dtype", "view"])
def test_an_array_changed_in_place_is_checked_again(cells, change):
    reference, native = cells
    x, params, state = random_inputs(reference, T=5, B=2)
    agree(reference, native, x, params, state)
    if change == "shape":  # the same object, the same bytes, another shape
        params["W_hi"].shape = (3, 12)
        message = r"params\['W_hi'\]: expected shape \(6, 6\), got \(3, 12\)"
    elif change == "dtype":  # the same bytes read as half as many float64... as float32
        params["W_hi"].dtype = np.float32
        message = r"params\['W_hi'\]: expected dtype float64, got float32"
    else:  # a view with other strides, in the dict where the array was
        params["W_hi"] = np.ones((6, 12))[:, ::2]
        message = r"params\['W_hi'\]: expected a C-contiguous array"
    with pytest.raises(ShapeError, match=message):
        native.forward(x, params, state)


def test_the_locator_keeps_no_array_alive(cells):
    reference, native = cells
    x, params, state = random_inputs(reference, T=5, B=2)
    native.forward(x, params, state)
    watched = weakref.ref(params["W_hi"])
    del params
    gc.collect()
    assert watched() is None


def test_locator_addresses_are_the_arrays_own():
    locator = Locator({"a": (2, 3), "b": (4,)}, np.dtype(np.float32))
    params = {"a": np.zeros((2, 3), np.float32), "b": np.arange(4, dtype=np.float32)}
    for _ in range(2):  # the first call locates, the second remembers
        found = locator.addresses(params)
        assert found == {n: v.ctypes.data for n, v in params.items()}
    with pytest.raises(ShapeError, match=r"params: missing 'b'"):
        locator.addresses({"a": params["a"]})
    with pytest.raises(ShapeError, match=r"params\['b'\]: expected dtype float32, got"):
        locator.addresses({"a": params["a"], "b": np.arange(4.0)})


def test_c_strides_are_numpys():
    for shape in [(3,), (2, 5), (4, 1, 3)]:  # (NumPy gives a zero-size array zero strides)
        assert c_strides(shape, 8) == np.zeros(shape).strides


def test_an_array_replaced_by_a_list_is_an_error_not_a_crash(cells):
    reference, native = cells
    x, params, state = random_inputs(reference, T=5, B=2)
    native.forward(x, params, state)
    params["W_hi"] = params["W_hi"].tolist()
    with pytest.raises(ShapeError, match=r"params\['W_hi'\]: expected an array"):
        native.forward(x, params, state)
