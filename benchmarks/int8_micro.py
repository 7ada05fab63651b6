"""Register-resident throughput of the multiply sequences the int8 conv kernels can use, on this CPU.

    python benchmarks/int8_micro.py [--accumulators 8,12] [--rounds 7]

One JIT-compiled loop per sequence, ``n`` accumulators updated per iteration from two activation vectors
(changed every iteration, so nothing is loop-invariant) and two weight vectors held in registers; each
figure is the median over alternating rounds of MACs per second of this process's CPU time (steadier than
wall time on a shared machine). Sequences, per 256-bit accumulator update:

- ``pmaddwd``: int16 x int16 pairs into int32 (16 MACs), then vpaddd: the int16 kernel (exact);
- ``pmaddubsw``: u8 x s8 pairs into saturating int16, vpmaddwd by ones, vpaddd (32 MACs): exact only
  for weights whose adjacent pairs have |w0| + |w1| <= 128 (7-bit weights);
- ``split``: the same twice, on the two halves ceil(w/2) and floor(w/2) of full-range weights (32 MACs,
  exact): what Int8Conv runs on AVX2 for 8-bit weights;
- ``fma``: float32 vfmadd (8 MACs), for scale.

What the kernels reach on real layers (benchmarks/int8.py, convc profile --measure) against these rates is
the share lost to loads, broadcasts, gathering and the requantization epilogue.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import llvmlite.binding as llvm
from llvmlite import ir

I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
V8, V16, V32, VF = ir.VectorType(I32, 8), ir.VectorType(I16, 16), ir.VectorType(I8, 32), ir.VectorType(F32, 8)
MACS = {"pmaddwd": 16, "pmaddubsw": 32, "split": 32, "fma": 8}


def _loop(kind: str, accumulators: int) -> str:
    """void f(i64 n, ptr data): n iterations of ``accumulators`` updates; the sum is stored to data."""
    mod = ir.Module()
    mod.triple = llvm.get_process_triple()
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I64, ir.PointerType()]), name="f")
    b = ir.IRBuilder(fn.append_basic_block())
    data = fn.args[1]
    vec = [b.load(b.gep(data, [ir.Constant(I32, i)], source_etype=V32), typ=V32, align=1) for i in range(4)]
    ws, xs = vec[:2], vec[2:]
    wd = ir.Function(mod, ir.FunctionType(V8, [V16, V16]), "llvm.x86.avx2.pmadd.wd")
    ubs = ir.Function(mod, ir.FunctionType(V16, [V32, V32]), "llvm.x86.avx2.pmadd.ub.sw")
    fma = ir.Function(mod, ir.FunctionType(VF, [VF, VF, VF]), "llvm.fma.v8f32")
    ones = ir.Constant(V16, [ir.Constant(I16, 1)] * 16)
    acc_type = VF if kind == "fma" else V8
    entry, body, done = b.block, fn.append_basic_block("body"), fn.append_basic_block("done")
    b.branch(body)
    b.position_at_end(body)
    i = b.phi(I64)
    i.add_incoming(ir.Constant(I64, 0), entry)
    accs = [b.phi(acc_type) for _ in range(accumulators)]
    for a in accs:
        a.add_incoming(ir.Constant(acc_type, None), entry)
    lane = b.insert_element(ir.Constant(V8, None), b.trunc(i, I32), ir.Constant(I32, 0))
    step = b.bitcast(b.shuffle_vector(lane, lane, ir.Constant(V8, [ir.Constant(I32, 0)] * 8)), V32)
    xs = [b.xor(x, step) for x in xs]  # new activations every iteration

    def pmaddubsw(acc, x, w):
        return b.add(acc, b.call(wd, [b.call(ubs, [x, w]), ones]))
    new = []
    for j, a in enumerate(accs):
        x, w, other = xs[j % 2], ws[(j // 2) % 2], ws[(j // 2 + 1) % 2]
        if kind == "pmaddwd":
            new.append(b.add(a, b.call(wd, [b.bitcast(x, V16), b.bitcast(w, V16)])))
        elif kind == "pmaddubsw":
            new.append(pmaddubsw(a, x, w))
        elif kind == "split":
            new.append(pmaddubsw(pmaddubsw(a, x, w), x, other))
        else:
            new.append(b.call(fma, [b.bitcast(x, VF), b.bitcast(w, VF), a]))
    nxt = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(nxt, body)
    for a, n in zip(accs, new):
        a.add_incoming(n, body)
    b.cbranch(b.icmp_signed("<", nxt, fn.args[0]), body, done)
    b.position_at_end(done)
    total = new[0]
    for n in new[1:]:
        total = b.fadd(total, n) if kind == "fma" else b.add(total, n)
    b.store(b.bitcast(total, V32), data, align=1)
    b.ret_void()
    return str(mod)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accumulators", default="8,12")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iterations", type=int, default=2_000_000)
    args = p.parse_args(argv)
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    features = llvm.get_host_cpu_features().flatten()
    if "+avx2" not in features.split(","):
        print("this CPU has no AVX2: nothing to measure")
        return 0
    engines, calls = [], {}
    for kind in MACS:
        for n in map(int, args.accumulators.split(",")):
            module = llvm.parse_assembly(_loop(kind, n))
            # MCJIT takes ownership of its TargetMachine: one each
            tm = llvm.Target.from_default_triple().create_target_machine(cpu=llvm.get_host_cpu_name(),
                                                                         features=features, opt=3)
            engine = llvm.create_mcjit_compiler(module, tm)
            engine.finalize_object()
            engines.append(engine)
            calls[kind, n] = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(engine.get_function_address("f"))
    data = (ctypes.c_uint8 * 160)(*([3] * 160))
    rates: dict[tuple[str, int], list[float]] = {key: [] for key in calls}
    for _ in range(args.rounds):
        for (kind, n), f in calls.items():
            start = time.process_time()
            f(args.iterations, ctypes.addressof(data))
            rates[kind, n].append(args.iterations * n * MACS[kind] / (time.process_time() - start) / 1e9)
    print(f"{llvm.get_host_cpu_name()}, 1 thread, median of {args.rounds} alternating rounds, GMAC per CPU-second")
    for (kind, n), r in rates.items():
        print(f"{kind:<10} {n:>3} accumulators {statistics.median(r):8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
