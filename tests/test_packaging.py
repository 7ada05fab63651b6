"""The wheel and the editable install expose every source folder under the ``convc`` package.

``frontend/``, ``passes/`` and ``codegen/`` live at the top of the repo but install as
``convc.frontend``, ``convc.passes`` and ``convc.codegen`` (``[tool.setuptools.package-dir]``), and
setuptools only ships the packages listed in ``[tool.setuptools] packages``: a new subfolder that
is not listed there works in the editable install and is silently missing from the wheel.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import convc

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as
SOURCE_ROOTS = {"convc": "convc", "frontend": "convc.frontend", "passes": "convc.passes", "codegen": "convc.codegen"}


def source_packages() -> dict[str, Path]:
    """Every folder with an __init__.py under the source roots, by dotted package name."""
    found = {}
    for folder, package in SOURCE_ROOTS.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            found[".".join([package, *rel.parts])] = init.parent
    return found


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    missing = sorted(set(source_packages()) - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml, or the wheel lacks them"
    stale = sorted(listed - set(source_packages()))
    assert not stale, f"pyproject.toml lists packages with no __init__.py: {stale}"
    assert config["package-dir"] == {package: folder for folder, package in SOURCE_ROOTS.items()}


def _can_build_without_isolation() -> bool:
    """Build offline when this environment already has what pyproject's build-system asks for."""
    try:
        version = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return False
    if version < (68, 0):
        return False
    try:
        importlib.metadata.version("wheel")
        return True
    except importlib.metadata.PackageNotFoundError:
        return version >= (70, 1)  # bdist_wheel moved into setuptools


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build a wheel from a copy of the sources, so no build/ or egg-info lands in the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*.so", "*.o")
    for folder in SOURCE_ROOTS:
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(tmp / "dist"), "-q"]
    if _can_build_without_isolation():
        cmd.append("--no-build-isolation")
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    (path,) = (tmp / "dist").glob("convc-*.whl")
    return path


@pytest.mark.slow
def test_wheel_contains_every_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    folders = {n.rsplit("/", 1)[0] for n in names if n.endswith(".py")}
    for package in source_packages():
        assert package.replace(".", "/") in folders, f"{package} is missing from the wheel"
    for must in ("convc/frontend", "convc/passes", "convc/codegen", "convc/codegen/kernels", "convc/ops"):
        assert f"{must}/__init__.py" in names
    top = {n.split("/", 1)[0] for n in names}
    assert not top & {"frontend", "passes", "codegen"}, f"top-level packages leaked into the wheel: {sorted(top)}"
    assert "convc/py.typed" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    entry_points = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "convc = convc.cli:main" in entry_points


@pytest.mark.slow
def test_wheel_imports_every_package(wheel, tmp_path):
    """Installed from the wheel alone (not this checkout), every package imports."""
    target = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                             str(wheel)], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    packages = sorted(source_packages())
    code = ("import importlib, json, sys\n"
            f"mods = {{p: importlib.import_module(p).__file__ for p in {packages!r}}}\n"
            "print(json.dumps(mods))\n")
    # PYTHONPATH comes before site-packages and the editable finder, so the wheel's copy wins
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for package, file in json.loads(result.stdout).items():
        assert Path(file).resolve().is_relative_to(target.resolve()), f"{package} imported from {file}"


def _installed_editable_from_here() -> bool:
    # several metadata folders may be visible (a stale convc.egg-info in the checkout): any will do
    for dist in importlib.metadata.distributions(name="convc"):
        direct = dist.read_text("direct_url.json")
        if not direct:
            continue
        info = json.loads(direct)
        if info.get("dir_info", {}).get("editable") and \
                Path(info["url"].removeprefix("file://")).resolve() == ROOT:
            return True
    return False


@pytest.mark.skipif(not _installed_editable_from_here(), reason="convc is not installed editable from this checkout")
@pytest.mark.slow
def test_editable_install_maps_every_package():
    packages = sorted(source_packages())
    code = ("import importlib, json\n"
            f"print(json.dumps({{p: importlib.import_module(p).__file__ for p in {packages!r}}}))\n")
    # run from elsewhere so the checkout's folders are not on sys.path by accident
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)
    for package, folder in source_packages().items():
        assert Path(files[package]).resolve() == (folder / "__init__.py").resolve(), package


@pytest.mark.skipif(not _installed_editable_from_here(), reason="convc is not installed editable from this checkout")
@pytest.mark.slow
def test_console_script_is_installed():
    script = Path(sys.executable).parent / "convc"
    if not script.exists():
        script = Path(shutil.which("convc") or "convc")
    result = subprocess.run([str(script), "--version"], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"convc {convc.__version__}"
