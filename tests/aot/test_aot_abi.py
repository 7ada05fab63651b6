"""The runtime ABI is declared once (convc/abi.py): a library exports every function it names, its
header declares them, and the module itself depends on nothing a loader might lack."""
from __future__ import annotations

import ast
import ctypes
import re
from pathlib import Path

import pytest

from convc import abi
from convc.abi import CONTEXT_SLOTS, ENTRY_SLOTS, Slot


def declared(header: Path) -> set[str]:
    """The functions a C header declares (names followed by an argument list)."""
    return set(re.findall(r"\b(convc_[a-z0-9_]+)\(", header.read_text()))


def test_abi_module_imports_only_the_standard_library():
    tree = ast.parse(Path(abi.__file__).read_text())
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "dataclasses", "enum"}, imported


def test_context_slots():
    # convc_run reads arena, constants, timestamps and pool; a library's context adds the training state
    assert [int(s) for s in Slot] == list(range(CONTEXT_SLOTS))
    assert ENTRY_SLOTS == Slot.POOL + 1 and CONTEXT_SLOTS == Slot.STATE + 1


@pytest.mark.slow
def test_library_exports_and_declares_every_abi_function(lenet_lib):
    lib = ctypes.CDLL(str(lenet_lib.output))
    missing = [name for name in abi.LIBRARY_FUNCTIONS if not hasattr(lib, name)]
    assert not missing, missing
    undeclared = sorted(set(abi.LIBRARY_FUNCTIONS) - declared(lenet_lib.header))
    assert not undeclared, undeclared
    assert not any(hasattr(lib, name) for name in abi.TRAINING_FUNCTIONS)
