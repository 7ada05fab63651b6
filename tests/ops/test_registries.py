"""Every OpKind has an entry in every registry, or a named reason why not.

An op is declared in convc/ops/<family>.py and registered against its kind everywhere else: ONNX
import (frontend/onnx, by op type), numpy reference (OpDef), LLVM emitter (codegen/module.EMITTERS),
ONNX export (frontend/onnx_export.EXPORTERS), gradient rule (passes/autodiff.GRADIENTS) and MAC/FLOP
rule (OpDef.macs/flops). A kind missing from one of them fails here, by name, rather than when a
model first uses it. The ops passes create (``OpGroup.INTERNAL``: Im2Col and the training ops) are
exempt, as a group, from what no ONNX model or training graph would ask of them.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

import onnx
import pytest
from helpers import without_flop_rule

import convc.codegen.kernels  # noqa: F401  (registers the emitters)
from convc.codegen.kernels.activations import DERIVATIVE, UNARY
from convc.codegen.module import EMITTERS
from convc.frontend.onnx import CONVERTERS
from convc.frontend.onnx.registry import FIRST_OPSET
from convc.frontend.onnx_export import DEFAULT_OPSET, EXPORTERS
from convc.ops import NoAttrs, OpGroup, OpKind, fusible_activations, op_def, registered_kinds
from convc.ops.attrs import onnx_fields, onnx_spelling
from convc.passes.autodiff import GRADIENTS, NOT_DIFFERENTIABLE

# ONNX op types that are not the kind's name
ONNX_OP_TYPE = {OpKind.STRIDED_SLICE: "Slice"}

NOT_IMPORTED: dict[OpKind, str] = {}


def imported(kind: OpKind) -> bool:
    op_type = ONNX_OP_TYPE.get(kind, kind.value)
    # any opset ONNX knows: LayerNormalization, say, exists from opset 17 on
    return any(CONVERTERS.lookup(op_type, opset) is not None
               for opset in range(FIRST_OPSET, onnx.defs.onnx_opset_version() + 1))


def has_reference(kind: OpKind) -> bool:
    d = op_def(kind) if kind in registered_kinds() else None
    return d is not None and callable(d.reference) and callable(d.infer) and dataclasses.is_dataclass(d.attrs)


def has_cost_rule(kind: OpKind) -> bool:
    d = op_def(kind)
    return d.flops is not None and (d.macs is not None or kind not in OpGroup.MATMUL_LIKE | {OpKind.CONV_TRANSPOSE})


# registry -> (does the kind have an entry, the kinds exempt from it with the reason)
REGISTRIES: dict[str, tuple[Callable[[OpKind], bool], dict[OpKind, str]]] = {
    "reference (OpDef)": (has_reference, {}),
    "ONNX import": (imported, {**dict.fromkeys(OpGroup.INTERNAL, "OpGroup.INTERNAL"), **NOT_IMPORTED}),
    "emitter": (lambda k: k in EMITTERS, {}),
    "ONNX export": (lambda k: k in EXPORTERS, dict.fromkeys(OpGroup.INTERNAL, "OpGroup.INTERNAL")),
    # the reasons live beside the rules, in passes/autodiff (one table, which the training ops are in too)
    "gradient": (lambda k: k in GRADIENTS, NOT_DIFFERENTIABLE),
    "MAC/FLOP rule": (has_cost_rule, dict.fromkeys(OpGroup.TRAINING, "OpGroup.TRAINING")),
}


def gaps(registry: str) -> list[str]:
    """The kinds with neither an entry in ``registry`` nor a reason for having none."""
    has, exempt = REGISTRIES[registry]
    return [k.name for k in OpKind if k not in exempt and not (k in registered_kinds() and has(k))]


@pytest.mark.parametrize("registry", list(REGISTRIES))
def test_every_kind_is_registered(registry):
    assert gaps(registry) == [], f"no {registry} entry and no reason given for these kinds"


@pytest.mark.parametrize("registry", ["ONNX import", "ONNX export", "gradient"])
def test_reasons_are_not_stale(registry):
    """An exemption for a kind that has an entry after all is removed, so the lists stay true."""
    has, exempt = REGISTRIES[registry]
    named = NOT_IMPORTED if registry == "ONNX import" else NOT_DIFFERENTIABLE if registry == "gradient" else {}
    assert [k.name for k in named if has(k)] == []


@pytest.mark.parametrize("registry,kind,remove", [
    ("emitter", OpKind.SOFTSIGN, lambda mp, k: mp.delitem(EMITTERS, k)),
    ("ONNX export", OpKind.ELU, lambda mp, k: mp.delitem(EXPORTERS, k)),
    ("gradient", OpKind.TANH, lambda mp, k: mp.delitem(GRADIENTS, k)),
    ("MAC/FLOP rule", OpKind.LRN, without_flop_rule),
    ("ONNX import", OpKind.SOFTSIGN, lambda mp, k: mp.setitem(CONVERTERS._entries, k.value, [])),
])
def test_a_missing_entry_is_named(monkeypatch, registry, kind, remove):
    remove(monkeypatch, kind)
    assert gaps(registry) == [kind.name]


def test_fusible_activations_have_unary_kernels():
    """passes/fusion.py fuses what OpDef.fusible says; codegen applies it with the kind's UNARY kernel."""
    assert fusible_activations() and fusible_activations() <= set(UNARY)
    assert fusible_activations() <= OpGroup.UNARY


def test_declared_derivatives_have_kernels():
    """A unary op trains through UnaryGrad when its OpDef declares a derivative; UnaryGrad's kernel needs
    the derivative's kernel too (and no kernel may lack its declaration)."""
    declared = {k for k in registered_kinds() if op_def(k).derivative is not None}
    assert declared == set(DERIVATIVE) and declared <= OpGroup.UNARY


def test_unary_ops_other_than_views_have_unary_kernels():
    assert OpGroup.UNARY - OpGroup.VIEW == set(UNARY)


@pytest.mark.parametrize("kind", sorted((k for k in registered_kinds() if onnx_fields(op_def(k).attrs)),
                                        key=lambda k: k.value), ids=lambda k: k.value)
def test_declared_attributes_spell_their_defaults(kind):
    """Every field declared with onnx_attr is written at the default opset, and its default reads back."""
    cls = op_def(kind).attrs
    fields = onnx_fields(cls)
    # required fields that are not ONNX attributes (Resize's resolved shape and scales) get any value
    hints = typing.get_type_hints(cls)
    given = {f.name: (1, 1) if typing.get_origin(hints[f.name]) is tuple else hints[f.name](1)
             for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
    attrs = cls(**given)
    attributes, inputs = onnx_spelling(attrs, DEFAULT_OPSET)
    for f in fields:
        written = inputs[f.input] if f.is_input(DEFAULT_OPSET) else attributes[f.onnx]
        if not f.required:
            assert f.decode(written) == f.default, f.name


def test_attribute_free_ops_spell_nothing():
    assert onnx_spelling(NoAttrs(), DEFAULT_OPSET) == ({}, {})
