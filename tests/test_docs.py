"""Every Python block in README.md and docs/*.md runs: a broken example fails the suite; and the public API's
docstrings name every parameter."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = ROOT / "docs" / "extending.md"  # files of worked examples, run together by tests/test_extending.py
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(document: Path) -> list[str]:
    return BLOCK.findall(document.read_text())


@pytest.mark.parametrize(("document", "index"), [(doc, i) for doc in DOCUMENTS if doc != EXAMPLES
                                                  for i in range(len(python_blocks(doc)))],
                         ids=lambda value: value.name if isinstance(value, Path) else str(value))
def test_code_block_runs(document, index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write out/...; keep the checkout clean
    code = python_blocks(document)[index]
    exec(compile(code, f"{document.name}[block {index}]", "exec"), {"__name__": "__docs__"})


COMMAND_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


def commands(document: Path) -> list[str]:
    return [line.split("#")[0].split() for block in COMMAND_BLOCK.findall(document.read_text())
            for line in block.splitlines() if line.split("#")[0].strip()]  # comment-only lines hold no command


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda document: document.name)
def test_every_command_shown_exists(document):
    """Shell blocks name make targets of the Makefile and peftcore subcommands with options they accept."""
    from peftcore.cli import parser

    makefile = (ROOT / "Makefile").read_text()
    subcommands = parser()._subparsers._group_actions[0].choices
    for words in commands(document):
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, re.MULTILINE), words
        elif "peftcore" in words[0] or "peftcore.cli" in words:
            at = words.index("peftcore.cli") + 1 if "peftcore.cli" in words else 1
            options = {option for action in subcommands[words[at]]._actions for option in action.option_strings}
            shown = {word.strip("[]").split("=")[0] for word in words[at + 1:] if word.strip("[").startswith("--")}
            assert shown <= options, (words, shown - options)


def test_the_readme_has_runnable_examples():
    assert python_blocks(ROOT / "README.md")


def test_the_interop_docs_name_the_extra_that_installs_adapters_and_peft():
    """docs/interop.md's examples import adapters, peft and transformers: the [interop] extra has them."""
    assert "pip install 'peftcore[interop]'" in (ROOT / "docs" / "interop.md").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    interop = next(line for line in pyproject.splitlines() if line.startswith("interop = "))
    assert "adapters" in interop and "peft" in interop and "transformers" in interop


def public_api() -> list:
    """The documented API: public functions and classes of the modules below, and each class's public methods,
    class- and static methods and properties (a class stands for its constructor and dataclass fields)."""
    from peftcore import configs, training
    from peftcore.model import AdapterModelMixin
    from peftcore.models import pretrained

    def of_class(cls: type) -> list:
        found = [cls]
        for name, value in vars(cls).items():
            value = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if not name.startswith("_") and inspect.isfunction(value):
                found.append(value)
        return found

    found = of_class(AdapterModelMixin)
    for module in (pretrained, training, configs):
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(value):
                found += of_class(value)
            elif inspect.isfunction(value):
                found.append(value)
    return found


def parameters_of(f) -> list[str]:
    """What a docstring must name: the parameters but self, cls, *args, **kwargs and _private ones, and a dataclass's
    fields."""
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    names = [p.name for p in inspect.signature(f).parameters.values() if p.kind not in variadic]
    if dataclasses.is_dataclass(f):
        names += [field.name for field in dataclasses.fields(f) if field.name not in names]
    return [name for name in names if name not in ("self", "cls") and not name.startswith("_")]


@pytest.mark.parametrize("f", public_api(), ids=lambda f: f"{f.__module__.rpartition('.')[2]}.{f.__qualname__}")
def test_public_api_docstrings_name_every_parameter(f):
    """The docstring ``help()`` shows names every parameter as ``name``, in prose saying what it means (issue #16)."""
    doc = inspect.getdoc(f)
    assert doc, f"{f.__qualname__} has no docstring"
    missing = [name for name in parameters_of(f) if f"``{name}``" not in doc]
    assert not missing, f"{f.__qualname__}'s docstring does not name {missing}"
