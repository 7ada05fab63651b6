"""A spatial Resize (YOLO's and UNet's upsampling) runs channels last: the layout pass resizes the conv's
channels-last twin along its H and W axes (attributes permuted), so no Transpose surrounds it, and the Resize
writes straight into its slice of the channels-last Concat that follows (codegen/kernels/resize.py copies or
accumulates whole runs of channels). End to end against onnxruntime at batch 16 with odd sizes, in every
mode the kernel has (nearest roundings, linear, cubic, align_corners, tf_crop_and_resize with roi and
extrapolation), 1 and 2 threads."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from concat_nets import Builder
from helpers import assert_close, run_onnxruntime

import convc
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind
from convc.passes.pipeline import pipeline

RTOL = 1e-5
C_UP, C_SKIP = 12, 13  # below Winograd's 16 channels: every conv is the direct implicit GEMM


def upsample_concat(batch: int, h: int, w: int, resize: dict, roi: list[float] | None = None,
                    by_sizes: bool = True) -> onnx.ModelProto:
    """skip = conv(x); low = conv(skip, stride 2); Concat(Resize(low) to skip's size, skip) -> 1x1 conv."""
    n = Builder(3)
    skip = n.conv("x", 3, C_SKIP, 3)
    low = n.conv(skip, C_SKIP, C_UP, 3, stride=2)
    roi_name = n.const(np.array(roi)) if roi is not None else ""
    if by_sizes:
        sizes = n.name("sizes")
        n.inits.append(onnx.numpy_helper.from_array(np.array([batch, C_UP, h, w], dtype=np.int64), sizes))
        up = n.node("Resize", [low, roi_name, "", sizes], **resize)
    else:
        up = n.node("Resize", [low, roi_name, n.const(np.array([1, 1, 2, 2]))], **resize)
    y = n.node("Concat", [up, skip], axis=1)
    return n.model((batch, 3, h, w), [n.conv(y, C_UP + C_SKIP, 5, 1, relu=False)], "upsample_concat")


def downsample(batch: int, h: int, w: int, resize: dict) -> onnx.ModelProto:
    """conv -> Resize to about 0.6x (several taps per output along each axis) -> conv."""
    n = Builder(4)
    y = n.conv("x", 3, C_UP, 3)
    sizes = n.name("sizes")
    n.inits.append(onnx.numpy_helper.from_array(np.array([batch, C_UP, h * 3 // 5, w * 3 // 5], dtype=np.int64),
                                                sizes))
    y = n.node("Resize", [y, "", "", sizes], **resize)
    return n.model((batch, 3, h, w), [n.conv(y, C_UP, 7, 3, relu=False)], "downsample")


CASES = {
    # PyTorch's nn.Upsample(scale_factor=2) export (YOLO's neck)
    "nearest-x2-asymmetric-floor": (lambda b: upsample_concat(b, 20, 14, dict(
        mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), by_sizes=False), 1),
    "nearest-sizes-half-pixel": (lambda b: upsample_concat(b, 19, 13, dict(mode="nearest")), 2),
    "linear-half-pixel": (lambda b: upsample_concat(b, 19, 13, dict(mode="linear")), 1),
    "linear-align-corners": (lambda b: upsample_concat(b, 19, 13, dict(
        mode="linear", coordinate_transformation_mode="align_corners")), 2),
    "cubic": (lambda b: upsample_concat(b, 19, 13, dict(mode="cubic")), 1),
    # a crop of rows 10-90% and columns 5-100%, outside positions extrapolated (roi of N and C: all)
    "tf-crop-and-resize": (lambda b: upsample_concat(b, 19, 13, dict(
        mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=0.25),
        roi=[0, 0, 0.1, -0.05, 1, 1, 0.9, 1.0]), 2),
    "downsample-linear": (lambda b: downsample(b, 23, 17, dict(mode="linear")), 2),
    "downsample-cubic": (lambda b: downsample(b, 23, 17, dict(mode="cubic")), 1),
}


def input_shape(m: onnx.ModelProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim)


@pytest.mark.parametrize("case", list(CASES))
def test_resize_runs_channels_last(case):
    make, _ = CASES[case]
    m = make(16)
    plan = pipeline(import_onnx(m, batch=16))
    transposes = [op.name for op in plan.order if op.kind is OpKind.TRANSPOSE]
    assert len(transposes) == 2, f"only the model's edges change layout, got {transposes}"
    (resize,) = [op for op in plan.order if op.kind is OpKind.RESIZE]
    x, y = (plan.graph.tensor(t).shape for t in (resize.inputs[0], resize.outputs[0]))
    assert x[0] == y[0] == 16 and x[3] == y[3] == C_UP, f"channels last: {x} -> {y}"
    assert resize.attrs.shape == y and len(resize.attrs.scales) == 4
    if any(op.kind is OpKind.CONCAT for op in plan.order):
        placed = plan.memory.placed.get(resize.outputs[0])
        assert placed is not None and not placed.view.contiguous, "the Resize writes its rows of the Concat"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.slow
def test_resize_channels_last_matches_onnxruntime(case):
    make, threads = CASES[case]
    m = make(16)
    x = np.random.default_rng(5).standard_normal(input_shape(m)).astype(np.float32)
    expected = run_onnxruntime(m, {"x": x})
    (actual,) = convc.compile(m, threads=threads, cache=False).run({"x": x}).values()
    assert_close(actual, expected, RTOL, f"{case} against onnxruntime")


def test_resize_of_channels_is_left_channels_first():
    """A Resize that scales the channel axis too has no channels-last form: it reads the channels-first
    tensor and the numbers still match."""
    n = Builder(6)
    y = n.conv("x", 3, 8, 3)
    y = n.node("Resize", [y, "", n.const(np.array([1, 2, 2, 2]))], mode="nearest")
    m = n.model((2, 3, 9, 7), [n.conv(y, 16, 4, 1, relu=False)], "resize_channels")
    plan = pipeline(import_onnx(m, batch=2))
    (resize,) = [op for op in plan.order if op.kind is OpKind.RESIZE]
    assert plan.graph.tensor(resize.outputs[0]).shape == (2, 16, 18, 14)
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 7)).astype(np.float32)
    (actual,) = convc.compile(m, threads=1, cache=False).run({"x": x}).values()
    assert_close(actual, run_onnxruntime(m, {"x": x}), RTOL, "channel-scaling Resize against onnxruntime")
