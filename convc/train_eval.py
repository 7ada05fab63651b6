"""What a ``convc.Trainer`` gives back besides training: the model in eval mode (``predict``,
``evaluate``, with BatchNorm's running statistics and no dropout) and the trained model as ONNX
(``export_onnx``)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from convc import train_batch
from convc.errors import InputError
from convc.ir import Graph
from convc.limits import positive_int


class Evaluation:
    """``convc.Trainer``'s eval-mode forward and ONNX export (a mixin: it reads the Trainer's plan,
    state and compiled eval models)."""

    def predict(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """The model's output in eval mode (BN running statistics, no dropout), for any number of
        samples: runs in chunks of ``batch_size`` (default: the training batch), the last padded."""
        xs = self._check_x(x)
        n = xs[0].shape[0]
        chunk = positive_int("batch_size", batch_size) or self.input_shape[0]
        model = self._compile_eval(chunk)
        out_name = model.outputs[0].name
        results = []
        for start in range(0, n, chunk):
            feeds = {name: np.ascontiguousarray(train_batch.pad(a[start:start + chunk], chunk))
                     for name, a in zip(self.forward.inputs, xs)}
            out = model.run(feeds)[out_name]
            results.append(out[:min(chunk, n - start)].copy())
        return np.concatenate(results)

    def evaluate(self, x: Any, y: Any, batch_size: int | None = None) -> dict[str, float]:
        """Loss and (for the class losses with class indices) accuracy in eval mode over the whole
        set, by the loss op's float64 reference (convc/ops/loss.py)."""
        from convc.ops import op_def
        if len(self.losses) > 1:
            raise InputError("evaluate computes one output's loss; this model has several (predict gives the first)")
        out = self.predict(x, batch_size).astype(np.float64)
        y = self._check_y(y, out.shape[0], self.plan)
        loss_op = self.plan.graph.op("loss_fn")
        attrs = loss_op.attrs
        if self.plan.logits != self.forward.outputs[0]:  # the model ends in (Log)Softmax, folded into the loss
            attrs = dataclasses.replace(attrs, form="log_probs")
            out = np.log(np.maximum(out, 1e-300)) if self.loss_name == "cross_entropy" else out
        loss = float(op_def(loss_op.kind).reference(attrs, out, y)[0][0])
        if y.ndim == 1 and out.ndim == 2:
            counted = y >= 0
            return {"loss": loss, "accuracy": float((out.argmax(1)[counted] == y[counted]).mean())}
        return {"loss": loss}

    def export_onnx(self, path: str | os.PathLike | None = None):
        """Write an inference ONNX model with the trained weights; returns the ModelProto.

        An ONNX source keeps its own graph with its initializers replaced; a Graph or convc.nn
        model is written by convc's exporter."""
        import onnx
        from onnx import numpy_helper
        weights = self.weights()
        proto = None
        if not isinstance(self.model, Graph) and not hasattr(self.model, "to_graph"):
            from convc.frontend.onnx.reader import read_model
            proto = onnx.ModelProto()
            proto.CopyFrom(read_model(str(self.model) if isinstance(self.model, Path) else self.model))
            inits = {t.name: i for i, t in enumerate(proto.graph.initializer)}
            if all(n in inits for n in weights):
                for n, v in weights.items():
                    old = proto.graph.initializer[inits[n]]
                    old.CopyFrom(numpy_helper.from_array(v.astype(numpy_helper.to_array(old).dtype), n))
            else:
                proto = None  # some weights were folded at import: export the graph instead
        if proto is None:
            from convc.frontend.onnx_export import export_onnx
            g = self.forward.copy()
            for n, v in weights.items():
                g.tensor(n).data = v
            proto = export_onnx(g)
        if path is not None:
            onnx.save(proto, os.fspath(path))
        return proto
