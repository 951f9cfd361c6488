"""``peftcore convert``, ``info`` and ``embed``: checkpoints both ways for every architecture, files others can read."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
import transformers as tf

from peftcore.cli import main
from peftcore.models import BertModel
from tests.archs import ARCHS, reference


def test_convert_to_peftcore_and_back_gives_transformers_the_same_model(bert_mlm, tmp_path, capsys):
    directory, theirs = bert_mlm
    assert main(["convert", str(directory), str(tmp_path / "ours")]) == 0
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    printed = capsys.readouterr().out
    assert "reading" in printed and "wrote" in printed and "converted hf -> peftcore" in printed
    assert "converted peftcore -> hf" in printed and "parameters" in printed
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["peftcore_format"] == 1
    reloaded = tf.BertForMaskedLM.from_pretrained(tmp_path / "back").eval()
    ids = torch.randint(1, theirs.config.vocab_size, (2, 7))
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-6)


HEADS = {"bert": None, "roberta": "sequence_classification", "deberta": "masked_lm", "deberta-v2": None,
         "vit": "image_classification", "xlm-roberta": "question_answering", "camembert": "token_classification",
         "electra": "masked_lm", "distilbert": "sequence_classification", "modernbert": "masked_lm",
         "albert": "masked_lm"}  # a head per architecture, so that convert meets each kind of head's keys


@pytest.mark.parametrize("arch", ARCHS)
def test_convert_and_info_handle_every_architecture(hf_checkpoint, arch, tmp_path, capsys):
    directory, theirs = reference(hf_checkpoint, arch, HEADS[arch])
    assert main(["convert", str(directory), str(tmp_path / "ours")]) == 0
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    assert main(["info", str(tmp_path / "back")]) == 0
    printed = capsys.readouterr().out
    assert f"architecture  {theirs.config.model_type} " in printed
    assert f"parameters    {sum(p.numel() for p in theirs.parameters()):,}" in printed
    reloaded = type(theirs).from_pretrained(tmp_path / "back")
    for key, tensor in theirs.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key


def test_info_reports_architecture_sizes_and_parameter_count(bert_mlm, capsys):
    directory, _ = bert_mlm
    assert main(["info", str(directory)]) == 0
    printed = capsys.readouterr().out
    count = sum(p.numel() for p in BertModel.from_pretrained(directory).parameters())
    assert "bert (BertModel), head: masked_lm" in printed and f"{count:,}" in printed
    assert "2 layers, hidden 64, 4 heads" in printed


def test_embed_prints_embeddings_and_cosine_similarity(minilm_checkpoint, capsys):
    assert main(["embed", "--model", str(minilm_checkpoint), "a cat sits", "a kitten sits"]) == 0
    printed = capsys.readouterr().out
    assert "embedding[384]" in printed and "cosine similarity (0, 1) = 0." in printed


def test_saved_files_get_the_normal_file_mode(bert_mlm, tiny, tmp_path):
    """safetensors files used to be written 0600, unreadable for the other users of a shared folder."""
    previous = os.umask(0o022)
    try:
        assert main(["convert", str(bert_mlm[0]), str(tmp_path / "converted")]) == 0
        model = BertModel.from_pretrained(tiny)
        model.save_pretrained(tmp_path / "hf")
        model.add_adapter("a", "lora")
        model.add_classification_head("a")
        model.save_adapter(tmp_path / "adapter", "a")
    finally:
        os.umask(previous)
    files = [file for directory in ("converted", "adapter", "hf") for file in (tmp_path / directory).iterdir()]
    assert any(file.suffix == ".safetensors" for file in files)
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file


def test_convert_into_a_non_empty_directory_asks_for_overwrite(bert_mlm, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["convert", str(bert_mlm[0]), str(tmp_path / "taken")]) == 1
    assert "is not empty (it holds notes.txt); pass --overwrite" in capsys.readouterr().err
    assert main(["convert", str(bert_mlm[0]), str(tmp_path / "taken"), "--overwrite"]) == 0
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine" and (tmp_path / "taken" / "config.json").is_file()
