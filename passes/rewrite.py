"""Small graph-surgery helpers shared by the passes, and the records passes leave for the profile.

Passes record what they did in ``graph.metadata`` (copy-on-write, since ``Graph.copy`` copies the
metadata dict shallowly):

- ``"absorbed"``: op name -> names of the imported ops folded or fused into it, in order.
- ``"origin"``: name of an op a pass created -> name of the imported op it stands for
  (an ``Im2Col`` for its conv, the Mul and Add a non-foldable BatchNormalization became).
- ``"pass_notes"``: (op name, reason) pairs saying why a rewrite did not apply.
"""
from __future__ import annotations

from convc.errors import GraphError
from convc.ir import Graph, Op, TensorKind


def single_consumer(g: Graph, tensor: str) -> Op | None:
    """The only op reading ``tensor`` (once), or None when it has several readers or is a graph output."""
    if tensor in g.outputs:
        return None
    readers = g.consumers(tensor)
    if len(readers) != 1 or readers[0].inputs.count(tensor) != 1:
        return None
    return readers[0]


def is_constant(g: Graph, name: str) -> bool:
    return g.tensor(name).kind is TensorKind.CONSTANT


def take_output(g: Graph, op: Op, target: str) -> None:
    """Make ``op`` write the existing tensor ``target`` (which nothing produces) instead of its output."""
    (old,) = op.outputs
    if g.consumers(old) or old in g.outputs:
        raise GraphError(f"node {op.name!r}: cannot redirect output {old!r}, which is still read")
    if list(g.nx.predecessors(target)):
        raise GraphError(f"node {op.name!r}: tensor {target!r} already has a producer")
    if g.tensor(old).type != g.tensor(target).type:
        raise GraphError(f"node {op.name!r}: output {old!r} {g.tensor(old).type} differs from {target!r} "
                         f"{g.tensor(target).type}")
    g.nx.remove_node(old)
    g.nx.add_edge(op.name, target, index=[0])
    op.outputs = (target,)


def absorb(g: Graph, keep: Op, gone: Op, attrs, inputs: tuple[str, ...] | None = None) -> None:
    """``keep`` takes over ``gone``, which reads ``keep``'s only output: ``gone`` is removed, ``keep``
    gets ``attrs`` (and ``inputs``) and writes ``gone``'s output tensor, whose name is preserved."""
    target = gone.outputs[0]
    g.remove_op(gone, remove_outputs=False)
    keep.attrs = attrs
    if inputs is not None:
        g.set_inputs(keep, inputs)
    take_output(g, keep, target)
    record_absorbed(g, keep.name, gone.name)


def record_absorbed(g: Graph, keep: str, gone: str) -> None:
    absorbed = dict(g.metadata.get("absorbed", {}))
    absorbed[keep] = tuple(absorbed.get(keep, ())) + (gone,) + tuple(absorbed.pop(gone, ()))
    g.metadata["absorbed"] = absorbed


def record_origin(g: Graph, new_op: str, original: str) -> None:
    origin = dict(g.metadata.get("origin", {}))
    origin[new_op] = origin.get(original, original)
    g.metadata["origin"] = origin


def note(g: Graph, op: str, reason: str) -> None:
    """Say why a rewrite did not apply to ``op`` (read by ``convc profile``)."""
    notes = list(g.metadata.get("pass_notes", []))
    notes.append((op, reason))
    g.metadata["pass_notes"] = notes


def add_const(g: Graph, base: str, data) -> str:
    return g.add_constant(g.fresh_name(base), data).name


def move_before(g: Graph, moves: dict[str, list[str]], after: dict[str, list[str]] | None = None) -> None:
    """Re-insert nodes so that each list in ``moves`` comes just before its key in the node order
    (and each list in ``after`` just after its key), and every constant comes first.

    ``Graph.ops()`` breaks topological ties by node order (tensors included), so without this an op
    a pass creates, or an op reading a constant a pass created, would run after every other ready
    op instead of where the op it replaces ran."""
    after = after or {}
    moved = {n for names in (*moves.values(), *after.values()) for n in names}
    order = [t.name for t in g.constants()]
    moved.update(order)
    for n in g.nx.nodes:
        if n in moved:
            continue
        order.extend(moves.get(n, ()))
        order.append(n)
        order.extend(after.get(n, ()))
    rebuilt = type(g.nx)()
    rebuilt.add_nodes_from((n, g.nx.nodes[n]) for n in order)
    rebuilt.add_edges_from(g.nx.edges(data=True))
    g.nx = rebuilt
