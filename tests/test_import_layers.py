"""The import layers: ``adaptflow`` < ``runtime`` < ``registry``/``tasks`` < ``flows``.

``runtime`` holds what a registered model package needs to answer; serving
(``registry/serving``) loads packages through it, so loading a served model must not load the
orchestrator (Prefect) or the pipeline code (``tasks``, ``flows``). Imports are read from the
source (module level and inside functions alike), and a fresh interpreter checks what really
loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("adaptflow", "runtime", "registry", "tasks", "flows")
#: Top-level packages a layer may not import, by the folder the importing file is in.
FORBIDDEN = {
    "runtime": ("tasks", "flows", "registry", "prefect"),
    "registry/serving": ("tasks", "flows", "prefect"),
}


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it is written."""

    path: str  # relative to the repository root
    line: int
    module: str  # absolute dotted name

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module}"


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[Import]:
    """Every import in ``path`` (module level and nested), relative ones made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(REPO).as_posix()
    package = (
        _module_of(path) if path.name == "__init__.py" else _module_of(path).rpartition(".")[0]
    )
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(where, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append(Import(where, node.lineno, module))
    return found


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


ALL_IMPORTS = {path: imports_of(path) for package in PACKAGES for path in _files(package)}


def _violations(folder: str, banned: tuple[str, ...]) -> list[str]:
    prefix = REPO / folder
    return [
        str(item)
        for path, found in ALL_IMPORTS.items()
        if path.is_relative_to(prefix)
        for item in found
        if item.module.split(".")[0] in banned
    ]


def test_the_scan_sees_every_package() -> None:
    """A guard for the tests below: every layer has files and the scan finds imports."""
    for package in PACKAGES:
        assert _files(package), f"no .py files under {package}/"
    serving = [p for p in ALL_IMPORTS if p.is_relative_to(REPO / "registry" / "serving")]
    assert any(i.module.startswith("runtime.") for p in serving for i in ALL_IMPORTS[p])


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(folder: str) -> None:
    banned = FORBIDDEN[folder]
    bad = _violations(folder, banned)
    assert not bad, f"{folder}/ must not import {', '.join(banned)}:\n" + "\n".join(bad)


def test_loading_runtime_and_serving_loads_no_prefect() -> None:
    modules = [_module_of(p) for p in _files("runtime") + _files("registry/serving")]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prefect', 'tasks', 'flows'))\n"
        "    if loaded:\n"
        "        sys.exit(f'importing {name} loaded {loaded[:5]}')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:] or done.stdout[-3000:]
