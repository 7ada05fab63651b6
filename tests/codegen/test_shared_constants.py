"""llvm_utils.constant: one ir.Constant per type and value, shared by every instruction that uses it
(llvmlite formats a constant once per object). Sharing must not change a module's text."""
from __future__ import annotations

from llvmlite import ir

from convc.codegen import llvm_utils, vecmath
from convc.codegen.kernels import blas
from convc.codegen.llvm_utils import F32, I32, I64, const_like, constant, constant_table
from convc.codegen.module import emit_module
from tests.codegen.test_split import planned, residual_net


def test_a_constant_is_one_object_per_type_and_value():
    vec = ir.VectorType(F32, 8)
    x = ir.Argument(ir.Function(ir.Module(), ir.FunctionType(F32, [vec]), "f"), vec)
    assert const_like(x, 0.5) is const_like(x, 0.5) is constant(ir.VectorType(F32, 8), (0.5,) * 8)
    assert const_like(x, 0.5) is not const_like(x, 0.25)
    assert str(const_like(x, 0.5)) == str(ir.Constant(vec, [0.5] * 8))
    assert constant(I32, 0) is not constant(ir.IntType(64), 0)
    assert constant(vec, ir.Undefined) is constant(vec, ir.Undefined)
    assert str(constant(vec, ir.Undefined)) == str(ir.Constant(vec, ir.Undefined))


def test_values_that_compare_equal_but_print_differently_are_different_constants():
    vec = ir.VectorType(F32, 8)
    x = ir.Argument(ir.Function(ir.Module(), ir.FunctionType(F32, [vec]), "g"), vec)
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        a, b = const_like(x, first), const_like(x, second)
        assert a is not b
        assert str(a) == str(ir.Constant(vec, [first] * 8)) and str(b) == str(ir.Constant(vec, [second] * 8))
    assert str(constant(F32, -0.0)) == str(ir.Constant(F32, -0.0)) != str(constant(F32, 0.0))
    assert constant(I32, 1) is not constant(I32, True)


def test_shared_constants_print_the_module_fresh_ones_do(monkeypatch):
    # a SiLU conv (sigmoid polynomial), a HardSwish depthwise conv, GEMM tiles: the module's text with
    # every constant a new object, as llvmlite builds them, against the shared ones
    model = planned(residual_net(1))
    shared = str(emit_module(model, threads=2).ir_module)
    def fresh_constant(ty, value):
        return ir.Constant(ty, list(value) if isinstance(value, tuple) else value)
    monkeypatch.setattr(llvm_utils, "constant", fresh_constant)
    monkeypatch.setattr(blas, "constant", llvm_utils.constant)
    monkeypatch.setattr(vecmath, "constant", llvm_utils.constant)
    fresh = str(emit_module(planned(residual_net(1)), threads=2).ir_module)
    assert "llvm.fmuladd" in shared and shared == fresh


def test_integer_tables_print_as_llvmlite_prints_them():
    for ty, values in ((I64, [0, 690, -3, 2 ** 40]), (I32, list(range(0, 3000, 7))), (I64, [])):
        module = ir.Module()
        b = ir.IRBuilder(ir.Function(module, ir.FunctionType(ir.VoidType(), []), "f").append_basic_block())
        table = constant_table(b, values, name="taps", ty=ty)
        expected = ir.Constant(ir.ArrayType(ty, len(values)), [int(v) for v in values])
        assert str(table.initializer) == str(expected) and table.initializer.get_reference() == expected.get_reference()
        assert f"internal constant [{len(values)} x {ty}] {expected.get_reference()}" in str(module)
