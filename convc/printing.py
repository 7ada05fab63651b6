"""Readable text dump and Graphviz DOT export of a Graph."""
from __future__ import annotations

import dataclasses


def _attrs(attrs) -> str:
    if not dataclasses.is_dataclass(attrs):
        return ""
    parts = [f"{f.name}={getattr(attrs, f.name)!r}" for f in dataclasses.fields(attrs)]
    return "{" + ", ".join(parts) + "}" if parts else ""


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
        lines.append(f"  {outs} = {op.kind.value}{_attrs(op.attrs)}({ins})  # {op.name}")
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
