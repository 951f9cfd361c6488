"""Every Python block in README.md and docs/*.md runs: a broken example fails the suite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(document: Path) -> list[str]:
    return BLOCK.findall(document.read_text())


@pytest.mark.parametrize(("document", "index"), [(doc, i) for doc in DOCUMENTS for i in range(len(python_blocks(doc)))],
                         ids=lambda value: value.name if isinstance(value, Path) else str(value))
def test_code_block_runs(document, index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write out/...; keep the checkout clean
    code = python_blocks(document)[index]
    exec(compile(code, f"{document.name}[block {index}]", "exec"), {"__name__": "__docs__"})


def test_every_document_has_runnable_examples():
    assert all(python_blocks(document) for document in DOCUMENTS if document.name == "README.md")
