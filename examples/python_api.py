"""The Python API in one page: compile a built-in CNN, call it, use the onnxruntime-style session.

Run from anywhere after ``pip install -e .``:  python examples/python_api.py
"""
from __future__ import annotations

import time

import numpy as np

import convc
from convc.models import cifar_cnn


def main() -> None:
    onnx_model = cifar_cnn()  # a symbolic batch dimension "N", seeded random weights
    model = convc.compile(onnx_model, progress=lambda stage: print(f"  compiling: {stage}"))
    print(model)

    rng = np.random.default_rng(0)
    images = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    logits = model(images)  # one input, one output: array in, array out
    print("logits", logits.shape, "class", int(logits.argmax()))

    batch = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    start = time.perf_counter()
    outputs = model.run({"input": batch})  # batch 8 compiles a second version on this first call
    print(f"batch of 8 (with its compile): {time.perf_counter() - start:.2f} s ->", outputs["output"].shape)

    try:
        model(batch.astype(np.float64))
    except convc.InputError as e:  # inputs are float32 only, never converted silently
        print("InputError:", e)

    session = convc.InferenceSession(onnx_model.SerializeToString())
    (same,) = session.run(None, {"input": images})
    print("InferenceSession agrees:", bool(np.array_equal(same, logits)))

    try:
        import onnxruntime as ort
    except ImportError:
        return
    reference = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = reference.run(None, {"input": images})
    err = float(np.max(np.abs(logits - expected)) / np.max(np.abs(expected)))
    print(f"max relative difference from onnxruntime: {err:.2e}")


if __name__ == "__main__":
    main()
