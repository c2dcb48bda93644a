"""Static checks of a parsed cell: names, states, cycles and sizes.

Guarantees on success: every name is defined once and before its use, every state gets
exactly one new value, there is no cycle inside a step, every parameter is used and has
one shape, and every elementwise operation combines equal sizes (or a per-row scalar).
Parameter shapes are inferred from use by unification.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

from lstmc_runtime.manifest import MAX_SIZE as MAX_DIMENSION

from ..errors import Location, SpecError
from ..ir.size import Size
from . import ast
from .functions import all_functions, lookup

# A named size (H), an integer (1 is a per-row scalar), or a compound size (4*H: a Size,
# never equal to a name or an integer, so that equal sizes have one form).
SizeAtom = str | int | Size


def check_size_range(size: Size, loc: Location) -> None:
    """Refuse a size the runtime could never take: MAX_DIMENSION (lstmc_runtime.manifest's
    limit on any one buffer dimension) or more at its smallest, every name 1."""
    smallest = size.bind_all(1)
    if smallest >= MAX_DIMENSION:
        least = f" (at least {smallest})" if size.names else ""
        raise SpecError(f"size {size} is too large{least}: the runtime takes sizes below "
                        f"{MAX_DIMENSION}", loc)


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple[SizeAtom, ...]  # (n,) vector or (rows, cols) matrix
    init: float | str | None  # a constant, "eye", or None (PyTorch's uniform)
    loc: Location
    # A matrix computed from parameters (`(W - W.T) @ h`): its terms (coefficient,
    # parameter or None for the identity, transposed, block of a multi-head parameter or
    # None); None for a learned parameter.
    derived: tuple[tuple[float, str | None, bool, int | None], ...] | None = None
    heads: SizeAtom | None = None  # block-diagonal over this many heads (a matrix)

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2


@dataclass
class CheckedCell:
    decl: ast.CellDecl
    input: tuple[str, SizeAtom]
    output: str
    states: dict[str, SizeAtom]  # the output state first, then declared order
    params: dict[str, ParamInfo]  # declared order
    extra_inputs: dict[str, SizeAtom] = field(default_factory=dict)  # after the first

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def size_names(self) -> list[str]:
        names: list[str] = []
        atoms = [self.input[1], *self.extra_inputs.values(), *self.states.values()]
        atoms += [a for p in self.params.values() for a in p.shape]
        for atom in atoms:
            for name in Size.of(atom).names if isinstance(atom, (str, Size)) else ():
                if name not in names:
                    names.append(name)
        return names


class _SizeVars:
    """Union-find over size variables; a class may be bound to a size atom."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.value: list[SizeAtom | None] = []

    def new(self, value: SizeAtom | None = None) -> int:
        self.parent.append(len(self.parent))
        self.value.append(value)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def get(self, v: int) -> SizeAtom | None:
        return self.value[self.find(v)]

    def known(self, v: int) -> SizeAtom:
        """The size of a class that is bound: declared, or inferred and checked so."""
        value = self.get(v)
        assert value is not None, "a size the checker has found known is unbound"
        return value

    def unify(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        va, vb = self.value[ra], self.value[rb]
        if va is not None and vb is not None and va != vb:
            return False
        self.parent[rb] = ra
        self.value[ra] = va if va is not None else vb
        return True

    def show(self, v: int) -> str:
        value = self.get(v)
        return "unknown" if value is None else str(value)


@dataclass
class _Param:
    decl: ast.ParamDecl
    dims: tuple[int, ...] | None = None  # size variables once its kind is known
    first_use: Location | None = None

    @property
    def used_dims(self) -> tuple[int, ...]:
        """The dims of a parameter that is used or declared with a shape (_param_use
        sets dims before first_use)."""
        assert self.dims is not None, f"parameter '{self.decl.name}' has no dims yet"
        return self.dims


@dataclass
class _Checker:
    cell: ast.CellDecl
    sizes: _SizeVars = field(default_factory=_SizeVars)
    numbers: dict[int, float | None] = field(default_factory=dict)  # by id of node: _number

    def run(self) -> CheckedCell:
        cell = self.cell
        self.kinds: dict[str, tuple[str, Location]] = {}
        self._declare(cell.input.name, "input", cell.input.loc)
        self.extra_input_size: dict[str, int] = {}
        for port in cell.extra_inputs:
            self._declare(port.name, "input", port.loc)
            self.extra_input_size[port.name] = self.sizes.new(port.size.value)
        self.state_size: dict[str, int] = {}
        for port in [cell.output, *cell.states]:
            self._declare(port.name, "state", port.loc)
            self.state_size[port.name] = self.sizes.new(port.size.value)
        self.params: dict[str, _Param] = {}
        # matrix expressions left of '@', by their text: (rows, cols, terms, location)
        self.derived: dict[str, tuple[int, int, tuple, Location]] = {}
        for decl in cell.params:
            self._declare(decl.name, "parameter", decl.loc)
            param = self.params[decl.name] = _Param(decl)
            if decl.shape is not None:
                param.dims = tuple(self.sizes.new(s.value) for s in decl.shape)
        self.input_size = self.sizes.new(cell.input.size.value)

        self._collect_definitions()
        self.local_size: dict[str, int] = {}
        self.defined: set[tuple[str, bool]] = set()
        self.constant_locals: set[tuple[str, bool]] = set()
        for assign in cell.assigns:
            size, constant = ast.fold(assign.value, self._visit, self._enter)
            if constant and not assign.primed:
                self.constant_locals.add((assign.name, False))
            if assign.primed:
                want = self.state_size[assign.name]
                if not self._unify_or_broadcast(want, size):
                    raise SpecError(
                        f"size mismatch: state {assign.name} has size "
                        f"{self.sizes.show(want)}, but its new value has size "
                        f"{self.sizes.show(size)}",
                        assign.value.loc,
                    )
            else:
                self.local_size[assign.name] = size
            self.defined.add((assign.name, assign.primed))

        for port in [cell.output, *cell.states]:
            if (port.name, True) not in self.defined:
                raise SpecError(
                    f"state '{port.name}' is never updated",
                    port.loc,
                    hint=f"give it a new value with `{port.name}' = ...`",
                )
        return self._result()

    # -- declarations -------------------------------------------------------------------

    def _declare(self, name: str, kind: str, loc: Location) -> None:
        if name in self.kinds:
            other_kind, other = self.kinds[name]
            raise SpecError(
                f"'{name}' is declared twice (first as {_article(other_kind)} at line "
                f"{other.line}, column {other.column})",
                loc,
            )
        self.kinds[name] = (kind, loc)

    def _collect_definitions(self) -> None:
        """Where each local and each new state value is defined, and what it reads."""
        self.definition: dict[tuple[str, bool], ast.Assign] = {}
        for assign in self.cell.assigns:
            key = (assign.name, assign.primed)
            kind = self.kinds.get(assign.name, (None, None))[0]
            if assign.primed and kind != "state":
                what = f"a {kind}" if kind else "a local value"
                raise SpecError(
                    f"only states take a new value with a prime, and '{assign.name}' is {what}",
                    assign.loc,
                    hint="declare it with `state NAME: SIZE`, or drop the prime",
                )
            if not assign.primed and kind is not None:
                hint = f"write `{assign.name}' = ...` for its new value" if kind == "state" else ""
                raise SpecError(f"cannot assign to {_article(kind)} '{assign.name}'",
                                assign.loc, hint=hint)
            if key in self.definition:
                first = self.definition[key].loc
                shown = assign.name + ("'" if assign.primed else "")
                raise SpecError(
                    f"'{shown}' is defined twice (first at line {first.line}, column {first.column})",
                    assign.loc,
                )
            self.definition[key] = assign

    def _reads(self, expr: ast.Expr) -> set[tuple[str, bool]]:
        """The locals and new state values an expression reads."""
        return {(e.name, e.primed) for e in ast.walk(expr)
                if isinstance(e, ast.Var) and (e.name, e.primed) in self.definition}

    def _cycle_from(self, start: tuple[str, bool]) -> list[tuple[str, bool]] | None:
        """A path of definitions leading from `start` back to itself, if any (a
        depth-first search with its own stack: chains of any length)."""
        seen = {start}
        stack = [(start, [start])]
        while stack:
            key, path = stack.pop()
            for dep in sorted(self._reads(self.definition[key].value), reverse=True):
                if dep == start:
                    return path + [dep]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, path + [dep]))
        return None

    # -- expressions --------------------------------------------------------------------

    def _use_before_definition(self, key: tuple[str, bool], loc: Location) -> SpecError:
        shown = key[0] + ("'" if key[1] else "")
        cycle = self._cycle_from(key)
        if cycle:
            path = " -> ".join(n + ("'" if p else "") for n, p in cycle)
            return SpecError(f"cycle inside a step: {path}", loc,
                             hint="a value cannot depend on itself within one time step")
        line = self.definition[key].loc.line
        return SpecError(f"'{shown}' is used before it is defined (on line {line})", loc,
                         hint="move its definition above this line")

    def _expr(self, expr: ast.Expr) -> int:
        """The size variable of an expression's value (checked without recursion)."""
        return ast.fold(expr, self._visit, self._enter)[0]

    def _enter(self, expr: ast.Expr) -> None:
        """Checks that need no operand: they report before anything inside the call."""
        if isinstance(expr, ast.Call):
            self._function(expr)
        elif isinstance(expr, ast.MatMul):
            self._matrix(expr)

    def _number(self, expr: ast.Expr) -> float | None:
        """ast.constant_value of a node _visit has seen: kept per node as the fold goes
        up, so that each `**` or function of a chain (`x ** 1 ** 1 ...`, nested elu)
        does not fold its whole operand again (that was quadratic: 19 s at 2,000)."""
        return self.numbers[id(expr)]

    def _visit(self, expr: ast.Expr, args: list[tuple[int, bool]]) -> tuple[int, bool]:
        """(size variable, whether the value is a constant) of one node."""
        self.numbers[id(expr)] = ast.number_of(
            expr, [self.numbers[id(c)] for c in ast.children(expr)])
        if isinstance(expr, ast.Number):
            return self.sizes.new(1), True
        if isinstance(expr, ast.Var):
            constant = (expr.name, False) in self.constant_locals and not expr.primed
            return self._var(expr), constant or self._is_size_number(expr)
        constant = all(c for _, c in args)
        sizes = [s for s, _ in args]
        if isinstance(expr, ast.BinOp):
            if expr.op == "**" and self._number(expr.right) is None:
                raise SpecError(
                    "the exponent of '**' must be a number (or an expression of numbers, "
                    "such as -1 or 1/3)", expr.right.loc,
                    hint="for a power with a variable exponent write exp(y * log(a))")
            return self._binop(expr, *sizes), constant
        if isinstance(expr, ast.Neg):
            return sizes[0], constant
        if isinstance(expr, ast.Slice):
            return self._slice(expr, sizes[0]), constant
        if isinstance(expr, ast.Transpose):
            raise SpecError(f"{expr.name}.T is a matrix: it can only multiply a vector "
                            f"(`{expr.name}.T @ h`)", expr.loc)
        if isinstance(expr, ast.MatMul):
            if constant:
                raise SpecError(
                    f"the right operand of '@' is a constant; a product with "
                    f"'{matrix_text(expr.matrix)}' needs a vector that depends on the input, a state "
                    f"or a parameter", expr.loc,
                    hint="a learned vector times a constant is written `c * p` with `param p`")
            return self._matmul(expr, sizes[0]), False
        return self._call(expr, sizes), constant

    def _var(self, expr: ast.Var) -> int:
        key = (expr.name, expr.primed)
        kind = self.kinds.get(expr.name, (None, None))[0]
        if expr.primed:
            if kind != "state":
                raise SpecError(
                    f"'{expr.name}' is not a state, so it has no new value {expr.name}'", expr.loc)
            if key not in self.defined:
                if key in self.definition:
                    raise self._use_before_definition(key, expr.loc)
                raise SpecError(f"the new value {expr.name}' is never defined", expr.loc)
            return self.state_size[expr.name]
        if kind == "input":
            return self.extra_input_size.get(expr.name, self.input_size)
        if kind == "state":
            return self.state_size[expr.name]
        if kind == "parameter":
            return self._param_use(expr.name, 1, expr.loc)[0]
        if key in self.defined:
            return self.local_size[expr.name]
        if key in self.definition:
            raise self._use_before_definition(key, expr.loc)
        if self._is_size_number(expr):
            return self.sizes.new(1)
        raise self._undefined(expr.name, expr.loc)

    def _is_size_number(self, expr: ast.Var) -> bool:
        """A size name used as a number (`1 / H`): not a value's name, and named in a
        declared size."""
        if expr.primed or expr.name in self.kinds or (expr.name, False) in self.definition:
            return False
        cell = self.cell
        refs = [cell.input.size, cell.output.size, *(p.size for p in cell.states)]
        refs += [p.size for p in getattr(cell, "extra_inputs", [])]
        refs += [s for p in cell.params if p.shape is not None for s in p.shape]
        return any(expr.name in Size.of(r.value).names for r in refs
                   if isinstance(r.value, (str, Size)))

    def _undefined(self, name: str, loc: Location) -> SpecError:
        known = list(self.kinds) + [n for n, _ in self.definition]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else (
            "declare learned values with `param NAME` and states with `state NAME: SIZE`")
        return SpecError(f"undefined name '{name}'", loc, hint=hint)

    def _slice(self, expr: ast.Slice, operand: int) -> int:
        """`v[a:b]`: v's size must be known here, and 0 <= a < b <= size for every
        binding of the names (`gates[H:2*H]` of a `4*H` vector)."""
        known = self.sizes.get(operand)
        if known is None:
            raise SpecError(
                "cannot slice a value whose size is not known yet", expr.loc,
                hint="declare the shapes of the parameters it comes from (`param W: [4*H, I]`)")
        size = Size.of(known)
        width = expr.stop - expr.start
        if not (width.surely_positive and (size - expr.stop).surely_nonnegative):
            raise SpecError(
                f"slice [{expr.start}:{expr.stop}] is not inside a value of size {size} (it "
                f"needs 0 <= start < stop <= {size} for every size)", expr.loc)
        if size == Size.of(1):
            raise SpecError("a per-row scalar has nothing to slice", expr.loc)
        return self.sizes.new(width.atom)

    def _concat(self, expr: ast.Call, sizes: list[int]) -> int:
        """concat(a, b, ...): the sizes of the parts add up; each must be known here (a
        number or a per-row scalar is one unit)."""
        total = Size()
        for arg, size in zip(expr.args, sizes):
            known = self.sizes.get(size)
            if known is None:
                raise SpecError(
                    "cannot concatenate a value whose size is not known yet", arg.loc,
                    hint="declare the shapes of the parameters it comes from (`param W: [H, I]`)")
            total = total + Size.of(known)
        check_size_range(total, expr.loc)
        return self.sizes.new(total.atom)

    def _param_use(self, name: str, rank: int, loc: Location) -> tuple[int, ...]:
        param = self.params[name]
        if param.dims is None:
            param.dims = tuple(self.sizes.new() for _ in range(rank))
        if len(param.dims) != rank:
            used = "a matrix (left of @)" if rank == 2 else "a vector"
            declared = "a matrix" if len(param.dims) == 2 else "a vector"
            where = f" at line {param.first_use.line}" if param.first_use else " in its declaration"
            raise SpecError(
                f"parameter '{name}' is used as {used} here but as {declared}{where}", loc)
        if param.first_use is None:
            param.first_use = loc
        return param.dims

    def _binop(self, expr: ast.BinOp, left: int, right: int) -> int:
        result = self._broadcast(left, right)
        if result is None:
            for side in (expr.left, expr.right):
                if isinstance(side, ast.Var) and side.name in self.params:
                    param = self.params[side.name]
                    if param.decl.shape is not None:
                        where = param.decl.shape[0].loc
                        origin = f"declared at line {where.line}, column {where.column}"
                    else:
                        # an undeclared shape comes from a use: _visit has seen this one
                        assert param.first_use is not None
                        origin = (f"first used at line {param.first_use.line}, column "
                                  f"{param.first_use.column}")
                    raise SpecError(
                        f"parameter '{side.name}' is used with two shapes: size "
                        f"{self.sizes.show(param.used_dims[0])} ({origin}) and here next to size "
                        f"{self.sizes.show(right if side is expr.left else left)}",
                        expr.loc)
            raise SpecError(
                f"size mismatch in '{expr.op}': left operand has size "
                f"{self.sizes.show(left)}, right operand has size {self.sizes.show(right)}",
                expr.loc)
        return result

    def _broadcast(self, a: int, b: int) -> int | None:
        """Elementwise result size: equal sizes, or one side a per-row scalar."""
        if self.sizes.get(a) == 1:
            return b
        if self.sizes.get(b) == 1:
            return a
        return a if self.sizes.unify(a, b) else None

    def _unify_or_broadcast(self, want: int, got: int) -> bool:
        return self.sizes.get(got) == 1 or self.sizes.unify(want, got)

    def _matrix(self, expr: ast.MatMul) -> None:
        name = matrix_text(expr.matrix)
        if not isinstance(expr.matrix, str) and name not in self.params:
            self._derived_matrix(expr)
            return
        kind = self.kinds.get(name, (None, None))[0]
        if kind is None and (name, False) not in self.definition:
            raise self._undefined(name, expr.loc)
        if kind != "parameter":
            what = _article(kind) if kind else "a local value"
            raise SpecError(
                f"the left operand of '@' must be a learned matrix (a parameter), "
                f"but '{name}' is {what}", expr.loc)

    def _matmul(self, expr: ast.MatMul, operand: int) -> int:
        text = matrix_text(expr.matrix)
        if text in self.derived:
            rows, cols, terms, _ = self.derived[text]
            if not self.sizes.unify(cols, operand):
                raise SpecError(
                    f"the matrix {matrix_text(expr.matrix)} has {self.sizes.show(cols)} "
                    f"columns but multiplies an operand of size {self.sizes.show(operand)}",
                    expr.loc)
            return rows
        first = self.params[text].first_use
        rows, cols = self._param_use(text, 2, expr.loc)
        if not self.sizes.unify(cols, operand):
            raise SpecError(
                f"parameter '{text}' is used with two shapes: it has "
                f"{self.sizes.show(cols)} columns (line {first.line if first else '?'}) but here "
                f"multiplies an operand of size {self.sizes.show(operand)}", expr.loc)
        return rows

    def _derived_matrix(self, expr: ast.MatMul) -> None:
        """A matrix expression left of '@': its terms, each a parameter (or its
        transpose) or eye(N) times a number, sized together; one derived matrix per
        distinct expression (the runtime computes it once per call)."""
        matrix = expr.matrix
        assert not isinstance(matrix, str), "_matrix passes only a matrix expression"
        text = matrix_text(matrix)
        # A matrix met before is checked again against its shape: its name does not hold
        # the size of eye(N), so `(W + eye(H))` and `(W + eye(3))` share one name
        known = self.derived.get(text)
        rows, cols = (known[0], known[1]) if known else (self.sizes.new(), self.sizes.new())
        terms: list[tuple[float, str | None, bool, int | None]] = []
        for coef, item in _linear_terms(matrix):
            if isinstance(item, ast.Call):  # eye(N)
                n = self._eye_size(item)
                if not (self.sizes.unify(n, rows) and self.sizes.unify(n, cols)):
                    raise SpecError(f"eye({self.sizes.show(n)}) is square, but the matrix "
                                    f"{text} is {self.sizes.show(rows)} x "
                                    f"{self.sizes.show(cols)}", item.loc)
                terms.append((coef, None, False, None))
                continue
            name, transposed = item.name, isinstance(item, ast.Transpose)
            kind = self.kinds.get(name, (None, None))[0]
            if kind != "parameter":
                if kind is None and (name, False) not in self.definition:
                    raise self._undefined(name, item.loc)
                raise SpecError(f"a matrix expression combines parameters, but '{name}' is "
                                f"{_article(kind) if kind else 'a local value'}", item.loc)
            if self.params[name].decl.heads is not None:
                raise SpecError(f"'{name}' is block-diagonal (heads): it multiplies a vector "
                                "on its own, not inside a matrix expression", item.loc)
            r, c = self._param_use(name, 2, item.loc)
            if transposed:
                r, c = c, r
            if not (self.sizes.unify(r, rows) and self.sizes.unify(c, cols)):
                shown = f"{name}.T" if transposed else name
                raise SpecError(f"{shown} is {self.sizes.show(r)} x {self.sizes.show(c)}, but "
                                f"the other terms of {text} make it {self.sizes.show(rows)} x "
                                f"{self.sizes.show(cols)}", item.loc)
            terms.append((coef, name, transposed, None))
        if all(term[1] is None for term in terms):
            raise SpecError(f"the matrix {text} holds no parameter: a product with a constant "
                            "matrix is a scaled vector (`0.5 * h`)", expr.loc)
        if known is None:
            self.derived[text] = (rows, cols, tuple(terms), expr.loc)

    def _eye_size(self, call: ast.Call) -> int:
        arg = call.args[0] if len(call.args) == 1 else None
        if isinstance(arg, ast.Number) and math.isfinite(arg.value) \
                and arg.value == int(arg.value) and arg.value > 0:
            check_size_range(Size.of(int(arg.value)), arg.loc)
            return self.sizes.new(int(arg.value))
        if isinstance(arg, ast.Var) and not arg.primed and arg.name not in self.kinds \
                and (arg.name, False) not in self.definition:
            return self.sizes.new(arg.name)
        raise SpecError("eye takes one size: a size name or a positive integer (`eye(H)`)",
                        call.loc)

    def _function(self, expr: ast.Call):
        func = lookup(expr.func)
        if func is None:
            known = all_functions()
            close = difflib.get_close_matches(expr.func, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else (
                "known functions: " + ", ".join(sorted(known)))
            raise SpecError(f"unknown function '{expr.func}'", expr.loc, hint=hint)
        if len(expr.args) not in func.arity:
            want = " or ".join(str(n) for n in func.arity)
            if len(func.arity) > 3:  # a run of counts: concat's
                want = f"{min(func.arity)} to {max(func.arity)}"
            raise SpecError(
                f"'{func.name}' takes {want} argument{'s' if func.arity != (1,) else ''}, "
                f"got {len(expr.args)}", expr.loc)
        return func

    def _call(self, expr: ast.Call, sizes: list[int]) -> int:
        func = self._function(expr)
        for index, what in func.number_args:
            if index < len(expr.args) and self._number(expr.args[index]) is None:
                raise SpecError(f"the {what} of {func.name} must be a number",
                                expr.args[index].loc)
        if func.check_numbers is not None:
            numbers = [self._number(a) for a in expr.args]
            problem = func.check_numbers(numbers)
            if problem:
                raise SpecError(f"{func.name}: {problem}", expr.args[-1].loc)
        numbered = {index for index, _ in func.number_args}
        if func.result == "reduce":
            return self.sizes.new(1)
        if func.result == "concat":
            return self._concat(expr, sizes)
        result = sizes[0]
        for index, (arg, size) in enumerate(zip(expr.args[1:], sizes[1:]), start=1):
            if index in numbered:  # a constant (layernorm's eps), not an operand
                continue
            merged = self._broadcast(result, size)
            if merged is None:
                raise SpecError(
                    f"size mismatch in '{func.name}': arguments have sizes "
                    f"{self.sizes.show(result)} and {self.sizes.show(size)}", arg.loc)
            result = merged
        return result

    # -- result -------------------------------------------------------------------------

    def _uninferred(self, params: list[_Param]) -> SpecError:
        """One error for every parameter whose size no use decides, at the first of them,
        with declarations that, written together, compile."""
        names = ", ".join(f"'{p.decl.name}'" for p in params)
        several = len(params) > 1
        declarations = ", ".join(
            f"`param {p.decl.name}: {_suggested_shape(self.sizes, p.used_dims)}`" for p in params)
        return SpecError(
            f"cannot infer the size{'s' if several else ''} of parameter{'s' if several else ''} "
            f"{names} from {'their' if several else 'its'} use", params[0].decl.loc,
            hint=f"give {'them' if several else 'it'} explicitly, e.g. {declarations}")

    def _result(self) -> CheckedCell:
        params: dict[str, ParamInfo] = {}
        for name, param in self.params.items():
            if param.first_use is None:
                raise SpecError(f"parameter '{name}' is declared but never used", param.decl.loc)
        unknown = [p for p in self.params.values()
                   if any(self.sizes.get(d) is None for d in p.used_dims)]
        if unknown:
            raise self._uninferred(unknown)
        for name, param in self.params.items():
            shape = tuple(self.sizes.known(d) for d in param.used_dims)
            if param.decl.init == "eye" and len(shape) != 2:
                raise SpecError(f"parameter '{name}' starts at the identity (`= eye`), but it "
                                "is a vector: eye initializes matrices", param.decl.loc)
            heads = param.decl.heads
            if heads is not None and len(shape) != 2:
                raise SpecError(f"parameter '{name}' has heads, but it is a vector: heads "
                                "make a matrix block-diagonal", heads.loc)
            if heads is not None and param.decl.init is not None:
                raise SpecError(f"parameter '{name}' has heads: it starts at PyTorch's "
                                "uniform initialization, not a given value", param.decl.loc)
            params[name] = ParamInfo(name, shape, param.decl.init, param.decl.loc,
                                     heads=None if heads is None else heads.value)
        for text, (rows, cols, terms, loc) in self.derived.items():
            n_rows, n_cols = self.sizes.get(rows), self.sizes.get(cols)
            if n_rows is None or n_cols is None:
                raise SpecError(f"cannot infer the shape of the matrix {text}", loc,
                                hint="declare the shape of a parameter in it "
                                     "(`param W: [H, H]`)")
            params[text] = ParamInfo(text, (n_rows, n_cols), None, loc, derived=terms)
        # inputs and states are declared with their sizes: those classes are bound
        states = {n: self.sizes.known(v) for n, v in self.state_size.items()}
        return CheckedCell(
            decl=self.cell,
            input=(self.cell.input.name, self.sizes.known(self.input_size)),
            output=self.cell.output.name,
            states=states,
            params=params,
            extra_inputs={n: self.sizes.known(v) for n, v in self.extra_input_size.items()},
        )


def _linear_terms(expr: ast.Expr) -> list[tuple[float, ast.Var | ast.Transpose | ast.Call]]:
    """A matrix expression as (coefficient, parameter / transpose / eye call) terms; it
    may combine them with + and -, and scale them by numbers (`0.5 * W`, `W / 2`)."""
    out: list[tuple[float, ast.Var | ast.Transpose | ast.Call]] = []
    numbers = ast.constant_values(expr)
    stack: list[tuple[float, ast.Expr]] = [(1.0, expr)]
    while stack:
        coef, e = stack.pop()
        if isinstance(e, (ast.Transpose, ast.Var)) or (isinstance(e, ast.Call)
                                                      and e.func == "eye"):
            if isinstance(e, ast.Var) and e.primed:
                raise SpecError(f"{e.name}' is a new state value, not a parameter: a matrix "
                                "left of '@' combines parameters", e.loc)
            out.append((coef, e))
            continue
        if isinstance(e, ast.Neg):
            stack.append((-coef, e.operand))
            continue
        if isinstance(e, ast.BinOp) and e.op in "+-":
            stack.append((coef if e.op == "+" else -coef, e.right))
            stack.append((coef, e.left))
            continue
        if isinstance(e, ast.BinOp) and e.op in "*/":
            left, right = numbers[id(e.left)], numbers[id(e.right)]
            if e.op == "*" and left is not None:
                stack.append((coef * left, e.right))
                continue
            if right is not None and right != 0:
                stack.append((coef * right if e.op == "*" else coef / right, e.left))
                continue
        raise SpecError("a matrix left of '@' combines parameters (`W`, `W.T`) and `eye(N)` "
                        "with +, - and numbers (`(W - W.T - 0.1 * eye(H)) @ h`)",
                        getattr(e, "loc", None))
    if not out:
        raise SpecError("a matrix left of '@' combines parameters (`W`, `W.T`) and `eye(N)` "
                        "with +, - and numbers", getattr(expr, "loc", None))
    return out


def matrix_text(matrix) -> str:
    """A matrix left of '@' as one canonical name: `W`, `W.T`, `(W - W.T - 0.1*eye)`."""
    if isinstance(matrix, str):
        return matrix
    parts = []
    for coef, item in _linear_terms(matrix):
        name = ("eye" if isinstance(item, ast.Call) else
                f"{item.name}.T" if isinstance(item, ast.Transpose) else item.name)
        sign = "-" if coef < 0 else "+"
        size = abs(coef)
        body = name if size == 1 else f"{_exact(size)}*{name}"
        parts.append((sign, body))
    text = ("-" if parts[0][0] == "-" else "") + parts[0][1]
    for sign, body in parts[1:]:
        text += f" {sign} {body}"
    return text if len(parts) == 1 else f"({text})"


def _exact(value: float) -> str:
    """A coefficient as text that reads back as the same float: the text names the
    derived matrix, so two matrices whose coefficients differ must get different names."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _suggested_shape(sizes: _SizeVars, dims: tuple[int, ...]) -> str:
    """A declaration that fixes every unknown size as H: no use constrains those sizes (or
    they would be known), so H, always bound, fits them all, and each known size is kept;
    a matrix is written `[rows, cols]`."""
    parts = [str(sizes.get(d) if sizes.get(d) is not None else "H") for d in dims]
    return parts[0] if len(parts) == 1 else f"[{', '.join(parts)}]"


def _article(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def check(cell: ast.CellDecl) -> CheckedCell:
    return _Checker(cell).run()
