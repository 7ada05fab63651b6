"""Shared checks for pass tests: same numbers before and after, the replaced op gone, verifier on."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from helpers import assert_close

from convc.compiler import compile_graph
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from convc.reference import run_reference

RTOL = 1e-4


def conv_attrs(k: int | tuple[int, ...] = 3, stride: int = 1, pad: int = 0, group: int = 1, dilation: int = 1,
               rank: int = 2, pads: tuple[int, ...] | None = None) -> ConvAttrs:
    ks = (k,) * rank if isinstance(k, int) else tuple(k)
    return ConvAttrs(ks, (stride,) * rank, pads if pads is not None else (pad,) * (2 * rank), (dilation,) * rank,
                     group)


def random_feeds(g: Graph, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {n: rng.standard_normal(g.tensor(n).shape).astype(g.tensor(n).dtype) for n in g.inputs}


def kinds(g: Graph) -> list[OpKind]:
    return [op.kind for op in g.ops()]


def check_pass(g: Graph, run: Callable[[Graph], Graph], rng: np.random.Generator,
               gone: Iterable[OpKind] = (), compile_too: bool = True, rtol: float = RTOL) -> Graph:
    """Run the pass on a copy of ``g`` with the verifier before and after; the rewritten graph must
    compute ``g``'s numbers (numpy reference, and compiled when ``compile_too``), and no op of a kind
    in ``gone`` may be left. Returns the rewritten graph."""
    g.verify()
    feeds = random_feeds(g, rng)
    before = run_reference(g, feeds)
    rewritten = run(g.copy())
    rewritten.verify()
    left = [op.name for op in rewritten.ops() if op.kind in set(gone)]
    assert not left, f"{left} should have been rewritten away:\n{rewritten.dump()}"
    after = run_reference(rewritten, feeds)
    for name in g.outputs:
        assert_close(after[name], before[name], rtol, f"output {name!r} after the pass (numpy reference)")
    if compile_too:
        compiled = compile_graph(rewritten).run(feeds)
        for name in g.outputs:
            assert_close(compiled[name], before[name], rtol, f"output {name!r} after the pass (compiled)")
    return rewritten


def weight(rng: np.random.Generator, *shape: int, scale: float | None = None) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    s = scale if scale is not None else float(np.sqrt(2.0 / max(1, fan_in)))
    return (rng.standard_normal(shape) * s).astype(np.float32)


def bn_params(rng: np.random.Generator, c: int) -> list[np.ndarray]:
    """scale, B, mean, var of a BatchNormalization with c channels (var well away from zero)."""
    return [rng.uniform(0.5, 1.5, c).astype(np.float32), rng.uniform(-0.5, 0.5, c).astype(np.float32),
            rng.uniform(-0.5, 0.5, c).astype(np.float32), rng.uniform(0.5, 2.0, c).astype(np.float32)]


def add_input(g: Graph, name: str, shape: tuple[int, ...]) -> str:
    g.add_tensor(name, shape, np.float32, TensorKind.INPUT)
    return name
