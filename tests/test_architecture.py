"""Dependencies point one way: models import only peftcore's sites (and API mixin); peftcore never imports
models, except its command line; the library imports no reference package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_FROM_PEFTCORE = {"peftcore.sites", "peftcore.model", "peftcore.io"}
REFERENCES = {"transformers", "adapters", "peft", "sentence_transformers"}


def imports(file: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def library_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("file", library_files("models"), ids=lambda f: str(f.relative_to(ROOT)))
def test_models_import_only_sites_and_the_api_mixin_from_peftcore(file):
    used = {name for name in imports(file) if name.split(".")[0] == "peftcore"}
    assert used <= ALLOWED_FROM_PEFTCORE, f"{file.name} imports {used - ALLOWED_FROM_PEFTCORE}"


@pytest.mark.parametrize("file", library_files("peftcore"), ids=lambda f: str(f.relative_to(ROOT)))
def test_peftcore_does_not_import_models_except_the_cli(file):
    if file.name != "cli.py":
        assert not {name for name in imports(file) if name.split(".")[0] == "models"}


@pytest.mark.parametrize("file", library_files("models") + library_files("peftcore"),
                         ids=lambda f: str(f.relative_to(ROOT)))
def test_library_code_imports_no_reference_package(file):
    assert not {name.split(".")[0] for name in imports(file)} & REFERENCES


@pytest.mark.parametrize("file", library_files("models") + library_files("peftcore"),
                         ids=lambda f: str(f.relative_to(ROOT)))
def test_library_code_has_no_assert_and_prints_only_in_the_cli(file):
    tree = ast.parse(file.read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Assert)], "use a ValueError, not assert"
    if file.name != "cli.py":
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
        assert not [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "print"]
