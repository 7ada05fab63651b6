"""Compiling without numpy's huge-page advice.

numpy asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every array of
4 MB and more. Under the common setting ``/sys/kernel/mm/transparent_hugepage/defrag = madvise``
(Ubuntu's default, and this machine's) the first touch of such an array compacts memory
synchronously until a 2 MB page is free, which on a machine whose memory is fragmented costs far
more than the page saves: faulting in 340 MB took 1.2-1.9 s of CPU with the advice and 0.25 s
without (fresh processes, this 2-core VM under load). A cold compile allocates its weights several
times over (the import, batch-norm folding, packing), so it runs without the advice: ResNet-101's
cold compile took 5.0-7.5 s of CPU with it and 4.0-4.7 s without. numpy's flag is process-wide:
the first of concurrent compiles turns it off and the last one restores it.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_before = True


def _setter():
    """numpy's switch (``_set_madvise_hugepage``, returning the previous setting), or None."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # numpy 2
    except ImportError:
        try:
            from numpy.core.multiarray import _set_madvise_hugepage  # numpy 1
        except ImportError:
            return None
    return _set_madvise_hugepage


@contextlib.contextmanager
def without_huge_page_advice() -> Iterator[None]:
    """A block in which numpy does not advise huge pages for new arrays."""
    global _depth, _before
    switch = _setter()
    if switch is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _before = switch(False)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                switch(_before)
