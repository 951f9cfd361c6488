"""The shape of the house: dependencies point one way, peftcore's import graph has no cycle, the file module is a
leaf, methods keep their logic, and the library imports no reference package.

- models/ (installed as peftcore.models) imports from peftcore only the sites, the adapter-API mixin and the leaf
  file module, and nothing imports it under any other name;
- peftcore never imports peftcore.models, except its command line;
- peftcore's modules import each other without a cycle, counting imports inside functions and under TYPE_CHECKING
  (a package's ``__init__`` re-exporting its own modules is not a cycle);
- peftcore/io.py imports nothing of peftcore or models;
- outside peftcore/methods/, nothing names a method's module class or a method file: the core reaches methods only
  through ``METHODS``, ``methods_for`` and the hooks of ``methods/base.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_FROM_PEFTCORE = {"peftcore.sites", "peftcore.model", "peftcore.io"}
REFERENCES = {"transformers", "adapters", "peft", "sentence_transformers"}
METHOD_ENTRY_POINTS = {"peftcore.methods": {"METHODS", "methods_for"}, "peftcore.methods.base": None}  # None: all


def module_name(file: Path) -> str:
    parts = list(file.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(file: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names) for every import anywhere in ``file`` (function bodies and TYPE_CHECKING blocks too);
    relative imports are resolved, ``import a.b`` gives ("a.b", ())."""
    me = module_name(file)
    package = me if file.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([node.module] if node.module else []))
            found.append((base, tuple(alias.name for alias in node.names)))
    return found


def imports(file: Path) -> set[str]:
    return {module for module, _ in imported(file)}


def library_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def peftcore_graph() -> dict[str, set[str]]:
    """peftcore module -> the peftcore modules it imports (``from a import b`` counts as module a.b when b is one)."""
    modules = {module_name(file): file for file in library_files("peftcore")}
    graph = {}
    for name, file in modules.items():
        targets = set()
        for module, names in imported(file):
            for candidate in [f"{module}.{n}" for n in names] + [module]:
                if candidate in modules and candidate != name:
                    targets.add(candidate)
        if file.name == "__init__.py":  # re-exporting the package's own modules
            targets = {target for target in targets if not target.startswith(f"{name}.")}
        graph[name] = targets
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target):], target] if target in path else [node, target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_peftcore_has_no_import_cycle():
    cycle = cycle_in(peftcore_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_file_module_is_a_leaf():
    used = {name for name in imports(ROOT / "peftcore" / "io.py") if name.split(".")[0] in ("peftcore", "models")}
    assert not used, f"peftcore/io.py imports {used}; it knows no method and no model"


def peftcore_modules_used(file: Path) -> set[str]:
    """The peftcore modules ``file`` imports (``from peftcore import sites`` names the module sites)."""
    used = set()
    for module, names in imported(file):
        if module == "peftcore":
            used |= {f"peftcore.{name}" for name in names}
        elif module.split(".")[0] == "peftcore":
            used.add(module)
    return used


def is_front_end(file: Path) -> bool:
    """The CLI and the AdapterHub API (peftcore.adapters) build models; the core works on any AdapterHost."""
    return file.is_relative_to(ROOT / "peftcore" / "cli") or file.is_relative_to(ROOT / "peftcore" / "adapters")


def is_models(module: str) -> bool:
    return module == "peftcore.models" or module.startswith("peftcore.models.")


@pytest.mark.parametrize("file", library_files("models"), ids=lambda f: str(f.relative_to(ROOT)))
def test_models_import_only_sites_the_api_mixin_and_the_file_module_from_peftcore(file):
    used = {module for module in peftcore_modules_used(file) if not is_models(module)}
    assert used <= ALLOWED_FROM_PEFTCORE, f"{file.name} imports {used - ALLOWED_FROM_PEFTCORE}"


@pytest.mark.parametrize("file", library_files("peftcore"), ids=lambda f: str(f.relative_to(ROOT)))
def test_peftcore_does_not_import_models_except_the_front_ends(file):
    if not is_front_end(file):
        assert not {module for module in peftcore_modules_used(file) if is_models(module)}


@pytest.mark.parametrize("file", [*library_files("models"), *library_files("peftcore"), *library_files("tests"),
                                  *library_files("benchmarks")], ids=lambda f: str(f.relative_to(ROOT)))
def test_the_models_folder_is_imported_only_as_peftcore_models(file):
    """models/ installs as peftcore.models (pyproject's package-dir); a top-level `models` would collide with the
    user's own models.py, and importing one folder under two names gives two copies of every class."""
    assert not {module for module in imports(file) if module.split(".")[0] == "models"}


CORE = [file for file in library_files("peftcore") if not {"methods", "adapters"} & set(file.relative_to(
    ROOT / "peftcore").parts) and file != ROOT / "peftcore" / "__init__.py"]  # public names (the package's and
# AdapterHub's, peftcore.adapters) re-export the configs


@pytest.mark.parametrize("file", CORE, ids=lambda f: str(f.relative_to(ROOT)))
def test_the_core_reaches_methods_only_through_the_registry_and_their_hooks(file):
    for module, names in imported(file):
        if module == "peftcore" and "methods" in names:
            pytest.fail(f"{file.name} imports the methods package itself; use METHODS, methods_for or base hooks")
        if module.startswith("peftcore.methods"):
            allowed = METHOD_ENTRY_POINTS.get(module, set())
            assert allowed is None or set(names) <= allowed, f"{file.name} imports {names} from {module}"


@pytest.mark.parametrize("file", library_files("models") + library_files("peftcore"),
                         ids=lambda f: str(f.relative_to(ROOT)))
def test_library_code_imports_no_reference_package(file):
    assert not {name.split(".")[0] for name in imports(file)} & REFERENCES


@pytest.mark.parametrize("file", library_files("models") + library_files("peftcore"),
                         ids=lambda f: str(f.relative_to(ROOT)))
def test_library_code_has_no_assert_and_prints_only_in_the_cli(file):
    tree = ast.parse(file.read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Assert)], "use a ValueError, not assert"
    if not file.is_relative_to(ROOT / "peftcore" / "cli"):
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
        assert not [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "print"]


def test_the_wheel_lists_every_package():
    """pyproject.toml names the packages one by one (models/ installs as peftcore.models): a package missing there is
    missing from every non-editable install."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"peftcore": ROOT / "peftcore"}
    roots |= {name: ROOT / folder for name, folder in setuptools["package-dir"].items()}
    found = {".".join((name, *init.parent.relative_to(root).parts))
             for name, root in roots.items() for init in root.rglob("__init__.py")}
    assert set(setuptools["packages"]) == found
