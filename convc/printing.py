"""Readable text dump and Graphviz DOT export of a Graph."""
from __future__ import annotations

import dataclasses
import enum
import textwrap

MAX_ATTRS_CHARS = 120  # an op's attributes on one line of the dump, at most
MAX_LINE_CHARS = 100   # a longer op line has its attributes on indented lines below it
MAX_SEQUENCE_ITEMS = 8


def _value(v) -> str:
    """An attribute value, short: enums by value, nested attribute records as their own, long
    sequences cut (``(1,2,3,4,5,6,7,8,… 64 values)``)."""
    if isinstance(v, enum.Enum):
        return str(v.value)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return type(v).__name__ + _attrs(v)
    if isinstance(v, (tuple, list)):
        items = [_value(x) for x in v[:MAX_SEQUENCE_ITEMS]]
        if len(v) > MAX_SEQUENCE_ITEMS:
            items.append(f"… {len(v)} values")
        return "(" + ",".join(items) + ("," if len(v) == 1 else "") + ")"
    text = repr(v)
    return text if len(text) <= 40 else text[:39] + "…"


def _is_default(f: dataclasses.Field, value) -> bool:
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    else:
        return False
    try:
        return bool(value == default)
    except (TypeError, ValueError):  # numpy arrays and other values without a plain ==
        return False


def _says_nothing(value) -> bool:
    """A record without fields (``NoAttrs``): nothing to show."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type) and not dataclasses.fields(value)


def _attrs(attrs, limit: int | None = MAX_ATTRS_CHARS) -> str:
    """``{name=value, ...}`` of the fields that differ from their defaults, at most ``limit`` long."""
    if not dataclasses.is_dataclass(attrs):
        return ""
    parts = [f"{f.name}={_value(getattr(attrs, f.name))}" for f in dataclasses.fields(attrs)
             if not _is_default(f, getattr(attrs, f.name)) and not _says_nothing(getattr(attrs, f.name))]
    text = ", ".join(parts)
    if limit is not None and len(text) > limit:
        text = text[:limit - 1] + "…"
    return "{" + text + "}" if parts else ""


def _type(t) -> str:
    return f"{t.dtype}[{','.join(map(str, t.shape))}]"


def dump(g) -> str:
    from convc.ir import TensorKind
    lines = [f"graph {g.name} ("]
    lines += [f"    %{n}: {_type(g.tensor(n))}" for n in g.inputs]
    lines.append(") {")
    for t in g.tensors():
        if t.kind in (TensorKind.CONSTANT, TensorKind.PARAMETER, TensorKind.STATE):
            lines.append(f"  {t.kind.value} %{t.name}: {_type(t)}")
    for op in g.ops():
        outs = ", ".join(f"%{o}: {_type(g.tensor(o))}" for o in op.outputs)
        ins = ", ".join(f"%{i}" for i in op.inputs)
        attrs = _attrs(op.attrs)
        line = f"  {outs} = {op.kind.value}{attrs}({ins})  # {op.name}"
        if len(line) <= MAX_LINE_CHARS:
            lines.append(line)
            continue
        # too long for a terminal: the attributes (all of them, not cut) on indented lines below
        lines.append(f"  {outs} = {op.kind.value}({ins})  # {op.name}")
        lines += textwrap.wrap(_attrs(op.attrs, None), MAX_LINE_CHARS, initial_indent="      ",
                               subsequent_indent="       ", break_long_words=False, break_on_hyphens=False)
    lines.append("  return " + ", ".join(f"%{o}" for o in g.outputs))
    lines.append("}")
    return "\n".join(lines)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(g) -> str:
    from convc.ir import TensorKind
    lines = [f"digraph {_q(g.name)} {{", "  rankdir=TB;", "  node [fontname=Helvetica, fontsize=10];"]
    for n, d in g.nx.nodes(data=True):
        if "op" in d:
            lines.append(f"  {_q(n)} [shape=box, style=filled, fillcolor=lightblue, "
                         f"label={_q(d['op'].kind.value + chr(10) + n)}];")
        else:
            t = d["tensor"]
            color = {TensorKind.INPUT: "palegreen", TensorKind.CONSTANT: "lightgrey"}.get(t.kind, "white")
            if n in g.outputs:
                color = "orange"
            lines.append(f"  {_q(n)} [shape=ellipse, style=filled, fillcolor={color}, label={_q(n + chr(10) + _type(t))}];")
    for a, b in g.nx.edges:
        lines.append(f"  {_q(a)} -> {_q(b)};")
    lines.append("}")
    return "\n".join(lines)
