"""A persistent thread pool written in LLVM IR, so JIT and AOT code share it (needs only pthreads).

    ptr  convc_pool_create(i64 nthreads)        starts nthreads-1 workers
    void convc_pool_destroy(ptr pool)           stops and joins them
    void convc_parallel(ptr pool, ptr fn, ptr argv)
        runs fn(argv, tid, nthreads) on every thread (tid 0 on the caller) and returns when all
        are done; a null pool runs fn(argv, 0, 1) on the caller alone.

Waking a sleeping thread costs ~50 us in this VM, a spinning one ~1.6 us, so workers spin on a
sequence number between kernels; after ~0.5 ms without work they back off to sched_yield and
then to short sleeps, so an idle pool does not slow the rest of the machine.
"""
from __future__ import annotations

from llvmlite import ir

from convc.codegen.llvm_utils import I32, I64, PTR, VOID, for_range, gep, i64

# pool layout, in bytes; the counters written by different threads sit on separate cache lines
SEQ, DONE, FN, ARGV, NTHREADS, STOP, WORKERS = 0, 64, 128, 136, 144, 152, 192
WORKER_SLOT = 16  # per worker: pthread_t, then the pool pointer's owner tid (i64)
SPIN_PAUSES = 20000
YIELDS = 2000
SLEEP_US = 50

KERNEL_TYPE = ir.FunctionType(VOID, [PTR, I64, I64])  # fn(argv, tid, nthreads)


def _field(b: ir.IRBuilder, pool: ir.Value, offset: int) -> ir.Value:
    return b.gep(pool, [i64(offset)], inbounds=True, source_etype=ir.IntType(8))


def _extern(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(ret, args), name=name)


def _pause(b: ir.IRBuilder, triple: str) -> None:
    if triple.startswith(("x86_64", "i686", "i386")):
        b.call(_extern(b.module, "llvm.x86.sse2.pause", VOID, []), [])


def _backoff(b: ir.IRBuilder, spins: ir.Value, triple: str) -> ir.Value:
    """One wait step, escalating from pause to sched_yield to usleep; returns spins + 1."""
    with b.if_else(b.icmp_unsigned("<", spins, i64(SPIN_PAUSES))) as (spin, rest):
        with spin:
            _pause(b, triple)
        with rest:
            with b.if_else(b.icmp_unsigned("<", spins, i64(SPIN_PAUSES + YIELDS))) as (yield_, sleep):
                with yield_:
                    b.call(_extern(b.module, "sched_yield", I32, []), [])
                with sleep:
                    b.call(_extern(b.module, "usleep", I32, [I32]), [ir.Constant(I32, SLEEP_US)])
    return b.add(spins, i64(1))


def emit_threadpool(module: ir.Module, triple: str) -> None:
    """Add the pool functions to ``module`` (once)."""
    if "convc_parallel" in module.globals:
        return
    malloc = _extern(module, "malloc", PTR, [I64])
    free = _extern(module, "free", VOID, [PTR])
    create_thread = _extern(module, "pthread_create", I32, [PTR, PTR, PTR, PTR])
    join = _extern(module, "pthread_join", I32, [I64, PTR])

    # --- worker(slot): slot points at {pthread_t, pool, tid} ---------------------------------
    worker = ir.Function(module, ir.FunctionType(PTR, [PTR]), name="convc_pool_worker")
    worker.linkage = "internal"
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    slot = worker.args[0]
    pool = b.load(gep(b, slot, 1, PTR), typ=PTR)
    tid = b.load(gep(b, slot, 2, I64), typ=I64)
    seen0 = i64(0)  # the pool starts at sequence 0: work published before this thread ran is not missed
    entry = b.block
    wait = b.append_basic_block("wait")
    b.branch(wait)
    b.position_at_end(wait)
    seen = b.phi(I64, "seen")
    seen.add_incoming(seen0, entry)
    spins = b.phi(I64, "spins")
    spins.add_incoming(i64(0), entry)
    now = b.load_atomic(_field(b, pool, SEQ), "acquire", 8, typ=I64)
    idle = b.append_basic_block("idle")
    work = b.append_basic_block("work")
    b.cbranch(b.icmp_unsigned("==", now, seen), idle, work)
    b.position_at_end(idle)
    more = _backoff(b, spins, triple)
    seen.add_incoming(seen, b.block)
    spins.add_incoming(more, b.block)
    b.branch(wait)
    b.position_at_end(work)
    stop = b.load(_field(b, pool, STOP), typ=I64)
    quit_ = b.append_basic_block("quit")
    run = b.append_basic_block("run")
    b.cbranch(b.icmp_unsigned("!=", stop, i64(0)), quit_, run)
    b.position_at_end(run)
    fn = b.load(_field(b, pool, FN), typ=PTR)
    argv = b.load(_field(b, pool, ARGV), typ=PTR)
    nthreads = b.load(_field(b, pool, NTHREADS), typ=I64)
    b.call(_TypedCallee(fn), [argv, tid, nthreads])
    b.atomic_rmw("add", _field(b, pool, DONE), i64(1), "release")
    seen.add_incoming(now, b.block)
    spins.add_incoming(i64(0), b.block)
    b.branch(wait)
    b.position_at_end(quit_)
    b.ret(ir.Constant(PTR, None))

    # --- create ------------------------------------------------------------------------------
    create = ir.Function(module, ir.FunctionType(PTR, [I64]), name="convc_pool_create")
    b = ir.IRBuilder(create.append_basic_block("entry"))
    n = create.args[0]
    size = b.add(i64(WORKERS), b.mul(n, i64(WORKER_SLOT * 2)))
    pool = b.call(malloc, [size])
    for off in (SEQ, DONE, STOP):
        b.store(i64(0), _field(b, pool, off))
    b.store(n, _field(b, pool, NTHREADS))
    with for_range(b, n, start=1, name="t") as t:
        slot = b.gep(pool, [b.add(i64(WORKERS), b.mul(t, i64(WORKER_SLOT * 2)))], inbounds=True,
                     source_etype=ir.IntType(8))
        b.store(pool, gep(b, slot, 1, PTR))
        b.store(t, gep(b, slot, 2, I64))
        b.call(create_thread, [slot, ir.Constant(PTR, None), worker, slot])
    b.ret(pool)

    # --- destroy -----------------------------------------------------------------------------
    destroy = ir.Function(module, ir.FunctionType(VOID, [PTR]), name="convc_pool_destroy")
    b = ir.IRBuilder(destroy.append_basic_block("entry"))
    pool = destroy.args[0]
    with b.if_then(b.icmp_unsigned("!=", pool, ir.Constant(PTR, None))):
        b.store(i64(1), _field(b, pool, STOP))
        b.atomic_rmw("add", _field(b, pool, SEQ), i64(1), "seq_cst")
        n = b.load(_field(b, pool, NTHREADS), typ=I64)
        with for_range(b, n, start=1, name="t") as t:
            slot = b.gep(pool, [b.add(i64(WORKERS), b.mul(t, i64(WORKER_SLOT * 2)))], inbounds=True,
                         source_etype=ir.IntType(8))
            b.call(join, [b.load(slot, typ=I64), ir.Constant(PTR, None)])
        b.call(free, [pool])
    b.ret_void()

    # --- parallel ----------------------------------------------------------------------------
    par = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR, PTR]), name="convc_parallel")
    b = ir.IRBuilder(par.append_basic_block("entry"))
    pool, fn, argv = par.args
    kernel = _TypedCallee(fn)
    with b.if_else(b.icmp_unsigned("==", pool, ir.Constant(PTR, None))) as (alone, shared):
        with alone:
            b.call(kernel, [argv, i64(0), i64(1)])
        with shared:
            n = b.load(_field(b, pool, NTHREADS), typ=I64)
            b.store(fn, _field(b, pool, FN))
            b.store(argv, _field(b, pool, ARGV))
            b.atomic_rmw("xchg", _field(b, pool, DONE), i64(0), "monotonic")
            b.atomic_rmw("add", _field(b, pool, SEQ), i64(1), "release")
            b.call(kernel, [argv, i64(0), n])
            pre = b.block
            wait = b.append_basic_block("join")
            done = b.append_basic_block("joined")
            b.branch(wait)
            b.position_at_end(wait)
            spins = b.phi(I64, "spins")
            spins.add_incoming(i64(0), pre)
            finished = b.load_atomic(_field(b, pool, DONE), "acquire", 8, typ=I64)
            spin = b.append_basic_block("spin")
            b.cbranch(b.icmp_unsigned("==", finished, b.sub(n, i64(1))), done, spin)
            b.position_at_end(spin)
            more = _backoff(b, spins, triple)  # a worker descheduled on a busy machine needs the core
            spins.add_incoming(more, b.block)
            b.branch(wait)
            b.position_at_end(done)
    b.ret_void()


class _TypedCallee:
    """Lets IRBuilder.call emit an indirect call through an opaque pointer with KERNEL_TYPE."""

    def __init__(self, ptr: ir.Value):
        self.ptr = ptr
        self.function_type = KERNEL_TYPE
        self.type = PTR

    def get_reference(self) -> str:
        return self.ptr.get_reference()
