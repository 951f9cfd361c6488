"""Hugging Face Hub repo ids: checkpoints, adapters and tokenizers named "org/name" load from the local Hugging Face
cache, laid out as huggingface_hub lays it out (models--org--name/refs/main, snapshots/<sha>/...), offline; a local
path wins over a repo id; a missing snapshot, a missing huggingface_hub and a string that is neither say so."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from peftcore import io, models
from peftcore.cli.checkpoints import model_dir
from peftcore.models import BertModel, Tokenizer
from tests.archs import tiny_model
from tests.peftcore.cli.conftest import TOKENIZER_FILES
from tests.peftcore.test_io import randomize

SHA = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo_id: str) -> Path:
    """An empty snapshot of ``repo_id`` in the hub cache ``cache``, as snapshot_download leaves one."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(SHA)
    snapshot = storage / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch, minilm_checkpoint):
    """A hub cache holding org/tiny (a tiny BERT with MiniLM's tokenizer) and org/adapter (a LoRA adapter for it);
    offline, as the tests run everywhere."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_model("bert")
    model.save_pretrained(cache_repo(cache, "org/tiny"))
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_checkpoint / name, cache / "models--org--tiny" / "snapshots" / SHA / name)
    model.add_adapter("lora", "lora", set_active=True)
    randomize(model, "lora")
    model.save_adapter(cache_repo(cache, "org/adapter"), "lora")
    return model


def test_models_adapters_and_tokenizers_load_from_the_cache_by_repo_id(hub):
    ids = torch.tensor([[2, 5, 7, 3]])
    for loaded in (models.from_pretrained("org/tiny"), BertModel.from_pretrained("org/tiny")):
        assert loaded.load_adapter("org/adapter", set_active=True) == "lora"
        torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state, hub(input_ids=ids).last_hidden_state,
                                   atol=0, rtol=0)
    tokenizer = Tokenizer.from_pretrained("org/tiny")
    assert tokenizer("hello world")["input_ids"].shape[0] == 1
    assert model_dir("org/tiny").endswith(SHA)


def test_a_local_directory_wins_over_a_repo_id_of_the_same_spelling(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_model("bert", hidden_dropout_prob=0.2).save_pretrained(tmp_path / "org" / "tiny")
    assert models.from_pretrained("org/tiny").config.hidden_dropout_prob == 0.2


def test_missing_snapshots_missing_huggingface_hub_and_non_ids_are_explained(hub, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"'org/other' is not a local directory, and the Hugging Face cache "
                                                r".* holds no snapshot of that repo while HF_HUB_OFFLINE is set"):
        models.from_pretrained("org/other")
    with pytest.raises(FileNotFoundError, match="adapter directory 'no/such/dir' does not exist, and it is not a "
                                                "Hugging Face Hub repo id"):
        hub.load_adapter("no/such/dir")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(ImportError, match=r"tokenizer 'org/tiny' is not a local directory; as a Hugging Face Hub "
                                          r"repo id it needs huggingface_hub: pip install peftcore\[hub\]"):
        Tokenizer.from_pretrained("org/tiny")


@pytest.mark.parametrize(("text", "is_id"), [
    ("org/name", True), ("sentence-transformers/all-MiniLM-L6-v2", True), ("a.b_c/d-e.f", True),
    ("name", False), ("org/name/file", False), ("/abs/path", False), ("./org", False), ("../org/name", False),
    ("org--x/name", False), ("org/name.", False), ("org/-name", False), ("org/" + "n" * 100, False), ("", False)])
def test_repo_ids_are_org_slash_name_as_the_hub_spells_them(text, is_id):
    assert io.is_repo_id(text) is is_id
