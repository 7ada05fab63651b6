"""The import layering of ARCHITECTURE.md ("Layering"), checked on the source:

    convc API (compile, InferenceSession, Trainer, load, profile, CLI)
       -> driver (convc/driver.py)
          -> frontend -> passes -> codegen -> runtime/ABI and the core (IR, ops, errors, options)

Every import counts, at module level or inside a function (where they used to hide cycles), and
under ``if TYPE_CHECKING``: the files are parsed with ``ast``, nothing is imported. An exemption is
one (module, imported module) pair with its reason; a new upward import fails here until it is
removed or listed with a reason.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"convc": ROOT / "convc", "convc.frontend": ROOT / "frontend", "convc.passes": ROOT / "passes",
            "convc.codegen": ROOT / "codegen"}

# the user-facing modules: what users and the CLI call; only the driver sits between them and the compiler
API = ("convc.compiler", "convc.session", "convc.train", "convc.load", "convc.profile", "convc.report", "convc.check",
       "convc.backend", "convc.cli", "convc.library", "convc.models", "convc.nn", "convc.train_profile", "convc.__main__",
       "convc.report_plot",
       "convc.quantize", "convc.quantize_calibrate", "convc.quantize_qdq", "convc.losses",
       "convc.gradient_check", "convc.checkpoint", "convc.train_batch", "convc.train_eval",
       "convc.train_gradients", "convc.train_results", "convc.train_state", "convc.data", "convc.distributed")
DRIVER = ("convc.driver",)
FRONTEND = ("convc.frontend",)
PASSES = ("convc.passes",)
CODEGEN = ("convc.codegen",)
# the core every layer may use: IR, ops, errors, limits, options, the runtime and the ABI, artifacts
CORE = ("convc.abi", "convc.artifact", "convc.errors", "convc.ir", "convc.limits", "convc.model", "convc.ops",
        "convc.optim", "convc.options", "convc.printing", "convc.reference", "convc.runtime", "convc.schedules",
        "convc.verify", "convc.version", "convc.huge_pages", "convc.model_file", "convc.parallel")
LAYERS = {"api": API, "driver": DRIVER, "frontend": FRONTEND, "passes": PASSES, "codegen": CODEGEN,
          "core": CORE}

# (importing module, imported module) -> why it is allowed anyway
EXEMPT = {
    ("convc.frontend.dsl.module", "convc.compiler"):
        "Module.compile(input_shape) is the API's convenience convc.compile(self, ...): an import at call time, "
        "the frontend never loads the API when it is imported",
    ("convc.frontend.dsl.module", "convc.session"):
        "the return annotation of Module.compile (CompiledModel), under `if TYPE_CHECKING` only",
}


def _module_name(pkg: str, folder: Path, path: Path) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([pkg, *parts])


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            mods[_module_name(pkg, folder, path)] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module ``name`` refers to: itself, or its package when it is an attribute (``convc.__version__``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str) -> set[str]:
    """Every convc module ``module`` imports, wherever the import statement is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {_resolve(n) for n in names if n == "convc" or n.startswith("convc.")}
    return found - {module}


def _in(module: str, layer: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in layer)


def violations(layer: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for mod in sorted(MODULES):
        if not _in(mod, layer):
            continue
        for imp in sorted(imports(mod)):
            if _in(imp, forbidden) and (mod, imp) not in EXEMPT:
                bad.append(f"{mod} imports {imp}")
    return bad


def test_the_walk_sees_the_tree():
    assert {"convc.codegen.cache", "convc.passes.pipeline", "convc.frontend.onnx.importer", "convc.driver"} <= set(MODULES)
    # an import inside a function counts
    assert "convc.codegen.jit" in imports("convc.codegen.cache")
    assert "convc.frontend.onnx" in imports("convc.driver")


@pytest.mark.parametrize("layer, forbidden", [
    (CODEGEN, API + DRIVER + FRONTEND),
    (PASSES, API + DRIVER + FRONTEND + CODEGEN),
    (FRONTEND, API + DRIVER + PASSES + CODEGEN),
    (CORE, API + DRIVER + FRONTEND + PASSES + CODEGEN),
], ids=["codegen", "passes", "frontend", "core"])
def test_imports_point_down(layer, forbidden):
    assert violations(layer, forbidden) == []


def test_driver_imports_no_api():
    """The CompiledModel the driver builds from an artifact is in the core (convc/model.py), so the
    driver imports nothing of the API that imports it (``convc.session`` re-exports the model)."""
    assert violations(DRIVER, API) == []
    assert "convc" not in imports("convc.driver")  # the package: the API's front door


def test_codegen_does_not_import_the_package():
    """``convc/__init__.py`` is the API (it imports compile, Trainer, load): codegen reads the
    version from convc.version instead, so loading a code generator never loads the API."""
    assert [m for m in sorted(MODULES) if _in(m, CODEGEN + PASSES + FRONTEND + CORE + DRIVER)
            and "convc" in imports(m)] == []


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "convc" and not any(_in(m, layer) for layer in LAYERS.values())] == []


def _layer(module: str) -> str:
    if module == "convc":  # the package's __init__ imports the API
        return "api"
    return next(name for name, layer in LAYERS.items() if _in(module, layer))


def test_no_import_cycle_crosses_layers():
    """A cycle inside one layer (ir <-> verify, the kernels <-> their emitter) is that layer's
    business; one through two layers means some import points up. The exempted imports are left out."""
    graph = nx.DiGraph((m, i) for m in MODULES for i in imports(m) if i in MODULES and (m, i) not in EXEMPT)
    crossing = [sorted(c) for c in nx.strongly_connected_components(graph) if len({_layer(m) for m in c}) > 1]
    assert crossing == []


def test_exemptions_are_still_needed():
    stale = [pair for pair in EXEMPT if pair[1] not in imports(pair[0])]
    assert stale == [], "remove these exemptions: the imports are gone"
