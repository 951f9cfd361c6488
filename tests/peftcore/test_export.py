"""ONNX export: BERT and RoBERTa with adapters merged into the weights or active and unmerged (prefix tuning, a
bottleneck and LoRA stacked) give our outputs within 1e-4 in onnxruntime, on padded batches of other sizes than the
traced one (2 x 8); the CLI writes the same; what cannot be exported says why."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime
import pytest
import torch

from peftcore import BatchSplit, Stack, export_onnx
from peftcore.cli import main
from tests.archs import inputs, tiny_model
from tests.peftcore.test_io import randomize

BATCHES = ((11, 4, 7), (3,))  # padded rows of other counts and lengths than the trace's


def assert_runs_as_ours(model: torch.nn.Module, file, outputs: tuple[str, ...]) -> None:
    """Each output of the ONNX graph equals ours at the real tokens (ours are zeros at padded ones: we run unpadded)."""
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(outputs)
    for lengths in BATCHES:
        batch = inputs(model.config, lengths=lengths)
        got = dict(zip(outputs, session.run(None, {k: v.numpy() for k, v in batch.items()}), strict=True))
        with torch.no_grad():
            expected = model(**batch)
        for name in outputs:
            ours = getattr(expected, name).numpy()
            if name == "last_hidden_state":
                got[name], ours = (t * batch["attention_mask"].numpy()[..., None] for t in (got[name], ours))
            np.testing.assert_allclose(got[name], ours, atol=1e-4, rtol=0, err_msg=f"{name} at {lengths}")


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_unmerged_prefix_bottleneck_and_lora_export_with_dynamic_axes(arch, tmp_path):
    model = tiny_model(arch)
    for name in ("prefix_tuning", "seq_bn", "lora"):
        model.add_adapter(name, name)
        randomize(model, name, scale=0.1)
    model.set_active_adapters(Stack("prefix_tuning", "seq_bn", "lora"))
    model.add_classification_head("lora", num_labels=3)
    outputs = export_onnx(model, tmp_path / "model.onnx")
    assert outputs == ("last_hidden_state", "pooler_output", "logits") and not model.training and model.unpad
    assert_runs_as_ours(model, tmp_path / "model.onnx", outputs)


def test_the_cli_exports_a_checkpoint_with_a_merged_adapter(tmp_path, capsys):
    model = tiny_model("roberta")
    model.save_pretrained(tmp_path / "base")
    model.add_adapter("lora", "lora[intermediate_lora=True]", set_active=True)
    randomize(model, "lora", scale=0.1)
    model.save_adapter(tmp_path / "lora", "lora")
    assert main(["export-onnx", str(tmp_path / "base"), str(tmp_path / "merged.onnx"), "--adapter",
                 str(tmp_path / "lora"), "--merge"]) == 0
    assert "with lora merged; inputs input_ids, attention_mask" in capsys.readouterr().out
    assert_runs_as_ours(model.eval(), tmp_path / "merged.onnx", ("last_hidden_state", "pooler_output"))


def test_row_splitting_setups_and_a_missing_onnx_package_are_refused(tmp_path, monkeypatch, capsys):
    model = tiny_model("bert")
    model.save_pretrained(tmp_path / "base")
    model.add_adapter("a", "lora")
    model.add_adapter("b", "lora")
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 1]))
    with pytest.raises(ValueError, match="sends rows of the batch through different adapters"):
        export_onnx(model, tmp_path / "split.onnx")
    model.set_active_adapters(None)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install peftcore\[onnx\]"):
        export_onnx(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
    assert main(["export-onnx", str(tmp_path / "base"), str(tmp_path / "model.onnx"), "--merge"]) == 1
    assert "--merge folds the adapters of --adapter into the weights; name at least one" in capsys.readouterr().err
