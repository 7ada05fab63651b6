"""BatchNormalization for training: batch statistics forward, its recomputation from the saved
statistics, the gradient, the running update.

Per channel, the m = N * spatial elements are strided by image; each pass walks (image, pixels).
Sums accumulate in double (vectorized: reassociation is allowed): the gradient sums cancel to a
small fraction of their terms (a BatchNorm removes the channel's mean), and float32 row sums of a
few thousand pixels left BN gradients 50 times less accurate than a float32 pairwise sum (5e-6
against 1e-7 relative at batch 16, 32x32), as PyTorch's CPU kernels also accumulate in double.
With the optional ``rows`` input (convc/ops/norm_grad.py) the sums and counts cover the first
``rows`` images only, a run-time value: a padded last batch trains on the compiled step.

The sizes (images, channels, elements per channel and image; a running update's counts) come from a
size table the entry point passes (``ModuleEmitter.size_table``): the BatchNorms of a network's
stages are one compiled function per kernel kind, not one per stage.
"""
from __future__ import annotations

from convc.codegen.kernels.optim import copy_unchanged
from convc.codegen.llvm_utils import (F32, F64, FAST, I64, alloca_entry, call_intrinsic, f32, for_range, i64, load,
                                      store)
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind


def _f64(v: float) -> ir.Constant:
    return ir.Constant(F64, float(v))


def _rows(b: ir.IRBuilder, op: Op, args, at: int, n: ir.Value) -> ir.Value:
    """The images that count (i64): the ``rows`` input (argument ``at``) clamped to [1, n], or n."""
    if len(op.inputs) <= at:
        return n
    r = load(b, args[at], 0, I64)
    r = b.select(b.icmp_signed("<", r, i64(1)), i64(1), r)
    return b.select(b.icmp_signed(">", r, n), n, r)


class _ChannelLoops:
    """Helpers over the elements of one channel of an (N, C, inner) tensor; ``n`` (the images
    summed over) may be a run-time value."""

    def __init__(self, b: ir.IRBuilder, n, c: ir.Value, inner: ir.Value):
        self.b, self.n, self.c, self.inner = b, n, c, inner
        self.rows: list[ir.Value] = []    # stack slots of the running sums, made on first use
        self.totals: list[ir.Value] = []

    def each(self, ci, body, start=0, stop=None) -> None:
        """body(index) over the channel's elements of images [start, stop) (default: the n counted)."""
        b = self.b
        with for_range(b, self.n if stop is None else stop, start=start, name="img") as ni:
            base = b.mul(b.add(b.mul(ni, self.c), ci), self.inner)
            with for_range(b, self.inner, name="px") as j:
                body(b.add(base, j))

    def sum(self, ci, term) -> ir.Value:
        """sum over the channel of term(index) (a float), as a double."""
        return self.sums(ci, [term])[0]

    def sums(self, ci, terms) -> list[ir.Value]:
        """[sum over the channel of term(index) for term in terms], as doubles, in one pass over the channel
        (each sum in the same order as ``sum`` alone would add it)."""
        b = self.b
        while len(self.rows) < len(terms):
            self.rows.append(alloca_entry(b, F64, "row_acc"))
            self.totals.append(alloca_entry(b, F64, "total"))
        rows, totals = self.rows[:len(terms)], self.totals[:len(terms)]
        for t in totals:
            b.store(_f64(0.0), t)
        with for_range(b, self.n, name="img") as ni:
            base = b.mul(b.add(b.mul(ni, self.c), ci), self.inner)
            for r in rows:
                b.store(_f64(0.0), r)
            with for_range(b, self.inner, name="px") as j:
                k = b.add(base, j)
                for r, term in zip(rows, terms):
                    b.store(b.fadd(b.load(r, typ=F64), b.fpext(term(k), F64), flags=FAST), r)
            for r, t in zip(rows, totals):
                b.store(b.fadd(b.load(t, typ=F64), b.load(r, typ=F64)), t)
        return [b.load(t, typ=F64) for t in totals]


def _nci(em: ModuleEmitter, name: str):
    """The size table of an (N, C, inner) tensor's kernel: [N, C, inner]."""
    xs = em.tensor(name).shape
    return em.size_table([xs[0], xs[1], em.tensor(name).size // (xs[0] * xs[1])])


@emitter(OpKind.BATCH_NORM_TRAIN)
def emit_batch_norm_train(em: ModuleEmitter, op: Op) -> KernelCall:
    table = _nci(em, op.inputs[0])
    n_in = len(op.inputs)
    fn, b = em.function(op.name, n_in + 4, parallel=True)
    x, scale, bias = fn.args[:3]
    y, mean_out, invstd_out = fn.args[n_in:n_in + 3]
    n, c, inner = em.read_sizes(b, fn.args[n_in + 3], 3)
    rows = _rows(b, op, fn.args, 3, n)
    m = b.sitofp(b.mul(rows, inner), F64)
    ch = _ChannelLoops(b, rows, c, inner)
    lo, hi = em.thread_range(b, fn, c)
    with for_range(b, hi, start=lo, name="ch") as ci:
        mean = b.fptrunc(b.fdiv(ch.sum(ci, lambda k: load(b, x, k)), m), F32)
        var = b.fdiv(ch.sum(ci, lambda k: _sq(b, b.fsub(load(b, x, k), mean))), m)
        invstd = b.fptrunc(b.fdiv(_f64(1.0), call_intrinsic(b, "llvm.sqrt.f64", [b.fadd(var, _f64(op.attrs.epsilon))])),
                           F32)
        store(b, mean, mean_out, ci)
        store(b, invstd, invstd_out, ci)
        s = b.fmul(load(b, scale, ci), invstd)
        shift = b.fsub(load(b, bias, ci), b.fmul(mean, s))
        ch.each(ci, lambda k: store(b, b.fadd(b.fmul(load(b, x, k), s), shift), y, k), stop=n)  # padding too
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + list(op.outputs) + [table])


@emitter(OpKind.BATCH_NORM_APPLY)
def emit_batch_norm_apply(em: ModuleEmitter, op: Op) -> KernelCall:
    """BatchNormTrain's last pass again, from the saved mean and invstd, in the same float32 operations
    (so Y is the forward's bit for bit), clamped to the fused activation's [min, max]."""
    table = _nci(em, op.inputs[0])
    fn, b = em.function(op.name, 7, parallel=True)
    x, scale, bias, mean_in, invstd_in, y = fn.args[:6]
    n, c, inner = em.read_sizes(b, fn.args[6], 3)
    lo_bound, hi_bound = op.attrs.min, op.attrs.max
    ch = _ChannelLoops(b, n, c, inner)
    lo, hi = em.thread_range(b, fn, c)
    with for_range(b, hi, start=lo, name="ch") as ci:
        s = b.fmul(load(b, scale, ci), load(b, invstd_in, ci))
        shift = b.fsub(load(b, bias, ci), b.fmul(load(b, mean_in, ci), s))

        def write(k):
            v = b.fadd(b.fmul(load(b, x, k), s), shift)
            if lo_bound != float("-inf"):
                v = b.select(b.fcmp_ordered("<", v, f32(lo_bound)), f32(lo_bound), v)
            if hi_bound != float("inf"):
                v = b.select(b.fcmp_ordered(">", v, f32(hi_bound)), f32(hi_bound), v)
            store(b, v, y, k)
        ch.each(ci, write)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + list(op.outputs) + [table])


def _sq(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    return b.fmul(v, v)


@emitter(OpKind.BATCH_NORM_GRAD)
def emit_batch_norm_grad(em: ModuleEmitter, op: Op) -> KernelCall:
    table = _nci(em, op.inputs[0])
    n_in = len(op.inputs)
    fn, b = em.function(op.name, n_in + 4, parallel=True)
    x, scale, mean_in, invstd_in, dy = fn.args[:5]
    dx, dscale, dbias = fn.args[n_in:n_in + 3]
    n, c, inner = em.read_sizes(b, fn.args[n_in + 3], 3)
    rows = _rows(b, op, fn.args, 5, n)
    m = b.sitofp(b.mul(rows, inner), F32)
    ch = _ChannelLoops(b, rows, c, inner)
    lo, hi = em.thread_range(b, fn, c)
    with for_range(b, hi, start=lo, name="ch") as ci:
        mean, invstd = load(b, mean_in, ci), load(b, invstd_in, ci)
        # dB and sum(dY (x - mean)) in one pass over dY and X
        db, dxc = ch.sums(ci, [lambda k: load(b, dy, k), lambda k: b.fmul(load(b, dy, k), b.fsub(load(b, x, k), mean))])
        db = b.fptrunc(db, F32)
        ds = b.fmul(b.fptrunc(dxc, F32), invstd)
        store(b, db, dbias, ci)
        store(b, ds, dscale, ci)
        # dX = scale * invstd / m * (m dY - dB - x^ dscale), x^ = (x - mean) * invstd
        k1 = b.fmul(load(b, scale, ci), invstd)
        k2 = b.fmul(k1, b.fdiv(db, m))
        k3 = b.fmul(b.fmul(k1, b.fdiv(ds, m)), invstd)

        def write(k):
            v = b.fsub(b.fsub(b.fmul(load(b, dy, k), k1), k2), b.fmul(b.fsub(load(b, x, k), mean), k3))
            store(b, v, dx, k)
        ch.each(ci, write)
        if n_in > 5:  # the padded images are not in the batch
            ch.each(ci, lambda k: store(b, f32(0.0), dx, k), start=rows, stop=n)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + list(op.outputs) + [table])


@emitter(OpKind.BATCH_NORM_RUNNING_UPDATE)
def emit_running_update(em: ModuleEmitter, op: Op) -> KernelCall:
    a = op.attrs
    # [C, the batch's count, its images, elements per image]: the count's factor is computed at run time
    table = em.size_table([em.tensor(op.inputs[0]).size, a.count, a.count // max(a.per_sample, 1), a.per_sample])
    n_in = len(op.inputs)
    fn, b = em.function(op.name, n_in + 3)
    rm, rv, mean, invstd, ok = fn.args[:5]
    rm_new, rv_new = fn.args[n_in:n_in + 2]
    c, count, images, per_sample = em.read_sizes(b, fn.args[n_in + 2], 4)
    mom = f32(a.momentum)
    rest = f32(1.0 - a.momentum)
    if a.unbiased:  # n / (n - 1), rounded as variance_factor rounds it (1 for n = 1)
        if n_in > 5:  # n = rows * per_sample, with the rows of this batch
            count = b.mul(_rows(b, op, fn.args, 5, images), per_sample)
        count = b.sitofp(count, F64)
        unbias = b.fptrunc(b.fdiv(count, b.fsub(count, _f64(1.0))), F32)
        unbias = b.select(b.fcmp_ordered(">", count, _f64(1.0)), unbias, f32(1.0))
    else:
        unbias = f32(1.0)
    with b.if_else(b.fcmp_unordered("une", load(b, ok, 0), f32(0.0))) as (then, otherwise):
        with then, for_range(b, c, name="ch") as ci:
            store(b, b.fadd(b.fmul(mom, load(b, rm, ci)), b.fmul(rest, load(b, mean, ci))), rm_new, ci)
            s = load(b, invstd, ci)
            var = b.fsub(b.fdiv(f32(1.0), b.fmul(s, s)), f32(a.epsilon))
            store(b, b.fadd(b.fmul(mom, load(b, rv, ci)), b.fmul(rest, b.fmul(var, unbias))), rv_new, ci)
        with otherwise:
            copy_unchanged(b, [rm, rv], [rm_new, rv_new], c)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + list(op.outputs) + [table])
