"""docs/extending.md's worked examples run as written.

Each Python block there starts with a comment naming its file: a new file is written where it says and imported as
that module; a block marked ``(added)`` runs inside the existing module it names, as the lines added to it would; a
new test file's tests are run. Everything the examples register — methods, config names, model classes — and every
name they add is removed again afterwards, so the rest of the suite sees the library as it is.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peftcore import configs, models
from peftcore.methods import base

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "extending.md"
FILE_BLOCK = re.compile(r"^```python\n# (?P<path>[\w/]+\.py)(?P<added> \(added\))?\n(?P<code>.*?)^```", re.S | re.M)


def examples() -> dict[str, list[tuple[str, bool, str]]]:
    """The document's file blocks by section ("## Adding ..."): (path, whether it adds to an existing file, code)."""
    sections = re.split(r"^## ", DOCUMENT.read_text(), flags=re.M)[1:]
    return {section.splitlines()[0]: [(m["path"], bool(m["added"]), m["code"]) for m in FILE_BLOCK.finditer(section)]
            for section in sections if FILE_BLOCK.search(section)}


def module_of(path: str) -> str:
    """The module a file of the checkout is imported as: the models/ folder installs as peftcore.models."""
    module = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    return f"peftcore.{module}" if module.split(".")[0] == "models" else module


@pytest.fixture
def isolated() -> Iterator[list]:
    """Undo, after the test, everything an example registers or adds; the test appends (module, its names before,
    the directory it added to the module's package path or None)."""
    saved = (list(base.METHODS), dict(configs.ADAPTER_CONFIG_MAP), dict(configs.ARCHITECTURES),
             dict(models.MODEL_CLASSES))
    touched: list = []
    yield touched
    base.METHODS[:] = saved[0]
    for registry, before in ((configs.ADAPTER_CONFIG_MAP, saved[1]), (configs.ARCHITECTURES, saved[2]),
                             (models.MODEL_CLASSES, saved[3])):
        registry.clear()
        registry.update(before)
    for module, names, path in touched:
        for name in set(vars(module)) - names:
            delattr(module, name)
        if path is not None:  # a package the example wrote a new module into
            module.__path__.remove(path)
            for name in [name for name, loaded in sys.modules.items()
                         if (getattr(loaded, "__file__", None) or "").startswith(path)]:
                del sys.modules[name]


def run_example(blocks: list[tuple[str, bool, str]], tmp_path: Path, touched: list) -> list[str]:
    """Write, import and run an example's blocks in order; returns the tests it ran."""
    ran = []
    for path, added, code in blocks:
        if added:
            module = importlib.import_module(module_of(path))
            touched.append((module, set(vars(module)), None))
            exec(compile(code, f"{path} (added)", "exec"), vars(module))
        elif path.startswith("tests/"):
            namespace: dict = {"__name__": module_of(path)}
            exec(compile(code, path, "exec"), namespace)
            for name, test in namespace.items():
                if name.startswith("test_") and callable(test):
                    wants = inspect.signature(test).parameters
                    test(**({"tmp_path": tmp_path / name} if "tmp_path" in wants else {}))
                    ran.append(name)
        else:
            file = tmp_path / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(code)
            package = importlib.import_module(module_of(str(Path(path).parent)))
            touched.append((package, set(vars(package)), str(file.parent)))
            package.__path__.append(str(file.parent))
            importlib.import_module(module_of(path))
    return ran


def test_the_document_has_a_method_and_an_architecture_example():
    sections = examples()
    assert set(sections) == {"Adding a method", "Adding an architecture"}
    for blocks in sections.values():
        new_files = [path for path, added, _ in blocks if not added]
        assert len(new_files) == 2 and new_files[1].startswith("tests/"), new_files  # one file and one test


@pytest.mark.parametrize("section", ["Adding a method", "Adding an architecture"])
def test_the_worked_example_runs_as_written(section, tmp_path, isolated):
    assert run_example(examples()[section], tmp_path, isolated)  # at least one test, and every test passed
