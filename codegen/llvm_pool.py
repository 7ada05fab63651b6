"""Compile a model's modules (codegen/split.py) on every core, through the kernel cache, with progress.

llvmlite lets one thread into LLVM at a time, so the parallelism is processes: worker processes
running codegen/llvm_worker.py (started on first need, kept for the life of the process, each
about 0.1 s to start), plus the calling process itself. Modules go largest first to whoever is
free. ``CONVC_COMPILE_JOBS`` sets how many compile at once (default: the CPUs this process may run
on); small models compile in the calling process alone, where a worker would cost more than it
saves. A worker that dies hands its module back to the calling process.

A JIT compile streams: it hands each kernel group over as soon as the group's kernel is emitted
(``ModuleCompiler(stream=True)``), and the workers compile while Python emits the next layers.

While LLVM runs, ``progress`` gets a line at least every ``jit.HEARTBEAT`` seconds: modules done, the
share of the code compiled and an estimate of the time left (from the rate so far).
"""
from __future__ import annotations

import atexit
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from convc.codegen import jit, kernel_cache, llvm_worker
from convc.codegen.split import SplitModule
from convc.errors import CompileError

PARALLEL_MIN_CHARS = 300_000  # IR text below which one process compiles everything


def jobs() -> int:
    """How many modules compile at once: ``CONVC_COMPILE_JOBS`` or the CPUs available."""
    value = os.environ.get("CONVC_COMPILE_JOBS", "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise CompileError(f"CONVC_COMPILE_JOBS={value!r}: expected a whole number of processes, 1 or more")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class WorkerDied(Exception):
    pass


class _Worker:
    """One llvm_worker.py process and its pipes."""

    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked child must not talk to its parent's workers
        self.proc = subprocess.Popen([sys.executable, "-I", str(Path(llvm_worker.__file__))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def compile(self, request: tuple) -> bytes:
        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(llvm_worker._FRAME.pack(len(data)) + data)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(llvm_worker._FRAME.size)
            if len(head) != llvm_worker._FRAME.size:
                raise WorkerDied
            (n,) = llvm_worker._FRAME.unpack(head)
            body = self.proc.stdout.read(n)
            if len(body) != n:
                raise WorkerDied
            status, payload = pickle.loads(body)
        except (OSError, ValueError, pickle.UnpicklingError, EOFError) as e:
            raise WorkerDied from e
        if status != "ok":
            raise CompileError(f"convc generated invalid LLVM IR: {payload}")
        return payload

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


_idle: list[_Worker] = []
_idle_lock = threading.Lock()


def _take() -> _Worker:
    with _idle_lock:
        while _idle:
            w = _idle.pop()
            if w.pid == os.getpid() and w.proc.poll() is None:
                return w
    return _Worker()


def _give(w: _Worker) -> None:
    with _idle_lock:
        _idle.append(w)


def prestart() -> None:
    """Start a worker process now when this process compiles on several cores and has none idle. A
    cold JIT compile calls it before it builds the graph and runs the passes, which leave the
    other cores idle: the worker's start (Python and llvmlite, about 0.1 s of CPU) is then over
    when the first kernel is written, instead of delaying it on a core the compile needs (the
    kernel written first waited for it). The process stays in the idle pool, as a worker does
    after a compile."""
    if jobs() < 2:
        return
    with _idle_lock:
        if any(w.pid == os.getpid() and w.proc.poll() is None for w in _idle):
            return
    try:
        w = _Worker()
    except OSError:
        return  # no process to start: the compile runs in this process, as it would have
    _give(w)


@atexit.register
def shutdown() -> None:
    """Stop the idle workers (they also exit by themselves when this process's pipes close)."""
    with _idle_lock:
        workers = [w for w in _idle if w.pid == os.getpid()]
        _idle.clear()
    for w in workers:
        w.close()


def compile_modules(modules: list[SplitModule], target, cache_root: Path | None = None, *,
                    progress: Callable[[str], None] | None = None, pic: bool = False) -> list[bytes]:
    """One object file per module, in order, each at its own ``speed``: from the kernel cache
    (``cache_root`` set) where a model compiled that module before, else compiled (then stored).
    ``pic``: position-independent code for a shared library (codegen/aot.py), cached apart from
    the JIT's."""
    compiler = ModuleCompiler(target, cache_root, progress=progress, pic=pic)
    for m in modules:
        compiler.add(m)
    return compiler.finish()


class ModuleCompiler:
    """Modules in (``add``), object files out (``finish``, in the order added). With ``stream``,
    worker processes start compiling while modules are still being added (a JIT compile adds each
    kernel group as soon as it is emitted: LLVM runs on the other cores while Python writes the
    next layers); the calling process joins in ``finish``. Without it, or with one job, everything
    compiles in ``finish``, largest module first. ``guess`` hands over a module that may still
    change (a kernel group that waits to know whether its helpers are shared, codegen/split.py):
    a worker with nothing else to do compiles it, and a module added later with the same text takes
    that object file; guesses not started when ``finish`` is called are dropped."""

    def __init__(self, target, cache_root: Path | None = None, *, progress: Callable[[str], None] | None = None,
                 pic: bool = False, stream: bool = False):
        self.target, self.cache_root, self.progress, self.pic = target, cache_root, progress, pic
        self.machine = (target.triple, target.cpu, target.features)
        self.modules: list[SplitModule] = []
        self.results: list[bytes | None] = []
        self.keys: dict[int, str] = {}
        self.queue: list[int] = []
        self.cond = threading.Condition()
        self.closed = False
        self.error: BaseException | None = None
        self.chars = self.done = self.total = self.hits = 0
        self.in_flight = 0  # modules taken off the queue and not finished yet
        self.threads: list[threading.Thread] = []
        self.workers = max(1, jobs()) if stream else 0  # 0: decided in finish
        self.guesses: list[SplitModule] = []
        self.guessed: dict[str, bytes] = {}  # module key -> object file of a guess
        if self.workers > 1:
            # a worker process takes about 0.1 s of CPU to start: while Python writes the first
            # layers, the other cores are idle anyway
            self._start_remote(self.workers - 1)

    def add(self, m: SplitModule) -> None:
        i = len(self.modules)
        self.modules.append(m)
        self.results.append(None)
        if self.cache_root is not None and m.key is not None:
            self.keys[i] = self._cache_key(m)
            self.results[i] = kernel_cache.load(self.cache_root, self.keys[i])
            if self.results[i] is not None:
                self.hits += 1
                return
        with self.cond:
            self.total += len(m.text)
            obj = self.guessed.get(m.key)
            if obj is None:
                self.queue.append(i)
                self.cond.notify()
        if obj is not None:
            self._finished(i, obj, taken=False)

    def guess(self, m: SplitModule) -> None:
        if self.workers <= 1 or self.cache_root is not None and m.key is not None and \
                kernel_cache.has(self.cache_root, self._cache_key(m)):
            return  # nobody to compile it before finish, or a model compiled it before (add will read it)
        with self.cond:
            self.guesses.append(m)
            self.cond.notify()

    def _cache_key(self, m: SplitModule) -> str:
        return kernel_cache.key(m.key + ("-pic" if self.pic else ""), *self.machine, m.speed)

    def _start_remote(self, n: int) -> None:
        for _ in range(n):
            t = threading.Thread(target=self._remote, daemon=True)
            t.start()
            self.threads.append(t)

    def _next(self, wait: bool) -> int | SplitModule | None:
        """A module's index, or a guess (only before ``finish``), or None when there is no more."""
        with self.cond:
            while True:
                if self.error is not None:
                    return None
                if self.queue:
                    self.in_flight += 1
                    return self.queue.pop(0)
                if self.closed or not wait:
                    return None
                if self.guesses:
                    return self.guesses.pop(0)
                self.cond.wait()

    def _finished(self, i: int, obj: bytes, taken: bool = True) -> None:
        """Module ``i``'s object file; ``taken``: it came off the queue (``_next``). Stored in the
        kernel cache before the module counts as done: ``finish`` returns once every module is done,
        and the compile then prunes the cache to its limit (codegen/cache_limit.py), which an object
        a worker thread wrote after it would leave exceeded."""
        self.results[i] = obj
        if i in self.keys:
            try:
                kernel_cache.store(self.cache_root, self.keys[i], obj)
            except OSError:
                pass  # a cache that cannot be written must not fail the compile
        with self.cond:
            self.chars += len(self.modules[i].text)
            self.done += 1
            self.in_flight -= taken
            self.cond.notify_all()

    def _fail(self, e: BaseException, taken: bool = False) -> None:
        with self.cond:
            if self.error is None:
                self.error = e
            self.in_flight -= taken
            self.cond.notify_all()

    def _local(self) -> None:
        while (i := self._next(wait=False)) is not None:
            m = self.modules[i]
            if (obj := self.guessed.get(m.key)) is not None:  # a worker compiled it as a guess since
                self._finished(i, obj)
                continue
            try:
                obj = llvm_worker.object_code(m.text, *self.machine, m.speed, self.pic)
            except RuntimeError as e:
                self._fail(CompileError(f"convc generated invalid LLVM IR: {e}"), taken=True)
                return
            self._finished(i, obj)

    def _remote(self) -> None:
        try:
            w = _take()
        except OSError:
            return  # no process to start: the calling process compiles it all
        while (i := self._next(wait=True)) is not None:
            m = i if isinstance(i, SplitModule) else self.modules[i]
            if not isinstance(i, SplitModule) and (obj := self.guessed.get(m.key)) is not None:
                self._finished(i, obj)
                continue
            try:
                obj = w.compile((m.text, *self.machine, m.speed, self.pic))
            except WorkerDied:
                if not isinstance(i, SplitModule):
                    with self.cond:
                        self.queue.insert(0, i)  # the calling process takes it
                        self.in_flight -= 1
                        self.cond.notify_all()
                w = None
                break
            except CompileError as e:
                self._fail(e, taken=not isinstance(i, SplitModule))
                break
            if isinstance(i, SplitModule):
                with self.cond:
                    self.guessed[m.key] = obj
            else:
                self._finished(i, obj)
        if w is not None:
            _give(w)

    def cancel(self) -> None:
        """Stop (the module being written failed): workers finish their module and go idle."""
        self._fail(CompileError("compile cancelled"))
        for t in self.threads:
            t.join()

    def finish(self) -> list[bytes]:
        with self.cond:
            self.closed = True
            self.guesses.clear()
            self.queue.sort(key=lambda i: -len(self.modules[i].text))
            self.cond.notify_all()
            todo, early = len(self.modules) - self.hits, self.done
        if not self.threads:
            n = min(jobs(), len(self.queue)) if self.total >= PARALLEL_MIN_CHARS else 1
            self._start_remote(n - 1)
        if self.progress:
            reused = self.hits
            self.progress(f"LLVM: {todo} module{'s' * (todo != 1)} to compile"
                          + (f" ({reused} from the kernel cache)" if reused else "")
                          + (f", {early} compiled while generating code" if early else "")
                          + (f", {len(self.threads) + 1} at once" if self.threads else ""))
        stop = threading.Event()
        start = time.perf_counter()

        def heartbeat() -> None:
            while not stop.wait(jit.HEARTBEAT):
                with self.cond:
                    done, chars = self.done, self.chars
                elapsed = time.perf_counter() - start
                eta = f", about {elapsed / chars * (self.total - chars):.0f} s left" if chars else ""
                self.progress(f"LLVM: {done}/{todo} modules compiled ({100 * chars / (self.total or 1):.0f}% of the code, "
                              f"{elapsed:.0f} s{eta})")

        if self.progress and todo > early:
            threading.Thread(target=heartbeat, daemon=True).start()
        jit.init_llvm()
        try:
            # the calling process compiles what is queued, then waits for the workers' modules (not
            # for the workers: one still starting, or compiling a guess, is not waited for)
            while True:
                self._local()
                with self.cond:
                    while self.in_flight and self.error is None and not self.queue:
                        self.cond.wait()
                    if self.error is not None or not (self.queue or self.in_flight):
                        break
        finally:
            stop.set()
        if self.error is not None:
            raise self.error
        return self.results  # type: ignore[return-value]
