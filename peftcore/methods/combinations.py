"""Method combinations under the names AdapterHub gives them: unions of the methods in this package.

``MAMConfig`` and ``UniPELTConfig`` are functions named like AdapterHub's classes, so AdapterHub code reads the same.
"""

from __future__ import annotations

from peftcore.configs import ConfigUnion, register
from peftcore.methods.bottleneck import BnConfig, ParBnConfig, SeqBnConfig
from peftcore.methods.lora import LoRAConfig
from peftcore.methods.prefix import PrefixTuningConfig


def MAMConfig(prefix_tuning: PrefixTuningConfig | None = None, adapter: BnConfig | None = None) -> ConfigUnion:
    """Mix-and-match adapters (He et al., 2021, https://arxiv.org/abs/2110.04366): prefix tuning with a
    bottleneck of 800 plus a scaled parallel adapter on the FFN."""
    return ConfigUnion(prefix_tuning or PrefixTuningConfig(bottleneck_size=800), adapter or ParBnConfig())


def UniPELTConfig(prefix_tuning: PrefixTuningConfig | None = None, adapter: BnConfig | None = None,
                  lora: LoRAConfig | None = None, gate_over_real_tokens: bool = False) -> ConfigUnion:
    """UniPELT (Mao et al., 2022, https://arxiv.org/abs/2110.07577): gated prefix tuning, sequential bottleneck and
    LoRA, each switched on per example by a learned gate (gating.py). The gates average over the padded sequence, as
    AdapterHub's do; ``gate_over_real_tokens`` makes every member's gate average over each row's real tokens, so a
    row's output does not depend on the batch's padding and variable-length batches run unpadded."""
    members = (prefix_tuning or PrefixTuningConfig(prefix_length=10), adapter or SeqBnConfig(reduction_factor=16),
               lora or LoRAConfig(r=8, alpha=2))
    return ConfigUnion(*(member.replace(use_gating=True, gate_over_real_tokens=gate_over_real_tokens
                                        or member.gate_over_real_tokens) for member in members))

register(presets={"mam": MAMConfig(), "unipelt": UniPELTConfig()})
