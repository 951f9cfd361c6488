"""``peftcore predict``: label names and probabilities for texts from the command line, a file or standard input."""

from __future__ import annotations

import io
import json
import shutil
import sys

import pytest

from peftcore.cli import main
from peftcore.models import BertModel


def test_predict_prints_label_names_and_probabilities_for_texts_on_the_command_line(tiny, trained, capsys):
    """Label names and probabilities; and the options may come before the texts."""
    assert main(["predict", str(trained), "--model", str(tiny), "great day", "awful film"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("great day") and lines[1].endswith("awful film")
    for line in lines:
        label, probability, _ = line.split(maxsplit=2)
        assert label in ("neg", "pos") and 0.5 <= float(probability) <= 1.0


def test_predict_reads_csv_jsonl_and_standard_input(tiny, trained, tmp_path, capsys, monkeypatch):
    """a CSV or JSONL file's text column, or one text a line on standard input; jsonl/csv output carry
    every label's probability."""
    (tmp_path / "in.csv").write_text("id,text\n1,great day\n2,awful film\n")
    (tmp_path / "in.jsonl").write_text('{"text": "great day"}\n{"text": "awful film"}\n')
    outputs = []
    for source in (["--file", str(tmp_path / "in.csv")], ["--file", str(tmp_path / "in.jsonl")], []):
        monkeypatch.setattr(sys, "stdin", io.StringIO("great day\n\nawful film\n"))
        assert main(["predict", str(trained), "--model", str(tiny), "--format", "jsonl", *source]) == 0
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert outputs[0] == outputs[1] == outputs[2]
    assert [row["text"] for row in outputs[0]] == ["great day", "awful film"]
    for row in outputs[0]:
        assert set(row["probabilities"]) == {"neg", "pos"} and row["probabilities"][row["label"]] == row["probability"]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert main(["predict", str(trained), "--model", str(tiny), "--format", "csv", "great day"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "text,label,probability,p(neg),p(pos)"


def test_predict_runs_padded_batches_as_one_text_at_a_time(tiny, trained, capsys, monkeypatch):
    """batched with the attention mask (so the model runs them unpadded): the same numbers as one by one."""
    texts = ["great", "an awful film with a horrible ending and no day", "lovely film", "a day"]
    seen = []
    forward = BertModel.forward

    def spy(model, *args, **kwargs):
        seen.append(kwargs.get("attention_mask"))
        return forward(model, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", spy)
    results = []
    for size in ("4", "1"):
        assert main(["predict", str(trained), "--model", str(tiny), "--format", "jsonl", "--batch-size", size,
                     *texts]) == 0
        results.append([json.loads(line)["probabilities"] for line in capsys.readouterr().out.splitlines()])
    assert seen[0] is not None and seen[0].shape[0] == 4 and not seen[0].all()  # one padded batch, with its mask
    for batched, alone in zip(*results, strict=True):
        assert batched == pytest.approx(alone, abs=1e-5)


def test_predict_refuses_an_adapter_without_head(tiny, trained, tmp_path, capsys):
    headless = tmp_path / "headless"
    shutil.copytree(trained, headless)
    for name in ("head_config.json", "head_model.safetensors"):
        (headless / name).unlink()
    assert main(["predict", str(headless), "--model", str(tiny), "x"]) == 1
    assert "has no head" in capsys.readouterr().err
