"""``peftcore compare``: every method checked first, each saved apart, the table written as it goes, and a chart of
accuracy against trainable parameters beside the frozen model's linear probe."""

from __future__ import annotations

import json
from pathlib import Path

from peftcore.cli import compare as compare_command
from peftcore.cli import main
from tests.peftcore.cli.conftest import words_csv


def test_compare_tabulates_every_method_and_writes_csv_and_markdown(minilm_checkpoint, tmp_path, capsys):
    rows = ["text,label"] + [f"{word},{label}" for word, label in [("great", 1), ("awful", 0)] * 24]
    (tmp_path / "words.csv").write_text("\n".join(rows))
    assert main(["compare", "lora", "seq_bn", "--model", str(minilm_checkpoint), "--data", str(tmp_path / "words.csv"),
                 "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "compare.md").read_text().splitlines()
    assert table[0].startswith("| method | trainable params | trainable % | test accuracy")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| linear probe (frozen model)", "| lora", "| seq_bn"]
    assert (tmp_path / "out" / "compare.csv").read_text().count("\n") == 4
    assert "| lora |" in capsys.readouterr().out


def test_compare_checks_every_method_before_training_any(tiny, tmp_path, capsys):
    """a typo in the last method used to surface after the others had trained."""
    csv = words_csv(tmp_path / "words.csv")
    assert main(["compare", "lora", "lora[r=x]", "no_such_method", "--model", str(tiny), "--data", str(csv),
                 "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "2 of 3 methods cannot be trained; nothing was" in error
    assert "'lora[r=x]': LoRAConfig.r must be a positive int" in error and "'no_such_method': unknown" in error
    assert not (tmp_path / "out").exists()


def test_compare_saves_each_method_apart_and_writes_the_table_as_it_goes(tiny, tmp_path, capsys, monkeypatch):
    """two LoRA configs no longer overwrite each other; an interruption keeps the finished rows; progress is
    shown per step; the missing chart dependency is named."""
    csv, out = words_csv(tmp_path / "words.csv"), tmp_path / "out"
    monkeypatch.setattr(compare_command, "has_matplotlib", lambda: False)
    assert main(["compare", "lora", "lora[r=4]", "--model", str(tiny), "--data", str(csv), "--epochs", "1",
                 "--batch-size", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert json.loads((out / "lora" / "adapter_config.json").read_text())["config"]["r"] == 8
    assert json.loads((out / "lora_r_4" / "adapter_config.json").read_text())["config"]["r"] == 4
    rows = (out / "compare.md").read_text().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| linear probe (frozen model)", "| lora", "| lora[r=4]"]
    assert rows[2].endswith(f"| {out / 'lora_r_4'} |")
    assert "step 6/6  loss" in printed.err and "step 6/6  validation accuracy" in printed.err
    assert "chart         not drawn: it needs matplotlib (pip install matplotlib)" in printed.out

    trained = []

    def interrupted(task, adapter, *args, **kwargs):
        if trained:
            raise KeyboardInterrupt
        trained.append(adapter)
        return real(task, adapter, *args, **kwargs)

    real = compare_command.train_and_test
    monkeypatch.setattr(compare_command, "train_and_test", interrupted)
    assert main(["compare", "seq_bn", "ia3", "--model", str(tiny), "--data", str(csv), "--epochs", "1",
                 "--batch-size", "8", "--out", str(tmp_path / "cut")]) == 130
    rows = (tmp_path / "cut" / "compare.md").read_text().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| linear probe (frozen model)", "| seq_bn"]


def test_the_compare_chart_plots_accuracy_against_trainable_parameters_with_the_probe_baseline():
    """each point labelled with its method and value, the frozen-model baseline drawn, a title naming
    model and data."""
    runs = [compare_command.Run(compare_command.PROBE, None, 770, 10**7, 0.91, 1.0, 0.1, None, 0),
            compare_command.Run("lora[r=8, alpha=16]", Path("lora"), 222_338, 10**7, 0.9459, 1.0, 0.1, 1, 1),
            compare_command.Run("ia3", Path("ia3"), 162_434, 10**7, 0.9129, 1.0, 0.1, 1, 1)]
    figure = compare_command.chart(runs, "all-MiniLM-L6-v2 on the VADER sentiment lexicon")
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and axes.get_ylabel() == "test accuracy"
    assert "trainable parameters" in axes.get_xlabel()
    assert axes.get_title().startswith("all-MiniLM-L6-v2 on the VADER sentiment lexicon")
    labels = {text.get_text() for text in axes.texts}
    assert {"lora[r=8, alpha=16]: 0.9459", "ia3: 0.9129", "linear probe (frozen model): 0.9100"} <= labels
    assert any(list(line.get_ydata()) == [0.91, 0.91] for line in axes.get_lines())  # the baseline, across
