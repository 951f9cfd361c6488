"""``peftcore finetune`` beyond classification, end to end on a tiny BERT: sentence embeddings on pairs, a masked-LM
language adapter then a task adapter stacked on it (MAD-X, with the language adapter swapped at test time), and
AdapterFusion over two adapters finetune saved."""

from __future__ import annotations

from peftcore.cli import main
from tests.peftcore.cli.conftest import finetune_tiny, words_csv

WORDS = ["river", "mountain", "forest", "ocean", "desert", "valley", "island", "meadow", "canyon", "glacier"]


def test_embedding_task_reports_retrieval_against_the_frozen_model(tiny, tmp_path, capsys):
    rows = ["anchor,positive"] + [f"a word for {word} number {i},{word} {i}" for i in range(4) for word in WORDS]
    (tmp_path / "pairs.csv").write_text("\n".join(rows))
    assert main(["finetune", "--task", "embedding", "--model", str(tiny), "--data", str(tmp_path / "pairs.csv"),
                 "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "loss multiple_negatives_ranking" in printed and "frozen model  mrr@10" in printed
    assert "adapter       mrr@10" in printed
    assert (tmp_path / "out" / "lora" / "head_config.json").is_file()


def test_mlm_language_adapter_then_a_stacked_task_adapter_with_the_language_swapped(tiny, tmp_path, capsys):
    (tmp_path / "text.txt").write_text("\n".join(f"the {word} lies beyond the {other} today" for word in WORDS
                                                 for other in WORDS[:4]))
    assert main(["finetune", "--task", "mlm", "--model", str(tiny), "--data", str(tmp_path / "text.txt"),
                 "--epochs", "1", "--batch-size", "8", "--whole-word", "--out", str(tmp_path / "lang")]) == 0
    printed = capsys.readouterr().out
    assert "head alone" in printed and "seq_bn_inv + head" in printed and "masking whole words" in printed
    language = str(tmp_path / "lang" / "seq_bn_inv")
    assert finetune_tiny(tiny, words_csv(tmp_path / "words.csv"), tmp_path / "out", "--adapter", "seq_bn",
                         "--language-adapter", language, "--test-language-adapter", language) == 0
    printed = capsys.readouterr().out
    assert "on the language adapter" in printed and "reload check" in printed
    accuracies = [line for line in printed.splitlines() if line.startswith("test accuracy")]
    assert len(accuracies) == 2 and accuracies[0].split()[2] == accuracies[1].split()[2]  # the same adapter again


def test_fusion_over_two_saved_adapters(tiny, tmp_path, capsys):
    csv = words_csv(tmp_path / "words.csv")
    for out in ("a", "b"):
        assert finetune_tiny(tiny, csv, tmp_path / out, "--adapter", "seq_bn") == 0
    fused = f"{tmp_path / 'a' / 'seq_bn'},{tmp_path / 'b' / 'seq_bn'}"
    assert finetune_tiny(tiny, csv, tmp_path / "out", "--fusion", fused) == 0
    printed = capsys.readouterr().out
    assert "adapter       fusion of" in printed and "reload check" in printed
    assert (tmp_path / "out" / "fusion" / "fusion_config.json").is_file()
    assert finetune_tiny(tiny, csv, tmp_path / "out", "--fusion", fused, "--adapter", "lora") == 1
    assert "leave out --adapter" in capsys.readouterr().err
