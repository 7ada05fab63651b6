"""convc.parallel.side_by_side: both halves run, and a failure on either side reaches the caller
(a half left unwritten on the other thread would be a silently wrong result)."""
from __future__ import annotations

import threading

import pytest

from convc.parallel import side_by_side


def test_both_halves_run_the_other_on_its_own_thread():
    ran = {}
    side_by_side(lambda: ran.update(here=threading.current_thread().name),
                 lambda: ran.update(there=threading.current_thread().name), "convc-test-half")
    assert ran == {"here": threading.current_thread().name, "there": "convc-test-half"}


def test_a_failure_on_the_other_thread_is_raised_here():
    done = []

    def fail() -> None:
        raise MemoryError("the other half")
    with pytest.raises(MemoryError, match="the other half"):
        side_by_side(lambda: done.append(1), fail, "convc-test-half")
    assert done == [1]


def test_a_failure_here_waits_for_the_other_half():
    finished = threading.Event()
    with pytest.raises(ValueError, match="this half"):
        side_by_side(lambda: (_ for _ in ()).throw(ValueError("this half")),
                     lambda: finished.wait(0.2) or finished.set(), "convc-test-half")
    assert finished.is_set()  # joined before the error was raised
