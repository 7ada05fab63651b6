"""Compile a model's modules (codegen/split.py) on every core, through the kernel cache, with progress.

llvmlite lets one thread into LLVM at a time, so the parallelism is processes: worker processes
running codegen/llvm_worker.py (started on first need, kept for the life of the process, each
about 0.1 s to start), plus the calling process itself. Modules go largest first to whoever is
free. ``CONVC_COMPILE_JOBS`` sets how many compile at once (default: the CPUs this process may run
on); small models compile in the calling process alone, where a worker would cost more than it
saves. A worker that dies hands its module back to the calling process.

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
    results: list[bytes | None] = [None] * len(modules)
    keys: dict[int, str] = {}
    if cache_root is not None:
        for i, m in enumerate(modules):
            if m.key is not None:
                keys[i] = kernel_cache.key(m.key + ("-pic" if pic else ""), target.triple, target.cpu,
                                           target.features, m.speed)
                results[i] = kernel_cache.load(cache_root, keys[i])
    todo = sorted((i for i, r in enumerate(results) if r is None), key=lambda i: -len(modules[i].text))
    total = sum(len(modules[i].text) for i in todo) or 1
    workers = min(jobs(), len(todo)) if total >= PARALLEL_MIN_CHARS else 1
    if progress:
        reused = len(modules) - len(todo)
        progress(f"LLVM: {len(todo)} module{'s' * (len(todo) != 1)} to compile"
                 + (f" ({reused} from the kernel cache)" if reused else "")
                 + (f", {workers} at once" if workers > 1 else ""))
    lock = threading.Lock()
    queue = list(todo)
    state = {"chars": 0, "done": 0, "error": None}
    start = time.perf_counter()
    machine = (target.triple, target.cpu, target.features)

    def next_job() -> int | None:
        with lock:
            return queue.pop(0) if queue and state["error"] is None else None

    def finished(i: int, obj: bytes) -> None:
        results[i] = obj
        with lock:
            state["chars"] += len(modules[i].text)
            state["done"] += 1
        if i in keys:
            try:
                kernel_cache.store(cache_root, keys[i], obj)
            except OSError:
                pass  # a cache that cannot be written must not fail the compile

    def fail(e: BaseException) -> None:
        with lock:
            if state["error"] is None:
                state["error"] = e

    def local() -> None:
        while (i := next_job()) is not None:
            try:
                obj = llvm_worker.object_code(modules[i].text, *machine, modules[i].speed, pic)
            except RuntimeError as e:
                fail(CompileError(f"convc generated invalid LLVM IR: {e}"))
                return
            finished(i, obj)

    def remote() -> None:
        try:
            w = _take()
        except OSError:
            return  # no process to start: the calling process compiles it all
        while (i := next_job()) is not None:
            try:
                finished(i, w.compile((modules[i].text, *machine, modules[i].speed, pic)))
            except WorkerDied:
                with lock:
                    queue.insert(0, i)  # the calling process takes it
                w = None
                break
            except CompileError as e:
                fail(e)
                break
        if w is not None:
            _give(w)

    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(jit.HEARTBEAT):
            with lock:
                done, chars = state["done"], state["chars"]
            elapsed = time.perf_counter() - start
            eta = f", about {elapsed / chars * (total - chars):.0f} s left" if chars else ""
            progress(f"LLVM: {done}/{len(todo)} modules compiled ({100 * chars / total:.0f}% of the code, "
                     f"{elapsed:.0f} s{eta})")

    threads = [threading.Thread(target=remote, daemon=True) for _ in range(workers - 1)]
    if progress and todo:
        threads.append(threading.Thread(target=heartbeat, daemon=True))
    jit.init_llvm()
    for t in threads:
        t.start()
    try:
        local()
        for t in threads[:workers - 1]:
            t.join()
        local()  # what a worker that died handed back
    finally:
        stop.set()
    if state["error"] is not None:
        raise state["error"]
    return results  # type: ignore[return-value]
