"""Elementwise math as LLVM IR.

float32 gets its own exp and tanh (Cephes' single-precision polynomials, about 1e-7
relative error) written in plain arithmetic so the loop vectorizer can vectorize them; a
libm call per element would not vectorize. float64 calls libm, because float64 is for
checking gradients, where accuracy matters more than speed.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from lstmc_runtime.dtypes import DType

from .irutil import float_type

FAST = ("contract",)  # let LLVM fuse multiply-adds; never reassociate pointwise math


class MathLib:
    def __init__(self, module: ir.Module, dtype: DType):
        self.module, self.ftype = module, float_type(dtype)
        # single precision gets the vectorizable polynomials below; wider types call libm
        self.is_f32 = dtype.compute == "float32"
        self.bits = 8 * np.dtype(dtype.compute).itemsize  # of intrinsic names: llvm.exp.f32
        self.libm_suffix = dtype.literal_suffix  # C's: expf for float, exp for double
        self._functions: dict[str, ir.Function] = {}

    def const(self, value: float) -> ir.Constant:
        return ir.Constant(self.ftype, value)

    def intrinsic(self, name: str) -> ir.Function:
        full = f"llvm.{name}.f{self.bits}"
        if full not in self.module.globals:
            arity = 2 if name in ("minnum", "maxnum", "pow", "copysign") else 1
            ir.Function(self.module, ir.FunctionType(self.ftype, [self.ftype] * arity), full)
        return self.module.globals[full]

    def libm(self, name: str) -> ir.Function:
        full = name + self.libm_suffix
        if full not in self.module.globals:
            ir.Function(self.module, ir.FunctionType(self.ftype, [self.ftype]), full)
        return self.module.globals[full]

    def _define(self, name: str, emit) -> ir.Function:
        if name not in self._functions:
            fn = ir.Function(self.module, ir.FunctionType(self.ftype, [self.ftype]), name)
            fn.linkage = "internal"
            fn.attributes.add("alwaysinline")
            fn.attributes.add("nounwind")
            b = ir.IRBuilder(fn.append_basic_block("entry"))
            b.ret(emit(b, fn.args[0]))
            self._functions[name] = fn
        return self._functions[name]

    # -- float32 approximations ---------------------------------------------------------

    def _poly(self, b: ir.IRBuilder, x, coefficients) -> ir.Value:
        acc = self.const(coefficients[0])
        for c in coefficients[1:]:
            acc = b.fadd(b.fmul(acc, x, flags=FAST), self.const(c), flags=FAST)
        return acc

    def _exp_f32(self, b: ir.IRBuilder, x) -> ir.Value:
        # Cephes expf: exp(x) = 2^n * exp(r), r = x - n ln2, |r| <= ln2/2. Saturates as
        # IEEE (and torch) do: +inf above 88.72, denormals below -87.34, 0 below -103.97.
        # x is first clamped to [-104, 89], where those results are already reached;
        # 2^n is applied as 2^(n/2) * 2^(n - n/2) so that neither factor over- or
        # underflows and only the final product rounds. Comparisons keep NaN as NaN.
        x = b.select(b.fcmp_ordered(">", x, self.const(89.0)), self.const(89.0), x)
        x = b.select(b.fcmp_ordered("<", x, self.const(-104.0)), self.const(-104.0), x)
        fx = b.call(self.intrinsic("floor"),
                    [b.fadd(b.fmul(x, self.const(1.44269504088896341)), self.const(0.5))])
        r = b.fsub(x, b.fmul(fx, self.const(0.693359375)))
        r = b.fsub(r, b.fmul(fx, self.const(-2.12194440e-4)))
        z = b.fmul(r, r)
        p = self._poly(b, r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                              4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1])
        y = b.fadd(b.fadd(b.fmul(p, z, flags=FAST), r), self.const(1.0))
        # A NaN x must not reach fptosi (poison): its y is NaN already, any n will do.
        fx = b.select(b.fcmp_unordered("uno", fx, fx), self.const(0.0), fx)
        i32 = ir.IntType(32)
        n = b.fptosi(fx, i32)
        half = b.ashr(n, ir.Constant(i32, 1))

        def power_of_two(k):
            bits = b.shl(b.add(k, ir.Constant(i32, 127)), ir.Constant(i32, 23))
            return b.bitcast(bits, self.ftype)

        return b.fmul(b.fmul(y, power_of_two(half)), power_of_two(b.sub(n, half)))

    def _tanh_f32(self, b: ir.IRBuilder, x) -> ir.Value:
        # Cephes tanhf: an odd polynomial below |x| = 0.625, 1 - 2/(exp(2|x|) + 1) above.
        ax = b.call(self.intrinsic("fabs"), [x])
        z = b.fmul(x, x)
        p = self._poly(b, z, [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                              1.33314422036e-1, -3.33332819422e-1])
        small = b.fadd(b.fmul(b.fmul(p, z), x, flags=FAST), x)
        e = self.exp(b, b.fadd(ax, ax))
        large = b.fsub(self.const(1.0), b.fdiv(self.const(2.0), b.fadd(e, self.const(1.0))))
        large = b.call(self._copysign(), [large, x])
        return b.select(b.fcmp_ordered("<", ax, self.const(0.625)), small, large)

    def _copysign(self) -> ir.Function:
        name = f"llvm.copysign.f{self.bits}"
        if name not in self.module.globals:
            ir.Function(self.module, ir.FunctionType(self.ftype, [self.ftype] * 2), name)
        return self.module.globals[name]

    # -- the functions the IR's ops use -------------------------------------------------

    def exp(self, b: ir.IRBuilder, x) -> ir.Value:
        if self.is_f32:
            return b.call(self._define("lstmc_exp_f32", self._exp_f32), [x])
        return b.call(self.libm("exp"), [x])

    def tanh(self, b: ir.IRBuilder, x) -> ir.Value:
        if self.is_f32:
            return b.call(self._define("lstmc_tanh_f32", self._tanh_f32), [x])
        return b.call(self.libm("tanh"), [x])

    def sigmoid(self, b: ir.IRBuilder, x) -> ir.Value:
        one = self.const(1.0)
        return b.fdiv(one, b.fadd(one, self.exp(b, b.fneg(x))))

    def log(self, b: ir.IRBuilder, x) -> ir.Value:
        return b.call(self.libm("log"), [x])

    def sqrt(self, b: ir.IRBuilder, x) -> ir.Value:
        return b.call(self.intrinsic("sqrt"), [x])

    def fabs(self, b: ir.IRBuilder, x) -> ir.Value:
        return b.call(self.intrinsic("fabs"), [x])

    # libm (float32 included: these serve the less common functions, where accuracy and
    # torch's edge values matter more than vectorizing)

    def log1p(self, b: ir.IRBuilder, x) -> ir.Value:
        return b.call(self.libm("log1p"), [x])

    def expm1(self, b: ir.IRBuilder, x) -> ir.Value:
        return b.call(self.libm("expm1"), [x])

    def erf(self, b: ir.IRBuilder, x) -> ir.Value:
        return b.call(self.libm("erf"), [x])

    def sin(self, b: ir.IRBuilder, x) -> ir.Value:
        return b.call(self.libm("sin"), [x])

    def cos(self, b: ir.IRBuilder, x) -> ir.Value:
        return b.call(self.libm("cos"), [x])

    def floor(self, b: ir.IRBuilder, x) -> ir.Value:
        return b.call(self.intrinsic("floor"), [x])

    def pow(self, b: ir.IRBuilder, x, y) -> ir.Value:
        return b.call(self.intrinsic("pow"), [x, y])

    def copysign(self, b: ir.IRBuilder, magnitude, sign) -> ir.Value:
        return b.call(self._copysign(), [magnitude, sign])
