"""Labelled text for the fine-tuning commands: VADER's human-rated sentiment lexicon (the default), or a CSV/JSONL
file of ``text,label``; and a seeded train/validation/test split."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

Example = tuple[str, int]


def vader_lexicon_path() -> Path:
    """vader_lexicon.txt as the ``vaderSentiment`` package ships it."""
    try:
        import vaderSentiment
    except ImportError as error:
        raise FileNotFoundError("the default data set is the lexicon that vaderSentiment ships: pip install "
                                "'peftcore[demo]', or pass --data FILE.") from error
    return Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"


def load_vader(path: str | os.PathLike | None = None, threshold: float = 0.5) -> tuple[list[Example], list[str]]:
    """Words and emoticons with a mean human rating above ``threshold`` (positive, 1) or below ``-threshold``
    (negative, 0); the rest is left out as neutral."""
    examples = []
    for line in Path(path or vader_lexicon_path()).read_text(encoding="utf-8", errors="replace").splitlines():
        token, _, rest = line.partition("\t")
        mean = float(rest.split("\t", 1)[0])
        if abs(mean) > threshold:
            examples.append((token, int(mean > 0)))
    return examples, ["negative", "positive"]


def load_labelled(path: str | os.PathLike) -> tuple[list[Example], list[str]]:
    """A CSV (header with ``text`` and ``label``) or JSONL (``{"text": ..., "label": ...}``) file; labels may be
    names or integers, and are numbered in sorted order."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data file {str(file)!r} does not exist.")
    if file.suffix == ".jsonl":
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif file.suffix == ".csv":
        with file.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    else:
        raise ValueError(f"{file.name}: use a .csv file with text,label columns or a .jsonl file.")
    missing = [i for i, row in enumerate(rows) if "text" not in row or "label" not in row]
    if missing or not rows:
        raise ValueError(f"{file.name}: every row needs 'text' and 'label' (rows {missing[:5]} lack them).")
    names = sorted({str(row["label"]) for row in rows}, key=lambda n: (not n.lstrip("-").isdigit(), n.zfill(12)))
    index = {name: i for i, name in enumerate(names)}
    return [(str(row["text"]), index[str(row["label"])]) for row in rows], names


def split(examples: Sequence[Example], seed: int = 0,
          fractions: tuple[float, float] = (0.8, 0.1)) -> tuple[list[Example], list[Example], list[Example]]:
    """A seeded shuffle cut into train, validation and test (the rest)."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [examples[i] for i in order]
    first, second = int(len(shuffled) * fractions[0]), int(len(shuffled) * (fractions[0] + fractions[1]))
    return shuffled[:first], shuffled[first:second], shuffled[second:]
