"""The ``peftcore`` command: convert both ways, info, embed, and errors as exit code 1 with a message."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers as tf

from peftcore.cli import main
from peftcore.models import BertModel
from tests.archs import ARCHS, reference


@pytest.fixture
def bert_mlm(hf_checkpoint):
    return reference(hf_checkpoint, "bert", "masked_lm")


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
         "vit": "image_classification"}  # a head per architecture, so that convert meets each kind of head's keys


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


def test_errors_exit_1_with_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 1
    assert "peftcore info: error:" in capsys.readouterr().err


def test_finetune_on_a_csv_trains_tests_saves_and_checks_the_reload(minilm_checkpoint, tmp_path, capsys):
    rows = ["text,label"] + [f"{word},{label}" for word, label in
                             [("great", "pos"), ("awful", "neg"), ("lovely", "pos"), ("horrible", "neg")] * 20]
    (tmp_path / "words.csv").write_text("\n".join(rows))
    assert main(["finetune", "--model", str(minilm_checkpoint), "--data", str(tmp_path / "words.csv"),
                 "--epochs", "1", "--batch-size", "16", "--adapter", "seq_bn", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "labels neg, pos" in printed and "test accuracy" in printed and "reload check" in printed
    assert (tmp_path / "out" / "seq_bn" / "adapter_model.safetensors").is_file()


def test_compare_tabulates_every_method_and_writes_csv_and_markdown(minilm_checkpoint, tmp_path, capsys):
    rows = ["text,label"] + [f"{word},{label}" for word, label in [("great", 1), ("awful", 0)] * 24]
    (tmp_path / "words.csv").write_text("\n".join(rows))
    assert main(["compare", "lora", "seq_bn", "--model", str(minilm_checkpoint), "--data", str(tmp_path / "words.csv"),
                 "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "compare.md").read_text().splitlines()
    assert table[0].startswith("| method | trainable params | trainable % | test accuracy")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| lora", "| seq_bn"]
    assert (tmp_path / "out" / "compare.csv").read_text().count("\n") == 3
    assert "| lora |" in capsys.readouterr().out


@pytest.mark.parametrize("own", ["models.py", "models/__init__.py"])
def test_the_library_and_the_cli_work_beside_a_projects_own_models(own, tmp_path):
    """Projects have a models.py or models/ of their own; peftcore's models install as peftcore.models, so neither
    shadows them nor is shadowed (the working directory comes first on sys.path, as in any script)."""
    (tmp_path / own).parent.mkdir(exist_ok=True)
    (tmp_path / own).write_text("raise ImportError('the project's own models were imported')\n")
    library = subprocess.run([sys.executable, "-c", "from peftcore.models import BertModel; import peftcore.cli"],
                             cwd=tmp_path, capture_output=True, text=True)
    assert library.returncode == 0, library.stderr
    cli = subprocess.run([sys.executable, "-m", "peftcore.cli", "--help"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert cli.returncode == 0 and "convert" in cli.stdout, cli.stderr
