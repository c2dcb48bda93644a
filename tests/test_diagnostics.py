"""Bad specs: each gives one error with its message, line and column, the source line and
a caret. Positions are 1-based, as editors show them."""
import pytest

import lstmc
from lstmc.errors import SpecError, SpecSyntaxError

HEADER = "cell a(x: I) -> h: H {\n"

# (spec text, error type, message fragment, line, column)
BAD_SPECS = [
    (HEADER + "  param W\n  h' = tanh(W @ x) + 1e400 * h\n}\n",
     SpecSyntaxError, "the number 1e400 is too large: its float64 value would be infinite", 3, 22),
    (HEADER + "  param W, b = -2e308\n  h' = tanh(W @ x + b)\n}\n",
     SpecSyntaxError, "the number 2e308 is too large", 2, 17),
    (HEADER + "  param W\n  h' = tanh(W @ x\n}\n",
     SpecSyntaxError, "unexpected '}'; expected one of ')', ','", 4, 1),
    (HEADER + "  param W\n  h' = tanh(W @ x) $ 2\n}\n",
     SpecSyntaxError, "unexpected character '$'", 3, 20),
    (HEADER + "  param W\n  h' = tanh(W @ x)\n",
     SpecSyntaxError, "unexpected end of file; expected one of", 3, 19),
    (HEADER + "  param W\n  h' = tanh(W @ x) *\n}\n",
     SpecSyntaxError, "unexpected '}'; expected one of '(', '+', '-', a name, a number", 4, 1),
    ("cell a(x: 0) -> h: H {\n  param W\n  h' = tanh(W @ x)\n}\n",
     SpecSyntaxError, "a size must be a name or a positive integer, not 0", 1, 11),
    ("cell a(x: I) h: H {\n}\n", SpecSyntaxError, "unexpected name 'h'; expected '->'", 1, 14),
    (HEADER + "  param W\n  h' = tanh(W @ x) + gg\n}\n",
     SpecError, "undefined name 'gg'", 3, 22),
    (HEADER + "  param W\n  g = W @ x\n  g = tanh(g)\n  h' = g\n}\n",
     SpecError, "'g' is defined twice (first at line 3, column 3)", 4, 3),
    (HEADER + "  param W\n  h' = sigmod(W @ x)\n}\n",
     SpecError, "unknown function 'sigmod'", 3, 8),
    (HEADER + "  param W\n  h' = max(W @ x)\n}\n",
     SpecError, "'max' takes 2 arguments, got 1", 3, 8),
    (HEADER + "  param W, p: I\n  h' = W @ x + p * h\n}\n",
     SpecError, "parameter 'p' is used with two shapes: size I (declared at line 2", 3, 16),
    (HEADER + "  param W\n  h' = tanh(W @ x + W @ h)\n}\n",
     SpecError, "parameter 'W' is used with two shapes: it has I columns", 3, 21),
    (HEADER + "  param W, b\n  h' = tanh(W @ x + b @ h + b)\n}\n",
     SpecError, "parameter 'b' is used as a vector here but as a matrix", 3, 29),
    (HEADER + "  param W\n  h' = W @ x + x\n}\n",
     SpecError, "size mismatch: state h has size H, but its new value has size I", 3, 8),
    (HEADER + "  param W: [H, I]\n  h' = W @ x + x\n}\n",
     SpecError, "size mismatch in '+': left operand has size H, right operand has size I", 3, 8),
    (HEADER + "  state c: H\n  param W\n  h' = tanh(W @ x)\n}\n",
     SpecError, "state 'c' is never updated", 2, 9),
    (HEADER + "  param W\n  a = tanh(b)\n  b = sigmoid(a)\n  h' = W @ x + a\n}\n",
     SpecError, "cycle inside a step: b -> a -> b", 3, 12),
    (HEADER + "  state c: H\n  param W\n  c' = tanh(c' + c)\n  h' = W @ x\n}\n",
     SpecError, "cycle inside a step: c' -> c'", 4, 13),
    (HEADER + "  param W\n  h' = W @ x + a\n  a = tanh(x)\n}\n",
     SpecError, "'a' is used before it is defined (on line 4)", 3, 16),
    (HEADER + "  param W\n  h' = tanh(h @ x)\n}\n",
     SpecError, "the left operand of '@' must be a learned matrix", 3, 13),
    (HEADER + "  param W, b\n  h' = tanh(W @ x)\n}\n",
     SpecError, "parameter 'b' is declared but never used", 2, 12),
    (HEADER + "  param W\n  i' = tanh(W @ x)\n  h' = i\n}\n",
     SpecError, "only states take a new value with a prime, and 'i' is a local value", 3, 3),
    (HEADER + "  param W\n  h = tanh(W @ x)\n}\n",
     SpecError, "cannot assign to a state 'h'", 3, 3),
    (HEADER + "  param W\n  h' = tanh(W @ x)\n  h' = h\n}\n",
     SpecError, "'h'' is defined twice", 4, 3),
    (HEADER + "  state x: H\n  param W\n  h' = tanh(W @ x)\n}\n",
     SpecError, "'x' is declared twice (first as an input at line 1, column 8)", 2, 9),
    (HEADER + "  param W, U\n  h' = tanh(W @ x + U @ c')\n}\n",
     SpecError, "'c' is not a state, so it has no new value c'", 3, 25),
    (HEADER + "  param W, u\n  h' = tanh(W @ x) + u\n  u = 1\n}\n",
     SpecError, "cannot assign to a parameter 'u'", 4, 3),
    (HEADER + "  param W\n  h' = tanh(W @ x)\n}\n" + HEADER + "  param W\n  h' = W @ x\n}\n",
     SpecError, "cell 'a' is defined twice (first at line 1)", 5, 6),
    (HEADER + "  param W, p\n  a = p * p\n  h' = tanh(W @ x)\n}\n",
     SpecError, "cannot infer the size of parameter 'p'", 2, 12),
    (HEADER + "  param W, U\n  h' = tanh(W @ x) + U @ 2\n}\n",
     SpecError, "the right operand of '@' is a constant", 3, 22),
    (HEADER + "  param W, U\n  k = 2 * mean(1)\n  h' = tanh(W @ x) + U @ (k + 1)\n}\n",
     SpecError, "the right operand of '@' is a constant", 4, 22),
    (HEADER + "  param W\n  h' = tanh(W^T @ x)\n}\n",
     SpecSyntaxError, "unexpected character '^'", 3, 14),
    (HEADER + "  param W\n  h' = W @ x\n  h'' = 2\n}\n",
     SpecSyntaxError, "unexpected prime ('); expected '='", 4, 5),
    (HEADER + "  param W\n  h' = W @ x ** h\n}\n",
     SpecError, "the exponent of '**' must be a number", 3, 17),
    (HEADER + "  param W\n  h' = elu(W @ x, h)\n}\n",
     SpecError, "the alpha of elu must be a number", 3, 19),
    (HEADER + "  param W\n  h' = leaky_relu(W @ x, 0.1, 2)\n}\n",
     SpecError, "'leaky_relu' takes 1 or 2 arguments, got 3", 3, 8),
    (HEADER + "  param W\n  h' = where(W @ x > 0, h)\n}\n",
     SpecError, "'where' takes 3 arguments, got 2", 3, 8),
    (HEADER + "  param W\n  h' = (W @ x < h < 1) * h\n}\n",
     SpecSyntaxError, "unexpected '<'", 3, 19),
    (HEADER + "  param W, p: I\n  h' = where(W @ x, p, h)\n}\n",
     SpecError, "size mismatch in 'where': arguments have sizes I and H", 3, 24),
    (HEADER + "  param W, W_mx, p\n  h' = tanh(W @ x) + mean(W_mx @ p)\n}\n",
     SpecError, "cannot infer the sizes of parameters 'W_mx', 'p' from their use", 2, 12),
    (HEADER + "  param W: [4*H, I]\n  h' = tanh((W @ x)[0:5*H])\n}\n",
     SpecError, "slice [0:5*H] is not inside a value of size 4*H", 3, 13),
    (HEADER + "  param W: [4*H, I]\n  h' = tanh((W @ x)[2*H:H])\n}\n",
     SpecError, "slice [2*H:H] is not inside a value of size 4*H", 3, 13),
    (HEADER + "  param W: [2*H, I]\n  h' = tanh((W @ x)[H:H])\n}\n",
     SpecError, "slice [H:H] is not inside a value of size 2*H", 3, 13),
    (HEADER + "  param W\n  h' = tanh((W @ x)[0:H])\n}\n",
     SpecError, "cannot slice a value whose size is not known yet", 3, 13),
    (HEADER + "  param W, U: [H, 2*H]\n  h' = tanh(U @ concat(W @ x, h))\n}\n",
     SpecError, "cannot concatenate a value whose size is not known yet", 3, 24),
    (HEADER + "  param W\n  h' = tanh(W @ x) + concat()\n}\n",
     SpecError, "'concat' takes 1 to 64 arguments, got 0", 3, 22),
    (HEADER + "  param W, U\n  h' = tanh(W @ x) + U @ H\n}\n",
     SpecError, "the right operand of '@' is a constant", 3, 22),
    (HEADER + "  param W\n  h' = tanh(W @ x) * K\n}\n",
     SpecError, "undefined name 'K'", 3, 22),
    (HEADER + "  param W: [0*H, I]\n  h' = tanh(W @ x)\n}\n",
     SpecSyntaxError, "a size must be a name or a positive integer, not 0 (or a sum", 2, 13),
    (HEADER + "  state c: 2*H\n  param W\n  c' = W @ x\n  h' = c\n}\n",
     SpecError, "size mismatch: state h has size H, but its new value has size 2*H", 5, 8),
    (HEADER + "  state c: 99999999999999999999*H\n  param W, U\n  c' = U @ x\n"
              "  h' = tanh(W @ x)\n}\n",
     SpecError, "size 99999999999999999999*H is too large", 2, 12),
    ("cell a(x: 99999999999999999999) -> h: H {\n  param W\n  h' = tanh(W @ x)\n}\n",
     SpecError, "size 99999999999999999999 is too large", 1, 11),
    (HEADER + "  param W: [H, 2000000000*I + 2000000000]\n  h' = tanh(W @ x)\n}\n",
     SpecError, "size 2000000000*I+2000000000 is too large", 2, 31),
    (HEADER + "  param W\n  h' = tanh((W @ x)[0:99999999999999999999])\n}\n",
     SpecError, "size 99999999999999999999 is too large", 3, 23),
    (HEADER + "  param W\n  h' = tanh((W - eye(1e15)) @ h)\n}\n",
     SpecError, "size 1000000000000000 is too large", 3, 22),
]


@pytest.mark.parametrize("text,kind,message,line,column", BAD_SPECS,
                         ids=[f"{i}:{b[2][:30]}" for i, b in enumerate(BAD_SPECS)])
def test_bad_spec_is_diagnosed_at_its_position(tmp_path, text, kind, message, line, column):
    path = tmp_path / "bad.lstm"
    path.write_text(text)
    with pytest.raises(kind) as info:
        lstmc.check_spec(str(path))
    error = info.value
    assert message in error.message
    assert (error.location.line, error.location.column) == (line, column), error.render()
    rendered = str(error)
    first, source_line, caret = rendered.splitlines()[:3]
    assert first.startswith(f"{path}:{line}:{column}: error: ")
    assert source_line.strip() == text.splitlines()[line - 1].strip()
    assert caret.index("^") - 4 == column - 1
    assert source_line[4:].rstrip() == text.splitlines()[line - 1].rstrip()


def test_there_are_at_least_fifteen_distinct_bad_specs():
    assert len({m for _, _, m, _, _ in BAD_SPECS}) >= 15


def test_a_size_beyond_the_runtime_limit_is_refused_and_one_below_it_is_not():
    """The checker's bound on a size is the runtime's on a buffer dimension (one number,
    lstmc_runtime.manifest.MAX_SIZE): the largest size below it passes the check, the
    limit itself is a SpecError (not a syntax error) at the literal."""
    from lstmc_runtime.manifest import MAX_SIZE

    def spec(size: int) -> str:
        return HEADER + f"  state c: {size}\n  param W, U\n  c' = U @ x\n  h' = tanh(W @ x)\n}}\n"

    assert lstmc.check_spec(spec(MAX_SIZE - 1))
    with pytest.raises(SpecError) as info:
        lstmc.check_spec(spec(MAX_SIZE))
    assert type(info.value) is SpecError
    assert (info.value.location.line, info.value.location.column) == (2, 12)
    assert str(MAX_SIZE) in info.value.message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.lstm"
    path.write_text("  \n")
    with pytest.raises(SpecSyntaxError, match="spec is empty"):
        lstmc.check_spec(str(path))


def test_comment_only_file_is_a_syntax_error(tmp_path):
    path = tmp_path / "comment.lstm"
    path.write_text("# nothing here\n")
    with pytest.raises(SpecSyntaxError, match="unexpected end of file; expected 'cell'"):
        lstmc.check_spec(str(path))


def test_non_utf8_file_names_the_byte_and_position(tmp_path):
    path = tmp_path / "latin1.lstm"
    path.write_bytes(HEADER.encode() + "  # café\n}\n".encode("latin-1"))
    with pytest.raises(SpecSyntaxError, match=r"not valid UTF-8 \(byte 0xe9\)") as info:
        lstmc.check_spec(str(path))
    assert (info.value.location.line, info.value.location.column) == (2, 8)


def test_missing_file():
    with pytest.raises(SpecSyntaxError, match="cannot read spec 'no/such.lstm'"):
        lstmc.check_spec("no/such.lstm")


def test_suggestions_for_misspelled_names(tmp_path):
    with pytest.raises(SpecError) as info:
        lstmc.check_spec(HEADER + "  param W, bias\n  h' = tanh(W @ x + bais)\n}\n")
    assert "did you mean 'bias'?" in str(info.value)
    with pytest.raises(SpecError) as info:
        lstmc.check_spec(HEADER + "  param W\n  h' = sigmod(W @ x)\n}\n")
    assert "did you mean 'sigmoid'?" in str(info.value)


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_reductions_of_a_per_row_scalar_are_the_scalar(target):
    """`mean(1)` and `sum(s)` of a size-1 value: the value itself, on every target."""
    import numpy as np

    spec = HEADER + "  state s: 1\n  param W\n  h' = W @ x * mean(1) + sum(s)\n  s' = mean(s) + 1\n}\n"
    cell = lstmc.compile(spec, input_size=2, hidden_size=3, target=target, dtype="float64")
    params = {"W": np.arange(6.0).reshape(3, 2)}
    x = np.ones((2, 1, 2))
    y, final = cell.forward(x, params, {"h": np.zeros((1, 3)), "s": np.full((1, 1), 0.5)})
    np.testing.assert_allclose(y[:, 0], [[1.5, 5.5, 9.5], [2.5, 6.5, 10.5]])
    np.testing.assert_allclose(final["s"], [[2.5]])


# (spec, what the error says to write instead)
INSTEAD = [
    (HEADER + "  param W\n  h' = tanh(W^T @ x)\n}\n", "the transpose of a parameter matrix is written `W.T`"),
    (HEADER + "  param W\n  h' = W @ x ^ 2\n}\n", "a power is written `a ** c`"),
    (HEADER + "  param W\n  h' = W.t @ x\n}\n", "the transpose of a parameter matrix is written `W.T`"),
    (HEADER + "  param W\n  h' = W @ x % 2\n}\n", "`mod(a, b)`"),
    (HEADER + "  param W\n  h' = W @ x == h\n}\n", "`(a >= b) * (a <= b)`"),
    (HEADER + "  param W\n  h' = W @ x != h\n}\n", "`(a >= b) * (a <= b)`"),
    (HEADER + "  param W\n  h' = (W @ x > 0) && (h > 0)\n}\n", "`(a > 0) * (b > 0)`"),
    (HEADER + "  param W\n  h' = (W @ x > 0) || (h > 0)\n}\n", "take their max for 'or'"),
    (HEADER + "  param W\n  h' = W @ x[0]\n}\n", "a slice `v[a:b]`"),
    (HEADER + "  param W\n  h' = W @ x ** h\n}\n", "exp(y * log(a))"),
    (HEADER + "  param W\n  h' = (W @ x < h < 1) * h\n}\n", "`(a < b) * (b < c)`"),
]


@pytest.mark.parametrize("text,instead", INSTEAD, ids=[i[1][:30] for i in INSTEAD])
def test_unsupported_operators_say_what_to_write_instead(text, instead):
    with pytest.raises(SpecError) as info:
        lstmc.check_spec(text)
    assert instead in info.value.hint, info.value.render()


def test_expected_tokens_name_the_prime():
    """The prime is a token like any other: named, never a bare quote that reads as the
    start of a quoted token."""
    with pytest.raises(SpecSyntaxError) as info:
        lstmc.check_spec(HEADER + "  param W\n  h' = tanh(W @ x) h\n}\n")
    message = info.value.message
    assert message == "unexpected '}'; expected one of '=', a prime (')", message


@pytest.mark.parametrize("declared,hinted", [
    ("param W, W_mx, p\n  h' = tanh(W @ x) + mean(W_mx @ p)",
     "`param W_mx: [H, H]`, `param p: H`"),
    ("param W, W_mx\n  h' = tanh(W @ x) + mean(W_mx @ x)", "`param W_mx: [H, I]`"),
    ("param W, p\n  a = p * p\n  h' = tanh(W @ x)", "`param p: H`"),
])
def test_following_the_size_hint_compiles(declared, hinted):
    """The hint gives a declaration for every parameter whose size no use decides, matrices
    as matrices; written as hinted, the spec compiles (no second error)."""
    with pytest.raises(SpecError) as info:
        lstmc.check_spec(HEADER + "  " + declared + "\n}\n")
    assert info.value.hint == f"give {'them' if ', `' in hinted else 'it'} explicitly, e.g. {hinted}"
    fixed = declared
    for declaration in hinted.split(", `"):
        name, shape = declaration.strip("`").removeprefix("param ").split(": ")
        fixed = fixed.replace(f"param W, {name}", f"param W, {name}: {shape}", 1)
        fixed = fixed.replace(f", {name}\n", f", {name}: {shape}\n", 1)
    cell = lstmc.compile(HEADER + "  " + fixed + "\n}\n", input_size=2, hidden_size=3)
    assert cell.param_shapes


SRU = """cell sru(x: H) -> h: H {
  state c: H
  param W, W_f, W_r
  f = sigmoid(W_f @ x)
  r = sigmoid(W_r @ x)
  c' = f * c + (1 - f) * (W @ x)
  h' = r * tanh(c') + (1 - r) * x
}
"""


def test_an_input_of_size_h_refuses_a_different_input_size():
    """`cell sru(x: H)`: input_size and hidden_size both set H, so they must agree; one of
    them alone is enough."""
    from lstmc.errors import CompileError

    with pytest.raises(CompileError, match=r"input_size=5 and hidden_size=7, but the spec "
                                           r"gives its input the size H \(`x: H`\)"):
        lstmc.compile(SRU, input_size=5, hidden_size=7)
    for sizes in [dict(input_size=5), dict(hidden_size=5), dict(input_size=5, hidden_size=5)]:
        assert lstmc.compile(SRU, **sizes).param_shapes["W"] == (5, 5)
