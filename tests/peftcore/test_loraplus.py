"""LoRA+ parameter groups (peftcore/loraplus.py): the same LoRA from the same start, trained three AdamW steps with our
groups and with peft's create_loraplus_optimizer, ends with the same outputs; and the Trainer takes the ratio."""

from __future__ import annotations

import warnings

import peft
import pytest
import torch
from peft.optimizers import create_loraplus_optimizer

from peftcore.loraplus import loraplus_param_groups
from peftcore.training import Trainer, TrainingConfig
from tests import archs
from tests.archs import ARCHS
from tests.parity import assert_parity
from tests.peftcore.test_training import fresh_model, toy_data


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_loraplus_steps_as_peft_does(hf_checkpoint, arch, tmp_path):
    directory, cached = archs.reference(hf_checkpoint, arch, "sequence_classification")
    theirs = peft.get_peft_model(type(cached).from_pretrained(directory), peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["query", "value", "attention.output.dense"]))  # the classifier stays fixed
    with torch.no_grad():  # B away from zero, so that A's gradient is not zero either
        for name, parameter in theirs.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1, generator=torch.Generator().manual_seed(0))
    theirs.save_pretrained(tmp_path / "a")
    ours = ARCHS[arch].model.from_pretrained(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.load_adapter(tmp_path / "a", set_active=True)
    ours.train_adapter("a")
    batch = archs.inputs(cached.config)
    optimizers = (create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-2, loraplus_lr_ratio=16,
                                            loraplus_weight_decay=0.1),
                  torch.optim.AdamW(loraplus_param_groups(ours, lr=1e-2, ratio=16, weight_decay=0.1)))
    groups = [[(g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups if g["params"]]
              for optimizer in optimizers]
    assert groups[0] == groups[1]
    for model, optimizer in zip((theirs, ours), optimizers, strict=True):
        for _ in range(3):  # eval mode: no dropout, so both see the same function
            model.eval()(**batch).logits.pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    with torch.no_grad():
        assert_parity(ours(**batch).logits, theirs(**batch).logits)


def test_trainer_steps_b_at_the_ratio_and_refuses_a_bad_one():
    model = fresh_model()
    config = TrainingConfig(epochs=1, batch_size=16, learning_rate=1e-3, warmup_ratio=0.0, loraplus_lr_ratio=16)
    trainer = Trainer(model, "a", config, toy_data(), progress=False)
    b = {id(p) for name, p in model.named_parameters() if name.endswith("lora_B")}
    rates = {group["lr"] for group in trainer.optimizer.param_groups for p in group["params"] if id(p) in b}
    assert b and rates == {1e-3 * 16}
    with pytest.raises(ValueError, match="loraplus_lr_ratio must be positive"):
        TrainingConfig(loraplus_lr_ratio=0)
