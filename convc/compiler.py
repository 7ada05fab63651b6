"""convc.compile: model in, native callable out.

The API boundary of a JIT compile: the keyword arguments are checked and defaulted here, once,
into a ``CompileOptions`` (convc/options.py); the work is the driver's (convc/driver.py).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convc.driver import ModelSource, has_dynamic_batch, is_nn_module, load_graph  # noqa: F401  (public here)
from convc.limits import positive_int
from convc.options import default_threads  # noqa: F401  (public here)
from convc.options import resolve_options
from convc.model import CompiledModel

if TYPE_CHECKING:  # the IR (networkx) is not imported by a warm compile
    from convc.ir import Graph


def compile_graph(graph: Graph, *, threads: int | None = None, instrument: bool = False,
                  progress: Callable[[str], None] | None = None, cache: bool | None = None,
                  winograd: bool | None = None, precision: str | None = None) -> CompiledModel:
    """Optimize ``graph`` and JIT-compile it through the compile cache (convc/codegen/cache.py;
    ``cache=False`` bypasses it); ``precision`` as in ``compile``."""
    from convc import driver
    options = resolve_options(threads=threads, instrument=instrument, cache=cache, winograd=winograd,
                              precision=precision)
    return driver.compile_graph(graph, options, progress=progress)


def compile(model: ModelSource, *, threads: int | None = None, batch: int | None = None,
            progress: Callable[[str], None] | None = None, input_shape: Any = None,
            cache: bool | None = None, winograd: bool | None = None,
            precision: str | None = None, input_shapes: Any = None) -> CompiledModel:
    """Compile an ONNX model (path, bytes or ``onnx.ModelProto``), a convc Graph or a convc.nn Module
    (traced with ``input_shape``, batch first) to native code.

    ``batch`` fixes a symbolic batch dimension; left as None, the model compiles for batch 1 (a
    Module: for ``input_shape[0]``) and compiles other batch sizes on first use. ``threads`` caps
    the worker threads (default: all cores).

    ``input_shapes`` fixes an ONNX model's symbolic dimensions by giving whole input shapes
    (``{"x": (1, 3, 512, 512)}``, as onnxruntime's free-dimension overrides); they must agree with
    the declared sizes and ``batch``. Symbolic dimensions left free (height and width of a fully
    convolutional model) compile on the first run for the shapes fed, and again for each new
    shape, as a new batch size does: at most 16 variants per model (``CONVC_MAX_VARIANTS``).

    ONNX initializers that are also graph inputs compile in as constants (their defaults); feeding
    one to ``run`` compiles, on first use, a variant that reads the fed ones at run time.

    Compiled code is kept in an on-disk cache (``~/.cache/convc``, ``$CONVC_CACHE_DIR``); a model
    compiled before loads in well under a second. ``cache=False`` (or ``CONVC_NO_CACHE=1``) skips it.
    ``progress`` receives a line per stage (passes, each layer's code generation, LLVM).

    ``winograd=False`` keeps every conv on its direct kernel; by default 3x3 stride-1 convs run as
    Winograd convolutions where that measured faster (outputs within ~1e-5 relative of the direct
    conv; passes/kernel_selection.py).

    ``precision="bf16"`` multiplies in bf16 (operands rounded to bf16, products accumulated in
    float32: passes/precision.py), as OpenVINO does by default on CPUs with AVX512_BF16; logits move
    by ~1e-3 relative. The default is "float32": convc gives the model's own numbers unless asked.
    ``convc check --precision bf16`` measures the deviation per output and layer."""
    from convc import driver
    # refused, not rounded or clamped: batch=2.5 or threads=0 is a mistake the caller should hear about
    batch = positive_int("batch", batch)
    options = resolve_options(threads=threads, cache=cache, winograd=winograd, precision=precision)
    if isinstance(model, Path):
        model = str(model)
    return driver.compile_model(model, options, batch=batch, input_shape=input_shape, input_shapes=input_shapes,
                                progress=progress)


def build(model: ModelSource, output, *, batch: int | None = None, target: Any = "native",
          threads: int | None = None, input_shape: Any = None, progress: Callable[[str], None] | None = None,
          header=None, winograd: bool | None = None, precision: str | None = None, input_shapes: Any = None):
    """``convc compile MODEL -o model.so``: compile ``model`` (whatever ``compile`` takes) ahead of
    time to a shared library (or ``.o`` object file) plus its C header, for ``target`` (a name such
    as ``x86-64-v3`` or an AotTarget) and up to ``threads`` worker threads (default: all cores);
    ``winograd``, ``precision`` and ``input_shapes`` as in ``compile`` (a library's shapes are
    fixed: every symbolic dimension but the batch needs ``input_shapes``)."""
    from convc import driver
    batch = positive_int("batch", batch)
    options = resolve_options(threads=threads, target=target, winograd=winograd, precision=precision)
    return driver.build_library(model, output, options, batch=batch, input_shape=input_shape,
                                input_shapes=input_shapes, progress=progress, header=header)


def build_training_library(model: ModelSource, output, *, batch: int | None = None, optimizer: Any = "adam",
                           lr: float | None = None, loss: Any = "cross_entropy", seed: int = 0,
                           target: Any = "native", progress: Callable[[str], None] | None = None, header=None,
                           loss_weights: Any = None):
    """``convc compile MODEL -o train.so --train``: a training library at batch size ``batch``
    (codegen/aot_train.py); ``loss``: a name or ``convc.Loss`` (with its options), or a list of
    them, one per model output, summed with ``loss_weights``, as ``convc.Trainer`` takes them. The
    training step runs on the calling thread."""
    from convc import driver
    from convc.losses import Loss
    batch = positive_int("batch", batch)
    many = isinstance(loss, (list, tuple))
    losses = [Loss.of(v) for v in (loss if many else [loss])]
    pick = (lambda values: values) if many else (lambda values: values[0])  # noqa: E731  the step's form
    return driver.build_training_library(model, output, resolve_options(threads=1, target=target), batch=batch,
                                         optimizer=optimizer, lr=lr, loss=pick([v.name for v in losses]), seed=seed,
                                         progress=progress, header=header, loss_weights=loss_weights,
                                         loss_attrs=pick([v.attrs() for v in losses]),
                                         soft_targets=pick([v.soft_targets for v in losses]),
                                         loss_settings=[v.settings() for v in losses])
