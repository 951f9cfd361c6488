"""``peftcore merge BASE ADAPTER OUT``: the merged checkpoint, loaded by transformers, gives our model's outputs with
the adapter active; adapters that no weight can hold are refused."""

from __future__ import annotations

import shutil
import warnings

import peft
import pytest
import torch

from peftcore.cli import main
from tests.archs import ARCHS, inputs, reference
from tests.parity import assert_parity


def random_lora(arch: str, base, tmp_path):
    """An adapter directory with random LoRA weights on q, v and the FFN input: ours for BERT, PEFT's for RoBERTa."""
    generator = torch.Generator().manual_seed(0)
    if arch == "bert":
        ours = ARCHS[arch].model.from_pretrained(base)
        ours.add_adapter("task", "lora[r=4, alpha=8, intermediate_lora=True]")
        with torch.no_grad():
            for parameter in ours.adapter_parameters("task"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
        ours.save_adapter(tmp_path / "adapter", "task")
        return tmp_path / "adapter"
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "intermediate.dense"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(ARCHS[arch].hf[None].from_pretrained(base), config)
    with torch.no_grad():
        for key, parameter in theirs.named_parameters():
            if "lora_" in key:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    theirs.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_merged_checkpoint_gives_transformers_the_outputs_of_the_active_adapter(hf_checkpoint, arch, tmp_path,
                                                                                 capsys):
    directory, _ = reference(hf_checkpoint, arch)
    base = shutil.copytree(directory, tmp_path / "base")
    (base / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # a tokenizer file, which OUT must carry along
    adapter = random_lora(arch, base, tmp_path)
    assert main(["merge", str(base), str(adapter), str(tmp_path / "out")]) == 0
    assert "merged adapter" in capsys.readouterr().out
    assert (tmp_path / "out" / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
    ours = ARCHS[arch].model.from_pretrained(base).eval()
    ours.load_adapter(adapter, set_active=True)
    merged = ARCHS[arch].hf[None].from_pretrained(tmp_path / "out").eval()
    plain = ARCHS[arch].hf[None].from_pretrained(base).eval()
    batch = inputs(ours.config)
    with torch.no_grad():
        expected, got = ours(**batch).last_hidden_state, merged(**batch).last_hidden_state
        assert (plain(**batch).last_hidden_state - got).abs().max() > 1e-2  # the adapter is in the weights
    assert_parity(got, expected, mask=batch["attention_mask"])


def test_merge_refuses_an_adapter_no_weight_can_hold(hf_checkpoint, tmp_path, capsys):
    directory, _ = reference(hf_checkpoint, "bert")
    model = ARCHS["bert"].model.from_pretrained(directory)
    model.add_adapter("bottleneck", "seq_bn")
    model.save_adapter(tmp_path / "adapter", "bottleneck")
    assert main(["merge", str(directory), str(tmp_path / "adapter"), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "adapter 'bottleneck' cannot be merged: a Bottleneck adds computation that no weight can hold" in error
    assert not (tmp_path / "out").exists()
