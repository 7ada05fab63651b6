"""The split compile (codegen/split.py, llvm_pool.py, kernel_cache.py): identical kernels compiled
once, modules compiled in parallel and cached across models, and the same results as one module."""
from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.codegen import cache, jit, kernel_cache, llvm_pool, llvm_worker
from convc.codegen.cache import LIBRARY
from convc.codegen.split import KERNEL_SPEED, VECTOR_SPEED, SplitModule, kernel_speed, split_module
from convc.errors import CompileError
from convc.options import CompileOptions
from convc.passes.pipeline import pipeline
from convc.codegen.module import emit_module
from tests.helpers import run_onnxruntime


def residual_net(blocks: int, batch: int = 16, hw: tuple[int, int] = (29, 23), width: int = 24,
                 seed: int = 0) -> onnx.ModelProto:
    """A stem conv, then ``blocks`` identical residual blocks (1x1 conv + SiLU, 3x3 conv, depthwise
    3x3 + HardSwish, 1x1 conv, add, ReLU), global pooling and a Gemm: odd sizes leave tile and
    vector remainders."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, a):
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), name))
        return name

    def conv(x, cin, cout, k, group=1, name=""):
        w = const(f"{name}_w", rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k))
        b = const(f"{name}_b", rng.uniform(-0.1, 0.1, cout))
        nodes.append(helper.make_node("Conv", [x, w, b], [name], name=name, kernel_shape=[k, k], pads=[k // 2] * 4,
                                      group=group))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    y = node("Relu", [conv("x", 3, width, 3, name="stem")], "stem_relu")
    for i in range(blocks):
        h = conv(y, width, width, 1, name=f"b{i}_a")
        h = node("Mul", [h, node("Sigmoid", [h], f"b{i}_sig")], f"b{i}_silu")
        h = node("Relu", [conv(h, width, width, 3, name=f"b{i}_b")], f"b{i}_relu")
        h = node("HardSwish", [conv(h, width, width, 3, group=width, name=f"b{i}_dw")], f"b{i}_hs")
        h = conv(h, width, width, 1, name=f"b{i}_c")
        y = node("Relu", [node("Add", [h, y], f"b{i}_add")], f"b{i}_out")
    y = node("Flatten", [node("GlobalAveragePool", [y], "gap")], "flat")
    w = const("fc_w", rng.standard_normal((10, width)) / np.sqrt(width))
    out = node("Gemm", [y, w, const("fc_b", rng.uniform(-0.1, 0.1, 10))], "logits", transB=1)
    g = helper.make_graph(nodes, f"residual{blocks}", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                     (batch, 3, *hw))],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return m


def planned(model: onnx.ModelProto, threads: int = 2):
    from convc.driver import load_graph
    return pipeline(load_graph(model), options=CompileOptions(threads=threads))


@pytest.fixture
def kernel_store(tmp_path, monkeypatch):
    """A fresh compile cache; compiles in this process only, counted."""
    monkeypatch.delenv("CONVC_NO_CACHE", raising=False)
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "1")
    compiled = []
    real = llvm_worker.object_code

    def counting(text, *args):
        compiled.append(text)
        return real(text, *args)
    monkeypatch.setattr(llvm_worker, "object_code", counting)
    return tmp_path / "cache", compiled


def test_identical_blocks_compile_once():
    native = emit_module(planned(residual_net(4)), threads=2)
    kernels = [fn for _, fn in native.kernel_names]
    modules = split_module(native.ir_module, kernels)
    entry, parts = modules[0], modules[1:]
    assert entry.key is None and all(m.key for m in parts)
    defined = sum(m.kernels for m in parts)
    # a layout change, the stem, 4 blocks of 4 kernels (the add and ReLUs fused), pool (its pooled
    # (N, C, 1, 1) output goes back to NCHW as a view), Gemm: three of the four blocks repeat the first
    assert len(kernels) == 20 and defined == len(kernels) - 3 * 4, kernels
    # the repeated convs (1x1, 3x3, 1x1 per block) are not even emitted again: one function each
    assert len(set(kernels)) == len(kernels) - 3 * 3, kernels
    # a kernel module names nothing of the model: the same kernels give the same text in another model
    for m in parts:
        assert "b0_" not in m.text and "b1_" not in m.text


def test_hand_vectorized_kernels_skip_the_ir_pipeline():
    native = emit_module(planned(residual_net(1)), threads=2)
    parts = split_module(native.ir_module, [fn for _, fn in native.kernel_names])[1:]
    vector = [m for m in parts if m.speed == VECTOR_SPEED]
    # the GEMM convs' register tiles: explicit vector FMAs, no vecmath polynomial, no promoted slot
    assert any("llvm.fma.v8f32" in m.text for m in vector), [len(m.text) for m in parts]
    assert all("llvm.fmuladd." not in m.text and "alloca ptr" not in m.text for m in vector)
    # the SiLU conv's sigmoid polynomial and the scalar float loops keep -O2
    assert any(m.speed == KERNEL_SPEED and "llvm.fmuladd." in m.text for m in parts)
    assert all(m.speed == KERNEL_SPEED for m in parts if "<8 x float>" not in m.text and " float " in m.text
               and "fadd float" in m.text)


def test_kernel_speed_reads_the_share_of_vector_instructions():
    vector = "  %a = fadd <8 x float> %x, %y\n" * 700 + "  %i = add i64 %j, 1\n" * 100
    scalar = "  %a = fadd float %x, %y\n" * 700 + "  %v = fadd <8 x float> %x, %y\n" * 100
    assert kernel_speed(vector) == VECTOR_SPEED and kernel_speed(scalar) == KERNEL_SPEED
    # a tile-row table handed to a micro-kernel stays in memory at any level
    assert kernel_speed(vector + '  %rows = alloca i64, i64 6\n') == VECTOR_SPEED
    # slots SROA turns into registers, vecmath's polynomials and atomics keep -O2
    assert kernel_speed(vector + '  %rows = alloca ptr, i64 3\n') == KERNEL_SPEED
    assert kernel_speed(vector + '  %acc = alloca <8 x float>\n') == KERNEL_SPEED
    assert kernel_speed(vector + '  %p = call <8 x float> @"llvm.fmuladd.v8f32"()\n') == KERNEL_SPEED
    assert kernel_speed(vector + '  %n = atomicrmw add ptr %c, i64 1 acq_rel\n') == KERNEL_SPEED
    assert kernel_speed(vector[:2000]) == KERNEL_SPEED  # small: -O2 costs it little


def test_modules_doing_no_work_on_data_skip_the_ir_pipeline():
    # a conv's driver: tile offsets, a table for its micro-kernel, calls; nothing to vectorize
    offsets = "  %q = udiv i64 %r, 112\n  %o = getelementptr inbounds float, ptr %x, i64 %q\n"
    driver = "  %rows = alloca i64, i64 6\n" + offsets * 40 + '  call void @"convc_h1"(ptr %o, ptr %rows)\n'
    assert kernel_speed(driver) == VECTOR_SPEED
    for work in ("  %a = fadd float %x, %y\n", "  %v = load float, ptr %o\n", "  %v = load <8 x float>, ptr %o\n",
                 "  %v = load i8, ptr %o\n", "  store <32 x i8> %v, ptr %o\n", "  store i32 %v, ptr %o\n",
                 '  %m = call float @"llvm.maxnum.f32"(float %a, float %b)\n', "  %c = fcmp olt float %a, %b\n"):
        assert kernel_speed(driver + work) == KERNEL_SPEED, work
    # the thread pool's module (its spin loops' atomics) keeps -O2
    native = emit_module(planned(residual_net(1)), threads=2)
    parts = split_module(native.ir_module, [fn for _, fn in native.kernel_names], LIBRARY)
    pool = [m for m in parts if m.key is not None and "convc_pool_worker" in m.text and "define" in m.text
            and not any(line.startswith("define void @\"convc_k") for line in m.text.splitlines())]
    assert pool and all(m.speed == KERNEL_SPEED for m in pool)


@pytest.mark.slow
def test_module_texts_do_not_depend_on_the_model():
    def texts(model):
        native = emit_module(planned(model), threads=2)
        return {m.key: m.text for m in split_module(native.ir_module, [fn for _, fn in native.kernel_names])[1:]}
    small, large = texts(residual_net(2)), texts(residual_net(5, seed=3))
    assert set(small) <= set(large)  # other weights, more blocks: the same kernel modules


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.slow
def test_split_code_computes_what_one_module_computes(threads, monkeypatch):
    model = residual_net(3, batch=16, hw=(37, 29))
    x = np.random.default_rng(1).standard_normal((16, 3, 37, 29)).astype(np.float32)
    split = convc.compile(model, threads=threads, cache=False)
    def whole_module(plan, options, root, progress):
        native = emit_module(plan, threads=options.threads)
        return native, llvm_pool.compile_modules([SplitModule(str(native.ir_module), None)], jit.Target.host())
    monkeypatch.setattr(cache, "generate", whole_module)
    whole = convc.compile(model, threads=threads, cache=False)
    got, want = split(x), whole(x)
    np.testing.assert_array_equal(got, want)  # the same kernels, compiled by the same LLVM
    ref = run_onnxruntime(model, {"x": x})
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_second_model_reuses_the_kernels_of_the_first(kernel_store):
    root, compiled = kernel_store
    first = convc.compile(residual_net(2), threads=2)
    n_first = len(compiled)
    assert n_first >= 3 and len(kernel_cache.files(root)) == n_first - 1  # every module but the entry point
    compiled.clear()
    lines = []
    second = convc.compile(residual_net(6, seed=7), threads=2, progress=lines.append)
    assert len(compiled) == 1, "only the new model's entry point compiles"
    assert any("from the kernel cache" in line for line in lines), lines
    x = np.random.default_rng(2).standard_normal((16, 3, 29, 23)).astype(np.float32)
    np.testing.assert_allclose(second(x), run_onnxruntime(residual_net(6, seed=7), {"x": x}), rtol=1e-4, atol=1e-4)
    assert first(x).shape == (16, 10)


@pytest.mark.slow
def test_kernels_from_the_cache_compute_what_fresh_ones_do(kernel_store):
    """Linked from cached object files or compiled now: the same bits, and progress says which."""
    root, compiled = kernel_store
    lines = []
    convc.compile(residual_net(1, width=32, hw=(17, 19)), threads=2, progress=lines.append)
    assert any(line.startswith("module split: ") for line in lines), lines
    assert any(line.startswith("compile cache: storing ") for line in lines), lines
    model = residual_net(3, width=32, hw=(17, 19), seed=5)
    compiled.clear()
    cached = convc.compile(model, threads=2)
    assert len(compiled) == 1  # the entry point: every kernel came from the first model's objects
    fresh = convc.compile(model, threads=2, cache=False)
    x = np.random.default_rng(6).standard_normal((16, 3, 17, 19)).astype(np.float32)
    np.testing.assert_array_equal(cached(x), fresh(x))


@pytest.mark.slow
def test_a_damaged_kernel_file_is_compiled_again(kernel_store):
    root, compiled = kernel_store
    model = residual_net(1)
    convc.compile(model, threads=1)
    files = sorted(kernel_cache.files(root))
    data = bytearray(files[0].read_bytes())
    data[-1] ^= 0xFF
    files[0].write_bytes(bytes(data))
    for entry in (root / f"v{cache.FORMAT}").iterdir():
        entry.unlink()  # the whole-model entry too, so the kernels are looked up again
    compiled.clear()
    again = convc.compile(model, threads=1)
    assert len(compiled) == 2  # the entry point and the damaged module
    assert kernel_cache.load(root, files[0].stem) is not None  # stored again, intact
    x = np.random.default_rng(3).standard_normal((16, 3, 29, 23)).astype(np.float32)
    np.testing.assert_allclose(again(x), run_onnxruntime(model, {"x": x}), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_worker_processes_compile_and_a_dead_worker_hands_back(monkeypatch):
    monkeypatch.setattr(llvm_pool, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "2")
    model = residual_net(2)
    x = np.random.default_rng(4).standard_normal((16, 3, 29, 23)).astype(np.float32)
    want = run_onnxruntime(model, {"x": x})
    np.testing.assert_allclose(convc.compile(model, threads=2, cache=False)(x), want, rtol=1e-4, atol=1e-4)
    assert llvm_pool._idle and llvm_pool._idle[0].proc.poll() is None  # kept for the next compile

    def dies(self, request):
        raise llvm_pool.WorkerDied
    monkeypatch.setattr(llvm_pool._Worker, "compile", dies)
    np.testing.assert_allclose(convc.compile(model, threads=2, cache=False)(x), want, rtol=1e-4, atol=1e-4)


def test_invalid_ir_from_a_worker_is_a_compile_error(monkeypatch):
    monkeypatch.setattr(llvm_pool, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "2")
    target = jit.Target.host()
    bad = [SplitModule("define void @f() {\n  ret i32 0\n}\n", None), SplitModule("define void @g() {\n ret void\n}\n", "k")]
    with pytest.raises(CompileError, match="invalid LLVM IR"):
        llvm_pool.compile_modules(bad * 2, target)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_compile_jobs_must_be_a_positive_count(monkeypatch, value):
    monkeypatch.setenv("CONVC_COMPILE_JOBS", value)
    with pytest.raises(CompileError, match="CONVC_COMPILE_JOBS"):
        llvm_pool.jobs()


@pytest.mark.slow
def test_progress_while_llvm_runs(monkeypatch):
    monkeypatch.setattr(jit, "HEARTBEAT", 0.005)
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "1")
    lines = []
    convc.compile(residual_net(3), threads=2, cache=False, progress=lines.append)
    llvm = [line for line in lines if line.startswith("LLVM:")]
    assert llvm[0].startswith("LLVM: ") and "to compile" in llvm[0]
    assert any("modules compiled" in line and "% of the code" in line for line in llvm), llvm


def test_packed_objects_round_trip_and_refuse_damage():
    objs = [b"\x7fELF" + bytes([i]) * (10 + i) for i in range(3)]
    packed = jit.pack_objects(objs)
    assert jit.unpack_objects(packed) == objs
    assert jit.unpack_objects(objs[0]) == [objs[0]] and jit.pack_objects(objs[:1]) == objs[0]
    with pytest.raises(ValueError):
        jit.unpack_objects(packed[:-1])


def test_progress_while_an_ahead_of_time_build_runs_llvm(monkeypatch):
    """A shared library's module compiles in one piece: a line still comes every HEARTBEAT seconds."""
    monkeypatch.setattr(jit, "HEARTBEAT", 0.005)
    native = emit_module(planned(residual_net(2)), threads=2)
    lines = []
    jit.machine_code(str(native.ir_module), progress=lines.append)
    assert lines[0] == "LLVM optimization" and "LLVM machine code" in lines
    assert any(line.startswith("LLVM optimization: ") and line.endswith("s so far") for line in lines), lines


# --- streaming: kernel groups split off and compiled while the rest of the model is emitted -------

def test_streamed_groups_are_the_split_of_the_finished_module(monkeypatch):
    """What the JIT hands LLVM kernel by kernel, during emission, is exactly what splitting the
    finished module gives: no kernel's code changed after its group was split off."""
    from convc.codegen.split import Splitter
    added, emitted = [], []
    real_add, real_finish = llvm_pool.ModuleCompiler.add, Splitter.finish
    monkeypatch.setattr(llvm_pool.ModuleCompiler, "add", lambda self, m: (added.append(m), real_add(self, m))[1])
    monkeypatch.setattr(Splitter, "finish", lambda self: (emitted.append(len(added)), real_finish(self))[1])
    plan = planned(residual_net(3, batch=1))
    native, objects = cache.generate(plan, CompileOptions(threads=2), None, None)
    whole = split_module(native.ir_module, native.callees, cache.LIBRARY)
    assert sorted(m.text for m in added) == sorted(m.text for m in whole)
    assert len(objects) == len(whole) and all(objects)
    during = added[:emitted[0]]
    assert during and all(m.exports for m in during), "kernel groups go to LLVM while the model is emitted"
    assert any(m.key is None for m in added[emitted[0]:]), "the entry module once the model is complete"


@pytest.mark.slow
def test_workers_compile_while_the_model_is_emitted(monkeypatch):
    """With two jobs a worker process starts as soon as there is code to compile, before emission
    ends, and the model computes what onnxruntime does."""
    monkeypatch.setattr(llvm_pool, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "2")
    at_finish = []
    real = llvm_pool.ModuleCompiler.finish

    def finish(self):
        at_finish.append((len(self.threads), self.closed))
        return real(self)
    monkeypatch.setattr(llvm_pool.ModuleCompiler, "finish", finish)
    model = residual_net(2, hw=(17, 19))
    compiled = convc.compile(model, threads=2, cache=False)
    assert at_finish == [(1, False)], at_finish  # the worker was running before finish was called
    x = np.random.default_rng(8).standard_normal((16, 3, 17, 19)).astype(np.float32)
    np.testing.assert_allclose(compiled(x), run_onnxruntime(model, {"x": x}), rtol=1e-4, atol=1e-4)


def test_a_failing_emitter_stops_the_workers(monkeypatch):
    """An error while emitting layer 6 reaches the caller as that node's CompileError, and the
    workers already compiling earlier groups stop (no hang, the worker goes back to the pool)."""
    from convc.codegen.module import ModuleEmitter
    monkeypatch.setattr(llvm_pool, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "2")
    real = ModuleEmitter.emitter_for
    seen = []

    def emitter_for(self, op):
        seen.append(op.name)
        if len(seen) == 6:
            def broken(em, op):
                raise RuntimeError("emitter bug")
            return broken
        return real(self, op)
    monkeypatch.setattr(ModuleEmitter, "emitter_for", emitter_for)
    with pytest.raises(CompileError, match=r"code generation failed: emitter bug"):
        convc.compile(residual_net(2, hw=(17, 19)), threads=2, cache=False)
    assert llvm_pool._idle and all(w.proc.poll() is None for w in llvm_pool._idle)


def _module_with_a_shared_helper():
    """An entry point that calls a helper a kernel calls too: the one case the split keeps a kernel
    in the entry module."""
    from llvmlite import ir
    m = ir.Module("shared")
    void = ir.FunctionType(ir.VoidType(), [])
    helper_fn = ir.Function(m, void, "helper")
    helper_fn.linkage = "internal"
    ir.IRBuilder(helper_fn.append_basic_block()).ret_void()
    kernel = ir.Function(m, void, "kernel")
    kernel.linkage = "internal"
    b = ir.IRBuilder(kernel.append_basic_block())
    b.call(helper_fn, [])
    b.ret_void()
    return m, void, kernel, helper_fn


def test_a_kernel_sharing_code_with_the_entry_point_is_split_again():
    from llvmlite import ir
    from convc.codegen.split import Splitter
    m, void, kernel, helper_fn = _module_with_a_shared_helper()
    s = Splitter(m)
    assert len(s.add(["kernel"])) == 1  # streamed: split off before the entry point exists
    entry = ir.Function(m, void, "entry")
    b = ir.IRBuilder(entry.append_basic_block())
    b.call(kernel, [])
    b.call(helper_fn, [])
    b.ret_void()
    assert s.finish() == ([], False)  # so the caller splits the finished module instead
    modules = split_module(m, ["kernel"])
    assert len(modules) == 1 and modules[0].kernels == 1  # the kernel stays with the entry point
    llvm_worker.object_code(modules[0].text, *(lambda t: (t.triple, t.cpu, t.features))(jit.Target.host()))


def test_a_guess_compiled_early_serves_the_module_with_its_text(monkeypatch):
    """A waiting group's module, compiled by a worker as a guess, is the object file of the module
    added later with the same text: nothing compiles again in finish."""
    import time
    monkeypatch.setattr(llvm_pool, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "2")
    text = 'define void @"convc_kguess"(ptr %p) {\n  store float 1.0, ptr %p\n  ret void\n}\n'
    module = SplitModule(text, "guess-key", 1, KERNEL_SPEED, exports=("convc_kguess",))
    compiler = llvm_pool.ModuleCompiler(jit.Target.host(), None, stream=True)
    compiler.guess(module)
    deadline = time.monotonic() + 60
    while module.key not in compiler.guessed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert module.key in compiler.guessed

    def no_local_compile(*args):
        raise AssertionError("compiled again")
    monkeypatch.setattr(llvm_worker, "object_code", no_local_compile)
    compiler.add(module)
    objects = compiler.finish()
    assert objects == [compiler.guessed[module.key]] and objects[0].startswith(b"\x7fELF")


def test_a_kernel_that_loses_noalias_after_it_was_split_off_is_split_again(monkeypatch):
    """A later layer that shares an earlier layer's kernel function but aliases an argument drops
    ``noalias`` from a function already handed to LLVM: the compile splits the finished module
    again, and the code it runs has no ``noalias`` there."""
    from convc.codegen.module import ModuleEmitter
    real = ModuleEmitter.overlapping
    asked = []

    def overlapping(self, args):
        # b1_b's conv shares b0_b's function (its signature saw no aliasing: the first question);
        # then pretend it works in place after all (the second, when the call is made)
        if "b1_relu_nhwc" in args:
            asked.append(1)
            if len(asked) == 2:
                return frozenset({0})
        return real(self, args)
    monkeypatch.setattr(ModuleEmitter, "overlapping", overlapping)
    whole = []
    real_split = cache.split_module
    monkeypatch.setattr(cache, "split_module", lambda *a: (whole.append(a), real_split(*a))[1])
    model = residual_net(2, hw=(17, 19))
    plan = planned(model)
    native, objects = cache.generate(plan, CompileOptions(threads=2), None, None)
    assert native.changed_after_handover and whole, "the finished module was split again"
    fn = native.ir_module.globals[dict(native.kernel_names)["b1_b_1"]]
    assert fn is native.ir_module.globals[dict(native.kernel_names)["b0_b_1"]] and "noalias" not in fn.args[0].attributes
    compiled = convc.compile(model, threads=2, cache=False)
    x = np.random.default_rng(9).standard_normal((16, 3, 17, 19)).astype(np.float32)
    np.testing.assert_allclose(compiled(x), run_onnxruntime(model, {"x": x}), rtol=1e-4, atol=1e-4)


def test_a_guess_the_kernel_cache_holds_is_not_compiled(tmp_path, monkeypatch):
    """A waiting group whose module a model compiled before is not compiled again as a guess: the
    final module reads it from the kernel cache."""
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "2")
    text = 'define void @"convc_kcached"(ptr %p) {\n  store float 2.0, ptr %p\n  ret void\n}\n'
    module = SplitModule(text, "cached-key", 1, KERNEL_SPEED, exports=("convc_kcached",))
    target = jit.Target.host()
    obj = llvm_worker.object_code(text, target.triple, target.cpu, target.features, KERNEL_SPEED)
    compiler = llvm_pool.ModuleCompiler(target, tmp_path, stream=True)
    kernel_cache.store(tmp_path, compiler._cache_key(module), obj)
    compiler.guess(module)
    assert compiler.guesses == [] and compiler.guessed == {}
    compiler.add(module)
    assert compiler.finish() == [obj]


def test_every_kernel_object_is_in_the_cache_when_the_compile_finishes(tmp_path, monkeypatch):
    """A module a worker thread compiled is stored in the kernel cache before it counts as done, so
    the cache holds it when ``finish`` returns: the compile prunes the cache to its limit right after,
    and an object written later left it over the limit (a CI run saw 52560 bytes of a 51600 limit)."""
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "2")
    real_store = kernel_cache.store

    def slow_store(root, key, obj):
        time.sleep(0.3)  # a busy disk: long enough for finish() to return first, were it not waited for
        real_store(root, key, obj)
    monkeypatch.setattr(kernel_cache, "store", slow_store)
    compiler = llvm_pool.ModuleCompiler(jit.Target.host(), tmp_path, stream=True)
    body = 'define void @"convc_kstore{0}"(ptr %p) {{\n  store float {0}.0, ptr %p\n  ret void\n}}\n'
    modules = [SplitModule(body.format(k), f"store-key-{k}", 1, KERNEL_SPEED, exports=(f"convc_kstore{k}",))
               for k in range(4)]
    for m in modules:
        compiler.add(m)
    compiler.finish()
    assert all(kernel_cache.has(tmp_path, compiler._cache_key(m)) for m in modules)
