"""(IA)^3 (Liu et al., 2022, https://arxiv.org/abs/2205.05638): learned vectors that rescale the outputs of the
linear sites, on LoRA's config, placement, gate and merge (lora.py).

Numerically equal to AdapterHub's ``adapters.methods.lora.IA3`` (a ``LoRAConfig`` with ``composition_mode="scale"``)
and to HF PEFT's (IA)^3 on the modules it scales at their output, whose files it reads and writes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from peftcore.methods.base import Method, PeftFile, init_generator, register_method
from peftcore.methods.lora import LinearMethod, LoRAConfig, check_peft_options, config_for_sites, refuse_gated_peft
from peftcore.sites import SiteLinear


@dataclass(frozen=True, kw_only=True)
class IA3Config(LoRAConfig):
    """(IA)^3 as AdapterHub 1.3.0 configures it: vectors on keys, values and the feed-forward intermediate (which it
    scales before the activation)."""

    intermediate_lora: bool = True
    r: int = 1
    alpha: float = 1
    attn_matrices: tuple[str, ...] = ("k", "v")
    composition_mode: str = "scale"
    init_weights: str = "ia3"


class IA3(LinearMethod):
    """y = (W x + b) ⊙ (alpha · l), or ⊙ (gate(x) · l) when gated: a learned vector l rescales the output.

    Merging scales the weight's rows and the bias; AdapterHub 1.3.0 forgets the bias (its merge is wrong whenever
    b ≠ 0, as in every BERT linear) — ours equals the unmerged forward.
    """

    title = "(IA)^3"
    composition_mode = "scale"
    peft_type = "IA3"
    peft_suffixes = (".ia3_l",)

    def __init__(self, config: LoRAConfig, in_features: int, out_features: int) -> None:
        super().__init__(config, in_features)
        self.lora_B = nn.Parameter(torch.ones(out_features, 1))  # AdapterHub's name for the vector l
        self.scaling = config.alpha
        with torch.no_grad():
            if config.init_weights == "lora":
                nn.init.zeros_(self.lora_B)
            elif config.init_weights == "bert":
                nn.init.normal_(self.lora_B, std=0.02, generator=init_generator(config.init_weights_seed))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        scale = self.lora_B.view(-1)  # (out,)
        return y * (scale * self.gate(x) if self.gate is not None else scale * self.scaling)

    def fold(self, linear: SiteLinear) -> None:
        factor = self.scaling * self.lora_B.view(-1)
        linear.weight *= factor[:, None]
        if linear.bias is not None:
            linear.bias *= factor

    @classmethod
    def from_peft(cls, file: PeftFile) -> tuple[IA3Config, dict[str, Tensor]]:
        """PEFT's ``ia3_l`` (out, 1) on a module's output is our vector; its ``feedforward_modules`` vectors scale a
        module's input instead, which ours cannot express exactly (refused, as are vectors on DeBERTa's fused
        in_proj, which PEFT applies before DeBERTa adds q_bias and v_bias). A fused module whose bias is its own
        (ModernBERT's Wqkv) splits its vector per site."""
        check_peft_options(file)
        feedforward = sorted(path for path in file.targeted if is_feedforward(file.raw, path))
        if feedforward:
            listed = ", ".join(feedforward[:4]) + (" ..." if len(feedforward) > 4 else "")
            raise ValueError(f"{file.where}: PEFT's (IA)^3 scales the input of its feedforward_modules ({listed}): "
                             "for output.dense that is after the activation, l ⊙ GELU(W1 x). peftcore's (IA)^3, like "
                             "AdapterHub's, scales ffn.intermediate before it, GELU(l ⊙ W1 x), and scales outputs "
                             "only; the two differ, so this file is refused. An (IA)^3 on 'intermediate.dense' "
                             "outside feedforward_modules converts exactly.")
        fused = sorted(path for path, module in file.targeted.items() if module.split and not module.splits_bias)
        if fused:
            raise ValueError(f"{file.where}: (IA)^3 on DeBERTa's fused {fused[0]} scales W x before DeBERTa adds "
                             "q_bias and v_bias; peftcore's (IA)^3 at attn.q/attn.v scales W x + b, so the two differ.")
        state = {}
        for path, module in file.targeted.items():
            vector = file.tensors.get(f"{path}.ia3_l")
            if vector is None or vector.dim() != 2 or vector.shape[1] != 1:
                raise ValueError(f"{file.where}: {path}.ia3_l must be an (out, 1) vector, got "
                                 f"{None if vector is None else tuple(vector.shape)}.")
            for site, part in zip(module.sites, module.split(vector) if module.split else (vector,), strict=True):
                state[file.key(module.layer, site, "lora_B")] = part.contiguous()  # a fused module's rows per site
        return config_for_sites(file, IA3Config), state

    @classmethod
    def to_peft(cls, config: LoRAConfig, placed: Mapping[str, Mapping[str, Method]], modules: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        refuse_gated_peft(config)
        state = {}
        for path, ours in placed.items():
            module = modules[path]
            if module.split and not module.splits_bias:
                raise ValueError(f"(IA)^3 on DeBERTa's fused {path}: PEFT would scale W x before q_bias/v_bias are "
                                 "added, ours scales W x + b; PEFT cannot express this adapter.")
            if not module.split:
                (vector,) = ours.values()
                state[f"{path}.ia3_l"] = vector.lora_B.detach() * config.alpha  # (out, 1)
                continue
            width = next(iter(ours.values())).lora_B.shape[0]  # a fused module's sites without a vector scale by 1
            parts = tuple(ours[site].lora_B.detach() * config.alpha if site in ours
                          else next(iter(ours.values())).lora_B.new_ones(width, 1) for site in module.sites)
            state[f"{path}.ia3_l"] = module.join(parts)  # (3 out, 1)
        return {"feedforward_modules": [], "init_ia3_weights": True, "peft_type": "IA3"}, state


def is_feedforward(raw: Mapping[str, Any], key: str) -> bool:
    """PEFT's ``IA3Model._check_target_module_feedforward``: a list entry matches any suffix, without a dot."""
    modules = raw.get("feedforward_modules") or []
    return bool(re.fullmatch(modules, key)) if isinstance(modules, str) else any(key.endswith(m) for m in modules)


register_method(IA3, {"ia3": IA3Config()})
