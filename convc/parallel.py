"""Two pieces of work side by side, for numpy and hashlib work that releases the GIL (folding
weights, hashing them) in phases of a compile that leave the other cores idle."""
from __future__ import annotations

import threading
from collections.abc import Callable


def side_by_side(here: Callable[[], None], there: Callable[[], None], name: str) -> None:
    """Run ``there`` on a thread of its own while the calling thread runs ``here``, and wait for
    both. An exception in either is raised here (the calling thread's first): a half that failed
    on the other thread must not leave its share of the result unwritten and unnoticed."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            there()
        except BaseException as e:  # noqa: BLE001  handed to the calling thread
            failed.append(e)
    other = threading.Thread(target=run, name=name, daemon=True)
    other.start()
    try:
        here()
    finally:
        other.join()
    if failed:
        raise failed[0]
