"""What gate fusion leaves inside a step, for the cells whose structure the design fixes."""
import pytest
from conftest import spec_path

from lstmc.driver import lower_spec
from lstmc.ir import ops
from lstmc.ir.graph import Op


def structure(name):
    program = lower_spec(spec_path(name))
    products = [(str(p.size), [s for s, _ in p.segments]) for p in program.recurrent_products]
    stages = [s.kind for s in program.forward]
    hoisted = [[s for s, _ in h.segments] for h in program.hoisted]
    return program, products, stages, hoisted


def test_lstm_is_one_hoisted_gemm_one_recurrent_gemm_one_region():
    _, products, stages, hoisted = structure("lstm")
    assert hoisted == [["W_ii", "W_if", "W_ig", "W_io"]]  # PyTorch's gate order
    assert products == [("4*H", ["W_hi", "W_hf", "W_hg", "W_ho"])]
    assert stages == ["product", "elementwise"]


def test_gru_cho_needs_two_dependent_products():
    program, products, stages, hoisted = structure("gru_cho")
    assert hoisted == [["W_r", "W_z", "W_n"]]
    assert products == [("2*H", ["U_r", "U_z"]), ("H", ["U_n"])]
    assert stages == ["product", "elementwise", "product", "elementwise"]
    first, second = program.recurrent_products
    assert first.inputs[0].op == Op.STATE  # U_rz @ h
    assert second.inputs[0].op is ops.MUL  # U_n @ (r * h)


def test_pytorch_gru_packs_all_three_recurrent_products():
    _, products, stages, _ = structure("gru")
    assert products == [("3*H", ["W_hr", "W_hz", "W_hn"])]
    assert stages == ["product", "elementwise"]


def test_lstmp_projects_inside_the_step():
    _, products, stages, _ = structure("lstmp")
    assert products == [("4*H", ["W_hi", "W_hf", "W_hg", "W_ho"]), ("P", ["W_hr"])]
    assert stages == ["product", "elementwise", "product"]


def test_indrnn_has_no_recurrent_product():
    _, products, stages, hoisted = structure("indrnn")
    assert products == []
    assert hoisted == [["W"]]
    assert stages == ["elementwise"]


@pytest.mark.parametrize("name", ["lstm", "gru", "gru_cho", "lstmp"])
def test_backward_has_one_transposed_product_per_forward_product(name):
    program = lower_spec(spec_path(name))
    transposed = [n for s in program.backward if s.kind == "product" for n in s.nodes]
    assert all(n.op == Op.MATMUL_T for n in transposed)
    assert sorted(n.segments for n in transposed) == sorted(
        p.segments for p in program.recurrent_products)


def test_lstm_backward_saves_only_what_it_needs():
    program = lower_spec(spec_path("lstm"))
    # h (operand of the weight gradient), c, the four gate activations and tanh(c')
    def describe(node):
        return f"state {node.attr}" if node.op == Op.STATE else node.op.name

    saved = sorted(program.saved, key=lambda n: n.id)
    assert [describe(n) for n in saved] == [
        "state h", "sigmoid", "sigmoid", "tanh", "sigmoid", "state c", "tanh"]
    # the last is tanh(c'), c' = f * c + i * g: not a value the step's outputs hold
    assert saved[-1].inputs[0].op == ops.REGISTRY["add"]
