"""LoHa (Hyeon-Woo et al., 2022, FedPara, https://arxiv.org/abs/2108.06098; LyCORIS): a Hadamard product of two
low-rank matrices as the weight update of the linear sites, ΔW = (W1a W1b) ⊙ (W2a W2b), on LoRA's placement
(lowrank.py).

Numerically equal to HF PEFT 0.21.2's ``peft.tuners.loha.layer.Linear`` (its forward, rank and module dropout, merge),
whose files it reads and writes under PEFT's tensor names (``hada_w1_a`` ...); PEFT is the only reference: AdapterHub
has no LoHa.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from peftcore.methods.base import init_generator, register_method
from peftcore.methods.lowrank import Lycoris, LycorisConfig


@dataclass(frozen=True, kw_only=True)
class LoHaConfig(LycorisConfig):
    """HF PEFT's LoHaConfig for linears, field for field (lowrank.py's LycorisConfig): r 8, alpha 8, no dropout,
    the update starting at zero; placed as LoRA on queries and values (PEFT's BERT/RoBERTa default targets)."""

    architecture: ClassVar[str | None] = "loha"


class LoHa(Lycoris):
    """ΔW = (W1a W1b) ⊙ (W2a W2b): W1a, W2a (out, r), W1b, W2b (r, in). PEFT's init: Kaiming-uniform (a = √5) for
    all but W2b, which starts at zero (``init_weights=False``: it too is random)."""

    title = "LoHa"
    config_class = LoHaConfig
    peft_type = "LOHA"
    peft_names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    peft_suffixes = tuple(f".{name}" for name in peft_names)

    def __init__(self, config: LoHaConfig, in_features: int, out_features: int) -> None:
        super().__init__(config, in_features)
        r = config.r
        self.hada_w1_a = nn.Parameter(torch.empty(out_features, r))
        self.hada_w1_b = nn.Parameter(torch.empty(r, in_features))
        self.hada_w2_a = nn.Parameter(torch.empty(out_features, r))
        self.hada_w2_b = nn.Parameter(torch.empty(r, in_features))
        generator = init_generator(config.init_weights_seed)
        with torch.no_grad():
            for factor in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b):
                nn.init.kaiming_uniform_(factor, a=math.sqrt(5), generator=generator)
            if config.init_weights:
                nn.init.zeros_(self.hada_w2_b)

    def delta_weight(self) -> Tensor:
        return (self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b)  # (out, in)

    @classmethod
    def features(cls, tensors: Mapping[str, Tensor]) -> tuple[int, int] | None:
        if "hada_w1_a" not in tensors or "hada_w1_b" not in tensors:
            return None
        return tensors["hada_w1_b"].shape[-1], tensors["hada_w1_a"].shape[0]

    @classmethod
    def scaled_factor(cls, tensors: Mapping[str, Tensor]) -> str:
        return "hada_w2_b"


register_method(LoHa, {"loha": LoHaConfig()})
