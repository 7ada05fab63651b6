"""This machine's peak float32 FMA throughput, measured once and cached.

A JIT-compiled loop keeps independent accumulators of the host's vector width in phi nodes and
updates each with one FMA per iteration, nothing else: enough independent chains to hide the FMA
latency (4 cycles on 2 pipes: 8 chains) and few enough to stay in registers (``loop_shape``).
The shape must fit the register file: 16 accumulators of 16 floats on an AVX2 machine are 32
256-bit halves for 16 ymm registers, spilled to the stack, and measured 43.5 GFLOP/s on a Zen 3
core whose FMAs do 99 (12 of 8 floats), so ``convc profile`` put 1x1 convs at 150% of "peak".
The single-core figure runs it on one thread; the all-core figure runs it on one thread per CPU
at once (ctypes releases the GIL).

The result (about a second to measure) is cached as JSON in ``$CONVC_CACHE_DIR/peak.json`` (default ``~/.cache/convc``), keyed
by CPU name, CPU features and core count; a different machine measures again. A measurement that
contradicts itself (``noise``: the all-core figure below the single-core one, or two rounds that
disagree, or other processes using the cores meanwhile, as /proc/stat tells on Linux) was taken under
load: it is measured again, and if it stays noisy it is used for this run, flagged, and never cached,
so later profiles do not inherit a wrong "% of peak".
"""
from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from convc.codegen.llvm_utils import I64, PTR, VOID, call_intrinsic
from llvmlite import ir

_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)


def loop_shape(features: str | None = None) -> tuple[int, int]:
    """(lanes, accumulators) of the FMA loop for a host with LLVM ``features``: AVX-512's 32 zmm
    registers hold 16 accumulators of 16 floats; AVX2's (and SSE's) 16 registers 12 of 8 (or 4)
    floats, beside the loop's two constant operands."""
    from convc.codegen.jit import Target
    from convc.codegen.kernels.blas import host_isa
    width = host_isa(Target.host().features if features is None else features).width
    return width, 16 if width >= 16 else 12


@dataclass(frozen=True)
class Peak:
    single_core_gflops: float
    all_core_gflops: float
    cores: int
    cpu: str
    noisy: str | None = None  # why the figure is not trustworthy (measured under load); never cached
    others: float = 0.0       # the share of the cores other processes used while it was measured

    def percent(self, gflops: float, all_cores: bool = False) -> float:
        return 100.0 * gflops / (self.all_core_gflops if all_cores else self.single_core_gflops)


def cache_dir() -> Path:
    return Path(os.environ.get("CONVC_CACHE_DIR") or Path.home() / ".cache" / "convc")


def core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class OtherLoad:
    """The share of this process's cores that other processes (and the hypervisor: steal time) used
    between ``start()`` and ``stop()``, from /proc/stat's per-CPU counters and this process's CPU
    time. 0.0 where /proc/stat is not readable (not Linux): no evidence of load."""

    def __init__(self) -> None:
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:
            self.cpus = []
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start()

    def _busy(self) -> float | None:
        """Busy seconds of our CPUs so far (user, nice, system, irq, softirq and steal), or None."""
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        wanted = {f"cpu{c}" for c in self.cpus}
        busy = 0
        for line in lines:
            fields = line.split()
            if fields and fields[0] in wanted:
                values = [int(v) for v in fields[1:9]] + [0] * (8 - len(fields[1:9]))
                busy += sum(values) - values[3] - values[4]  # all but idle and iowait (guest is in user)
        return busy / self.hz if wanted and busy else None

    def start(self) -> None:
        self._t0, self._own0, self._busy0 = time.perf_counter(), time.process_time(), self._busy()

    def stop(self) -> float:
        busy = self._busy()
        wall = time.perf_counter() - self._t0
        if busy is None or self._busy0 is None or wall <= 0 or not self.cpus:
            return 0.0
        others = (busy - self._busy0) - (time.process_time() - self._own0)
        return max(0.0, min(1.0, others / (wall * len(self.cpus))))


def fma_loop_ir(lanes: int, accumulators: int) -> str:
    """``void peak_fma(i64 iterations, float *out)``: out[0..lanes) = the summed accumulators."""
    vec = ir.VectorType(ir.FloatType(), lanes)
    module = ir.Module(name="convc_peak")
    fn = ir.Function(module, ir.FunctionType(VOID, [I64, PTR]), name="peak_fma")
    n, out = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    a = ir.Constant(vec, [1.0 + 1e-7 * i for i in range(lanes)])
    x = ir.Constant(vec, [0.999999] * lanes)
    entry = b.block
    header = b.append_basic_block("loop")
    body_end = b.append_basic_block("done")
    b.branch(header)
    b.position_at_end(header)
    i = b.phi(I64, name="i")
    i.add_incoming(ir.Constant(I64, 0), entry)
    accs = []
    for k in range(accumulators):
        phi = b.phi(vec, name=f"acc{k}")
        phi.add_incoming(ir.Constant(vec, [float(k)] * lanes), entry)
        accs.append(phi)
    new = [call_intrinsic(b, "llvm.fma.f32", [acc, x, a]) for acc in accs]
    nxt = b.add(i, ir.Constant(I64, 1))
    for phi, v in zip(accs, new):
        phi.add_incoming(v, header)
    i.add_incoming(nxt, header)
    b.cbranch(b.icmp_signed("<", nxt, n), header, body_end)
    b.position_at_end(body_end)
    total = new[0]
    for v in new[1:]:
        total = b.fadd(total, v)
    b.store(total, out, align=4)  # ctypes arrays are only 4-byte aligned
    b.ret_void()
    return str(module)


class _Kernel:
    def __init__(self) -> None:
        from convc.codegen.jit import JitEngine
        self.lanes, accumulators = loop_shape()
        self.flops_per_iteration = 2 * self.lanes * accumulators  # one FMA: 2 FLOPs per lane
        self.engine = JitEngine(fma_loop_ir(self.lanes, accumulators))
        self.fn = _ENTRY(self.engine.address("peak_fma"))

    def gflops(self, iterations: int, threads: int) -> float:
        outs = [(ctypes.c_float * self.lanes)() for _ in range(threads)]
        start = threading.Barrier(threads + 1)

        def work(k: int) -> None:
            start.wait()
            self.fn(iterations, ctypes.addressof(outs[k]))

        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        start.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - t0
        return threads * iterations * self.flops_per_iteration / seconds / 1e9


def measure(seconds: float = 0.005, repeats: int = 30) -> Peak:
    """Run the FMA loop on one core and on all cores; the best of ``repeats`` short bursts each.

    Short bursts and the maximum keep the figure right on a busy machine: a burst of a few
    milliseconds often runs without being descheduled, a long run almost never does."""
    from convc.codegen.jit import Target
    kernel = _Kernel()
    rough = kernel.gflops(1 << 16, 1)
    iterations = max(1 << 16, int(seconds * rough * 1e9 / kernel.flops_per_iteration))
    cores = core_count()
    load = OtherLoad()
    single = max(kernel.gflops(iterations, 1) for _ in range(repeats))
    every = max(kernel.gflops(iterations, cores) for _ in range(repeats)) if cores > 1 else single
    return Peak(round(single, 1), round(every, 1), cores, Target.host().cpu, others=round(load.stop(), 3))


ROUND_AGREEMENT = 0.10  # two rounds of the single-core figure must agree within 10%
OTHERS_LIMIT = 0.15     # other processes using more than this share of the cores: measured under load
ATTEMPTS = 3


def noise(first: Peak, second: Peak | None = None) -> str | None:
    """Why a measurement (or two rounds of it) contradicts itself, or None when it does not."""
    if first.others > OTHERS_LIMIT:
        return (f"other processes used {100 * first.others:.0f}% of the {first.cores} core(s) while it was "
                f"measured")
    if first.cores > 1 and first.all_core_gflops < first.single_core_gflops:
        return (f"the {first.cores}-core peak ({first.all_core_gflops:.1f} GFLOP/s) came out below the 1-core peak "
                f"({first.single_core_gflops:.1f}): other processes were using the cores")
    if second is not None:
        a, b = first.single_core_gflops, second.single_core_gflops
        if abs(a - b) > ROUND_AGREEMENT * max(a, b):
            return f"two rounds disagree by {100 * abs(a - b) / max(a, b):.0f}% ({a:.1f} and {b:.1f} GFLOP/s on one core)"
    return None


def measure_quietly(attempts: int = ATTEMPTS) -> Peak:
    """Measure in two rounds until they agree and neither contradicts itself (at most ``attempts``
    times); otherwise the best figures seen, with ``noisy`` saying why."""
    best: Peak | None = None
    why = None
    for _ in range(attempts):
        first, second = measure(), measure()
        why = noise(first) or noise(second) or noise(first, second)
        top = Peak(max(first.single_core_gflops, second.single_core_gflops),
                   max(first.all_core_gflops, second.all_core_gflops), first.cores, first.cpu,
                   others=max(first.others, second.others))
        if why is None:
            return top
        best = top if best is None else Peak(max(best.single_core_gflops, top.single_core_gflops),
                                             max(best.all_core_gflops, top.all_core_gflops), top.cores, top.cpu,
                                             others=min(best.others, top.others))
    assert best is not None
    return Peak(best.single_core_gflops, best.all_core_gflops, best.cores, best.cpu,
                noisy=f"measured under load, not cached: {why}", others=best.others)


def _cache_key() -> str:
    from convc.codegen.jit import Target
    host = Target.host()
    # v2: peaks cached before the load check re-measure; v3: before the loop fitted AVX2's registers
    return f"v3|{host.cpu}|{host.features}|{core_count()}"


def peak(refresh: bool = False) -> Peak:
    """The cached peak of this machine, measured (about two seconds) on first use or with ``refresh``;
    a noisy measurement (``Peak.noisy``) is returned but not cached."""
    path = cache_dir() / "peak.json"
    key = _cache_key()
    if not refresh:
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                result = Peak(**cached["peak"])
                if result.noisy is None and noise(result) is None:
                    return result
        except (OSError, ValueError, KeyError, TypeError):
            pass
    result = measure_quietly()
    if result.noisy:
        return result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "peak": asdict(result)}, indent=2))
    except OSError:
        pass  # a read-only home still gets the figure, just not cached
    return result
