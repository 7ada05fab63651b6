"""The DSL's layers draw their initial weights from one process-wide generator (like PyTorch's), so
a test's weights would depend on the models other tests built before it in the same worker (pytest-
xdist spreads files by timing). Each test here starts from the default seed instead."""
from __future__ import annotations

import pytest

from convc.frontend.dsl import init


@pytest.fixture(autouse=True)
def _default_seed() -> None:
    init.manual_seed(init._DEFAULT_SEED)
