"""The command line's import layering (issue 14), read from the source with ``ast``, imports inside
functions included:

- the subcommand modules (convc/cli/<command>.py) import the library and convc/cli/common.py,
  never each other nor the package's ``__init__`` (which imports them all to list them);
- common.py imports nothing from the CLI; together, no import cycle inside convc/cli;
- nothing outside convc/cli imports the CLI (library code is what the CLI imports, not the other
  way round), except ``python -m convc``'s convc/__main__.py, which calls its main().
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "convc" / "cli"
# source folder -> the package it installs as (pyproject.toml's package-dir; tests/test_packaging.py checks it)
SOURCE_ROOTS = {"convc": "convc", "frontend": "convc.frontend", "passes": "convc.passes", "codegen": "convc.codegen"}
ENTRY_POINTS = {"convc.__main__"}  # may import convc.cli: they are how the CLI is started


def module_name(path: Path) -> str:
    for folder, package in SOURCE_ROOTS.items():
        if path.is_relative_to(ROOT / folder):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join([package, *parts])
    raise ValueError(path)


def imports(path: Path, text: str | None = None) -> set[str]:
    """The modules ``path`` (or ``text`` read as if it were that file) imports, anywhere in it;
    ``from P import x`` counts as P.x too (x may be a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    source = path.read_text() if text is None else text
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..cli import y
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def cli_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(CLI.glob("*.py"))}


def in_cli(module: str) -> bool:
    return module == "convc.cli" or module.startswith("convc.cli.")


def test_the_cli_has_a_package_a_common_module_and_subcommands():
    modules = cli_modules()
    assert {"convc.cli", "convc.cli.common"} <= set(modules)
    assert len(modules) > 3, modules


@pytest.mark.parametrize("module", sorted(set(cli_modules()) - {"convc.cli", "convc.cli.common"}))
def test_a_subcommand_imports_only_common_from_the_cli(module):
    used = sorted(m for m in imports(cli_modules()[module]) if in_cli(m))
    assert set(used) <= {"convc.cli.common"} | {f"convc.cli.common.{n}" for n in _common_names()}, (
        f"{module} imports {used}: subcommands share helpers through convc/cli/common.py only, "
        "never each other nor convc/cli/__init__.py")


def _common_names() -> set[str]:
    tree = ast.parse((CLI / "common.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_common_imports_nothing_from_the_cli():
    used = sorted(m for m in imports(CLI / "common.py") if in_cli(m))
    assert not used, f"convc/cli/common.py imports {used}"


def test_no_import_cycle_inside_the_cli():
    modules = cli_modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, m) for m in imports(path) if m in modules and m != name)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles in convc/cli: {cycles}"


@pytest.mark.slow
def test_nothing_outside_the_cli_imports_it():
    offenders = {}
    for folder in SOURCE_ROOTS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_relative_to(CLI) or "__pycache__" in path.parts:
                continue
            name = module_name(path)
            used = sorted(m for m in imports(path) if in_cli(m))
            if used and name not in ENTRY_POINTS:
                offenders[name] = used
    assert not offenders, f"library modules import the command line (it should be the other way round): {offenders}"


def test_the_layering_check_sees_a_violation():
    """The import reader resolves every spelling a violation could take, relative and inside functions."""
    text = ("from . import info\n"
            "from .common import positive\n"
            "def f():\n"
            "    import convc.cli\n"
            "    from convc import cli\n")
    found = imports(CLI / "run.py", text)
    assert {"convc.cli.info", "convc.cli.common", "convc.cli.common.positive", "convc.cli"} <= found
    assert {"convc.cli.common", "convc.cli"} <= imports(CLI / "run.py", "from convc.cli import common\n")
