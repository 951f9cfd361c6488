"""What the CLI tests share: a tiny BERT with a real tokenizer, labelled words, an adapter trained by `finetune`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from peftcore.cli import main
from peftcore.models import BertConfig, BertModel
from tests.archs import reference


@pytest.fixture
def bert_mlm(hf_checkpoint):
    return reference(hf_checkpoint, "bert", "masked_lm")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
POSITIONS = 24  # the tiny model's position table: its token limit


@pytest.fixture(scope="package")
def tiny(minilm_checkpoint, tmp_path_factory) -> Path:
    """A tiny random BERT with MiniLM's tokenizer and 24 positions: fast to train, and a limit texts can exceed."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=POSITIONS)).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_checkpoint / name, directory / name)
    return directory


def words_csv(path: Path, rows: int = 60, extra: tuple[str, ...] = ()) -> Path:
    """A CSV of short texts with text labels (pos / neg)."""
    words = [("great day", "pos"), ("awful day", "neg"), ("lovely film", "pos"), ("horrible film", "neg")]
    path.write_text("\n".join(["text,label", *(f"{text},{label}" for text, label in (words * rows)[:rows]), *extra])
                    + "\n")
    return path


def finetune_tiny(tiny: Path, csv: Path, out: Path, *options: str) -> int:
    return main(["finetune", "--model", str(tiny), "--data", str(csv), "--epochs", "1", "--batch-size", "8",
                 "--out", str(out), *options])


@pytest.fixture(scope="package")
def trained(tiny, tmp_path_factory) -> Path:
    """An adapter directory (with its head) trained by ``peftcore finetune`` on text labels."""
    root = tmp_path_factory.mktemp("trained")
    assert finetune_tiny(tiny, words_csv(root / "words.csv"), root / "out") == 0
    return root / "out" / "lora"
