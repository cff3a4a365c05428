"""The import layers: ``adaptflow`` < ``runtime`` < ``registry`` < ``tasks`` < ``flows`` <
``serve`` < the CLI.

A module imports only its own layer and the layers below, and no two modules import each other
(directly or round a longer loop). The CLI (``adaptflow/cli.py``, ``__main__.py``) and
``adaptflow/deployments.py`` are the top layer although they sit in the ``adaptflow`` package:
``adaptflow`` is the command's name (``python -m adaptflow``, the ``adaptflow.cli:main``
console script of the contract), and nothing else imports them.

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
PACKAGES = ("adaptflow", "runtime", "registry", "tasks", "flows", "serve")
#: Top-level packages a layer may not import, by the folder the importing file is in.
FORBIDDEN = {
    "runtime": ("tasks", "flows", "registry", "prefect"),
    "registry/serving": ("tasks", "flows", "prefect"),
    # the HTTP server answers with packages; it runs no pipeline and needs no orchestrator
    "serve": ("flows", "prefect"),
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
            # ``from package import module`` imports that module too
            found += [Import(where, node.lineno, f"{module}.{a.name}") for a in node.names]
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


#: Lowest first. A file may import its own layer and the ones before it.
LAYERS = ("adaptflow", "runtime", "registry", "tasks", "flows", "serve")
#: The top layer, inside the ``adaptflow`` package (see the module docstring).
TOP = ("adaptflow/cli.py", "adaptflow/__main__.py", "adaptflow/deployments.py")


def _layer(path: Path) -> int:
    where = path.relative_to(REPO).as_posix()
    return len(LAYERS) if where in TOP else LAYERS.index(where.split("/")[0])


MODULES = {_module_of(path): path for path in ALL_IMPORTS}


def _target(module: str) -> str | None:
    """The repository module an imported name lives in (the longest known prefix), or None."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def test_every_import_goes_down_or_across_the_layers() -> None:
    upward = []
    for path, found in ALL_IMPORTS.items():
        for item in found:
            target = _target(item.module)
            if target is not None and _layer(MODULES[target]) > _layer(path):
                upward.append(f"{item} (layer {_layer(MODULES[target])} > {_layer(path)})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(set(upward)))


def test_no_import_cycles() -> None:
    graph = {
        _module_of(path): {
            t for i in found if (t := _target(i.module)) not in (None, _module_of(path))
        }
        for path, found in ALL_IMPORTS.items()
    }
    # parents import their own submodules to re-export them; that is not a cycle of ideas
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], {start}
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start and len(trail) > 1:
                    cycles.append(" -> ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    parents = [c for c in cycles if not _package_cycle(c)]
    assert not parents, "import cycles:\n" + "\n".join(sorted(set(parents)))


def _package_cycle(cycle: str) -> bool:
    """A package's ``__init__`` and its own submodule (``a`` -> ``a.b`` -> ``a``)."""
    names = cycle.split(" -> ")
    return all(n.startswith(names[0]) or names[0].startswith(n) for n in names)


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


def _serving_closure() -> tuple[set[Path], set[str]]:
    """The repository files a logged model's code reaches, and the third-party names they import."""
    todo = [p for p in ALL_IMPORTS if p.is_relative_to(REPO / "registry" / "serving")]
    seen: set[Path] = set()
    third: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for item in ALL_IMPORTS[path]:
            target = _target(item.module)
            top = item.module.split(".")[0]
            if target is not None:
                todo.append(MODULES[target])
            elif top and top not in sys.stdlib_module_names and top not in PACKAGES:
                third.add(top)
    return seen, third


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_a_logged_model_carries_the_code_and_requirements_its_serving_code_imports() -> None:
    """``mlflow models serve`` in a fresh environment: pip installs the requirements (all of
    them published) and the model's ``code/`` holds the project's packages it imports."""
    import importlib.metadata as md

    from registry.models import SERVING_CODE, SERVING_REQUIREMENTS

    files, third = _serving_closure()
    reached = {p.relative_to(REPO).parts[0] for p in files} - {"registry"}
    assert reached == set(SERVING_CODE)
    assert "adaptflow" not in {_normal(r) for r in SERVING_REQUIREMENTS}
    distributions = md.packages_distributions()
    required = {_normal(r) for r in SERVING_REQUIREMENTS}
    missing = {
        name: distributions.get(name)
        for name in third
        if not required & {_normal(d) for d in distributions.get(name, [name])}
    }
    assert not missing, f"imported by the serving code but not required: {missing}"
    for requirement in SERVING_REQUIREMENTS:  # each came from a package index, not a checkout
        direct = md.distribution(requirement).read_text("direct_url.json")
        assert direct is None or '"dir_info"' not in direct, requirement
