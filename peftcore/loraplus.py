"""LoRA+ (Hayou et al., 2024, https://arxiv.org/abs/2402.12354): optimizer parameter groups in which the B matrix of
each LoRA trains at ``ratio`` times the learning rate of A, by the rule of HF PEFT 0.21.2's
``create_loraplus_optimizer`` (peft/optimizers/loraplus.py), so an optimizer built from them steps as PEFT's does.

PEFT's rule, over the trainable parameters: a LoRA's B (a method's ``Method.loraplus_b``) and every 1-D parameter
train at ``lr · ratio``, with weight decay unless it is a bias or a LayerNorm's; everything else at ``lr`` with weight
decay. PEFT's fourth group, LoRAs on embedding layers, has no counterpart here (no site is an embedding).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from peftcore.methods.base import Method


def loraplus_param_groups(model: nn.Module, lr: float, ratio: float = 16.0, weight_decay: float = 0.0
                          ) -> list[dict[str, Any]]:
    """Three groups (A and the rest; B with decay; B without) for ``torch.optim.AdamW(groups)`` or our Trainer
    (``TrainingConfig.loraplus_lr_ratio``)."""
    if not lr > 0 or not ratio > 0:
        raise ValueError(f"LoRA+ needs a positive lr and ratio, got lr={lr!r}, ratio={ratio!r}.")
    a, b, b_no_decay = [], [], []
    for module in model.modules():
        fast = module.loraplus_b if isinstance(module, Method) else ()
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            if name not in fast and parameter.dim() != 1:
                a.append(parameter)
            elif isinstance(module, nn.LayerNorm) or "bias" in name:
                b_no_decay.append(parameter)
            else:
                b.append(parameter)
    return [{"params": a, "lr": lr, "weight_decay": weight_decay},
            {"params": b, "lr": lr * ratio, "weight_decay": weight_decay},
            {"params": b_no_decay, "lr": lr * ratio, "weight_decay": 0.0}]
