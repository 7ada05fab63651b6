"""Seeded mutants of a small valid ONNX model, and the child process that compiles and checks them.

A mutant is made from the base model by a seeded generator: byte-level damage to its serialized
form (flips, truncations, insertions, deletions, duplicated spans) or a semantic change to its
protobuf (wrong, negative or huge dimensions, missing inputs, bogus attributes, wrong dtypes,
cycles, duplicate names, broken opsets, hostile external data, ...). Each mutant has a number; the
same (seed, number) always gives the same mutant and the same description.

Run as a script, this module is the child process of tests/fuzz/test_fuzz_onnx.py: it checks the
mutants it is given one by one and prints one JSON line before (``start``) and after (``done``)
each, flushing, so that when a mutant kills the process the parent knows which one it was. For
each mutant the only acceptable outcomes are:

- convc compiles and runs it, and its outputs match onnxruntime's when onnxruntime accepts the
  mutant too (``compiled``), or
- a ConvcError with a clear message (``refused``).

Anything else (another exception, a crash, a hang, different numbers) is a failure. To look at one
mutant: ``python tests/fuzz/onnx_mutants.py --seed 0 --only 123 --verbose``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# --- the base model ------------------------------------------------------------------------------


def base_model() -> onnx.ModelProto:
    """x (N, 2, 5, 5), z (N, 4) -> Softmax(Gemm(Reshape(MaxPool(Relu(Conv(x))), [0, -1])) + z).

    Small weights (so most byte flips land in the structure), a Constant node holding the Reshape's
    shape (a tensor attribute), a symbolic batch and two inputs."""
    rng = np.random.default_rng(2024)

    def w(shape, name):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Constant", [], ["shape"], name="shape_const",
                         value=numpy_helper.from_array(np.array([0, -1], np.int64), "shape_value")),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="fc", transB=1),
        helper.make_node("Add", ["g", "z"], ["s"], name="add"),
        helper.make_node("Softmax", ["s"], ["y"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "fuzz_base",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w((3, 2, 3, 3), "cw"), w((3,), "cb"), w((4, 12), "fw"), w((4,), "fb")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


# --- mutations -----------------------------------------------------------------------------------
# Each takes the model (a copy to change in place) and a numpy Generator, and returns what it did.

ODD_INTS = [0, 1, 2, 3, -1, -2, -7, 5, 64, 2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -2**63]
TYPES = [0, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.INT32,
         TensorProto.UINT8, TensorProto.BOOL, TensorProto.STRING, TensorProto.BFLOAT16, TensorProto.INT4,
         TensorProto.COMPLEX64, 999]
OP_TYPES = ["Relu", "Sigmoid", "Add", "Conv", "MaxPool", "AveragePool", "Softmax", "Identity", "Transpose",
            "Erf", "LpPool", "Gemm", "Concat", "Reshape", "Flatten", "BatchNormalization", "NoSuchOp", ""]


class _Nothing(Exception):
    """An earlier step of the mutant left nothing of the kind to change (no nodes, no outputs)."""


def _pick(rng, seq):
    if not len(seq):
        raise _Nothing
    return seq[int(rng.integers(len(seq)))]


def _odd_int(rng) -> int:
    return int(_pick(rng, ODD_INTS)) if rng.random() < 0.7 else int(rng.integers(-3, 40))


def mutate_input_dim(m, rng) -> str:
    vi = _pick(rng, list(m.graph.input))
    dims = vi.type.tensor_type.shape.dim
    i = int(rng.integers(len(dims)))
    choice = rng.random()
    if choice < 0.7:
        dims[i].dim_value = v = _odd_int(rng)
        return f"input {vi.name!r} dim {i} = {v}"
    if choice < 0.85:
        dims[i].dim_param = "S"
        return f"input {vi.name!r} dim {i} symbolic"
    del dims[i]
    return f"input {vi.name!r} dim {i} removed"


def mutate_initializer(m, rng) -> str:
    t = _pick(rng, list(m.graph.initializer))
    choice = rng.random()
    if choice < 0.35:
        i = int(rng.integers(len(t.dims)))
        t.dims[i] = v = _odd_int(rng)
        return f"initializer {t.name!r} dim {i} = {v} (data unchanged)"
    if choice < 0.5:
        t.dims.append(v := _odd_int(rng))
        return f"initializer {t.name!r} gains a dim {v}"
    if choice < 0.7:
        t.data_type = v = int(_pick(rng, TYPES))
        return f"initializer {t.name!r} data_type = {v}"
    if choice < 0.85:
        cut = int(rng.integers(len(t.raw_data) + 1))
        t.raw_data = t.raw_data[:cut]
        return f"initializer {t.name!r} raw data cut to {cut} bytes"
    t.raw_data = t.raw_data + bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
    return f"initializer {t.name!r} raw data extended"


def mutate_dtype(m, rng) -> str:
    vi = _pick(rng, list(m.graph.input) + list(m.graph.output))
    vi.type.tensor_type.elem_type = v = int(_pick(rng, TYPES))
    return f"value {vi.name!r} elem_type = {v}"


def mutate_missing_input(m, rng) -> str:
    choice = rng.random()
    node = _pick(rng, [n for n in m.graph.node if n.input] or list(m.graph.node))
    if choice < 0.4 and node.input:
        i = int(rng.integers(len(node.input)))
        node.input[i] = ""
        return f"node {node.name!r} input #{i} emptied"
    if choice < 0.6 and node.input:
        del node.input[-1]
        return f"node {node.name!r} last input removed"
    if choice < 0.8:
        i = int(rng.integers(len(m.graph.input)))
        name = m.graph.input[i].name
        del m.graph.input[i]
        return f"graph input {name!r} removed"
    if node.input:
        i = int(rng.integers(len(node.input)))
        node.input[i] = "ghost"
        return f"node {node.name!r} input #{i} = 'ghost'"
    return "nothing"


def mutate_attribute(m, rng) -> str:
    node = _pick(rng, list(m.graph.node))
    choice = rng.random()
    if choice < 0.2 or not node.attribute:
        name = _pick(rng, ["bogus", "axis", "group", "strides", "pads", "kernel_shape", "dilations", "auto_pad",
                           "alpha", "transA", "ceil_mode", "value"])
        kind = rng.random()
        if kind < 0.4:
            a = helper.make_attribute(name, [_odd_int(rng) for _ in range(int(rng.integers(0, 5)))])
        elif kind < 0.6:
            a = helper.make_attribute(name, _odd_int(rng))
        elif kind < 0.8:
            a = helper.make_attribute(name, float(_pick(rng, [0.0, -1.0, 1e30, float("nan"), float("inf")])))
        else:
            a = helper.make_attribute(name, bytes(rng.integers(0, 256, 6, dtype=np.uint8)))
        del_same = [i for i, x in enumerate(node.attribute) if x.name == name]
        for i in reversed(del_same):
            del node.attribute[i]
        node.attribute.append(a)
        return f"node {node.name!r} attribute {name} = {helper.get_attribute_value(a)!r}"
    a = _pick(rng, list(node.attribute))
    if choice < 0.5 and a.type == onnx.AttributeProto.INTS:
        a.ints[:] = [_odd_int(rng) for _ in range(int(rng.integers(0, 6)))]
        return f"node {node.name!r} attribute {a.name} = {list(a.ints)}"
    if choice < 0.6 and a.type == onnx.AttributeProto.INT:
        a.i = _odd_int(rng)
        return f"node {node.name!r} attribute {a.name} = {a.i}"
    if choice < 0.75:
        a.type = v = int(_pick(rng, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]))  # a closed enum
        return f"node {node.name!r} attribute {a.name} type = {v}"
    if a.type == onnx.AttributeProto.TENSOR:
        t = a.t
        if rng.random() < 0.5:
            t.CopyFrom(numpy_helper.from_array(np.array([_odd_int(rng) for _ in range(int(rng.integers(0, 4)))],
                                                        np.int64), t.name))
            return f"node {node.name!r} tensor {a.name} = {numpy_helper.to_array(t).tolist()}"
        t.data_type = v = int(_pick(rng, TYPES))
        return f"node {node.name!r} tensor {a.name} data_type = {v}"
    node.attribute.remove(a)
    return f"node {node.name!r} attribute {a.name} removed"


def mutate_window(m, rng) -> str:
    """Window, stride, dilation and padding that grow together: the output stays small, only the
    numbers are hostile (their products overflow int64 index arithmetic, or loop for ever)."""
    node = _pick(rng, [n for n in m.graph.node if n.op_type in ("Conv", "MaxPool")])
    big = int(_pick(rng, [2**12, 2**16, 2**31 - 1, 2**31, 2**32, 2**40, 2**62]))
    values = {"strides": [big, big], "pads": [big - 1] * 4}
    if node.op_type == "MaxPool":
        values["kernel_shape"] = [big, big] if rng.random() < 0.7 else [big, 2]
    if rng.random() < 0.5:
        values["dilations"] = [big, 1]
    keep = [a for a in node.attribute if a.name not in values]
    del node.attribute[:]
    node.attribute.extend(keep + [helper.make_attribute(k, v) for k, v in values.items()])
    return f"node {node.name!r} {values}"


def mutate_op_type(m, rng) -> str:
    node = _pick(rng, list(m.graph.node))
    old, node.op_type = node.op_type, _pick(rng, OP_TYPES)
    if rng.random() < 0.15:
        node.domain = _pick(rng, ["ai.onnx.ml", "com.microsoft", "x"])
    return f"node {node.name!r} op {old} -> {node.op_type!r} (domain {node.domain!r})"


def mutate_cycle(m, rng) -> str:
    nodes = m.graph.node
    a, b = sorted(int(i) for i in rng.integers(len(nodes), size=2))
    if not nodes[a].input:
        a = 0
    nodes[a].input[0] = nodes[b].output[0]
    return f"node {nodes[a].name!r} input #0 = output of node {nodes[b].name!r}"


def mutate_duplicate(m, rng) -> str:
    choice = rng.random()
    nodes = m.graph.node
    if choice < 0.3:
        a, b = (int(i) for i in rng.choice(len(nodes), 2, replace=False))
        nodes[a].output[0] = nodes[b].output[0]
        return f"node {nodes[a].name!r} writes {nodes[b].output[0]!r} too"
    if choice < 0.5:
        t = _pick(rng, list(m.graph.initializer))
        t.name = _pick(rng, ["x", "z", "c", "y"])
        return f"an initializer renamed {t.name!r}"
    if choice < 0.7:
        m.graph.initializer.append(copy.deepcopy(_pick(rng, list(m.graph.initializer))))
        return "an initializer duplicated"
    if choice < 0.85:
        m.graph.input.append(copy.deepcopy(_pick(rng, list(m.graph.input))))
        return "a graph input duplicated"
    for n in nodes:
        n.name = "same"
    return "every node named 'same'"


def mutate_model_header(m, rng) -> str:
    choice = rng.random()
    if choice < 0.4:
        m.opset_import[0].version = v = int(_pick(rng, [0, 1, 5, 6, 7, 9, 11, 99, 1000, -1]))
        return f"opset {v}"
    if choice < 0.6:
        m.opset_import[0].domain = _pick(rng, ["ai.onnx.ml", "x"])
        return f"opset domain {m.opset_import[0].domain!r}"
    if choice < 0.8:
        m.ir_version = v = int(_pick(rng, [0, -1, 1, 3, 99]))
        return f"ir_version {v}"
    del m.opset_import[:]
    return "no opset imports"


def mutate_outputs(m, rng) -> str:
    choice = rng.random()
    if choice < 0.25:
        del m.graph.output[:]
        return "no graph outputs"
    if choice < 0.5:
        m.graph.output[0].name = v = _pick(rng, ["ghost", "x", "z", "c", "shape", "cw"])
        return f"graph output renamed {v!r}"
    if choice < 0.75:
        m.graph.output.append(copy.deepcopy(m.graph.output[0]))
        return "graph output duplicated"
    extra = m.graph.output.add()
    extra.CopyFrom(helper.make_tensor_value_info(_pick(rng, ["c", "r", "p", "f", "g", "s"]), TensorProto.FLOAT, None))
    return f"intermediate {extra.name!r} also a graph output"


def mutate_nodes(m, rng) -> str:
    nodes = m.graph.node
    choice = rng.random()
    if choice < 0.4:
        i = int(rng.integers(len(nodes)))
        name = nodes[i].name
        del nodes[i]
        return f"node {name!r} removed"
    if choice < 0.7:
        order = [copy.deepcopy(n) for n in nodes]
        rng.shuffle(order)
        del nodes[:]
        nodes.extend(order)
        return "nodes shuffled"
    if choice < 0.85:
        del nodes[:]
        return "no nodes"
    nodes.append(copy.deepcopy(_pick(rng, list(nodes))))
    return "a node duplicated"


HOSTILE_LOCATIONS = ["data.bin", "missing.bin", "../secret.bin", "../../../../../../etc/passwd", "/etc/passwd",
                     "link_out.bin", "sub", "", "."]


def mutate_external_data(m, rng) -> str:
    """Moves an initializer's data to an external file; the model is then compiled from a path."""
    t = _pick(rng, list(m.graph.initializer))
    data = t.raw_data
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    location = _pick(rng, HOSTILE_LOCATIONS)
    offset = int(_pick(rng, [0, 0, 0, 4, 2**40, 2**63 - 1]))
    length = _pick(rng, [None, None, len(data), 1, 2**40])
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            e = t.external_data.add()
            e.key, e.value = key, str(value)
    t.doc_string = data.hex()  # the bytes data.bin gets (see write_external_files); onnx ignores doc strings
    return f"initializer {t.name!r} external at {location!r} offset {offset} length {length}"


SEMANTIC = [mutate_input_dim, mutate_initializer, mutate_dtype, mutate_missing_input, mutate_attribute,
            mutate_window, mutate_op_type, mutate_cycle, mutate_duplicate, mutate_model_header, mutate_outputs,
            mutate_nodes, mutate_external_data]


def mutate_bytes(data: bytes, rng) -> tuple[bytes, str]:
    b = bytearray(data)
    choice = rng.random()
    if choice < 0.35:
        at = sorted(int(i) for i in rng.integers(len(b), size=int(rng.integers(1, 5))))
        for i in at:
            b[i] = int(rng.integers(256)) if rng.random() < 0.5 else b[i] ^ (1 << int(rng.integers(8)))
        return bytes(b), f"bytes changed at {at}"
    if choice < 0.55:
        cut = int(rng.integers(len(b)))
        return bytes(b[:cut]), f"truncated to {cut} of {len(b)} bytes"
    if choice < 0.7:
        at, n = int(rng.integers(len(b) + 1)), int(rng.integers(1, 17))
        b[at:at] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        return bytes(b), f"{n} random bytes inserted at {at}"
    if choice < 0.8:
        at, n = int(rng.integers(len(b))), int(rng.integers(1, 33))
        del b[at:at + n]
        return bytes(b), f"{n} bytes deleted at {at}"
    if choice < 0.9:
        at, n = int(rng.integers(len(b))), int(rng.integers(1, 65))
        b[at:at] = b[at:at + n]
        return bytes(b), f"{n} bytes at {at} duplicated"
    at, n = int(rng.integers(len(b))), int(rng.integers(1, 9))
    b[at:at + n] = b"\xff" * len(b[at:at + n])
    return bytes(b), f"{n} bytes at {at} set to 0xff"


def make_mutant(seed: int, index: int) -> tuple[bytes, str, bool]:
    """(serialized mutant, description, whether it uses external data and must be compiled from a path)."""
    rng = np.random.default_rng([seed, index])
    base = base_model()
    if index % 5 == 0:  # one in five: damaged bytes; the rest: semantic changes
        data, what = mutate_bytes(base.SerializeToString(), rng)
        return data, what, False
    steps = []
    external = False
    for _ in range(1 if rng.random() < 0.8 else 2):
        mutate = _pick(rng, SEMANTIC)
        try:
            what = mutate(base, rng)
        except (_Nothing, IndexError, ValueError):
            what = "nothing left to change"
        external |= mutate is mutate_external_data
        steps.append(f"{mutate.__name__[len('mutate_'):]}: {what}")
    return base.SerializeToString(), "; ".join(steps), external


def write_external_files(model_bytes: bytes, folder: Path) -> Path:
    """folder/m.onnx and what its external data may point at: data.bin holding the tensor's real
    bytes, sub/, a symlink to ../secret.bin outside the folder."""
    folder.mkdir(parents=True)
    (folder.parent / "secret.bin").write_bytes(b"\x07" * 256)
    m = onnx.ModelProto()
    m.ParseFromString(model_bytes)
    for t in m.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL and t.doc_string:
            (folder / "data.bin").write_bytes(bytes.fromhex(t.doc_string))
    (folder / "sub").mkdir()
    os.symlink(folder.parent / "secret.bin", folder / "link_out.bin")
    path = folder / "m.onnx"
    path.write_bytes(model_bytes)
    return path


# --- checking one mutant (in the child) ------------------------------------------------------------
RTOL, ATOL = 1e-4, 1e-5


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def check_mutant(seed: int, index: int, scratch: Path) -> dict:
    """Compile, run and compare one mutant; returns the outcome record (see the module docstring)."""
    import convc
    data, what, external = make_mutant(seed, index)
    source: object = data
    if external:
        source = str(write_external_files(data, scratch / f"m{index}" / "model"))
    record = {"index": index, "what": what}
    try:
        model = convc.compile(source, threads=1, cache=False)
        rng = np.random.default_rng(index)
        # a dimension a mutant made symbolic other than the batch compiles on the first run, for
        # the shape fed: feed it at 7
        feeds = {s.name: rng.standard_normal(tuple(d if isinstance(d, int) else 7 for d in s.shape)).astype(s.dtype)
                 for s in model.inputs}
        ours = model.run(feeds)
    except convc.ConvcError as e:
        message = str(e)
        ok = len(message) >= 20 and "Traceback" not in message
        return {**record, "outcome": "refused" if ok else "unclear", "error": f"{type(e).__name__}: {message}"}
    except Exception as e:  # noqa: BLE001 -- exactly what this test looks for
        return {**record, "outcome": "foreign", "error": "".join(traceback.format_exception(e))[-3000:]}
    _emit({"index": index, "phase": "onnxruntime"})  # a crash from here on is onnxruntime's, not convc's
    theirs = run_onnxruntime(source, feeds, list(ours))
    if theirs is None:
        return {**record, "outcome": "compiled", "compared": False}
    return {**record, **compare(ours, theirs, values=well_conditioned(data))}


def well_conditioned(data: bytes) -> bool:
    """False when a weight or float attribute is not finite or huge (a flipped exponent bit): then
    whether a sum overflows depends on the order of the additions, which differs between convc,
    onnxruntime and CPUs, so only the shapes are compared."""
    m = onnx.ModelProto()
    m.ParseFromString(data)
    values = []
    for t in m.graph.initializer:
        try:
            values.append(np.asarray(numpy_helper.to_array(t), np.float64).ravel())
        except Exception:  # noqa: BLE001 -- external or malformed: convc read it, compare shapes only
            return False
    for node in m.graph.node:
        values += [np.array([a.f]) for a in node.attribute if a.type == onnx.AttributeProto.FLOAT]
    every = np.concatenate(values) if values else np.zeros(0)
    return bool(np.all(np.isfinite(every)) and np.all(np.abs(every) < 1e10))


def run_onnxruntime(source, feeds: dict, names: list[str]) -> dict | None:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))
    except Exception:  # noqa: BLE001 -- onnxruntime refuses the mutant: nothing to compare with
        return None


def compare(ours: dict, theirs: dict, values: bool = True) -> dict:
    for name, want in theirs.items():
        got = ours[name]
        want = np.asarray(want)
        if got.shape != want.shape or got.dtype != want.dtype:
            return {"outcome": "mismatch", "error": f"output {name!r}: {got.dtype} {got.shape}, onnxruntime "
                                                   f"{want.dtype} {want.shape}"}
        if not values:
            continue
        finite = np.isfinite(want)
        if not np.array_equal(finite, np.isfinite(got)):
            return {"outcome": "mismatch", "error": f"output {name!r}: non-finite values differ from onnxruntime's"}
        if finite.any():
            err = float(np.max(np.abs(got[finite] - want[finite])) / max(1.0, float(np.max(np.abs(want[finite])))))
            if err > RTOL:
                return {"outcome": "mismatch", "error": f"output {name!r}: max relative error {err:.3g}"}
    return {"outcome": "compiled", "compared": values}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first", type=int, default=0, help="the first mutant's number")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--only", type=int, help="check just this mutant and print the whole outcome")
    p.add_argument("--scratch", help="a directory for mutants with external data (default: a temporary one)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    indices = [args.only] if args.only is not None else range(args.first, args.first + args.count)
    with tempfile.TemporaryDirectory(prefix="convc-fuzz-") as tmp:
        scratch = Path(args.scratch or tmp)
        for i in indices:
            _emit({"index": i, "phase": "start"})
            record = check_mutant(args.seed, i, scratch)
            _emit({**record, "phase": "done"})
            if args.verbose:
                print(json.dumps(record, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
