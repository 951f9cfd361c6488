"""``peftcore finetune``: train, test, save and reload; label names kept, truncation counted, bad data and reruns
explained."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from torch.utils.checkpoint import checkpoint

from peftcore import forward
from peftcore.cli import main
from tests.peftcore.cli.conftest import POSITIONS, finetune_tiny, words_csv


def test_finetune_on_a_csv_trains_tests_saves_and_checks_the_reload(minilm_checkpoint, tmp_path, capsys):
    rows = ["text,label"] + [f"{word},{label}" for word, label in
                             [("great", "pos"), ("awful", "neg"), ("lovely", "pos"), ("horrible", "neg")] * 20]
    (tmp_path / "words.csv").write_text("\n".join(rows))
    assert main(["finetune", "--model", str(minilm_checkpoint), "--data", str(tmp_path / "words.csv"),
                 "--epochs", "1", "--batch-size", "16", "--adapter", "seq_bn", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "labels neg, pos" in printed and "test accuracy" in printed and "reload check" in printed
    assert (tmp_path / "out" / "seq_bn" / "adapter_model.safetensors").is_file()


def test_finetune_saves_the_label_names_in_the_head_config(trained):
    """text labels come back as label2id (AdapterHub's field) in the saved head config."""
    head = json.loads((trained / "head_config.json").read_text())["config"]
    assert head["label2id"] == {"neg": 0, "pos": 1}


def test_max_length_defaults_to_what_the_data_need_and_truncation_is_counted(tiny, tmp_path, capsys):
    """no silent cut at 32 tokens: the longest text decides, up to the model's limit; every cut is counted."""
    long_text = " ".join(["day"] * 40)  # 42 tokens with [CLS] and [SEP]: more than the 24 positions
    csv = words_csv(tmp_path / "words.csv", extra=(f"{long_text},pos",))
    assert finetune_tiny(tiny, csv, tmp_path / "out") == 0
    assert f"truncated     1 of 61 texts cut to {POSITIONS} tokens (the model's limit)" in capsys.readouterr().out
    assert finetune_tiny(tiny, words_csv(tmp_path / "short.csv"), tmp_path / "out") == 0
    assert "tokens        at most 4 per text, none truncated (the model's limit: 24)" in capsys.readouterr().out
    assert finetune_tiny(tiny, csv, tmp_path / "out", "--max-length", "3") == 0
    assert "truncated     61 of 61 texts cut to 3 tokens (--max-length)" in capsys.readouterr().out
    assert finetune_tiny(tiny, csv, tmp_path / "out", "--max-length", "100") == 1
    assert "--max-length 100: this model takes 2 to 24 tokens" in capsys.readouterr().err


def test_data_smaller_than_a_batch_missing_columns_and_missing_models_say_what_to_do(tiny, tmp_path, capsys):
    """each mistake is named with its fix, before any training."""
    small = words_csv(tmp_path / "small.csv", rows=20)
    assert main(["finetune", "--model", str(tiny), "--data", str(small), "--out", str(tmp_path)]) == 1
    assert "the training split has 16 examples (80% of 20), fewer than one batch of 32: lower --batch-size" in \
        capsys.readouterr().err
    (tmp_path / "columns.csv").write_text("sentence,label\ngood,pos\n")
    assert main(["finetune", "--model", str(tiny), "--data", str(tmp_path / "columns.csv")]) == 1
    assert "columns.csv has no 'text' column; its header is sentence,label" in capsys.readouterr().err
    for command in (["finetune"], ["compare"], ["embed"], ["predict", str(tmp_path), "x"]):
        assert main([*command, "--model", str(tmp_path / "nowhere")]) == 1
        assert f"--model {tmp_path / 'nowhere'}: no such directory" in capsys.readouterr().err
    assert main(["finetune", "--model", str(tmp_path), "--data", str(small)]) == 1
    assert "is not a checkpoint directory (it has no config.json)" in capsys.readouterr().err


def test_rerunning_a_finished_run_says_so_and_another_config_is_refused(tiny, tmp_path, capsys):
    """the rerun used to raise IndexError; another adapter config a raw tensor-size RuntimeError."""
    csv, checkpoints = words_csv(tmp_path / "words.csv"), str(tmp_path / "checkpoints")
    assert finetune_tiny(tiny, csv, tmp_path / "out", "--checkpoint-dir", checkpoints) == 0
    first = capsys.readouterr().out
    assert finetune_tiny(tiny, csv, tmp_path / "out", "--checkpoint-dir", checkpoints) == 0
    again = capsys.readouterr()
    assert "holds this run, finished (6 steps); delete it to train again" in again.out
    assert "is a finished run: nothing to train" in again.err
    test_line = [line for line in first.splitlines() if line.startswith("test accuracy")]
    assert test_line == [line for line in again.out.splitlines() if line.startswith("test accuracy")]
    assert finetune_tiny(tiny, csv, tmp_path / "out", "--checkpoint-dir", checkpoints, "--adapter", "lora[r=4]",
                         "--lr", "0.01") == 1
    error = capsys.readouterr().err
    assert "was made by another run" in error and "r: 8 then, 4 now" in error
    assert "learning_rate: 0.002 then, 0.01 now" in error
    assert finetune_tiny(tiny, words_csv(tmp_path / "more.csv", rows=80), tmp_path / "out", "--checkpoint-dir",
                         checkpoints) == 1
    assert "training data: 48 examples then, 64 now" in capsys.readouterr().err


def test_gradient_checkpointing_trains_the_same_adapter(tiny, tmp_path, monkeypatch):
    """--gradient-checkpointing recomputes each layer in the backward pass, dropout masks included."""
    csv = words_csv(tmp_path / "words.csv")
    assert finetune_tiny(tiny, csv, tmp_path / "plain") == 0
    calls = []
    monkeypatch.setattr(forward, "checkpoint", lambda *args, **kwargs: calls.append(1) or checkpoint(*args, **kwargs))
    assert finetune_tiny(tiny, csv, tmp_path / "checkpointed", "--gradient-checkpointing") == 0
    assert calls
    plain, checkpointed = (load_file(tmp_path / run / "lora" / "adapter_model.safetensors")
                           for run in ("plain", "checkpointed"))
    assert plain.keys() == checkpointed.keys()
    for key, tensor in plain.items():
        torch.testing.assert_close(checkpointed[key], tensor, atol=1e-5, rtol=0)
