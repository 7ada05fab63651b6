"""The compiler's pass pipeline: one readable list from imported graph to executable plan, and its
variants as data.

``PIPELINE`` is the inference list. A ``Variant`` names a list of passes, how the ops are
scheduled and how memory is planned; the training variants differ in exactly those and in the one
thing codegen reads from a plan's variant (``runtime_weights``: the weights are inputs read at run
time, so the run-time-weight kernels are used). Their graphs are built first, by autodiff (the
training step) or ``eval_graph`` (inference on the training state), both in passes/autodiff/training.py.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from convc.passes.bn_folding import fold_batch_norm
from convc.passes.constant_folding import fold_constants
from convc.passes.conv1d import windows_to_2d
from convc.passes.dce import eliminate_dead_code
from convc.passes.fusion import fuse_epilogues
from convc.passes.im2col import lower_im2col
from convc.passes.kernel_selection import select_kernels, select_training_kernels
from convc.passes.layout import to_channels_last
from convc.passes.memory import MemoryPlan, plan_memory
from convc.passes.memory_check import check_memory_plan, checking
from convc.passes.precision import bf16_operands
from convc.passes.quantize import int8_convs
from convc.passes.training_state import detach_state, plan_updates_in_place, update_targets, updates_last

from convc.ir import Graph, Op
from convc.options import CompileOptions, applied


Pass = Callable[[Graph], Graph]


@dataclass(frozen=True)
class Variant:
    """A pipeline variant: its passes (None: the inference ``PIPELINE``, read when it runs), the
    schedule, and whether update ops write over the inputs they replace (the memory plan gives them
    those inputs' bytes, and the memory check allows it). ``runtime_weights`` tells codegen that
    the weights are inputs that change between calls: it picks the kernels that read them at run time."""
    name: str
    passes: tuple[tuple[str, Pass], ...] | None = None
    schedule: Callable[[Graph], list[Op]] = Graph.ops
    updates_in_place: bool = False
    runtime_weights: bool = False


INFERENCE = Variant("inference")


@dataclass
class Plan:
    """What the codegen consumes: the optimized graph, its execution order and its memory plan, and
    the variant that made it."""
    graph: Graph
    order: list[Op]
    memory: MemoryPlan
    variant: Variant = INFERENCE


# (name, pass); each pass takes and returns a Graph and leaves it valid
PIPELINE: list[tuple[str, Pass]] = [
    ("constant folding", fold_constants),
    ("dead-code elimination", eliminate_dead_code),
    ("batch-norm folding", fold_batch_norm),
    ("epilogue fusion", fuse_epilogues),
    ("channels-last layout", to_channels_last),
    ("int8 convs (quantized models)", int8_convs),
    ("1-D windows as 2-D", windows_to_2d),
    ("im2col lowering", lower_im2col),
    ("dead-code elimination", eliminate_dead_code),
    ("bf16 operands (precision=\"bf16\" only)", bf16_operands),
    ("kernel selection", select_kernels),
]


_RUNTIME_STATE = ("training state read at run time", detach_state)
_RUNTIME_KERNELS = ("kernel selection (run-time weights)", select_training_kernels)

# the training step, its graph built by autodiff: forward in training mode, loss, backward, updates
TRAINING_STEP = Variant("training step", (_RUNTIME_STATE, _RUNTIME_KERNELS), schedule=updates_last,
                        updates_in_place=True, runtime_weights=True)
# Trainer.predict and a training library's convc_run_model: the model on the training state, in eval mode
EVAL_ON_STATE = Variant("eval on the training state", (
    _RUNTIME_STATE,
    ("epilogue fusion", fuse_epilogues),
    ("dead-code elimination", eliminate_dead_code),
    _RUNTIME_KERNELS,
), runtime_weights=True)
# a graph compiled as it was built (tests of the training kernels): weights stay where the graph has them
AS_BUILT = Variant("as built", (_RUNTIME_KERNELS,), runtime_weights=True)


def pipeline(graph: Graph, verify: bool = False, progress: Callable[[str], None] | None = None,
             variant: Variant = INFERENCE, options: CompileOptions | None = None) -> Plan:
    """Run the variant's passes on a copy of ``graph``, then schedule and plan memory. ``options``: the
    compile's (the threads im2col fusion plans for, Winograd, precision); the passes that depend on
    them read them as ``convc.options.active_options()`` while they run. None: the enclosing
    compile's, else the defaults."""
    g = graph.copy()
    with applied(options) if options is not None else nullcontext():
        for name, run in PIPELINE if variant.passes is None else variant.passes:
            if progress:
                progress(name)
            g = run(g)
            if verify:
                g.verify()
    order = variant.schedule(g)
    memory = plan_updates_in_place(g, order) if variant.updates_in_place else plan_memory(g, order)
    if checking():
        check_memory_plan(g, order, memory, update_targets if variant.updates_in_place else None)
    return Plan(g, order, memory, variant)
