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
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.methods.base import Method, ModelShape, PeftFile, init_generator, register_method
from peftcore.methods.lora import LinearMethod, LoRAConfig
from peftcore.methods.lora_peft import check_peft_options, config_for_sites, refuse_gated_peft
from peftcore.sites import Site, SiteLinear


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
    """y = (W x + b) ⊙ (alpha · l), or ⊙ (gate(x) · l) when gated: a learned vector l rescales the output. At the
    sites in ``input_scaled`` it rescales the input instead, y = W (alpha · l ⊙ x) + b (PEFT's feedforward_modules).

    Merging scales the weight's rows and the bias (input: the weight's columns); AdapterHub 1.3.0 forgets the bias
    (its merge is wrong whenever b ≠ 0, as in every BERT linear) — ours equals the unmerged forward.
    """

    title = "(IA)^3"
    composition_mode = "scale"
    peft_type = "IA3"
    peft_suffixes = (".ia3_l",)
    weighted_strategies = ("linear",)  # PEFT's (IA)^3 add_weighted_adapter: Σ wᵢ·lᵢ

    @classmethod
    def build(cls, config: LoRAConfig, site: Site, shape: ModelShape, shared: nn.Module | None) -> IA3:
        linear = site.module
        module = cls(config, linear.in_features, linear.out_features, site.name in config.input_scaled)
        if module.on_input:  # a reference, not a registration: W x of the scaled input
            object.__setattr__(module, "linear", linear)
        return module

    def __init__(self, config: LoRAConfig, in_features: int, out_features: int, on_input: bool = False) -> None:
        super().__init__(config, in_features)
        self.on_input = on_input
        self.lora_B = nn.Parameter(torch.ones(in_features if on_input else out_features, 1))  # AdapterHub's name: l
        self.scaling = config.alpha
        with torch.no_grad():
            if config.init_weights == "lora":
                nn.init.zeros_(self.lora_B)
            elif config.init_weights == "bert":
                nn.init.normal_(self.lora_B, std=0.02, generator=init_generator(config.init_weights_seed))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        scale = self.lora_B.view(-1)  # (out,), or (in,) on the input
        if self.on_input:  # W (s l ⊙ x) + b = y + W ((s l - 1) ⊙ x), so other adapters here compose
            return y + F.linear(x * (scale * self.scaling - 1), self.linear.weight)
        return y * (scale * self.gate(x) if self.gate is not None else scale * self.scaling)

    def fold(self, linear: SiteLinear) -> None:
        factor = self.scaling * self.lora_B.view(-1)
        if self.on_input:
            linear.weight *= factor
            return
        linear.weight *= factor[:, None]
        if linear.bias is not None:
            linear.bias *= factor

    @classmethod
    def from_peft(cls, file: PeftFile) -> tuple[IA3Config, dict[str, Tensor]]:
        """PEFT's ``ia3_l`` (out, 1) on a module's output is our vector; on its ``feedforward_modules`` it is (1, in)
        and scales the module's input: ours at that site in ``input_scaled``. Vectors on DeBERTa's fused in_proj are
        refused (PEFT applies them before DeBERTa adds q_bias and v_bias); on a fused module whose bias is its own
        (ModernBERT's Wqkv) an output vector splits per site and an input vector scales each site's input."""
        check_peft_options(file)
        fused = sorted(path for path, module in file.targeted.items() if module.split and not module.splits_bias)
        if fused:
            raise ValueError(f"{file.where}: (IA)^3 on DeBERTa's fused {fused[0]} scales W x before DeBERTa adds "
                             "q_bias and v_bias; peftcore's (IA)^3 at attn.q/attn.v scales W x + b, so the two differ.")
        state, on_input = {}, {}
        for path, module in file.targeted.items():
            vector = file.tensors.get(f"{path}.ia3_l")
            feedforward = is_feedforward(file.raw, path)
            if vector is None or vector.dim() != 2 or vector.shape[0 if feedforward else 1] != 1:
                raise ValueError(f"{file.where}: {path}.ia3_l must be an {'(1, in)' if feedforward else '(out, 1)'} "
                                 f"vector, got {None if vector is None else tuple(vector.shape)}.")
            vector = vector.reshape(-1, 1)
            parts = module.split(vector) if module.split and not feedforward else (vector,) * len(module.sites)
            for site, part in zip(module.sites, parts, strict=True):  # a fused module's rows, or its input, per site
                state[file.key(module.layer, site, "lora_B")] = part.contiguous()
                on_input.setdefault(site, set()).add(feedforward)
        mixed = sorted(site for site, kinds in on_input.items() if len(kinds) > 1)
        if mixed:
            raise ValueError(f"{file.where}: feedforward_modules select {mixed} in some layers only; peftcore's "
                             "(IA)^3 scales a site's input in every layer or in none.")
        sites = tuple(sorted(site for site, kinds in on_input.items() if True in kinds))
        return config_for_sites(file, IA3Config, input_scaled=sites), state

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
                scale = vector.lora_B.detach() * config.alpha  # (out, 1), or (in, 1) on the input
                state[f"{path}.ia3_l"] = scale.T.contiguous() if vector.on_input else scale
                continue
            if any(vector.on_input for vector in ours.values()):
                raise ValueError(f"(IA)^3 on the inputs of the sites in the fused {path}: PEFT's one vector there "
                                 "scales the fused module's input; PEFT cannot express per-site input vectors.")
            first = next(iter(ours.values())).lora_B
            parts = tuple(ours[site].lora_B.detach() * config.alpha if site in ours
                          else first.new_ones(first.shape[0], 1) for site in module.sites)  # a site without one: 1
            state[f"{path}.ia3_l"] = module.join(parts)  # (3 out, 1)
        # a regex: peft 0.21.2 wants a list of feedforward_modules to be a subset of the target_modules list
        inputs = "|".join(re.escape(path) for path, ours in placed.items() if next(iter(ours.values())).on_input)
        feedforward = rf"(.*\.)?(?:{inputs})" if inputs else []
        return {"feedforward_modules": feedforward, "init_ia3_weights": True, "peft_type": "IA3"}, state


def is_feedforward(raw: Mapping[str, Any], key: str) -> bool:
    """PEFT's ``IA3Model._check_target_module_feedforward``: a list entry matches any suffix, without a dot."""
    modules = raw.get("feedforward_modules") or []
    return bool(re.fullmatch(modules, key)) if isinstance(modules, str) else any(key.endswith(m) for m in modules)


register_method(IA3, {"ia3": IA3Config()})
