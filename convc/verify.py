"""Graph invariants, checked between passes in the tests."""
from __future__ import annotations

import networkx as nx

from convc.errors import GraphError
from convc.ops import op_def


def verify(g) -> None:
    from convc.ir import TensorKind
    problems: list[str] = []
    if not nx.is_directed_acyclic_graph(g.nx):
        cycle = nx.find_cycle(g.nx)
        problems.append(f"graph has a cycle through {[a for a, _ in cycle]}")
    for n, d in g.nx.nodes(data=True):
        if "tensor" in d:
            t = d["tensor"]
            preds = list(g.nx.predecessors(n))
            if len(preds) > 1:
                problems.append(f"tensor {n!r} is produced by {len(preds)} ops: {preds}")
            if t.kind is TensorKind.ACTIVATION and not preds:
                problems.append(f"activation {n!r} has no producer")
            if t.kind in (TensorKind.INPUT, TensorKind.CONSTANT) and preds:
                problems.append(f"{t.kind.value} {n!r} is also produced by {preds}")
            if t.kind is TensorKind.CONSTANT:
                if t.data is None or tuple(t.data.shape) != t.shape or t.data.dtype != t.dtype:
                    problems.append(f"constant {n!r} data does not match its declared shape {t.shape} {t.dtype}")
            if any("tensor" in g.nx.nodes[s] for s in list(g.nx.successors(n)) + preds):
                problems.append(f"tensor {n!r} is connected directly to another tensor")
        elif "op" in d:
            op = d["op"]
            in_edges = sorted((i, a) for a in g.nx.predecessors(n) for i in g.nx.edges[a, n]["index"])
            out_edges = sorted((i, b) for b in g.nx.successors(n) for i in g.nx.edges[n, b]["index"])
            if tuple(t for _, t in in_edges) != op.inputs or [i for i, _ in in_edges] != list(range(len(op.inputs))):
                problems.append(f"node {n!r} ({op.kind.value}) input edges {in_edges} disagree with {op.inputs}")
                continue
            if tuple(t for _, t in out_edges) != op.outputs:
                problems.append(f"node {n!r} ({op.kind.value}) output edges {out_edges} disagree with {op.outputs}")
                continue
            try:
                types = op_def(op.kind).infer(op.attrs, [g.tensor(t).type for t in op.inputs])
            except GraphError as e:
                problems.append(f"node {n!r} ({op.kind.value}): {e}")
                continue
            for t, ty in zip(op.outputs, types):
                have = g.tensor(t)
                if have.shape != ty.shape or have.dtype != ty.dtype:
                    problems.append(f"node {n!r} ({op.kind.value}) output {t!r} is declared {have.shape} {have.dtype}"
                                    f" but inference gives {ty.shape} {ty.dtype}")
        else:
            problems.append(f"node {n!r} is neither an op nor a tensor")
    for name in g.inputs + g.outputs:
        if not g.has_tensor(name):
            problems.append(f"graph boundary tensor {name!r} does not exist")
    if problems:
        raise GraphError(f"graph {g.name!r} is invalid:\n  " + "\n  ".join(problems))
