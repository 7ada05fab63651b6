"""Memory planning: greedy-by-size best fit on synthetic live ranges, in-place reuse, and the
plans of the onnx wheel's light models against the liveness lower bound."""
from __future__ import annotations

import os

import onnx
import pytest
from convc.codegen.module import emit_module
from convc.frontend.onnx.importer import import_onnx
from convc.passes.memory import LiveRange, best_fit, best_fit_repaired, first_fit, live_bytes
from convc.passes.pipeline import pipeline
from helpers import assert_close
from pass_helpers import add_input, random_feeds, weight

from convc.compiler import compile_graph
from convc.errors import UnsupportedOpError
from convc.ir import Graph
from convc.ops import NoAttrs, OpKind
from convc.ops.pool import GlobalPoolAttrs
from convc.ops.shape import ReshapeAttrs
from convc.reference import run_reference

U = 64  # one alignment unit: sizes below are whole units, so alignment adds nothing


def R(name: str, units: int, first: int, last: int) -> LiveRange:
    return LiveRange(name, units * U, first, last)


def test_best_fit_beats_first_fit():
    """Both place by size, largest first; they differ at F, which has two gaps to choose from."""
    ranges = [
        R("A", 7, 3, 3),  # -> [0, 7)                                   (first placed: nothing overlaps)
        R("B", 6, 0, 3),  # -> [7, 13)   overlaps A
        R("C", 6, 2, 5),  # -> [13, 19)  overlaps A, B
        R("D", 5, 0, 4),  # -> [19, 24)  overlaps A, B, C
        R("F", 5, 0, 1),  # overlaps B [7,13) and D [19,24): gaps [0,7) (7 units) and [13,19) (6 units)
                          #   first fit: [0, 5);  best fit: [13, 18), the tighter gap
        R("E", 5, 4, 5),  # -> [0, 5) in both: only C and D overlap it
        R("G", 4, 0, 2),  # overlaps B, C, D, F.  best fit: [0, 7) is free -> [0, 4)
                          #   first fit: F took [0, 5), the gap [5, 7) is 2 < 4 units -> on top, [24, 28)
    ]
    best_offsets, best_arena = best_fit(ranges)
    first_offsets, first_arena = first_fit(ranges)
    assert best_offsets["F"] == 13 * U and first_offsets["F"] == 0
    assert best_offsets["G"] == 0 and first_offsets["G"] == 24 * U
    assert best_arena == 24 * U   # 1536 bytes: D ends at 24 units
    assert first_arena == 28 * U  # 1792 bytes: G pushed to 24 + 4 units
    assert max(live_bytes(ranges, 6)) == 24 * U  # steps 0 and 2: B+D+F+G = 6+5+5+4 = 20; step 3: A+B+C+D = 24


def test_live_bytes_and_lower_bound():
    ranges = [R("a", 1, 0, 1), R("b", 2, 1, 2), R("c", 1, 2, 3)]
    assert live_bytes(ranges, 4) == [64, 192, 192, 64]  # a; a+b; b+c; c
    offsets, arena = best_fit(ranges)
    assert arena == 192 and offsets["b"] == 0 and {offsets["a"], offsets["c"]} == {128}


def test_repair_reaches_the_bound_where_greedy_does_not():
    """The im2col pattern of ResNet: a big transient buffer per block, long-lived residual tensors
    alternating between two slots. Greedy by size puts every buffer at 0 and both residual slots
    above it (7 + 3 + 3 = 13 units); promoting the residuals reaches the bound of 10 units."""
    ranges = [R("x0", 3, 0, 3), R("col0", 7, 1, 2), R("x1", 3, 3, 6), R("col1", 7, 4, 5), R("x2", 3, 6, 7)]
    bound = max(live_bytes(ranges, 8))
    assert bound == 10 * U  # x0 + col0
    assert best_fit(ranges)[1] == 13 * U
    assert best_fit_repaired(ranges, bound)[1] == 10 * U


def elementwise_chain(rng) -> Graph:
    g = Graph("chain")
    x = add_input(g, "x", (2, 8, 5, 5))
    g.add_constant("c", weight(rng, 8, 1, 1))
    a = g.add_op(OpKind.MUL, NoAttrs(), [x, "c"], ["a"], name="mul").outputs[0]     # a: arena
    b = g.add_op(OpKind.SIGMOID, NoAttrs(), [a], ["b"], name="sigmoid").outputs[0]  # a dies: b takes a's slot
    v = g.add_op(OpKind.RESHAPE, ReshapeAttrs((2, 200)), [b], ["v"], name="view").outputs[0]
    d = g.add_op(OpKind.TANH, NoAttrs(), [v], ["d"], name="tanh").outputs[0]        # through a view of b
    e = g.add_op(OpKind.ADD, NoAttrs(), [d, d], ["e"], name="double").outputs[0]    # reads d twice
    g.add_op(OpKind.RELU, NoAttrs(), [e], ["y"], name="relu")
    g.outputs = ["y"]
    return g


def test_in_place_chain_shares_one_slot_and_runs_right(rng):
    g = elementwise_chain(rng)
    plan = pipeline(g, verify=True)
    m = plan.memory
    assert m.in_place == {"b": "a", "d": "b", "e": "d"}
    assert len({m.buffers[t] for t in "abvde"}) == 1
    assert m.arena_bytes == 1600 == m.lower_bound_bytes  # one 2*8*5*5*4-byte slot
    assert m.total_activation_bytes == 4 * 1600           # a, b, d, e each in a buffer of its own

    ir_text = str(emit_module(plan).ir_module)
    for fn in ("sigmoid", "tanh", "double"):
        sig = next(line for line in ir_text.splitlines() if line.startswith("define") and f'@"{fn}"' in line)
        pointers = [a for a in sig.split("(", 1)[1].split(", ") if a.startswith("ptr")]
        # the last pointer is the kernel's constant size table, which nothing writes: it may stay noalias
        data = pointers[:-1]
        assert len(data) >= 2 and not any("noalias" in a for a in data), \
            f"{fn} works in place: its arguments may alias\n{sig}"
    mul = next(line for line in ir_text.splitlines() if line.startswith("define") and '@"mul"' in line)
    mul_data = [a for a in mul.split("(", 1)[1].split(", ") if a.startswith("ptr")][:-1]
    assert len(mul_data) == 3 and all("noalias" in a for a in mul_data), mul

    feeds = random_feeds(g, rng)
    assert_close(compile_graph(g).run(feeds)["y"], run_reference(g, feeds)["y"], 1e-5, "in-place chain")


def test_no_in_place_over_an_input_still_needed_or_of_another_size(rng):
    g = Graph("no_reuse")
    x = add_input(g, "x", (1, 4, 3, 3))
    g.add_constant("c", weight(rng, 4, 1, 1))
    a = g.add_op(OpKind.MUL, NoAttrs(), [x, "c"], ["a"], name="mul").outputs[0]
    b = g.add_op(OpKind.SIGMOID, NoAttrs(), [a], ["b"], name="sigmoid").outputs[0]  # a is read again below
    s = g.add_op(OpKind.ADD, NoAttrs(), [a, b], ["s"], name="add").outputs[0]        # both die: s takes a's slot
    g.add_constant("k", weight(rng, 1, 4, 1, 1))
    p = g.add_op(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs(), [s], ["p"], name="gap").outputs[0]  # (1, 4, 1, 1)
    big = add_input(g, "big", (2, 4, 3, 3))
    g.add_op(OpKind.ADD, NoAttrs(), [p, big], ["q"], name="broadcast").outputs[0]  # q is bigger than p
    g.add_op(OpKind.RELU, NoAttrs(), ["q"], ["y"], name="relu")
    g.outputs = ["y"]
    plan = pipeline(g, verify=True)
    assert plan.memory.in_place == {"s": "a"}  # not b over a (read later), not q over p (4x smaller)
    feeds = random_feeds(g, rng)
    assert_close(compile_graph(g).run(feeds)["y"], run_reference(g, feeds)["y"], 1e-5, "no reuse")


LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(f[:-5] for f in os.listdir(LIGHT) if f.endswith(".onnx"))


def test_the_light_models_are_nine():
    assert len(LIGHT_MODELS) == 9


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_arena_within_ten_percent_of_the_lower_bound(name):
    try:
        g = import_onnx(os.path.join(LIGHT, name + ".onnx"))
    except UnsupportedOpError as e:
        pytest.skip(f"convc cannot import {name} yet: {e}")
    m = pipeline(g, verify=True).memory  # the verifier runs after every pass
    assert m.lower_bound_bytes <= m.arena_bytes <= 1.10 * m.lower_bound_bytes, (
        f"{name}: planned arena {m.arena_bytes} vs liveness lower bound {m.lower_bound_bytes}")
    assert m.arena_bytes < m.total_activation_bytes
    offsets = {r.name: m.buffers[r.name].index for r in m.live_ranges}
    for r in m.live_ranges:  # no two slots live at the same step overlap in the arena
        for q in m.live_ranges:
            if r is not q and r.first <= q.last and q.first <= r.last:
                a, b = offsets[r.name], offsets[q.name]
                assert a + r.nbytes <= b or b + q.nbytes <= a, f"{r.name} and {q.name} overlap"
    assert all(o % 64 == 0 for o in offsets.values())
