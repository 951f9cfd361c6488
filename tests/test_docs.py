"""Every Python block in README.md and docs/*.md runs: a broken example fails the suite."""

from __future__ import annotations

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
            for line in block.splitlines() if line.strip()]


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
