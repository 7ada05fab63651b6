"""A persistent thread pool written in LLVM IR, so JIT and AOT code share it (needs only pthreads).

    ptr  convc_pool_create(i64 nthreads)        starts nthreads-1 workers
    void convc_pool_destroy(ptr pool)           stops and joins them
    void convc_parallel(ptr pool, ptr fn, ptr argv)
        runs fn(argv, task, ntasks) for task = 0 .. nthreads-1 and returns when all are done;
        a null pool runs fn(argv, 0, 1) on the caller alone.

Tasks are claimed, not assigned: the caller and every awake worker take task numbers from one
atomic counter, so a worker that is asleep or descheduled (a busy machine) never holds the caller
up; the caller simply runs the remaining tasks itself. The counter carries the call's sequence
number in its high half, so a worker that wakes late can never claim a task of an older call.

Waking a sleeping thread costs ~50 us in this VM, a spinning one ~1.6 us, so workers spin on the
sequence number between kernels; after ~0.5 ms without work they back off to sched_yield, and
then block in the kernel (a futex on the sequence number, on Linux) until the next call, so an
idle pool uses no processor time: numpy's BLAS threads or anything else in the process get the
cores between calls. A caller pays the futex wake (a system call) only when a worker sleeps.
Elsewhere the last step is a short sleep in a loop.
"""
from __future__ import annotations

from llvmlite import ir

from convc.abi import PARALLEL, POOL_CREATE, POOL_DESTROY
from convc.codegen.llvm_utils import I32, I64, PTR, VOID, for_range, gep, i64

# pool layout, in bytes; the words written by different threads sit on separate cache lines
SEQ, CLAIMED, FINISHED, FN, ARGV, NTASKS, STOP, NTHREADS, SLEEPERS = 0, 64, 128, 192, 200, 208, 216, 224, 256
WORKERS = 320
WORKER_SLOT = 32  # per worker: pthread_t, pool pointer, worker number
SPIN_PAUSES = 20000
YIELDS = 200
SLEEP_US = 50
# futex(2): the system call number per architecture, and the process-private operations
SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129

KERNEL_TYPE = ir.FunctionType(VOID, [PTR, I64, I64])  # fn(argv, task, ntasks)


def _field(b: ir.IRBuilder, pool: ir.Value, offset) -> ir.Value:
    off = i64(offset) if isinstance(offset, int) else offset
    return b.gep(pool, [off], inbounds=True, source_etype=ir.IntType(8))


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


def _futex_number(triple: str) -> int | None:
    arch = triple.split("-")[0]
    return SYS_FUTEX.get(arch) if "linux" in triple else None


def _futex(b: ir.IRBuilder, number: int, word: ir.Value, op: int, value: ir.Value) -> None:
    """syscall(SYS_futex, word, op, value, NULL): wait while *word == value, or wake waiters."""
    syscall = _extern(b.module, "syscall", I64, [I64])
    syscall.function_type.var_arg = True
    b.call(syscall, [i64(number), word, ir.Constant(I32, op), value, ir.Constant(PTR, None)])


def _wake_sleepers(b: ir.IRBuilder, pool: ir.Value, triple: str) -> None:
    """After SEQ changed: wake the workers blocked on it, if any (seq_cst pairs with the worker's
    sleeper count increment then SEQ load: one side always sees the other)."""
    number = _futex_number(triple)
    if number is None:
        return
    sleepers = b.load_atomic(_field(b, pool, SLEEPERS), "seq_cst", 8, typ=I64)
    with b.if_then(b.icmp_unsigned("!=", sleepers, i64(0)), likely=False):
        _futex(b, number, _field(b, pool, SEQ), FUTEX_WAKE_PRIVATE, ir.Constant(I32, 2**31 - 1))


def _sleep_until_changed(b: ir.IRBuilder, pool: ir.Value, seen: ir.Value, triple: str) -> None:
    """Block until SEQ differs from ``seen`` (may return early; the caller re-checks)."""
    number = _futex_number(triple)
    if number is None:
        b.call(_extern(b.module, "usleep", I32, [I32]), [ir.Constant(I32, SLEEP_US)])
        return
    b.atomic_rmw("add", _field(b, pool, SLEEPERS), i64(1), "seq_cst")
    now = b.load_atomic(_field(b, pool, SEQ), "seq_cst", 8, typ=I64)
    with b.if_then(b.icmp_unsigned("==", now, seen)):
        # the kernel compares the low 32 bits of SEQ (little-endian) before sleeping
        _futex(b, number, _field(b, pool, SEQ), FUTEX_WAIT_PRIVATE, b.trunc(seen, I32))
    b.atomic_rmw("sub", _field(b, pool, SLEEPERS), i64(1), "seq_cst")


class _TypedCallee:
    """Lets IRBuilder.call emit an indirect call through an opaque pointer with KERNEL_TYPE."""

    def __init__(self, ptr: ir.Value):
        self.ptr = ptr
        self.function_type = KERNEL_TYPE
        self.type = PTR

    def get_reference(self) -> str:
        return self.ptr.get_reference()


def _emit_claim_loop(module: ir.Module) -> ir.Function:
    """void claim(pool, seq): run tasks of call ``seq`` until none is left unclaimed."""
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR, I64]), name="convc_pool_claim")
    fn.linkage = "internal"
    pool, seq = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    kernel = _TypedCallee(b.load(_field(b, pool, FN), typ=PTR))
    argv = b.load(_field(b, pool, ARGV), typ=PTR)
    ntasks = b.load(_field(b, pool, NTASKS), typ=I64)
    tag = b.shl(seq, i64(32))
    loop = b.append_basic_block("claim")
    run = b.append_basic_block("run")
    out = b.append_basic_block("out")
    b.branch(loop)
    b.position_at_end(loop)
    word = b.load_atomic(_field(b, pool, CLAIMED), "acquire", 8, typ=I64)
    task = b.and_(word, i64(0xFFFFFFFF))
    mine = b.and_(b.icmp_unsigned("==", b.and_(word, i64(~0xFFFFFFFF)), tag), b.icmp_unsigned("<", task, ntasks))
    ok_block = b.append_basic_block("try")
    b.cbranch(mine, ok_block, out)
    b.position_at_end(ok_block)
    pair = b.cmpxchg(_field(b, pool, CLAIMED), word, b.add(word, i64(1)), "acq_rel", "acquire")
    b.cbranch(b.extract_value(pair, 1), run, loop)
    b.position_at_end(run)
    b.call(kernel, [argv, task, ntasks])
    b.atomic_rmw("add", _field(b, pool, FINISHED), i64(1), "release")
    b.branch(loop)
    b.position_at_end(out)
    b.ret_void()
    return fn


def emit_threadpool(module: ir.Module, triple: str) -> None:
    """Add the pool functions to ``module`` (once)."""
    if PARALLEL in module.globals:
        return
    malloc = _extern(module, "malloc", PTR, [I64])
    free = _extern(module, "free", VOID, [PTR])
    create_thread = _extern(module, "pthread_create", I32, [PTR, PTR, PTR, PTR])
    join = _extern(module, "pthread_join", I32, [I64, PTR])
    claim = _emit_claim_loop(module)

    # --- worker(slot): wait for a new call, claim its tasks, repeat -------------------------
    worker = ir.Function(module, ir.FunctionType(PTR, [PTR]), name="convc_pool_worker")
    worker.linkage = "internal"
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    pool = b.load(gep(b, worker.args[0], 1, PTR), typ=PTR)
    entry = b.block
    wait = b.append_basic_block("wait")
    b.branch(wait)
    b.position_at_end(wait)
    seen = b.phi(I64, "seen")
    seen.add_incoming(i64(0), entry)  # the pool starts at sequence 0
    spins = b.phi(I64, "spins")
    spins.add_incoming(i64(0), entry)
    now = b.load_atomic(_field(b, pool, SEQ), "acquire", 8, typ=I64)
    idle = b.append_basic_block("idle")
    work = b.append_basic_block("work")
    b.cbranch(b.icmp_unsigned("==", now, seen), idle, work)
    b.position_at_end(idle)
    with b.if_else(b.icmp_unsigned("<", spins, i64(SPIN_PAUSES + YIELDS))) as (busy, long_idle):
        with busy:
            stepped = _backoff(b, spins, triple)
            busy_end = b.block
        with long_idle:
            _sleep_until_changed(b, pool, seen, triple)
            idle_end = b.block
    more = b.phi(I64, "more")
    more.add_incoming(stepped, busy_end)
    more.add_incoming(spins, idle_end)
    seen.add_incoming(seen, b.block)
    spins.add_incoming(more, b.block)
    b.branch(wait)
    b.position_at_end(work)
    quit_ = b.append_basic_block("quit")
    run = b.append_basic_block("run")
    b.cbranch(b.icmp_unsigned("!=", b.load_atomic(_field(b, pool, STOP), "acquire", 8, typ=I64), i64(0)), quit_, run)
    b.position_at_end(run)
    b.call(claim, [pool, now])
    seen.add_incoming(now, b.block)
    spins.add_incoming(i64(0), b.block)
    b.branch(wait)
    b.position_at_end(quit_)
    b.ret(ir.Constant(PTR, None))

    def slot_of(b: ir.IRBuilder, pool: ir.Value, t: ir.Value) -> ir.Value:
        return _field(b, pool, b.add(i64(WORKERS), b.mul(t, i64(WORKER_SLOT))))

    # --- create ------------------------------------------------------------------------------
    create = ir.Function(module, ir.FunctionType(PTR, [I64]), name=POOL_CREATE)
    b = ir.IRBuilder(create.append_basic_block("entry"))
    n = create.args[0]
    pool = b.call(malloc, [b.add(i64(WORKERS), b.mul(n, i64(WORKER_SLOT)))])
    for off in (SEQ, CLAIMED, FINISHED, NTASKS, STOP, SLEEPERS):
        b.store(i64(0), _field(b, pool, off))
    b.store(n, _field(b, pool, NTHREADS))
    with for_range(b, n, start=1, name="t") as t:
        slot = slot_of(b, pool, t)
        b.store(pool, gep(b, slot, 1, PTR))
        b.store(t, gep(b, slot, 2, I64))
        b.call(create_thread, [slot, ir.Constant(PTR, None), worker, slot])
    b.ret(pool)

    # --- destroy -----------------------------------------------------------------------------
    destroy = ir.Function(module, ir.FunctionType(VOID, [PTR]), name=POOL_DESTROY)
    b = ir.IRBuilder(destroy.append_basic_block("entry"))
    pool = destroy.args[0]
    with b.if_then(b.icmp_unsigned("!=", pool, ir.Constant(PTR, None))):
        b.atomic_rmw("xchg", _field(b, pool, STOP), i64(1), "seq_cst")
        b.atomic_rmw("add", _field(b, pool, SEQ), i64(1), "seq_cst")
        _wake_sleepers(b, pool, triple)
        n = b.load(_field(b, pool, NTHREADS), typ=I64)
        with for_range(b, n, start=1, name="t") as t:
            b.call(join, [b.load(slot_of(b, pool, t), typ=I64), ir.Constant(PTR, None)])
        b.call(free, [pool])
    b.ret_void()

    # --- parallel ----------------------------------------------------------------------------
    par = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR, PTR]), name=PARALLEL)
    b = ir.IRBuilder(par.append_basic_block("entry"))
    pool, fn, argv = par.args
    with b.if_else(b.icmp_unsigned("==", pool, ir.Constant(PTR, None))) as (alone, shared):
        with alone:
            b.call(_TypedCallee(fn), [argv, i64(0), i64(1)])
        with shared:
            n = b.load(_field(b, pool, NTHREADS), typ=I64)
            seq = b.add(b.load(_field(b, pool, SEQ), typ=I64), i64(1))
            b.store(fn, _field(b, pool, FN))
            b.store(argv, _field(b, pool, ARGV))
            b.store(n, _field(b, pool, NTASKS))
            b.atomic_rmw("xchg", _field(b, pool, FINISHED), i64(0), "monotonic")
            b.atomic_rmw("xchg", _field(b, pool, CLAIMED), b.shl(seq, i64(32)), "release")
            b.atomic_rmw("xchg", _field(b, pool, SEQ), seq, "seq_cst")
            _wake_sleepers(b, pool, triple)
            b.call(claim, [pool, seq])
            pre = b.block
            wait = b.append_basic_block("join")
            done = b.append_basic_block("joined")
            b.branch(wait)
            b.position_at_end(wait)
            spins = b.phi(I64, "spins")
            spins.add_incoming(i64(0), pre)
            finished = b.load_atomic(_field(b, pool, FINISHED), "acquire", 8, typ=I64)
            spin = b.append_basic_block("spin")
            b.cbranch(b.icmp_unsigned("==", finished, n), done, spin)
            b.position_at_end(spin)
            # only a worker running a task is waited for; it may still lose its core on a busy machine
            spins.add_incoming(_backoff(b, spins, triple), b.block)
            b.branch(wait)
            b.position_at_end(done)
    b.ret_void()
